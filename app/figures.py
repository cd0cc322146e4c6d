"""Plotly figure builders for the app (DESIGN.md §6, §7): plain functions, no Streamlit.

Each builder takes what the trace already holds (the frame of `inspect_text`, arrays from
`app.traces`, comparison and sweep tables) and returns a `plotly.graph_objects.Figure`, so
the tests call them directly and the pages only place them. Conventions shared by every
figure:

- tokens sit on a numeric axis at their position, with the token text as tick labels, so a
  repeated word keeps its own column (the attention maps use the unique categories
  "position: token" instead, so their hover needs no text per cell);
- hover shows the token text and the numbers (heatmap cells rounded to 6 decimals). On an
  axis with tick labels Plotly's `%{x}` is the label, not the number, so hover writes the
  token as `%{x}` and takes the position from `customdata`;
- `highlight` (a token position) draws a band over that token in every token-axis figure,
  which is how a token picked in one plot is shown in the others;
- tier colours: shallow blue, deep orange, no tier grey, everywhere.

Speed: a new sentence on the Inspect page redraws its routing figure and the one detail
view open, if any, within a 1 s budget on two CPU cores. Plotly's validating object model
(`fig.add_hline`, `update_layout`) costs tens of milliseconds per call there, so the specs
are written as plain dicts of Python lists, put together as dicts, and wrapped once
without re-validation (`_wrap`). What a figure sends is kept small, since the browser
parses all of it: per-point hover data holds only what differs between points. The tests
validate every figure once through `plotly.graph_objects.Figure(fig.to_dict())`, so a
wrong property still fails loudly.

Shape legend: L tokens, S sub-tokens, E experts, G groups, M tokens per group.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from analysis.fragility import margins
from app.traces import NEAR_TIE_EPS, flops_summary

DENSE = "dense FFN (no routing)"
TIER_COLOURS = {"shallow": "#4C78A8", "deep": "#F58518", "none": "#9D9D9D", DENSE: "#DDDDDD"}
EXPERT_PALETTE = ("#4C78A8", "#F58518", "#54A24B", "#B279A2", "#E45756", "#72B7B2",
                  "#EECA3B", "#FF9DA6", "#9D755D", "#BAB0AC")
AGREEMENT_COLOURS = {"both shallow": "#4C78A8", "both deep": "#F58518",
                     "only A deep": "#E45756", "only B deep": "#B279A2",
                     "not comparable": "#D0D0D0"}
# Sequential scales written out, light = low: Plotly's named "Blues"/"Greys" run dark to
# light, which reads backwards for weights and attention.
GATE_SCALE = [[0.0, "#F7FBFF"], [0.5, "#6BAED6"], [1.0, "#08306B"]]
ATTENTION_SCALE = [[0.0, "#FFFFFF"], [0.5, "#737373"], [1.0, "#000000"]]
SUMMARY_SCALE = [[0.0, "#FCFBFD"], [0.5, "#9E9AC8"], [1.0, "#3F007D"]]
NEAR_TIE_COLOUR = "#D62728"
HIGHLIGHT_FILL = "rgba(255, 200, 0, 0.30)"


# ---------------------------------------------------------------------------------------
# Spec helpers
# ---------------------------------------------------------------------------------------


def escape(token: object) -> str:
    """Token text safe for Plotly's HTML-like labels ("<br>" stays literal)."""
    return html.escape(str(token), quote=False)


def _list(values) -> list:
    """Plain Python list: Plotly serialises lists several times faster than arrays, and
    NaN becomes None (JSON null, a gap) instead of an invalid JSON token."""
    out = np.asarray(values, dtype=object).tolist()
    return _denan(out)


def _denan(values):
    if isinstance(values, list):
        return [_denan(v) for v in values]
    if isinstance(values, float) and math.isnan(values):
        return None
    return values


def _fmt(value, spec: str = ".3f") -> str:
    try:
        return "n/a" if value is None or math.isnan(value) else format(value, spec)
    except TypeError:
        return str(value)


def _rounded(values, decimals: int = 6) -> list:
    """`_list` of numbers rounded to `decimals`, for heatmap cells: hover shows four, and
    a float32 value printed in full takes about 19 characters of JSON instead of 8."""
    return _list(np.round(np.asarray(values, dtype=float), decimals))


def _spec(data: list[dict], layout: dict, title: str, height: int) -> dict:
    """A figure as a plain dict, with the title, margins and legend every figure shares."""
    # The title sits at the very top, the legend just above the plot area, so a legend
    # that wraps to two rows grows into the top margin instead of over the title.
    base = {"title": {"text": title, "x": 0.0, "xanchor": "left", "font": {"size": 15},
                      "yref": "container", "y": 1.0, "yanchor": "top", "pad": {"t": 10}},
            "height": height, "margin": {"l": 70, "r": 30, "t": 70, "b": 70},
            "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "right",
                       "x": 1.0}}
    return {"data": data, "layout": {**base, **layout}}


def _wrap(spec: dict) -> go.Figure:
    """A spec as a Figure without re-validating it (see the module docstring). Building a
    Figure walks all its data, so figures made of parts are put together as dicts and
    wrapped once."""
    return go.Figure(spec, _validate=False)


def _figure(data: list[dict], layout: dict, title: str, height: int) -> go.Figure:
    return _wrap(_spec(data, layout, title, height))


def _token_axis(positions: Sequence[int], tokens: Sequence[str], title: str = "token",
                **extra) -> dict:
    """A numeric position axis labelled with the token text."""
    positions = [int(p) for p in positions]
    n = len(positions)
    return {"tickmode": "array", "tickvals": positions, "ticktext": [escape(t) for t in tokens],
            "tickangle": -60 if n > 12 else 0, "tickfont": {"size": 11 if n <= 40 else 9},
            "title": {"text": title}, "range": [min(positions, default=0) - 0.5,
                                                max(positions, default=0) + 0.5],
            "showgrid": False, **extra}


def _band(position: int | None, xref: str = "x", yref: str = "y domain") -> list[dict]:
    """The highlight band over one token (empty without a highlight)."""
    if position is None:
        return []
    return [{"type": "rect", "xref": xref, "yref": yref, "x0": position - 0.5,
             "x1": position + 0.5, "y0": 0, "y1": 1, "fillcolor": HIGHLIGHT_FILL,
             "line": {"width": 0}, "layer": "below"}]


def _hline(y: float, text: str, colour: str = "#333333", *, xref: str = "x domain",
           yref: str = "y", dash: str = "dash", align: str = "left",
           above: bool = True) -> tuple[dict, dict]:
    """A labelled horizontal reference line: (shape, annotation)."""
    shape = {"type": "line", "xref": xref, "yref": yref, "x0": 0, "x1": 1, "y0": y, "y1": y,
             "line": {"color": colour, "dash": dash, "width": 1.5}}
    note = {"xref": xref, "yref": yref, "x": 0 if align == "left" else 1, "y": y,
            "text": text, "showarrow": False, "xanchor": align,
            "yanchor": "bottom" if above else "top",
            "font": {"size": 11, "color": colour}}
    return shape, note


def _layer_axis(n_layers: int) -> dict:
    return {"tickmode": "array", "tickvals": list(range(n_layers)),
            "ticktext": [f"layer {i}" for i in range(n_layers)],
            "range": [-0.6, n_layers - 0.4], "title": {"text": ""}, "showgrid": False}


def _first_layer(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["layer"] == frame["layer"].min()].sort_values("position")


# ---------------------------------------------------------------------------------------
# Inspect: prediction, tiers, scores
# ---------------------------------------------------------------------------------------


def probability_figure(label_names: Sequence[str], probabilities: Sequence[float]) -> go.Figure:
    """Horizontal bars: the probability of each label, the predicted one in green."""
    best = int(np.argmax(probabilities))
    data = [{"type": "bar", "orientation": "h", "x": [float(p) for p in probabilities],
             "y": [escape(n) for n in label_names],
             "marker": {"color": ["#54A24B" if i == best else "#BAB0AC"
                                  for i in range(len(label_names))]},
             "text": [f"{p:.3f}" for p in probabilities], "textposition": "auto",
             "hovertemplate": "%{y}: p = %{x:.4f}<extra></extra>"}]
    layout = {"xaxis": {"range": [0, 1], "title": {"text": "probability"}},
              "showlegend": False, "margin": {"l": 120, "r": 30, "t": 40, "b": 40}}
    return _figure(data, layout, "Label probabilities", 90 + 36 * len(label_names))


def tier_map_figure(frame: pd.DataFrame, router: str, *, highlight: int | None = None,
                    eps: float = NEAR_TIE_EPS, selectable: bool = True) -> go.Figure:
    """Token × layer map of the routing decision, one square per (token, layer).

    Tiered routers (dasg, random) are coloured by tier; the others by the first expert
    picked. Decisions whose margin is below `eps` (near ties) get a red outline. A scatter
    with square markers rather than a heatmap, so Streamlit can report a clicked token
    (the point's x is the token position).
    """
    return _wrap(_tier_map_spec(frame, router, highlight=highlight, eps=eps,
                                selectable=selectable))


def _tier_map_spec(frame: pd.DataFrame, router: str, *, highlight: int | None, eps: float,
                   selectable: bool) -> dict:
    tiers = router in ("dasg", "random")
    first = _first_layer(frame)
    positions, tokens = first["position"].tolist(), first["token"].tolist()
    n_layers = int(frame["layer"].max()) + 1
    size = int(np.clip(720 / max(len(positions), 1), 7, 22))
    near = (frame["tier_margin" if tiers else "expert_margin"] < eps).to_numpy()
    category = np.where(frame["moe"], frame["tier"] if tiers else frame["experts"].map(
        lambda e: f"expert {e[0]}" if e else "none"), DENSE).astype(object)
    # Hover text is most of what this figure sends, so each point carries only what varies
    # between points. The tier is the same for every point of a trace, and the thresholds
    # are the call's: both are written into the trace's template instead.
    numbers = [[_fmt(v) for v in frame[key].tolist()]
               for key in ("score", "importance", "complexity")]
    margins = [[_fmt(v) for v in frame[key].tolist()] for key in ("tier_margin", "expert_margin")]
    columns = [frame["position"].tolist(), *numbers,
               [", ".join(map(str, e)) for e in frame["experts"].tolist()],
               [", ".join(f"{w:.3f}" for w in g) for g in frame["gate_weights"].tolist()],
               *margins]
    thresholds = frame[["theta_s", "theta_d"]].drop_duplicates()
    if len(thresholds) == 1:
        theta = "θs {:.2f}, θd {:.2f}".format(*thresholds.iloc[0])
    else:  # thresholds that differ between layers: one value per point
        columns += [[f"{v:.2f}" for v in frame[key].tolist()] for key in ("theta_s", "theta_d")]
        theta = "θs %{customdata[8]}, θd %{customdata[9]}"
    custom = [list(point) for point in zip(*columns, strict=True)]
    position, layer = frame["position"].to_numpy(), frame["layer"].to_numpy()
    present = set(category.tolist()) - {DENSE}
    names = [n for n in ("shallow", "deep", "none") if n in present] if tiers else \
        sorted(present, key=lambda c: (len(c), c))
    names += [DENSE] if DENSE in category else []
    data = []
    for i, name in enumerate(names):
        rows = category == name
        colour = TIER_COLOURS[name] if tiers or name == DENSE else \
            EXPERT_PALETTE[i % len(EXPERT_PALETTE)]
        tier = name if tiers and name != DENSE else "none"
        hover = ("<b>%{x}</b> · position %{customdata[0]} · %{y}<br>"
                 f"tier: {tier}<br>score %{{customdata[1]}} ({theta})<br>"
                 "importance %{customdata[2]} · complexity %{customdata[3]}<br>"
                 "experts [%{customdata[4]}] · gates [%{customdata[5]}]<br>"
                 "tier margin %{customdata[6]} · expert margin %{customdata[7]}"
                 "<extra></extra>")
        data.append({
            "type": "scatter", "mode": "markers", "name": name,
            "x": position[rows].tolist(), "y": layer[rows].tolist(),
            "customdata": [custom[j] for j in np.flatnonzero(rows)],
            "hovertemplate": hover,
            "marker": {"symbol": "square", "size": size, "color": colour,
                       "line": {"width": _list(np.where(near[rows], 3.0, 0.5)),
                                "color": _list(np.where(near[rows], NEAR_TIE_COLOUR,
                                                        "white"))}}})
    if near.any():  # a legend entry for the outline
        data.append({"type": "scatter", "mode": "markers", "name": f"near tie (margin < {eps})",
                     "x": [None], "y": [None], "hoverinfo": "skip",
                     "marker": {"symbol": "square-open", "size": 12, "color": NEAR_TIE_COLOUR,
                                "line": {"width": 2.5}}})
    layout = {"xaxis": _token_axis(positions, tokens), "yaxis": _layer_axis(n_layers),
              "shapes": _band(highlight), "clickmode": "event+select", "dragmode": "select"}
    what = "tier per token and layer" if tiers else \
        f"first expert per token and layer ({router}: no tiers)"
    hint = " — click a square to pick a token" if selectable else ""
    return _spec(data, layout, f"Routing: {what}{hint}", 180 + 34 * n_layers)


def scores_figure(rows: pd.DataFrame, layer: int, *, highlight: int | None = None) -> go.Figure:
    """One layer: the routing score as bars coloured by tier, importance and complexity as
    lines, theta_s and theta_d as dashed lines. Routers without an evaluator show
    attention importance only."""
    return _wrap(_scores_spec(rows, layer, highlight=highlight))


def _scores_spec(rows: pd.DataFrame, layer: int, *, highlight: int | None) -> dict:
    positions, tokens = rows["position"].tolist(), rows["token"].tolist()
    custom = _list(np.array(list(zip(
        positions, rows["tier"], rows["score"].map(_fmt),
        rows["importance"].map(_fmt), rows["complexity"].map(_fmt), rows["p_deep"].map(_fmt),
        rows["in_band"].map(lambda b: "yes" if b else "no"), strict=True)), dtype=object))
    hover = ("<b>%{x}</b> · position %{customdata[0]}<br>score %{customdata[2]} → "
             "%{customdata[1]}<br>importance %{customdata[3]} · complexity %{customdata[4]}"
             "<br>P(deep) %{customdata[5]} · decided by the policy: %{customdata[6]}"
             "<extra></extra>")
    shapes, notes = _band(highlight), []
    if rows["score"].notna().any():
        data = [{"type": "bar", "name": "score (bar colour: tier)", "x": positions,
                 "y": _list(rows["score"]),
                 "marker": {"color": [TIER_COLOURS.get(t, "#9D9D9D") for t in rows["tier"]]},
                 "opacity": 0.85, "customdata": custom, "hovertemplate": hover}]
        for name, dash, colour in (("importance", "solid", "#54A24B"),
                                   ("complexity", "dot", "#B279A2")):
            # The bar's hover already has every number; a line's shows its own.
            data.append({"type": "scatter", "name": name, "mode": "lines+markers",
                         "x": positions, "y": _list(rows[name]),
                         "line": {"dash": dash, "color": colour}, "customdata": positions,
                         "hovertemplate": "<b>%{x}</b> · position %{customdata}<br>"
                                          + name + " %{y:.3f}<extra></extra>"})
        for column, label in (("theta_s", "θs"), ("theta_d", "θd")):
            value = float(rows[column].iloc[0])
            shape, note = _hline(value, f"{label} = {value:.2f}")
            shapes.append(shape)
            notes.append(note)
        title = (f"Layer {layer}: routing score (bars, coloured by tier), importance and "
                 f"complexity — shallow below θs, deep above θd, the policy in between")
    else:
        data = [{"type": "bar", "name": "importance", "x": positions,
                 "y": _list(rows["importance"]), "marker": {"color": "#54A24B"},
                 "customdata": custom, "hovertemplate": hover}]
        why = "a dense FFN, no routing" if not rows["moe"].iloc[0] else \
            "this router has no evaluator score"
        title = f"Layer {layer}: attention importance ({why})"
    layout = {"xaxis": _token_axis(positions, tokens),
              "yaxis": {"range": [0, 1.05], "title": {"text": "value in [0, 1]"}},
              "shapes": shapes, "annotations": notes, "bargap": 0.15,
              "clickmode": "event+select"}
    return _spec(data, layout, title, 380)


def _move_to(items: list[dict], yaxis: str) -> list[dict]:
    """Shapes or annotations of a one-panel figure re-pointed at the panel `yaxis`."""
    out = []
    for item in items:
        ref = item.get("yref")
        if ref in ("y", "y domain"):
            item = {**item, "yref": ref.replace("y", yaxis, 1)}
        out.append(item)
    return out


def _stack(t: dict, b: dict, title: str) -> dict:
    """Two one-panel specs that share the token axis, one above the other, with a single
    set of token labels (under the bottom panel). Each panel keeps its traces, its y axis,
    its shapes and annotations; heights add up."""
    h_top, h_bottom = t["layout"]["height"] - 110, b["layout"]["height"] - 110
    split = h_bottom / (h_top + h_bottom)
    data = [{**trace, "xaxis": "x", "yaxis": "y2"} for trace in t["data"]]
    data += [{**trace, "xaxis": "x", "yaxis": "y"} for trace in b["data"]]
    layout = {"xaxis": {**b["layout"]["xaxis"], "anchor": "y"},
              "yaxis": {**b["layout"]["yaxis"], "domain": [0, split - 0.06]},
              "yaxis2": {**t["layout"]["yaxis"], "domain": [split + 0.04, 1], "anchor": "x"},
              "shapes": _move_to(t["layout"].get("shapes", []), "y2")
              + b["layout"].get("shapes", []),
              "annotations": _move_to(t["layout"].get("annotations", []), "y2")
              + b["layout"].get("annotations", []),
              "clickmode": "event+select", "bargap": b["layout"].get("bargap", 0.15),
              "margin": {"l": 70, "r": 30, "t": 105, "b": 70}}
    return _spec(data, layout, title, h_top + h_bottom + 165)


def routing_figure(frame: pd.DataFrame, layer: int, router: str, *,
                   highlight: int | None = None, eps: float = NEAR_TIE_EPS) -> go.Figure:
    """The Inspect page's main figure: the tier of every token in every layer (top) over the
    score, importance and complexity of one layer (bottom), on one token axis. One figure
    with one set of token labels draws in about half the browser time of two."""
    rows = frame[frame["layer"] == layer].sort_values("position")
    tiers = router in ("dasg", "random")
    what = "tier" if tiers else "first expert"
    return _wrap(_without_automargin(_stack(
        _tier_map_spec(frame, router, highlight=highlight, eps=eps, selectable=True),
        _scores_spec(rows, layer, highlight=highlight),
        f"Routing: {what} per token and layer (top), layer {layer}'s scores (bottom) — click "
        f"a token to pick it")))


