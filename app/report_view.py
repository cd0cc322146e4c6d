"""`analysis` reports inside the app (the Diagnostics page): plain functions, no Streamlit.

The analysis commands write their findings through `analysis.report.Report` (sections,
Markdown, tables, figures) into a folder. `BlockReport` is a `Report` that also records
those calls, in order, as blocks, so the page can show the very same report with live
tables and Plotly figures, and `ReportBlocks.archive` can replay the blocks into a fresh
`Report` to offer the usual folder (report.md, CSV, HTML) as a .zip download.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from analysis.cli import label_names
from analysis.overrouting import write_report
from analysis.report import Report
from analysis.sweep import (
    PAPER_DEFAULT,
    parse_grid,
    primary_metric,
    sweep_thresholds,
    thresholds_apply,
)
from analysis.tokens import training_token_counts
from analysis.traces import trace_dataset
from dasg_moe.checkpoint import Checkpoint
from dasg_moe.routers import RoutingOverrides


class BlockReport(Report):
    """A `Report` that keeps what it was given as an ordered list of blocks."""

    def __init__(self, out_dir: str | Path, title: str) -> None:
        super().__init__(out_dir, title)
        self.blocks: list[tuple] = []

    def section(self, title: str, level: int = 2) -> None:
        super().section(title, level)
        self.blocks.append(("section", title, level))

    def text(self, markdown: str) -> None:
        super().text(markdown)
        self.blocks.append(("text", markdown))

    def bullets(self, items: Sequence[str]) -> None:
        super().bullets(items)
        if items:
            self.blocks.append(("bullets", list(items)))

    def table(self, name: str, frame: pd.DataFrame, caption: str | None = None,
              max_rows: int | None = 20, max_chars: int = 90) -> None:
        super().table(name, frame, caption, max_rows, max_chars)
        self.blocks.append(("table", name, frame, caption))

    def figure(self, name: str, fig: go.Figure, caption: str) -> None:
        super().figure(name, fig, caption)
        self.blocks.append(("figure", name, fig, caption))


@dataclass(frozen=True)
class ReportBlocks:
    """A finished report: its title, blocks in order, and the headline numbers."""

    title: str
    blocks: tuple[tuple, ...]
    headline: dict

    def archive(self) -> bytes:
        """The report as the analysis command writes it (report.md, CSV tables, HTML
        figures), zipped."""
        with tempfile.TemporaryDirectory() as tmp:
            report = Report(tmp, self.title)
            for kind, *args in self.blocks:
                getattr(report, kind)(*args)
            report.write()
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
                for file in sorted(Path(tmp).iterdir()):
                    archive.write(file, file.name)
            return buffer.getvalue()


def overrouting_report(ckpt: Checkpoint, task: str, dataset, *, theta_s: float | None = None,
                       theta_d: float | None = None, sweep_grid: str | None = None,
                       cache_dir: str | Path | None = None, data_dir: str | None = None,
                       tolerance: float = 0.01, batch_size: int = 32) -> ReportBlocks:
    """What `python -m analysis overrouting` reports, for a dataset already loaded.

    Traces `dataset` at (theta_s, theta_d) (None: the checkpoint's), counts token
    frequencies in the task's training split when `data_dir` has it, and sweeps
    `sweep_grid` (the analysis grid syntax; None skips the sweep and the recommendation).
    """
    overrides = RoutingOverrides(theta_s, theta_d)
    traced_s, traced_d = overrides.thresholds(ckpt.config)
    simple_below = ckpt.config.theta_s
    tokens, examples = trace_dataset(ckpt.model, ckpt.tokenizer, task, dataset,
                                     batch_size=batch_size, overrides=overrides,
                                     progress=False, cache_dir=cache_dir)
    try:
        counts = training_token_counts(
            ckpt.tokenizer, task, data_dir,
            cache_file=Path(cache_dir) / f"counts-{task}-train.parquet" if cache_dir else None)
    except (FileNotFoundError, ValueError):
        counts = None  # no training split here: the frequency breakdown is left out
    sweep = None
    if sweep_grid and thresholds_apply(ckpt.model):
        pairs = sorted({*parse_grid(sweep_grid), PAPER_DEFAULT})
        sweep = sweep_thresholds(ckpt.model, ckpt.tokenizer, task, dataset, pairs,
                                 simple_below=simple_below, batch_size=batch_size,
                                 progress=False, cache_dir=cache_dir)
    title = f"Over-routing: {ckpt.path.name} on {task}"
    with tempfile.TemporaryDirectory() as tmp:  # nothing is written: write() is never called
        report = BlockReport(tmp, title)
        report.text(f"Checkpoint `{ckpt.path.name}` (router `{ckpt.config.router}`), "
                    f"{len(dataset)} examples of {task}, traced at θs = {traced_s:g}, "
                    f"θd = {traced_d:g}; primary metric `{primary_metric(task)}`.")
        headline = write_report(report, tokens, examples, task=task,
                                label_names=label_names(ckpt.config, task),
                                simple_below=simple_below, train_counts=counts, sweep=sweep,
                                tolerance=tolerance, router=ckpt.config.router)
    return ReportBlocks(title, tuple(report.blocks), headline)
