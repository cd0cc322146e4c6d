"""The Streamlit app through `streamlit.testing.v1.AppTest`: every page loads, shows what it
should, reacts to its inputs, and answers bad input with an error message, not a traceback.

The app runs on the shipped sample checkpoints when there are any, else on tiny untrained
ones (`app_support`). Models stay cached between tests (one process), as between sessions.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from app_support import GLUE_DIR, app_checkpoint_root, router_of, sample_names  # noqa: F401
from streamlit.testing.v1 import AppTest

from app import figures, state
from dasg_moe.tokenizer import encode, load_tokenizer

HOME = Path(__file__).resolve().parents[1] / "app" / "Home.py"
PAGES = {"views/inspect.py": "Inspect routing", "views/compare.py": "Compare checkpoints",
         "views/thresholds.py": "Thresholds", "views/diagnostics.py": "Diagnostics: over-routing"}
TEXT = "The market fell sharply today after the report."


@pytest.fixture(scope="session")
def analysis_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("analysis-cache")


@pytest.fixture()
def app(app_checkpoint_root, analysis_cache, monkeypatch):  # noqa: F811
    """start(page=None, **url) -> a run AppTest, optionally switched to `page`."""
    monkeypatch.setenv("DASG_CHECKPOINT_DIR", str(app_checkpoint_root))
    monkeypatch.setenv("DASG_ANALYSIS_CACHE", str(analysis_cache))
    monkeypatch.setenv("DASG_DATA_DIR", str(GLUE_DIR))

    def start(page: str | None = None, **url: str) -> AppTest:
        at = AppTest.from_file(str(HOME), default_timeout=120)
        at.query_params.update(url)
        at.run()
        if page is not None:
            at.switch_page(page).run()
        return at

    return start


def ok(at: AppTest) -> AppTest:
    """No traceback and no error message."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def errors(at: AppTest) -> str:
    assert not at.exception, [e.value for e in at.exception]
    return " ".join(e.value for e in at.error)