def _without_automargin(spec: dict) -> dict:
    """`spec` with Plotly's automargin off on every axis, its margins sized here instead.

    Streamlit's theme turns automargin on: Plotly then measures the drawn tick labels and
    titles and draws the whole figure a second time. Timed in Chromium on two busy cores,
    old and new specs interleaved, that second pass was close to half the drawing time of
    the routing figure (68 against 123 ms for a 30-token sentence), the one figure every new
    sentence redraws. The room is estimated from the longest tick label at a generous 0.6 em
    per character, plus the axis title and the standoff Streamlit gives it.
    """
    layout = spec["layout"]
    bottom = left = 0.0
    for key, axis in layout.items():
        if not key.startswith(("xaxis", "yaxis")):
            continue
        axis["automargin"] = False
        size = axis.get("tickfont", {}).get("size", 12)
        labels = axis.get("ticktext") or ["0.00"]  # numeric ticks: short numbers
        width = max(len(html.unescape(str(t))) for t in labels) * 0.6 * size
        title = 50 if axis.get("title", {}).get("text") else 10
        if key.startswith("x"):
            angle = math.radians(abs(axis.get("tickangle", 0)))
            bottom = max(bottom, width * math.sin(angle) + size * math.cos(angle) + title)
        else:
            left = max(left, width + title)
    margin = layout["margin"]
    layout["margin"] = {**margin, "b": max(margin["b"], math.ceil(bottom) + 10),
                        "l": max(margin["l"], math.ceil(left) + 10)}
    return spec


def overview_figure(frame: pd.DataFrame, metric: str = "score", *,
                    highlight: int | None = None) -> go.Figure:
    """All layers at once: `metric` (score, importance, complexity, p_deep) as a layer ×
    token heatmap."""
    table = frame.pivot(index="layer", columns="position", values=metric)
    tokens = _first_layer(frame)["token"].tolist()
    data = [{"type": "heatmap", "z": _rounded(table.to_numpy()), "x": list(table.columns),
             "y": list(table.index), "zmin": 0, "zmax": 1, "colorscale": "Viridis",
             "colorbar": {"title": {"text": metric}},
             "customdata": [list(table.columns)] * len(table.index),
             "hovertemplate": "<b>%{x}</b> · position %{customdata} · %{y}<br>"
                              + metric + " %{z:.3f}<extra></extra>"}]
    layout = {"xaxis": _token_axis(list(table.columns), tokens),
              "yaxis": _layer_axis(len(table.index)), "shapes": _band(highlight)}
    return _figure(data, layout, f"All layers: {metric} per token",
                   max(240, 160 + 34 * len(table.index)))


# ---------------------------------------------------------------------------------------
# Inspect: experts, attention, compute, fragility
# ---------------------------------------------------------------------------------------


def expert_figure(grid: Mapping[str, np.ndarray], tokens: Sequence[str],
                  expert_labels: Sequence[str], layer: int, *,
                  highlight: int | None = None) -> go.Figure:
    """Token × expert heatmap of the gate weights of one layer (`traces.expert_grid`).

    Empty cells: expert not picked. MH-MoE gets one block of rows per sub-token; DA-MoE's
    varying number of experts per token shows as columns with more filled cells.
    """
    gate, probs, k = grid["gate"], grid["probs"], grid["k"]  # [S, E, L], [S, E, L], [L]
    S, E, L = gate.shape
    labels = list(expert_labels[:E]) if len(expert_labels) >= E else [f"E{e}" for e in range(E)]
    row_names = [f"{lab} · sub-token {s}" if S > 1 else lab for s in range(S) for lab in labels]
    z = gate.reshape(S * E, L)
    flat_probs = np.round(probs.reshape(S * E, L).astype(float), 6)
    custom = [[[j, float(flat_probs[i, j]), int(k[j])] for j in range(L)]
              for i in range(S * E)]
    data = [{"type": "heatmap", "z": _rounded(z), "x": list(range(L)), "y": row_names,
             "zmin": 0, "zmax": 1, "colorscale": GATE_SCALE,
             "colorbar": {"title": {"text": "gate"}},
             "xgap": 1, "ygap": 1, "customdata": custom,
             "hovertemplate": "<b>%{x}</b> · position %{customdata[0]}<br>%{y}: gate %{z:.3f}"
                              "<br>router probability %{customdata[1]:.3f}<br>experts for "
                              "this token: %{customdata[2]}<extra></extra>"}]
    if L <= 40:
        data[0]["text"] = [["" if np.isnan(v) else f"{v:.2f}" for v in row] for row in z]
        data[0]["texttemplate"] = "%{text}"
        data[0]["textfont"] = {"size": 9}
    layout = {"xaxis": _token_axis(range(L), tokens[:L]),
              "yaxis": {"title": {"text": "expert"}, "autorange": "reversed"},
              "shapes": _band(highlight)}
    varying = " (the number of experts varies per token)" if len(set(np.asarray(k).tolist())) > 1 \
        else ""
    legend = " (S: shallow tier, D: deep tier)" if any(x.startswith("D") for x in labels) \
        else ""
    return _figure(data, layout, f"Layer {layer}: experts picked and their gate weights"
                                 f"{varying}{legend}", 160 + 22 * S * E)


