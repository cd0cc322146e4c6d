"""analysis.report: Markdown formatting and the output folder."""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go

from analysis.report import Report, format_value, markdown_table


def test_format_value():
    assert format_value(math.nan) == "n/a" and format_value(None) == "n/a"
    assert format_value(0.12345) == "0.123" and format_value(24576.0) == "24,576"
    assert format_value(3e-5) == "3.00e-05" and format_value(0.0) == "0.000"
    assert format_value(12345) == "12,345" and format_value(True) == "yes"
    assert format_value([1, 2]) == "1, 2" and format_value("a|b") == "a\\|b"


def test_markdown_table_cuts_rows_and_cells():
    frame = pd.DataFrame({"a": [1, 2, 3], "b": ["x" * 200, "y", "z"]})
    text = markdown_table(frame, max_rows=2, max_chars=10)
    lines = text.splitlines()
    assert lines[0] == "| a | b |" and len(lines) == 4
    assert lines[2].endswith("xxxxxxxxx… |")


def test_report_writes_markdown_csv_and_html(tmp_path):
    report = Report(tmp_path / "out", "Title")
    report.section("Part")
    report.table("numbers", pd.DataFrame({"x": range(30)}), "caption", max_rows=5)
    report.figure("fig", go.Figure(go.Bar(x=[1], y=[2])), "a bar")
    path = report.write()
    text = path.read_text()
    assert text.startswith("# Title") and "## Part" in text
    assert "first 5 of 30 rows" in text and "[a bar](fig.html)" in text
    assert len(pd.read_csv(tmp_path / "out" / "numbers.csv")) == 30
    assert (tmp_path / "out" / "fig.html").is_file()
    assert (tmp_path / "out" / "plotly.min.js").is_file()  # offline, written once
