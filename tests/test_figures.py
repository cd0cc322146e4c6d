"""The app's figure builders and the analysis helpers behind its pages, called directly.

Every figure is validated once by Plotly's own schema (the builders skip validation for
speed, see app/figures.py), must label its token axis with the tokens of the text and carry
hover text; the helpers are checked on what the trace says.
"""

from __future__ import annotations

import json

import numpy as np
import plotly.graph_objects as go
import pytest
from app_support import TINY, tiny_checkpoint_root  # noqa: F401

from app import comparison, figures, traces
from dasg_moe import load_checkpoint
from dasg_moe.inspect import inspect_text
from dasg_moe.routers import RoutingOverrides
from dasg_moe.tokenizer import encode

TEXT = "The company said its profit rose sharply."
PAIR = "Profit rose sharply, the firm said."


@pytest.fixture(scope="module")
def results(tiny_checkpoint_root):  # noqa: F811
    """One inspection per tiny router, plus the DASG one under other thresholds."""
    out = {}
    for name in TINY:
        ckpt = load_checkpoint(tiny_checkpoint_root / name)
        out[name] = inspect_text(ckpt.model, ckpt.tokenizer, TEXT, PAIR)
    dasg = load_checkpoint(tiny_checkpoint_root / "mrpc-tiny-dasg")
    out["all-deep"] = inspect_text(dasg.model, dasg.tokenizer, TEXT, PAIR,
                                   RoutingOverrides(0.0, 0.0))
    return out


def valid(fig: go.Figure) -> dict:
    """The figure as Plotly's validator sees it (raises on any invalid property)."""
    assert isinstance(fig, go.Figure)
    spec = go.Figure(fig.to_dict()).to_plotly_json()
    json.dumps(spec, default=str)  # serialisable, no NaN objects left in lists
    return spec


def tick_text(spec: dict) -> list[str]:
    return [t for key, axis in spec["layout"].items() if key.startswith("xaxis")
            for t in axis.get("ticktext", [])]


def all_builders(result, layer: int, highlight: int | None = None) -> dict[str, go.Figure]:
    frame, trace = result.frame, result.trace
    rows = traces.layer_rows(frame, layer)
    maps = trace.attention[layer]
    return {
        "tier": figures.tier_map_figure(frame, trace.router, highlight=highlight),
        "scores": figures.scores_figure(rows, layer, highlight=highlight),
        "overview": figures.overview_figure(frame, "importance", highlight=highlight),
        "experts": figures.expert_figure(traces.expert_grid(trace, layer),
                                         result.encoded.tokens, trace.expert_labels, layer,
                                         highlight=highlight),
        "attention": figures.attention_figure(trace.attention_map(layer, 0, 0, None),
                                              result.encoded.tokens, 0, layer=layer, group=0,
                                              head=None, window=maps.window,
                                              highlight=highlight),
        "flops": figures.flops_figure(frame, trace.flops_reference,
                                      tiers=traces.has_tiers(trace), highlight=highlight),
        "fragility": figures.fragility_figure(rows, layer, eps=0.05, highlight=highlight),
    }


@pytest.mark.parametrize("name", list(TINY))
def test_every_figure_is_valid_and_shows_the_tokens(results, name):
    result = results[name]
    layer = traces.moe_layers(result.frame)[0]
    tokens = set(result.encoded.tokens)
    for key, fig in all_builders(result, layer).items():
        spec = valid(fig)
        labels = tick_text(spec)
        assert labels, key
        assert set(labels) <= {figures.escape(t) for t in tokens}, key
        assert any("hovertemplate" in trace for trace in spec["data"]), key
    probs = valid(figures.probability_figure(result.label_names, result.probabilities))
    assert probs["data"][0]["y"] == list(result.label_names)


def test_routing_figure_stacks_tiers_over_scores_on_one_token_axis(results):
    result = results["mrpc-tiny-dasg"]
    spec = valid(figures.routing_figure(result.frame, 1, "dasg", highlight=3))
    layout = spec["layout"]
    assert layout["xaxis"]["ticktext"] == [figures.escape(t) for t in result.encoded.tokens]
    assert "xaxis2" not in layout  # one token axis, one set of labels
    assert {t["yaxis"] for t in spec["data"]} == {"y", "y2"}
    assert layout["yaxis2"]["domain"][0] > layout["yaxis"]["domain"][1]
    squares = [t for t in spec["data"] if t["yaxis"] == "y2" and t["x"] != [None]]
    assert sum(len(t["x"]) for t in squares) == len(result.frame)
    assert "layer 1" in layout["title"]["text"]
    bands = [x for x in layout["shapes"] if x.get("fillcolor") == figures.HIGHLIGHT_FILL]
    assert {x["yref"] for x in bands} == {"y domain", "y2 domain"}
    thresholds = [x for x in layout["shapes"] if x["type"] == "line"]
    assert {x["yref"] for x in thresholds} == {"y"}  # θs/θd lines stay on the score panel