def attention_figure(matrix: np.ndarray, tokens: Sequence[str], start: int, *, layer: int,
                     group: int, head: int | None, window: int | None,
                     highlight: int | None = None) -> go.Figure:
    """Attention inside one group: rows are queries, columns keys, both labelled with the
    group's tokens (`start` is the position of its first token). The sliding window
    (|i - j| <= window // 2) is drawn as dashed diagonals; cells outside it get no
    attention."""
    n = matrix.shape[0]
    token_text = [escape(t) for t in tokens[:n]]
    # Category axes named "position: token": unique (a repeated word keeps its own row and
    # column), and hover shows them as they are, so no cell carries token text (2 n² strings,
    # most of this figure's size for a long group). Shapes on a category axis are placed
    # by the category's index: the group's token i sits at i.
    names = [f"{start + i}: {t}" for i, t in enumerate(token_text)]
    data = [{"type": "heatmap", "z": _rounded(matrix), "x": names, "y": names, "zmin": 0,
             "colorscale": ATTENTION_SCALE, "colorbar": {"title": {"text": "attention"}},
             "hovertemplate": "query <b>%{y}</b> → key <b>%{x}</b><br>attention %{z:.4f}"
                              "<extra></extra>"}]
    shapes = []
    half = None if window is None else window // 2
    lo, hi = -0.5, n - 0.5
    if half is not None and half < n - 1:
        for d in (half + 0.5, -(half + 0.5)):  # the band edges x = y + d, clipped to the map
            y0, y1 = max(lo, lo - d), min(hi, hi - d)
            shapes.append({"type": "line", "xref": "x", "yref": "y", "x0": y0 + d, "y0": y0,
                           "x1": y1 + d, "y1": y1,
                           "line": {"color": "#E45756", "dash": "dash", "width": 1.5}})
        window_text = f"sliding window |i−j| ≤ {half} (red dashes)"
    else:
        window_text = "the window covers the whole group"
    if highlight is not None and start <= highlight < start + n:
        i = highlight - start
        for x0, x1, y0, y1 in ((i - 0.5, i + 0.5, lo, hi), (lo, hi, i - 0.5, i + 0.5)):
            shapes.append({"type": "rect", "xref": "x", "yref": "y", "x0": x0, "x1": x1,
                           "y0": y0, "y1": y1, "line": {"color": "#FFC800", "width": 2}})
    axis = {"type": "category", "tickmode": "array", "tickvals": names,
            "ticktext": token_text, "showgrid": False}
    layout = {"xaxis": {**axis, "title": {"text": "key token"}, "range": [lo, hi],
                        "tickangle": -60 if n > 12 else 0,
                        "tickfont": {"size": 11 if n <= 40 else 9}},
              "yaxis": {**axis, "autorange": "reversed", "title": {"text": "query token"}},
              "shapes": shapes, "showlegend": False}
    head_text = "mean over heads" if head is None else f"head {head}"
    return _figure(data, layout, f"Layer {layer}, group {group}, {head_text}: {window_text}",
                   int(np.clip(160 + 18 * n, 340, 1000)))


def summary_attention_figure(matrix: np.ndarray, labels: Sequence[str], *, layer: int,
                             head: int | None) -> go.Figure:
    """Group summaries attending to each other (the long-range path of GMHA)."""
    names = [escape(x) for x in labels[:matrix.shape[0]]]
    data = [{"type": "heatmap", "z": _rounded(matrix), "x": names, "y": names, "zmin": 0,
             "colorscale": SUMMARY_SCALE, "colorbar": {"title": {"text": "attention"}},
             "hovertemplate": "from %{y}<br>to %{x}<br>attention %{z:.4f}<extra></extra>"}]
    layout = {"yaxis": {"autorange": "reversed", "title": {"text": "query group"}},
              "xaxis": {"title": {"text": "key group"}, "tickangle": -30}, "showlegend": False}
    head_text = "mean over heads" if head is None else f"head {head}"
    return _figure(data, layout, f"Layer {layer}: cross-group summary attention ({head_text})",
                   max(320, 180 + 30 * len(names)))