def specs(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def chart_text(at: AppTest) -> str:
    return " ".join(json.dumps(s) for s in specs(at))


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def checkpoint_with(root: Path, predicate) -> str | None:
    return next((n for n in sample_names(root) if predicate(router_of(root / n))), None)


# Every page --------------------------------------------------------------------------------


@pytest.mark.parametrize("page", list(PAGES))
def test_every_page_loads(app, page):
    at = ok(app(page))
    assert at.title[0].value == PAGES[page]
    assert at.sidebar.selectbox[0].label == "Checkpoint"
    assert "ckpt" in at.query_params and "text" in at.query_params


# Inspect --------------------------------------------------------------------------------------


VIEW_TITLES = {None: (), "All layers": ("All layers",), "Experts": ("experts picked",),
               "Attention": ("group 0",), "Compute": ("Compute per token",),
               "Fragility": ("fragility",), "Trace table": ()}


def test_inspect_shows_the_prediction_and_every_plot(app):
    at = ok(app())
    assert metric(at, "Prediction") in {"not_equivalent", "equivalent", "negative", "positive",
                                        "entailment", "not_entailment", "unacceptable",
                                        "acceptable"}
    assert len(at.get("progress")) == 2  # one probability bar per label
    for view, expected in VIEW_TITLES.items():  # only the chosen detail view is drawn
        at.session_state["w_view"] = view
        at.run()
        ok(at)
        titles = [s["layout"]["title"]["text"] for s in specs(at)]
        assert any(t.startswith("Routing:") for t in titles)
        for part in expected:
            assert any(part in t for t in titles), (view, part)
        extra = len(titles) - 1 - len(expected)
        assert extra == 0 or (view == "Attention" and extra == 1), titles  # + group summary
        assert at.query_params.get("view") in (view, [view])
    assert at.dataframe  # the trace table
    assert [b.label for b in at.get("download_button")] == ["Trace (CSV)", "Trace (JSON)",
                                                            "Figures (HTML)"]


def tokens_of(root: Path, name: str, text: str) -> list[str]:
    """The word pieces the checkpoint's own tokenizer makes of `text` (no special tokens)."""
    encoded = encode(load_tokenizer(root / name / "tokenizer.json"), text)
    return [t for t, special in zip(encoded.tokens, encoded.special, strict=True)
            if not special]


def test_inspect_reacts_to_a_new_sentence(app, app_checkpoint_root):  # noqa: F811
    at = ok(app())
    at.text_area(key="w_text").set_value(TEXT).run()
    ok(at)
    tier_map = next(s for s in specs(at) if s["layout"]["title"]["text"].startswith("Routing"))
    labels = tier_map["layout"]["xaxis"]["ticktext"]
    expected = tokens_of(app_checkpoint_root, at.sidebar.selectbox[0].value, TEXT)
    assert [t for t in labels if t not in ("[CLS]", "[SEP]")][:len(expected)] == expected
    assert at.query_params["text"] == [TEXT] or at.query_params["text"] == TEXT


def test_thresholds_reroute_without_reloading_the_model(app, monkeypatch):
    loads = []
    real = state.load_checkpoint
    monkeypatch.setattr(state, "load_checkpoint", lambda *a, **k: loads.append(a) or real(*a, **k))
    at = ok(app())
    if not any(s.label.startswith("θs") for s in at.slider):
        pytest.skip("the default checkpoint does not route by thresholds")
    before = len(loads)
    rates = []
    # (AppTest drops a slider set to exactly 0.0, so "everything deep" is (0.01, 0.01).)
    for theta_s, theta_d in ((1.0, 1.0), (0.3, 0.7), (0.01, 0.01)):
        at.slider(key="w_theta_d").set_value(theta_d)
        at.slider(key="w_theta_s").set_value(theta_s).run()
        ok(at)
        rates.append(float(metric(at, "Deep-tier rate").rstrip("%")))
        assert at.query_params["theta_s"] in (f"{theta_s:.2f}", [f"{theta_s:.2f}"])
    assert len(loads) == before  # the cached model served every threshold change
    assert rates[0] <= rates[1] <= rates[2] == 100


def test_empty_text_is_an_error_not_a_traceback(app):
    at = app()
    at.text_area(key="w_text").set_value("   ").run()
    assert "empty" in errors(at)
    assert not at.get("plotly_chart")


def test_theta_s_above_theta_d_is_an_error(app):
    at = app()
    if not any(s.label.startswith("θs") for s in at.slider):
        pytest.skip("the default checkpoint does not route by thresholds")
    at.slider(key="w_theta_s").set_value(0.9)
    at.slider(key="w_theta_d").set_value(0.2).run()
    assert "must not exceed theta_d" in errors(at)


def test_very_long_text_is_truncated_with_a_warning(app):
    at = app()
    at.text_area(key="w_text").set_value("word " * 900).run()
    ok(at)
    assert any("truncated" in w.value for w in at.warning)


def test_url_state_is_read_back(app):
    at = ok(app(text=TEXT, pair="", theta_s="0.25", theta_d="0.75", layer="1"))
    assert at.text_area(key="w_text").value == TEXT
    assert at.radio(key="w_layer").value == 1
    if any(s.label.startswith("θs") for s in at.slider):
        assert at.slider(key="w_theta_s").value == 0.25
    assert at.query_params["layer"] in ("1", ["1"])


def test_bad_url_values_warn_and_fall_back(app):
    at = app(ckpt="no-such-checkpoint", theta_s="abc", layer="x")
    assert not at.exception and not at.error
    warnings = " ".join(w.value for w in at.warning)
    assert "no-such-checkpoint" in warnings and "theta_s" in warnings
    assert at.get("plotly_chart")


def test_picking_a_token_highlights_it_in_every_plot(app):
    at = ok(app())
    picker = at.selectbox(key="w_token_choice")
    picker.set_value(picker.options[3]).run()
    ok(at)
    for view in (None, "All layers", "Experts", "Attention", "Compute", "Fragility"):
        at.session_state["w_view"] = view
        at.run()
        token_plots = [s for s in specs(at) if s["layout"].get("xaxis", {}).get("ticktext")]
        assert token_plots, view
        for spec in token_plots:
            shapes = spec["layout"].get("shapes", [])
            assert any(x.get("fillcolor") == figures.HIGHLIGHT_FILL
                       or x.get("line", {}).get("color") == "#FFC800" for x in shapes), \
                (view, spec["layout"]["title"]["text"])


def test_corrupt_checkpoint_folder_is_an_error(app, tmp_path, app_checkpoint_root):  # noqa: F811
    broken = tmp_path / "broken"
    broken.mkdir()
    good = app_checkpoint_root / sample_names(app_checkpoint_root)[0]
    for name in ("config.json", "tokenizer.json"):
        (broken / name).write_bytes((good / name).read_bytes())
    (broken / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes()[:500])
    at = app()
    at.sidebar.selectbox[0].set_value(state.OWN).run()
    at.sidebar.text_input[0].set_value(str(broken)).run()
    assert "Cannot use this checkpoint" in errors(at) and "safetensors" in errors(at)
    at.sidebar.text_input[0].set_value(str(tmp_path / "missing")).run()
    assert "no such folder" in errors(at)


def test_server_folder_paths_can_be_turned_off(app, app_checkpoint_root, monkeypatch):  # noqa: F811
    """DASG_ALLOW_SERVER_PATHS=0 (a shared server): no folder-path box, a link naming a
    folder is ignored with a warning, and a session set to that mode still loads nothing."""
    monkeypatch.setenv(state.SERVER_PATHS_ENV, "0")
    folder = app_checkpoint_root / sample_names(app_checkpoint_root)[0]
    at = ok(app(ckpt_path=str(folder)))
    assert any("turned off" in w.value for w in at.warning)
    assert "ckpt_path" not in at.query_params and "ckpt" in at.query_params
    at.sidebar.selectbox[0].set_value(state.OWN).run()
    assert not at.sidebar.text_input and not at.sidebar.radio  # no path box, no choice
    assert at.sidebar.file_uploader
    assert "Upload a checkpoint" in errors(at)
    at.session_state["own_mode"] = state.OWN_PATH
    at.session_state["own_path"] = str(folder)
    at.run()
    assert errors(at) and not at.get("plotly_chart")
    assert "ckpt_path" not in at.query_params


def zipped(folder: Path, prefix: str = "ckpt/", extra: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for file in folder.iterdir():
            archive.write(file, prefix + file.name)
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_uploaded_checkpoint_zip_is_used_and_traversal_refused(app, app_checkpoint_root):  # noqa: F811
    folder = app_checkpoint_root / sample_names(app_checkpoint_root)[0]
    at = app()
    at.sidebar.selectbox[0].set_value(state.OWN).run()
    at.sidebar.radio[0].set_value(state.OWN_ZIP).run()
    assert "Upload a checkpoint" in errors(at)
    at.sidebar.file_uploader[0].set_value(("mine.zip", zipped(folder), "application/zip"))
    at.run()
    ok(at)
    assert at.get("plotly_chart")
    evil = zipped(folder, extra={"../../evil.txt": b"x"})
    at.sidebar.file_uploader[0].set_value(("evil.zip", evil, "application/zip")).run()
    assert "path traversal" in errors(at)


# Compare --------------------------------------------------------------------------------------


def test_compare_shows_both_checkpoints_and_a_summary(app, app_checkpoint_root):  # noqa: F811
    at = ok(app("views/compare.py"))
    assert len(at.multiselect[0].value) == 2
    summary = " ".join(m.value for m in at.markdown)
    assert "predict" in summary.lower() and "Compute:" in summary
    titles = [s["layout"]["title"]["text"] for s in specs(at)]
    assert any("route alike" in t for t in titles) or "not both tiered" in at.info[0].value
    assert any("expert usage" in t for t in titles)
    assert any("A against B" in t for t in titles)
    at.multiselect[0].set_value(at.multiselect[0].value[:1]).run()
    assert "at least two checkpoints" in errors(at)


# Thresholds -----------------------------------------------------------------------------------


def thresholds_page(app, root: Path) -> AppTest:
    name = checkpoint_with(root, lambda router: router == "dasg")
    if name is None:
        pytest.skip("no DASG checkpoint")
    return ok(app("views/thresholds.py", ckpt=name))


def test_thresholds_live_rerouting_and_sweep(app, app_checkpoint_root):  # noqa: F811
    at = thresholds_page(app, app_checkpoint_root)
    assert any("Routing:" in s["layout"]["title"]["text"] for s in specs(at))
    at.slider(key="w_theta_s").set_value(0.01)
    at.slider(key="w_theta_d").set_value(0.01).run()
    ok(at)
    assert metric(at, "Deep-tier rate") == "100%"
    at.select_slider(key="sweep_size").set_value(32)
    at.multiselect(key="grid_s").set_value([0.3])
    at.multiselect(key="grid_d").set_value([0.7, 0.9]).run()
    at.button[0].click().run()
    ok(at)
    table = at.dataframe[0].value
    assert len(table) == 2 and {"theta_s", "theta_d", "deep_tier_rate", "pareto"} <= set(table)
    assert table["n_examples"].eq(32).all()
    titles = [s["layout"]["title"]["text"] for s in specs(at)]
    assert any("Threshold sweep" in t for t in titles)
    assert any("over the threshold grid" in t for t in titles)
    at.multiselect(key="grid_s").set_value([0.9])
    at.multiselect(key="grid_d").set_value([0.5]).run()
    assert "theta_s <= theta_d" in errors(at)


def test_thresholds_sweep_on_an_uploaded_csv(app, app_checkpoint_root):  # noqa: F811
    at = thresholds_page(app, app_checkpoint_root)
    at.radio(key="sweep_source").set_value(state.UPLOAD_SOURCE).run()
    frame = pd.read_parquet(GLUE_DIR / "mrpc" / "validation.parquet").head(12)
    bad = frame[["sentence1", "sentence2"]].to_csv(index=False).encode()
    at.file_uploader(key="sweep_upload").set_value(("bad.csv", bad, "text/csv")).run()
    assert "lacks column(s) label" in errors(at)
    good = frame[["sentence1", "sentence2", "label"]].to_csv(sep="\t", index=False).encode()
    at.file_uploader(key="sweep_upload").set_value(("good.tsv", good, "text/tsv"))
    at.multiselect(key="grid_s").set_value([0.3])
    at.multiselect(key="grid_d").set_value([0.7]).run()
    at.button[0].click().run()
    ok(at)
    assert at.dataframe[0].value["n_examples"].tolist() == [12]


def test_thresholds_page_explains_routers_without_tiers(app, app_checkpoint_root):  # noqa: F811
    name = checkpoint_with(app_checkpoint_root, lambda router: router != "dasg")
    if name is None:
        pytest.skip("no checkpoint without tiers")
    at = ok(app("views/thresholds.py", ckpt=name))
    assert "change nothing" in at.info[0].value


# Diagnostics ----------------------------------------------------------------------------------


def test_diagnostics_renders_the_overrouting_report(app, app_checkpoint_root):  # noqa: F811
    name = checkpoint_with(app_checkpoint_root, lambda router: router == "dasg")
    at = ok(app("views/diagnostics.py", **({"ckpt": name} if name else {})))
    at.select_slider(key="diag_size").set_value(32)
    if at.checkbox:
        at.checkbox(key="diag_sweep").uncheck()
    at.run()
    at.button[0].click().run()
    ok(at)
    sections = [s.value for s in at.subheader]
    assert {"Definitions", "Headline", "Deep-tier rate by layer and by label"} <= set(sections)
    assert at.dataframe and at.get("plotly_chart")
    assert any(b.label.startswith("Report folder") for b in at.get("download_button"))