def test_routing_figure_sizes_its_margins_instead_of_automargin(results):
    """Automargin would draw the figure twice in the browser; the routing figure turns it
    off and leaves room for its longest (rotated) token label instead."""
    frame = results["mrpc-tiny-dasg"].frame
    plain = valid(figures.routing_figure(frame, 0, "dasg"))["layout"]
    longer = frame.assign(token=frame["token"].where(frame["position"] != 3,
                                                     "x" * 40))  # one very long label
    wide = valid(figures.routing_figure(longer, 0, "dasg"))["layout"]
    for layout in (plain, wide):
        axes = [v for k, v in layout.items() if k.startswith(("xaxis", "yaxis"))]
        assert len(axes) == 3 and all(axis["automargin"] is False for axis in axes)
        assert layout["margin"]["l"] >= 70 and layout["margin"]["b"] >= 70
    assert wide["margin"]["b"] >= plain["margin"]["b"] + 100  # 40 characters at -60°


def test_tier_map_has_a_square_per_token_and_layer_and_a_tier_legend(results):
    result = results["mrpc-tiny-dasg"]
    spec = valid(figures.tier_map_figure(result.frame, "dasg", eps=1.0))
    squares = [t for t in spec["data"] if t["x"] != [None]]
    assert sum(len(t["x"]) for t in squares) == len(result.frame)
    assert {t["name"] for t in squares} <= {"shallow", "deep"}
    assert all(t["marker"]["symbol"] == "square" for t in squares)
    # eps = 1 makes every decision a near tie: outlined, with a legend entry for it
    assert any(t["name"].startswith("near tie") for t in spec["data"])
    # the clicked point's x is the token position the page reads back
    positions = sorted(x for t in squares for x in t["x"])
    assert positions == sorted(result.frame["position"].tolist())


@pytest.mark.parametrize("name", [*TINY, "all-deep"])
def test_tier_map_hover_shows_each_points_own_values(results, name):
    """Hover data per point holds only what varies; the tier and the thresholds written
    into each trace's template must still be those of every point in it."""
    result = results[name]
    frame = result.frame.set_index(["layer", "position"])
    theta = "θs {:.2f}, θd {:.2f}".format(*frame[["theta_s", "theta_d"]].iloc[0])
    spec = valid(figures.tier_map_figure(result.frame, result.trace.router))
    for trace in spec["data"]:
        if trace["x"] == [None]:
            continue
        rows = frame.loc[list(zip(trace["y"], trace["x"], strict=True))]
        assert f"tier: {rows['tier'].iloc[0]}<br>" in trace["hovertemplate"]
        assert rows["tier"].nunique() == 1 and theta in trace["hovertemplate"]
        assert [c[0] for c in trace["customdata"]] == trace["x"]  # the position
        assert [c[1] for c in trace["customdata"]] == [f"{v:.3f}" if v == v else "n/a"
                                                      for v in rows["score"]]


def test_hover_shows_the_token_and_its_position(results):
    """On an axis with tick labels Plotly's %{x} is the label (the token text), so no
    hover may call %{x} the position; the position comes from the point's customdata."""
    result = results["mrpc-tiny-dasg"]
    figs = {**all_builders(result, 0),
            "routing": figures.routing_figure(result.frame, 0, "dasg")}
    for key, fig in figs.items():
        spec = valid(fig)
        labelled = {name[:1] + name[5:] for name, axis in spec["layout"].items()
                    if name.startswith(("xaxis", "yaxis")) and axis.get("ticktext")}
        for trace in spec["data"]:
            template = trace.get("hovertemplate", "")
            for axis in ("x", "y"):
                if axis + trace.get(f"{axis}axis", axis)[1:] in labelled:
                    assert f"position %{{{axis}}}" not in template, (key, template)
                    assert f"layer %{{{axis}}}" not in template, (key, template)


def test_all_deep_thresholds_turn_every_square_deep(results):
    spec = valid(figures.tier_map_figure(results["all-deep"].frame, "dasg"))
    assert [t["name"] for t in spec["data"]] == ["deep"]


