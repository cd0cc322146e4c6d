"""Cached loaders and per-session state: the only Streamlit-aware helpers (DESIGN.md §6).

Caching rules, which keep many sessions safe on one shared model:
- models: `st.cache_resource`, keyed by folder, device and a fingerprint of the files. The
  cached `Checkpoint` is shared by every session and never modified: thresholds travel per
  call (`RoutingOverrides`), no hooks are registered, nothing is stored on the model;
- traces and sweep points: `st.cache_data` with a bounded `max_entries`. It returns a fresh
  copy to every caller, so a trace is never shared between sessions. Changing a threshold
  is a new trace from the cached model, never a reload.

Session values that several pages share (checkpoint, text, thresholds, layer, token) live
under plain keys of `st.session_state`; each widget has its own `w_<name>` key, filled
from the plain key when the widget appears (`bind`) and copied back on change (`sync`).
Streamlit drops a widget's key when a page stops showing it, so the plain key is what
carries a value from one page to the next. The URL mirrors the shared values
(`write_url`), so a view can be shared, and `init_session` reads them back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import datasets
import streamlit as st
import torch

from analysis.cache import checkpoint_cache_dir
from analysis.sweep import sweep_thresholds
from app import inputs, report_view
from app.report_view import ReportBlocks
from dasg_moe.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from dasg_moe.data import get_task
from dasg_moe.inspect import Inspection, inspect_text
from dasg_moe.routers import RoutingOverrides
from dasg_moe.runtime import resolve_device
from dasg_moe.tokenizer import configured_tokenizer

OWN = "Load your own checkpoint folder…"
OWN_PATH, OWN_ZIP = "Folder path on this server", "Upload a .zip"
DEFAULT_TEXT = "The company said its quarterly profit rose sharply on strong sales."
DEFAULT_PAIR = "Quarterly profit climbed steeply on strong sales, the firm said."
URL_TEXT_LIMIT = 1500  # characters of each text kept in the shareable URL
TORCH_THREADS_ENV = "DASG_TORCH_THREADS"
SERVER_PATHS_ENV = "DASG_ALLOW_SERVER_PATHS"
SERVER_PATHS_OFF = "Loading a checkpoint from a folder path is turned off on this server"


@dataclass(frozen=True)
class Selected:
    """The checkpoint a page works on: its display name, folder and loading key."""

    name: str
    path: Path
    device: str
    stamp: str  # file fingerprint: part of the cache key

    def load(self) -> Checkpoint:
        return load_model(str(self.path), self.device, self.stamp)

    def inspect(self, text: str, text_pair: str | None, theta_s: float | None,
                theta_d: float | None) -> Inspection:
        return run_inspection(str(self.path), self.device, self.stamp, text, text_pair or None,
                              theta_s, theta_d)


# ---------------------------------------------------------------------------------------
# Cached loaders
# ---------------------------------------------------------------------------------------


@st.cache_resource
def configure_torch() -> int:
    """Once per process: torch's intra-op threads ($DASG_TORCH_THREADS, default 1).

    Each Streamlit session runs its script in its own thread, so several sessions already
    run forward passes in parallel; intra-op threads on top of that oversubscribe the cores.
    Measured on the 2-core machine with other work running: one sentence through the
    MiniLM-sized flagship took 0.23-0.30 s with one thread and 1-6 s with two.
    """
    threads = int(os.environ.get(TORCH_THREADS_ENV, "1"))
    torch.set_num_threads(max(threads, 1))
    return threads


@st.cache_resource(max_entries=6, show_spinner="Loading the checkpoint…")
def load_model(path: str, device: str, stamp: str) -> Checkpoint:
    """The validated checkpoint, shared by all sessions (never modified after loading).

    Its tokenizer is swapped for a copy with truncation and padding off (made once here):
    `inspect_text` asks for exactly that, and would otherwise copy a tokenizer whose file
    sets them (MiniLM's does) on every call, about 0.1 s for a 30k vocabulary.
    """
    del stamp  # only part of the cache key
    ckpt = load_checkpoint(path, resolve_device(device))
    return dataclasses.replace(ckpt, tokenizer=configured_tokenizer(ckpt.tokenizer, None))


@st.cache_data(max_entries=64, show_spinner=False)
def run_inspection(path: str, device: str, stamp: str, text: str, text_pair: str | None,
                   theta_s: float | None, theta_d: float | None) -> Inspection:
    """One forward pass with tracing; each caller gets its own copy of the result."""
    ckpt = load_model(path, device, stamp)
    return inspect_text(ckpt.model, ckpt.tokenizer, text, text_pair,
                        RoutingOverrides(theta_s, theta_d))


@st.cache_resource(max_entries=8, show_spinner="Loading the data…")
def glue_examples(task: str, n: int | None) -> datasets.Dataset:
    """A GLUE validation sample, shared read-only (a `datasets.Dataset` is immutable)."""
    return inputs.glue_examples(task, n)


@st.cache_resource(max_entries=8, show_spinner="Reading the file…")
def uploaded_examples(data: bytes, file_name: str, task: str,
                      id2label: tuple[tuple[int, str], ...]) -> datasets.Dataset:
    frame = inputs.read_table_upload(data, file_name, task, dict(id2label))
    return datasets.Dataset.from_pandas(frame, preserve_index=False)


@st.cache_data(max_entries=16, show_spinner=False)
def analysis_cache_dir(path: str, stamp: str) -> str:
    """The checkpoint's folder in the analysis cache (hashing the weights once per stamp)."""
    del stamp
    return str(checkpoint_cache_dir(path))


@st.cache_data(max_entries=4096, show_spinner=False)
def sweep_point(path: str, device: str, stamp: str, task: str, data_key: str, theta_s: float,
                theta_d: float, _dataset: datasets.Dataset) -> dict:
    """One grid point of `analysis.sweep.sweep_thresholds` (`data_key` names the data; the
    dataset itself is not hashed). Cached here and on disk by the analysis cache."""
    del data_key
    ckpt = load_model(path, device, stamp)
    table = sweep_thresholds(ckpt.model, ckpt.tokenizer, task, _dataset, [(theta_s, theta_d)],
                             progress=False, cache_dir=analysis_cache_dir(path, stamp))
    return table.drop(columns=["pareto", "paper_default"]).iloc[0].to_dict()


@st.cache_data(max_entries=8, show_spinner=False)
def overrouting_report(path: str, device: str, stamp: str, task: str, data_key: str,
                       theta_s: float, theta_d: float, sweep_grid: str | None,
                       _dataset: datasets.Dataset) -> ReportBlocks:
    """The over-routing report of `analysis.overrouting`, as blocks for the page."""
    del data_key
    ckpt = load_model(path, device, stamp)
    return report_view.overrouting_report(ckpt, task, _dataset, theta_s=theta_s,
                                          theta_d=theta_d, sweep_grid=sweep_grid,
                                          cache_dir=analysis_cache_dir(path, stamp),
                                          data_dir=str(inputs.glue_dir()))


@st.cache_data(max_entries=8, show_spinner="Unpacking the checkpoint…")
def _extract_zip(data: bytes) -> str:
    return str(inputs.extract_checkpoint_zip(data))


# ---------------------------------------------------------------------------------------
# Session and URL state
# ---------------------------------------------------------------------------------------


def bind(name: str) -> str:
    """The widget key for shared value `name`, seeded from the shared value."""
    key = f"w_{name}"
    if key not in st.session_state:
        st.session_state[key] = st.session_state[name]
    return key


def sync(name: str) -> None:
    """on_change callback: copy the widget's value to the shared value."""
    st.session_state[name] = st.session_state[f"w_{name}"]


def put(name: str, value) -> None:
    """Set a shared value and its widget, if shown (callbacks only: before widgets exist)."""
    st.session_state[name] = value
    st.session_state[f"w_{name}"] = value


def _default_checkpoint(names: list[str]) -> str | None:
    """The flagship when present: a DASG checkpoint built on MiniLM, else any DASG one."""
    for wanted in (("dasg", "minilm"), ("dasg",)):
        hits = [n for n in names if all(w in n for w in wanted)]
        if hits:
            return sorted(hits, key=lambda n: (not n.startswith("mrpc"), n))[0]
    return names[0] if names else None


def init_session() -> None:
    """Seed the shared values once per session, from the URL where it has them."""
    ss = st.session_state
    if ss.get("_initialised"):
        return
    params = st.query_params
    errors = []
    names = inputs.list_checkpoints()
    name = params.get("ckpt")
    if name is not None and name not in names:
        errors.append(f"The link names checkpoint {name!r}, which is not in "
                      f"{inputs.checkpoint_root()}; showing another one.")
        name = None
    ss.checkpoint = name or _default_checkpoint(names) or OWN
    ss.own_mode = own_modes()[0]
    ss.own_path = params.get("ckpt_path", "")
    if ss.own_path and not server_paths_allowed():
        errors.append(f"The link names a checkpoint folder on the server; {SERVER_PATHS_OFF}.")
        ss.own_path = ""
    if ss.own_path:
        ss.checkpoint = OWN
    ss.device = params.get("device", "auto")
    if ss.device not in devices():
        ss.device = "auto"
    ss.text = params.get("text", DEFAULT_TEXT)
    ss.text_pair = params.get("pair", "" if "text" in params else DEFAULT_PAIR)
    for key in ("theta_s", "theta_d"):
        ss[key] = None  # None: the checkpoint's own value
        if key in params:
            try:
                ss[key] = round(inputs.parse_threshold(params[key], key), 2)
            except inputs.InputError as err:
                errors.append(f"Ignored from the link: {err}")
    try:
        ss.layer = max(int(params["layer"]), 0) if "layer" in params else None
    except ValueError:
        errors.append(f"Ignored from the link: layer {params['layer']!r} is not a number.")
        ss.layer = None  # the page picks the first routed layer
    ss.token = None
    ss.view = params.get("view")  # the detail view open on the Inspect page, if any
    wanted = [n for n in params.get("vs", "").split(",") if n]
    ss.compare = [n for n in wanted if n in names] or None
    if len(ss.compare or []) < len(wanted):
        errors.append(f"The link compares checkpoint(s) not found here: "
                      f"{', '.join(n for n in wanted if n not in names)}.")
    ss.url_errors = errors
    ss._initialised = True


def write_url(**extra) -> None:
    """Mirror the shared values (and page extras) into the URL; the page is its path."""
    ss = st.session_state
    params = {}
    if ss.checkpoint == OWN:
        if ss.own_mode == OWN_PATH and ss.own_path and server_paths_allowed():
            params["ckpt_path"] = ss.own_path
    else:
        params["ckpt"] = ss.checkpoint
    if ss.device != "auto":
        params["device"] = ss.device
    params["text"] = ss.text[:URL_TEXT_LIMIT]
    if ss.text_pair:
        params["pair"] = ss.text_pair[:URL_TEXT_LIMIT]
    for key in ("theta_s", "theta_d"):
        if ss.get(key) is not None:
            params[key] = f"{ss[key]:.2f}"
    params.update({k: str(v) for k, v in extra.items() if v is not None})
    if dict(st.query_params) != params:
        st.query_params.from_dict(params)


def server_paths_allowed() -> bool:
    """Whether users may load a checkpoint from a folder path of the server. On by default;
    a shared server sets $DASG_ALLOW_SERVER_PATHS=0 (or false / no / off), which leaves the
    listed checkpoints and .zip uploads (read into a temporary folder) as the only sources."""
    value = os.environ.get(SERVER_PATHS_ENV, "1").strip().lower()
    return value not in ("0", "false", "no", "off")


def own_modes() -> list[str]:
    """The ways to load your own checkpoint that this server offers."""
    return [OWN_PATH, OWN_ZIP] if server_paths_allowed() else [OWN_ZIP]


def devices() -> list[str]:
    return ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# ---------------------------------------------------------------------------------------
# The sidebar: which checkpoint, on which device
# ---------------------------------------------------------------------------------------


def sidebar() -> None:
    """Checkpoint picker (samples + your own folder or .zip) and device, on every page."""
    names = inputs.list_checkpoints()
    with st.sidebar:
        st.header("Checkpoint")
        options = [*names, OWN]
        if st.session_state.checkpoint not in options:
            st.session_state.checkpoint = options[0]
        st.selectbox("Checkpoint", options, key=bind("checkpoint"), on_change=sync,
                     args=("checkpoint",),
                     help=f"Folders with a config.json under {inputs.checkpoint_root()} "
                          f"(set {inputs.CHECKPOINT_DIR_ENV} to list another folder), or "
                          f"your own checkpoint.")
        if not names:
            st.caption(f"No checkpoints found in `{inputs.checkpoint_root()}`.")
        if st.session_state.checkpoint == OWN:
            modes = own_modes()
            if st.session_state.own_mode not in modes:
                st.session_state.own_mode = modes[0]
            if len(modes) > 1:
                st.radio("Source", modes, key=bind("own_mode"), on_change=sync,
                         args=("own_mode",))
            if st.session_state.own_mode == OWN_PATH:
                st.text_input("Checkpoint folder", key=bind("own_path"), on_change=sync,
                              args=("own_path",),
                              placeholder="/path/to/checkpoint (config.json, "
                                          "model.safetensors, tokenizer.json)")
            else:
                st.file_uploader(
                    "Checkpoint folder as .zip", type=["zip"], key="own_zip",
                    help=f"At most {inputs.MAX_ZIP_BYTES // 2**20} MB; only config.json, "
                         f"model.safetensors, tokenizer.json, metrics.json and README.md "
                         f"are read. Pickle weights are refused.")
        st.selectbox("Device", devices(), key=bind("device"), on_change=sync, args=("device",),
                     help="auto: the GPU when one is present, else the CPU.")


def selected(name: str | None = None) -> Selected:
    """The checkpoint chosen in the sidebar (or the sample `name`); raises InputError with
    a user-facing message when there is none yet or it cannot be found."""
    ss = st.session_state
    name = ss.checkpoint if name is None else name
    device = ss.device
    if name != OWN:
        path = inputs.checkpoint_root() / name
        return Selected(name, path, device, inputs.fingerprint(path))
    if ss.own_mode == OWN_PATH:
        if not server_paths_allowed():  # also refused here, whatever the session holds
            raise inputs.InputError(f"{SERVER_PATHS_OFF}; upload the folder as a .zip.")
        raw = (ss.own_path or "").strip()
        if not raw:
            raise inputs.InputError("Enter the path of a checkpoint folder in the sidebar, or "
                                    "pick a sample checkpoint.")
        path = Path(raw).expanduser()
        if not path.is_dir():
            raise inputs.InputError(f"{raw}: no such folder on this server.")
        return Selected(path.name, path, device, inputs.fingerprint(path))
    upload = ss.get("own_zip")
    if upload is None:
        raise inputs.InputError("Upload a checkpoint folder as a .zip in the sidebar, or pick "
                                "a sample checkpoint.")
    data = upload.getvalue()
    path = Path(_extract_zip(data))
    name = Path(upload.name).stem
    return Selected(name, path, device, hashlib.sha256(data).hexdigest()[:16])


def require_checkpoint() -> tuple[Selected, Checkpoint]:
    """The selected checkpoint, loaded; on any problem an st.error and the page stops."""
    try:
        choice = selected()
        return choice, choice.load()
    except (inputs.InputError, CheckpointError, ValueError) as err:
        st.error(f"Cannot use this checkpoint: {err}")
        st.stop()
        raise  # unreachable: st.stop ends the run


def thresholds_for(ckpt: Checkpoint) -> tuple[float, float]:
    """The session's thresholds, seeded from the checkpoint's own on first use."""
    ss = st.session_state
    if ss.theta_s is None:
        ss.theta_s = float(ckpt.config.theta_s)
    if ss.theta_d is None:
        ss.theta_d = float(ckpt.config.theta_d)
    return ss.theta_s, ss.theta_d


SAMPLE_SIZES = [32, 64, 128, 256, 512, "all"]
GLUE_SOURCE, UPLOAD_SOURCE = "GLUE validation (first rows)", "Upload a CSV/TSV"


def labelled_data(ckpt: Checkpoint, key: str,
                  default_size: int = 64) -> tuple[datasets.Dataset | None, str | None]:
    """Widgets to choose a labelled sample for the checkpoint's task: the first rows of the
    local GLUE validation split, or an uploaded CSV/TSV. Returns (dataset, key naming it),
    or (None, None) after showing why there is none."""
    task = ckpt.config.task
    source = st.radio("Data", [GLUE_SOURCE, UPLOAD_SOURCE], horizontal=True,
                      key=f"{key}_source")
    try:
        spec = get_task(task)
        if source == GLUE_SOURCE:
            size = st.select_slider(f"Examples of {task} validation", SAMPLE_SIZES,
                                    value=default_size, key=f"{key}_size")
            n = None if size == "all" else int(size)
            return glue_examples(task, n), f"glue:{task}:validation:{size}"
        upload = st.file_uploader(
            f"CSV or TSV with columns {', '.join([*spec.text_columns, 'label'])} (labels as "
            f"0..{spec.num_labels - 1} or their names; at most {inputs.MAX_TABLE_ROWS:,} rows)",
            type=["csv", "tsv", "txt"], key=f"{key}_upload")
        if upload is None:
            st.info("Upload a file to continue.")
            return None, None
        data = upload.getvalue()
        dataset = uploaded_examples(data, upload.name, task,
                                    tuple(sorted(ckpt.config.id2label.items())))
        st.caption(f"{len(dataset)} labelled examples read from {upload.name}.")
        return dataset, f"upload:{hashlib.sha256(data).hexdigest()[:16]}"
    except ValueError as err:  # InputError, unknown task, unreadable data
        st.error(str(err))
        return None, None


def show_url_errors() -> None:
    for message in st.session_state.get("url_errors", []):
        st.warning(message)