def flops_figure(frame: pd.DataFrame, reference: Mapping[str, float], *, tiers: bool,
                 highlight: int | None = None) -> go.Figure:
    """FFN FLOPs spent on each token, stacked by layer, against the reference choices
    (every MoE layer all-deep / all-shallow / a dense FFN as wide as the shallow tier)."""
    first = _first_layer(frame)
    positions, tokens = first["position"].tolist(), first["token"].tolist()
    data, seen = [], set()
    for layer, rows in frame.groupby("layer", sort=True):
        rows = rows.sort_values("position")
        kind = np.where(rows["moe"], rows["tier"].where(rows["tier"] != "none", "routed"),
                        DENSE)
        for name in dict.fromkeys(kind):
            part = rows[kind == name]
            data.append({"type": "bar", "name": name, "legendgroup": name,
                         "showlegend": name not in seen, "x": part["position"].tolist(),
                         "y": part["flops"].tolist(),
                         "marker": {"color": TIER_COLOURS.get(name, "#72B7B2"),
                                    "line": {"color": "white", "width": 1}},
                         "customdata": [escape(t) for t in part["token"]],
                         "hovertemplate": "<b>%{customdata}</b> · layer " + str(layer)
                                          + f" ({name})<br>%{{y:,.0f}} FLOPs<extra></extra>"})
            seen.add(name)
    summary = flops_summary(frame, reference, tiers)
    shapes, notes = _band(highlight), []
    styles = {"all_deep": ("every MoE layer all deep", "#F58518", True),
              "all_shallow": ("all shallow", "#4C78A8", False),
              "dense": ("dense FFN as wide as the shallow tier", "#333333", True)}
    for key, (label, colour, above) in styles.items():
        if key in summary:
            shape, note = _hline(summary[key], f"{label}: {summary[key]:,.0f}", colour,
                                 align="right", above=above)
            shapes.append(shape)
            notes.append(note)
    layout = {"xaxis": _token_axis(positions, tokens), "barmode": "stack",
              "yaxis": {"title": {"text": "FFN FLOPs per token (all layers)"}},
              "shapes": shapes, "annotations": notes}
    return _figure(data, layout, f"Compute per token, stacked over layers: "
                                 f"{summary['actual']:,.0f} FFN FLOPs on average, "
                                 f"{summary['actual'] / summary['dense']:.0%} of the dense "
                                 f"reference", 420)


def fragility_figure(rows: pd.DataFrame, layer: int, *, eps: float,
                     highlight: int | None = None) -> go.Figure:
    """Margins of one layer's decisions (`analysis.fragility.margins`), one panel per kind
    that applies; bars under `eps` (near ties) in red.

    Tier: distance of the score to the nearest threshold. Policy: |P(deep) - 0.5| where the
    learned policy decided. Expert: router probability of the weakest picked expert minus
    the strongest one left out.
    """
    m = margins(rows)
    titles = {"tier": "tier margin: |score − nearest θ|",
              "policy": "policy margin: |P(deep) − 0.5| (in-band tokens)",
              "expert": "expert margin: last pick − runner-up"}
    parts = [kind for kind in titles if m[kind].notna().any()]
    positions, tokens = rows["position"].tolist(), rows["token"].tolist()
    data, shapes, notes, layout = [], [], [], {"showlegend": False}
    n = max(len(parts), 1)
    for i, kind in enumerate(parts, start=1):
        suffix = "" if i == 1 else str(i)
        top = 1 - (i - 1) / n
        layout[f"yaxis{suffix}"] = {"domain": [top - 1 / n + 0.12, top - 0.06],
                                    "title": {"text": "margin"}, "rangemode": "tozero"}
        layout[f"xaxis{suffix}"] = _token_axis(positions, tokens, anchor=f"y{suffix}")
        values = m[kind].reindex(rows.index).to_numpy(dtype=float)
        data.append({"type": "bar", "x": positions, "y": _list(values), "name": titles[kind],
                     "xaxis": f"x{suffix}", "yaxis": f"y{suffix}",
                     "marker": {"color": _list(np.where(values < eps, NEAR_TIE_COLOUR,
                                                        "#9D9D9D"))},
                     "customdata": positions,
                     "hovertemplate": "<b>%{x}</b> · position %{customdata}<br>"
                                      + titles[kind] + " = %{y:.4f}<extra></extra>"})
        shape, note = _hline(eps, f"ε = {eps}", NEAR_TIE_COLOUR, xref=f"x{suffix} domain",
                             yref=f"y{suffix}", dash="dot", align="right")
        shapes += [shape, *_band(highlight, f"x{suffix}", f"y{suffix} domain")]
        notes += [note, {"xref": "paper", "yref": "paper", "x": 0, "y": top - 0.05,
                         "text": f"<b>{titles[kind]}</b>", "showarrow": False,
                         "xanchor": "left", "yanchor": "bottom"}]
    if not parts:
        notes.append({"xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5,
                      "text": "no routing decisions in this layer", "showarrow": False})
        layout.update(xaxis={"visible": False}, yaxis={"visible": False})
    layout.update(shapes=shapes, annotations=notes)
    return _figure(data, layout, f"Layer {layer}: routing fragility — red bars are near ties "
                                 f"(margin < ε)", 200 + 210 * n)


# ---------------------------------------------------------------------------------------
# Compare
# ---------------------------------------------------------------------------------------