def test_dense_layers_are_marked_and_untiered_routers_coloured_by_expert(results):
    result = results["mrpc-tiny-switch"]  # moe_every=2: layer 0 dense, layer 1 routed
    spec = valid(figures.tier_map_figure(result.frame, "switch"))
    names = {t["name"] for t in spec["data"]}
    assert figures.DENSE in names
    assert any(n.startswith("expert ") for n in names)
    scores = valid(figures.scores_figure(traces.layer_rows(result.frame, 0), 0))
    assert "dense FFN" in scores["layout"]["title"]["text"]


def test_highlight_band_appears_in_every_token_figure(results):
    result = results["mrpc-tiny-dasg"]
    for key, fig in all_builders(result, 0, highlight=2).items():
        spec = valid(fig)
        shapes = spec["layout"].get("shapes", [])
        assert any(s.get("fillcolor") == figures.HIGHLIGHT_FILL
                   or s.get("line", {}).get("color") == "#FFC800" for s in shapes), key


def test_scores_figure_draws_both_thresholds(results):
    result = results["all-deep"]
    spec = valid(figures.scores_figure(traces.layer_rows(result.frame, 0), 0))
    lines = [s for s in spec["layout"]["shapes"] if s["type"] == "line"]
    assert [s["y0"] for s in lines] == [0.0, 0.0]
    assert {a["text"] for a in spec["layout"]["annotations"]} == {"θs = 0.00", "θd = 0.00"}


def test_attention_figure_shows_the_window(results):
    result = results["mrpc-tiny-dasg"]  # window 4: |i - j| <= 2 inside groups of 8
    matrix = result.trace.attention_map(0, 0, 1, 0)
    start = result.trace.attention[0].group_len
    spec = valid(figures.attention_figure(matrix, result.encoded.tokens[start:], start,
                                          layer=0, group=1, head=0, window=4))
    edges = [s for s in spec["layout"]["shapes"] if s["type"] == "line"]
    assert len(edges) == 2 and all(abs(abs(s["x0"] - s["y0"]) - 2.5) < 1e-9 for s in edges)
    assert "|i−j| ≤ 2" in spec["layout"]["title"]["text"]
    assert spec["layout"]["yaxis"]["ticktext"] == result.encoded.tokens[start:start + 8]
    # outside the window the model gave no attention
    i, j = np.indices(matrix.shape)
    assert np.all(matrix[np.abs(i - j) > 2] == 0)


def test_summary_attention_figure_labels_groups(results):
    result = results["mrpc-tiny-dasg"]
    maps = result.trace.attention[0]
    labels = traces.group_labels(result.encoded.tokens, maps.group_len, maps.n_groups)
    summary = result.trace.summary_attention(0)
    spec = valid(figures.summary_attention_figure(summary, labels, layer=0, head=None))
    assert spec["data"][0]["x"] == labels[:summary.shape[0]]
    assert labels[0].startswith("g0: [CLS]")


def test_expert_figure_gates_match_the_trace(results):
    result = results["mrpc-tiny-dasg"]
    grid = traces.expert_grid(result.trace, 0)
    rows = traces.layer_rows(result.frame, 0)
    for position, (experts, gates) in enumerate(zip(rows["experts"], rows["gate_weights"],
                                                    strict=True)):
        picked = {e: g for e, g in zip(experts, gates, strict=True)}
        column = grid["gate"][0, :, position]
        assert {int(e) for e in np.flatnonzero(~np.isnan(column))} == set(picked)
        for e, g in picked.items():
            assert column[e] == pytest.approx(g, abs=1e-5)
    spec = valid(figures.expert_figure(grid, result.encoded.tokens,
                                       result.trace.expert_labels, 0))
    assert spec["data"][0]["y"] == list(result.trace.expert_labels)


def test_expert_figure_has_sub_token_rows_for_mh_moe_and_varying_k_for_da_moe(results):
    mh = results["mrpc-tiny-mhmoe"]
    grid = traces.expert_grid(mh.trace, 0)
    assert grid["gate"].shape[0] == 2  # two sub-tokens
    spec = valid(figures.expert_figure(grid, mh.encoded.tokens, mh.trace.expert_labels, 0))
    assert len(spec["data"][0]["y"]) == 2 * 4
    assert "sub-token 1" in spec["data"][0]["y"][-1]
    da = results["mrpc-tiny-damoe"]
    k = traces.expert_grid(da.trace, 0)["k"]
    assert set(k.tolist()) <= {1, 2, 3}
    assert k.tolist() == traces.layer_rows(da.frame, 0)["n_experts"].tolist()


