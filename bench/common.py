"""Shared machinery of the benchmark suite: side-by-side timing, peak memory, reference checks,
profiles and the environment block printed beside every figure.

Timing rule (issue 6): every figure is a ratio of medians measured side by side in one run.
`compare` runs the candidates in interleaved rounds (A B C, then B C A, ...) with
`torch.utils.benchmark.Timer`, after warm-up, with the thread count pinned, so that a burst of
load from another process on these shared machines hits every candidate alike instead of
whichever happened to run during the burst.

Peak memory rule: on the CPU there is no `max_memory_allocated`, and `tracemalloc` does not see
tensors (they come from c10's allocator, not Python's). We run the call under
`torch.profiler` with `profile_memory=True`, which records every allocation and free of the
c10 allocator with its size, replay those events in time order and take the highest running
total: the peak of tensor memory the call itself allocated above what existed before it
(inputs excluded). On a GPU, `torch.cuda.max_memory_allocated` gives the same quantity.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.benchmark import Timer

PEAK_TFLOPS_H100_BF16 = 989.0  # dense bf16 tensor-core peak of an H100 SXM, for MFU


# ------------------------------------------------------------------------------------------
# results
# ------------------------------------------------------------------------------------------

@dataclass
class Section:
    """What one benchmark module hands back: table rows, reference checks, targets, notes."""

    name: str
    title: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profiles: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def check(self, name: str, actual: torch.Tensor, expected: torch.Tensor,
              atol: float = 1e-4, rtol: float = 1e-4) -> bool:
        """Record whether a fast path matches its reference on the same inputs."""
        actual, expected = actual.detach().float().cpu(), expected.detach().float().cpu()
        ok = actual.shape == expected.shape
        err = float("nan")
        if ok:
            err = float((actual - expected).abs().max()) if actual.numel() else 0.0
            ok = bool(torch.allclose(actual, expected, atol=atol, rtol=rtol))
        self.checks.append({"name": name, "passed": ok, "max_abs_err": err,
                            "atol": atol, "rtol": rtol})
        return ok

    def check_true(self, name: str, condition: bool, detail: str = "") -> bool:
        self.checks.append({"name": name, "passed": bool(condition), "detail": detail})
        return bool(condition)

    def target(self, name: str, value: float | None, threshold: float, better: str,
               unit: str = "", note: str = "") -> dict[str, Any]:
        """A target of the issue: met when value >= threshold (better="higher") or <=
        (better="lower"); value None means not measured here (e.g. no GPU)."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            met = None
        elif better == "higher":
            met = value >= threshold
        else:
            met = value <= threshold
        entry = {"name": name, "value": value, "threshold": threshold, "better": better,
                 "unit": unit, "met": met, "note": note}
        self.targets.append(entry)
        return entry

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "rows": self.rows, "checks": self.checks,
                "targets": self.targets, "notes": self.notes, "profiles": self.profiles}


# ------------------------------------------------------------------------------------------
# timing
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Timing:
    median_s: float
    iqr_s: float
    samples: int
    per_round_s: tuple[float, ...] = ()  # time per call in each interleaved round

    def as_ms(self) -> dict[str, float]:
        return {"median_ms": round(self.median_s * 1e3, 4), "iqr_ms": round(self.iqr_s * 1e3, 4),
                "samples": self.samples}


def _quantile(values: list[float], q: float) -> float:
    values = sorted(values)
    pos = q * (len(values) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def compare(fns: dict[str, Callable[[], Any]], *, rounds: int, threads: int,
            block_s: float = 0.2, warmup: int = 1) -> dict[str, Timing]:
    """Median time per call of each candidate, measured side by side.

    Each candidate is warmed up `warmup` times, then timed in `rounds` interleaved rounds
    (the order rotates every round). In a round a candidate runs as one Timer block of
    `number` calls, `number` chosen so a block lasts about `block_s` (at least one call).
    """
    timers, numbers = {}, {}
    for name, fn in fns.items():
        start = time.perf_counter()
        for _ in range(warmup):
            fn()
        _sync()
        per_call = (time.perf_counter() - start) / max(warmup, 1)
        numbers[name] = max(1, int(block_s / max(per_call, 1e-6)))
        timers[name] = Timer("fn()", globals={"fn": fn}, num_threads=threads)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            samples[name].append(timers[name].timeit(numbers[name]).median)
    return {name: Timing(statistics.median(s), _quantile(s, 0.75) - _quantile(s, 0.25),
                         len(s) * numbers[name], tuple(s)) for name, s in samples.items()}


def paired_ratio(a: Timing, b: Timing) -> float:
    """Median over rounds of time(a) / time(b), both from one `compare` call.

    The two candidates of a round ran back to back, so a load burst that slows one mostly
    slows the other: the per-round ratio cancels it, and its median resolves differences of
    a few percent that the ratio of the two medians (each spread by the load) cannot.
    """
    return statistics.median(x / y for x, y in zip(a.per_round_s, b.per_round_s, strict=True))


def block_seconds(quick: bool, seconds: float) -> float:
    """Timer block length: one call per block in a --quick smoke run."""
    return 0.0 if quick else seconds


def latencies(fn: Callable[[], Any], *, calls: int, threads: int, warmup: int = 3) -> list[float]:
    """Per-call wall times (s) of `calls` single calls, for percentiles (p50/p95)."""
    for _ in range(warmup):
        fn()
    timer = Timer("fn()", globals={"fn": fn}, num_threads=threads)
    return [timer.timeit(1).median for _ in range(calls)]


def percentile(values: list[float], q: float) -> float:
    return _quantile(values, q)


# ------------------------------------------------------------------------------------------
# memory and profiles
# ------------------------------------------------------------------------------------------

def peak_memory_bytes(fn: Callable[[], Any]) -> int:
    """Peak tensor memory the call allocates above what existed before it (see module doc)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    running = peak = 0
    for _, nbytes in events:
        running += nbytes
        peak = max(peak, running)
    return peak


def top_ops(fn: Callable[[], Any], n: int = 8, calls: int = 3,
            quick: bool = False) -> list[dict[str, Any]]:
    """Where the time goes: the `n` operators with the most self time over `calls` calls
    (empty in a --quick smoke run, where sizes are too small to say anything)."""
    if quick:
        return []
    from torch.profiler import ProfilerActivity, profile
    fn()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA]
                                           if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        for _ in range(calls):
            fn()
        _sync()
    averages = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in averages) or 1.0
    rows = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[:n]
    return [{"op": e.key, "self_cpu_ms_per_call": round(e.self_cpu_time_total / 1e3 / calls, 3),
             "share": round(e.self_cpu_time_total / total, 3), "calls": e.count // calls}
            for e in rows]


# ------------------------------------------------------------------------------------------
# environment
# ------------------------------------------------------------------------------------------

def _cpu_model_and_flags() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model in ("", platform.machine()):
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = value.split()
                    break
    except OSError:
        pass
    wanted = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_bf16",
              "avx512_vnni", "amx_bf16", "amx_tile", "sse4_2")
    return model, [f for f in wanted if f in flags]


def environment(threads: int) -> dict[str, Any]:
    """Everything a reader needs to judge the figures beside which it is printed."""
    import transformers

    model, flags = _cpu_model_and_flags()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=5).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], capture_output=True,
                                    text=True, timeout=5).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", False
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "device": "cuda" if gpu else "cpu",
        "gpu": gpu or "none (no GPU in this run: GPU rows are 'not measured: no GPU')",
        "dtype": "float32",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpu": model,
        "cpu_flags": " ".join(flags),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "load_average_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "git_commit": commit + (" (+ uncommitted changes)" if dirty else ""),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }
