"""The output folder of an analysis command: `report.md`, CSV tables and HTML figures.

```
<out>/
  report.md          the findings, with every table as a Markdown excerpt
  <table>.csv        each table in full
  <figure>.html      each Plotly figure (interactive; plotly.min.js is written once beside them)
```

Every file is written to a temporary name in the folder and renamed into place
(`dasg_moe.checkpoint.atomic_write`), so an interrupted or failed `write()` never leaves a
half-written file, and a report written before stays whole.

`Report` collects sections in order and writes everything on `write()`. Numbers are
formatted for reading (3 decimals, thousands separators for large values, "n/a" for NaN);
the CSV files keep full precision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from dasg_moe.checkpoint import atomic_write


def format_value(value) -> str:
    """One cell of a Markdown table."""
    if value is None or (isinstance(value, float | np.floating) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        value = float(value)
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.2e}" if 0 < abs(value) < 0.001 else f"{value:.3f}"
    if isinstance(value, list | tuple | np.ndarray):
        return ", ".join(format_value(v) for v in value)
    if value is pd.NA or value is pd.NaT:
        return "n/a"
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text


def markdown_table(frame: pd.DataFrame, max_rows: int | None = None,
                   max_chars: int = 90) -> str:
    """`frame` as a GitHub Markdown table (index dropped), cells cut at `max_chars`."""
    shown = frame if max_rows is None else frame.head(max_rows)
    header = [str(c) for c in shown.columns]

    def cell(v) -> str:
        text = format_value(v)
        return text if len(text) <= max_chars else text[:max_chars - 1] + "…"

    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |"
              for row in shown.itertuples(index=False, name=None)]
    return "\n".join(lines)


def _write_plotly_bundle(path: Path) -> None:
    """plotly.js beside the figures, unless the same bundle is already there (a file of
    another size, from another plotly version or a copy cut short, is replaced)."""
    script = get_plotlyjs().encode("utf-8")
    if not path.is_file() or path.stat().st_size != len(script):
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(script))


class Report:
    """A Markdown report being assembled; nothing is written before `write()`."""

    def __init__(self, out_dir: str | Path, title: str) -> None:
        self.out_dir = Path(out_dir)
        self.title = title
        self._parts: list[str] = [f"# {title}\n"]
        self._tables: dict[str, pd.DataFrame] = {}
        self._figures: dict[str, go.Figure] = {}

    def section(self, title: str, level: int = 2) -> None:
        """A Markdown heading (## by default)."""
        self._parts.append(f"{'#' * level} {title}\n")

    def text(self, markdown: str) -> None:
        """A paragraph of Markdown."""
        self._parts.append(markdown.strip() + "\n")

    def bullets(self, items: Sequence[str]) -> None:
        """A bullet list (nothing for an empty list)."""
        if items:
            self._parts.append("\n".join(f"- {item}" for item in items) + "\n")

    def table(self, name: str, frame: pd.DataFrame, caption: str | None = None,
              max_rows: int | None = 20, max_chars: int = 90) -> None:
        """Show `frame` (first `max_rows` rows) and save it whole as `<name>.csv`."""
        if name in self._tables:
            raise ValueError(f"duplicate table name {name!r}")
        self._tables[name] = frame
        if caption:
            self._parts.append(f"*{caption}*\n")
        if frame.empty:
            self._parts.append("(no rows)\n")
            return
        self._parts.append(markdown_table(frame, max_rows, max_chars) + "\n")
        more = f"first {max_rows} of {len(frame)} rows; " if max_rows and len(
            frame) > max_rows else ""
        self._parts.append(f"<sub>{more}full table: [{name}.csv]({name}.csv)</sub>\n")

    def figure(self, name: str, fig: go.Figure, caption: str) -> None:
        """Save `fig` as `<name>.html` and link it with `caption`."""
        if name in self._figures:
            raise ValueError(f"duplicate figure name {name!r}")
        self._figures[name] = fig
        self._parts.append(f"Figure: [{caption}]({name}.html)\n")

    def write(self) -> Path:
        """Write report.md, the CSV tables and the HTML figures; returns report.md's path."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, frame in self._tables.items():
            atomic_write(self.out_dir / f"{name}.csv",
                         lambda tmp, f=frame: f.to_csv(tmp, index=False))
        for name, fig in self._figures.items():
            # "directory": the page loads plotly.min.js from beside it (written once below),
            # so the figures open offline.
            html = fig.to_html(include_plotlyjs="directory")
            atomic_write(self.out_dir / f"{name}.html",
                         lambda tmp, h=html: Path(tmp).write_text(h, encoding="utf-8"))
        if self._figures:
            _write_plotly_bundle(self.out_dir / "plotly.min.js")
        path = self.out_dir / "report.md"
        text = "\n".join(self._parts)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        return path