def test_flops_summary_and_figure_use_the_references(results):
    result = results["all-deep"]
    summary = traces.flops_summary(result.frame, result.trace.flops_reference, tiers=True)
    assert summary["actual"] == pytest.approx(summary["all_deep"])
    spec = valid(figures.flops_figure(result.frame, result.trace.flops_reference, tiers=True))
    assert any("all deep" in a["text"] for a in spec["layout"]["annotations"])
    assert sum(sum(t["y"]) for t in spec["data"]) == pytest.approx(result.frame["flops"].sum())


def test_near_ties_list_every_margin_below_eps(results):
    result = results["mrpc-tiny-dasg"]
    ties = traces.near_ties(result.frame, 0.05)
    assert (ties["margin"] < 0.05).all()
    assert ties["margin"].is_monotonic_increasing
    expected = int((result.frame["tier_margin"] < 0.05).sum()
                   + (result.frame["expert_margin"] < 0.05).sum())
    assert (ties["kind"] != "policy").sum() == expected
    assert traces.near_ties(result.frame, 0.0).empty


def test_exports_round_trip(results):
    result = results["mrpc-tiny-dasg"]
    csv = traces.trace_csv(result.frame)
    assert csv.count("\n") == len(result.frame) + 1
    data = json.loads(traces.trace_json(result))
    assert data["prediction"] == result.prediction
    html = figures.figures_html({"a": figures.tier_map_figure(result.frame, "dasg"),
                                 "b": figures.probability_figure(result.label_names,
                                                                 result.probabilities)})
    assert html.count("<h2>") == 2 and "plotly" in html.lower()


def test_compare_same_tokenizer_aligns_one_to_one(results):
    a, b = results["mrpc-tiny-dasg"], results["all-deep"]
    assert comparison.align(a.encoded, b.encoded) == [[i] for i in range(len(a.encoded.tokens))]
    table = comparison.agreement(a, b)
    assert len(table) == len(a.frame)
    expected = (a.frame.sort_values(["layer", "position"])["tier"] == "deep").to_numpy()
    assert ((table["kind"] == "both deep").to_numpy() == expected).all()
    assert set(table["kind"]) <= {"both deep", "only B deep"}
    spec = valid(figures.agreement_figure(table, "A", "B"))
    assert {t["name"] for t in spec["data"]} == set(table["kind"])
    scatter = valid(figures.score_scatter_figure(table, "A", "B", "score"))
    assert len(scatter["data"]) == 2  # one trace per layer


def test_compare_aligns_different_tokenizers_by_character_span(results, minilm_tokenizer):
    small = results["mrpc-tiny-dasg"].encoded
    minilm = encode(minilm_tokenizer, TEXT, PAIR)
    matches = comparison.align(small, minilm)
    for i, found in enumerate(matches):
        assert found, small.tokens[i]  # every token covers some text of the other side
        for j in found:
            assert small.segment[i] == minilm.segment[j]
    assert [minilm.tokens[m[0]] for m, s in zip(matches, small.special, strict=True)
            if s] == ["[CLS]", "[SEP]", "[SEP]"]


def test_compare_summary_and_usage(results):
    picked = {k: results[k] for k in ("mrpc-tiny-dasg", "mrpc-tiny-switch", "all-deep")}
    lines = comparison.describe(picked)
    assert lines[0].startswith(("All 3 checkpoints predict", "Predictions differ"))
    assert any("tiers cannot be compared" in line for line in lines)
    assert any("same tier in" in line for line in lines)
    usage = comparison.expert_usage(picked)
    for (_, _), part in usage.groupby(["checkpoint", "layer"]):
        assert part["share"].sum() == pytest.approx(1.0)
    valid(figures.expert_usage_figure(usage, 1))
    table = comparison.summary_table(picked)
    assert table["deep_tier_rate"].iloc[2] == 1.0  # thresholds 0, 0: everything deep


def test_checkpoint_caption_names_router_and_grouping(tiny_checkpoint_root):  # noqa: F811
    ckpt = load_checkpoint(tiny_checkpoint_root / "mrpc-tiny-dasg")
    caption = traces.checkpoint_caption("x", ckpt.config, {"accuracy": 0.5})
    assert "router `dasg`" in caption and "window 4" in caption and "accuracy 0.500" in caption