def agreement_figure(table: pd.DataFrame, name_a: str, name_b: str, *,
                     highlight: int | None = None) -> go.Figure:
    """Token × layer map of where two checkpoints route alike (`comparison.agreement`):
    one square per (token of A, layer), coloured by the kind of (dis)agreement."""
    first = _first_layer(table)
    positions, tokens = first["position"].tolist(), first["token"].tolist()
    n_layers = int(table["layer"].max()) + 1
    size = int(np.clip(720 / max(len(positions), 1), 7, 22))
    data = []
    for kind in AGREEMENT_COLOURS:
        rows = table[table["kind"] == kind]
        if rows.empty:
            continue
        data.append({"type": "scatter", "mode": "markers", "name": kind,
                     "x": rows["position"].tolist(), "y": rows["layer"].tolist(),
                     "customdata": [[p, a, b] for p, a, b in zip(
                         rows["position"], rows["value_a"], rows["value_b"], strict=True)],
                     "hovertemplate": "<b>%{x}</b> · position %{customdata[0]} · %{y}"
                                      "<br>" + escape(name_a) + ": %{customdata[1]}<br>"
                                      + escape(name_b) + ": %{customdata[2]}<extra></extra>",
                     "marker": {"symbol": "square", "size": size,
                                "color": AGREEMENT_COLOURS[kind]}})
    layout = {"xaxis": _token_axis(positions, tokens), "yaxis": _layer_axis(n_layers),
              "shapes": _band(highlight), "clickmode": "event+select"}
    return _figure(data, layout, f"Where {escape(name_a)} (A) and {escape(name_b)} (B) route "
                                 f"alike, per token and layer", 190 + 34 * n_layers)


def expert_usage_figure(usage: pd.DataFrame, layer: int) -> go.Figure:
    """Share of expert picks per expert in one layer, one bar group per checkpoint
    (`comparison.expert_usage`)."""
    rows = usage[usage["layer"] == layer]
    data = []
    for i, (name, part) in enumerate(rows.groupby("checkpoint", sort=False)):
        data.append({"type": "bar", "name": escape(name), "x": part["expert"].tolist(),
                     "y": part["share"].tolist(),
                     "marker": {"color": EXPERT_PALETTE[i % len(EXPERT_PALETTE)]},
                     "customdata": part["picks"].tolist(),
                     "hovertemplate": escape(name) + "<br>%{x}: %{y:.1%} of picks "
                                      "(%{customdata})<extra></extra>"})
    layout = {"barmode": "group", "xaxis": {"title": {"text": "expert"}, "type": "category"},
              "yaxis": {"title": {"text": "share of the layer's expert picks"},
                        "tickformat": ".0%"}}
    return _figure(data, layout, f"Layer {layer}: expert usage on this text", 360)


def score_scatter_figure(table: pd.DataFrame, name_a: str, name_b: str,
                         metric: str) -> go.Figure:
    """`metric` of A against B for every aligned (token, layer), the diagonal = equal
    (`comparison.agreement` gives the table)."""
    data = []
    for layer, rows in table.groupby("layer", sort=True):
        data.append({"type": "scatter", "mode": "markers", "name": f"layer {layer}",
                     "x": _list(rows[f"{metric}_a"]), "y": _list(rows[f"{metric}_b"]),
                     "customdata": [[escape(t), p] for t, p in zip(rows["token"],
                                                                   rows["position"],
                                                                   strict=True)],
                     "hovertemplate": "<b>%{customdata[0]}</b> · position %{customdata[1]} · "
                                      f"layer {layer}<br>A %{{x:.3f}} · B %{{y:.3f}}"
                                      "<extra></extra>",
                     "marker": {"size": 9, "opacity": 0.8,
                                "color": EXPERT_PALETTE[int(layer) % len(EXPERT_PALETTE)]}})
    shapes = [{"type": "line", "xref": "x", "yref": "y", "x0": 0, "y0": 0, "x1": 1, "y1": 1,
               "line": {"color": "#888", "dash": "dot"}}]
    layout = {"xaxis": {"range": [-0.02, 1.02], "title": {"text": f"{metric}: {escape(name_a)}"}},
              "yaxis": {"range": [-0.02, 1.02], "title": {"text": f"{metric}: {escape(name_b)}"},
                        "scaleanchor": "x"},
              "shapes": shapes}
    return _figure(data, layout, f"{metric.capitalize()} per token: A against B (on the "
                                 f"diagonal they agree)", 480)


# ---------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------


def figures_html(figures: Mapping[str, go.Figure], title: str = "DASG-MoE routing") -> str:
    """One self-contained HTML page with every figure (plotly.js embedded once, offline)."""
    parts = []
    for i, (name, fig) in enumerate(figures.items()):
        parts.append(f"<h2>{html.escape(name)}</h2>")
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0)))
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title></head><body><h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>")
