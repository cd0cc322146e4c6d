"""Smoke test of the benchmark suite (issue 6): `python -m bench --quick` runs every section at
tiny sizes, writes the JSON and Markdown results, and every fast path matched its reference.
No timing is asserted: these machines are shared and timings mean nothing at these sizes.
"""

from __future__ import annotations

import json

import pytest

from bench.run import SECTIONS, main

pytestmark = pytest.mark.slow  # the whole suite at tiny sizes: a few seconds


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert main(["--quick", "--threads", "1", "--out-dir", str(out)]) == 0
    return out


def test_quick_run_writes_every_section_with_passing_reference_checks(quick_results):
    results = json.loads((quick_results / "results_quick.json").read_text())
    assert results["quick"] is True
    assert set(results["sections"]) == set(SECTIONS)
    for key in ("device", "dtype", "torch", "cpu_flags", "threads", "gpu"):
        assert key in results["env"]
    for name, section in results["sections"].items():
        assert section["rows"], f"{name}: no rows"
        assert section["targets"], f"{name}: no targets"
        assert section["checks"], f"{name}: no reference checks"
        failed = [c["name"] for c in section["checks"] if not c["passed"]]
        assert not failed, f"{name}: reference checks failed: {failed}"


def test_quick_run_writes_markdown_with_environment_and_targets(quick_results):
    text = (quick_results / "results_quick.md").read_text()
    assert "## Environment" in text and "## Targets" in text
    for section in json.loads((quick_results / "results_quick.json").read_text())[
            "sections"].values():
        assert section["title"] in text


def test_paired_ratio_is_the_median_of_per_round_ratios_so_a_shared_burst_cancels():
    from bench.common import Timing, paired_ratio

    # Rounds 2 and 3 ran under load bursts that slowed both candidates alike: every round's
    # ratio is still 1.5, and one round where the burst hit only `a` does not move the median.
    a = Timing(1.5, 0.0, 4, (1.5, 15.0, 3.0, 9.0))
    b = Timing(1.0, 0.0, 4, (1.0, 10.0, 2.0, 1.0))
    assert paired_ratio(a, b) == pytest.approx(1.5)
    assert paired_ratio(b, a) == pytest.approx(1 / 1.5)
