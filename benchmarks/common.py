"""Shared pieces of the benchmarks: the registry, interleaved timing, machine facts, markdown.

A benchmark is a named function ``fn(ctx) -> dict`` (JSON-able) plus a renderer
``render(result) -> str`` (markdown, no heading). :mod:`run` runs a selection, merges the dicts into
``results.json`` under their names and regenerates ``BENCHMARKS.md`` from the whole JSON.

Timings on a shared machine are noisy: compare things *within one run*, interleaved round-robin
(:func:`interleaved`), and prefer ratios of best-of times, which other processes can only slow down.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Context:
    """What every benchmark may read: options of this invocation and results so far."""

    quick: bool = False  # a fast smoke run (fewer repeats); figures are then rougher
    results: dict[str, Any] = field(default_factory=dict)  # results.json as loaded (merged)
    root: str = "."  # repository root


@dataclass
class Benchmark:
    name: str  # key in results.json and ``--only NAME``
    title: str  # heading in BENCHMARKS.md
    fn: Callable[[Context], dict[str, Any]]
    render: Callable[[dict[str, Any]], str] | None = None  # None: a generic key/value table
    default: bool = True  # run by plain ``make bench`` (False: only with ``--only NAME``)


def machine_info() -> dict[str, Any]:
    """Cores, CPU model (from /proc/cpuinfo where present), torch version and threads."""
    model = platform.processor() or platform.machine()
    flags: list[str] = []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                if key.strip() == "model name" and model in ("", platform.machine()):
                    model = val.strip()
                if key.strip() == "flags" and not flags:
                    flags = val.split()
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return {
        "cpu_model": model,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "simd": simd,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "cuda": torch.cuda.is_available(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def interleaved(
    items: dict[str, Callable[[], object]],
    rounds: int,
    reps: dict[str, int] | int = 1,
    warmup: int = 1,
) -> dict[str, dict[str, float]]:
    """Time each callable ``reps`` times per round, round-robin over ``rounds`` rounds.

    Returns:
        name -> {"best_s", "median_s", "n"}: the best-of is what ratios are built from (others'
        load only ever slows a run down); the median shows how noisy the run was.
    """
    reps_of = reps if isinstance(reps, dict) else dict.fromkeys(items, reps)
    for fn in items.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in items}
    for _ in range(rounds):
        for k, fn in items.items():
            for _ in range(reps_of.get(k, 1)):
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
    return {
        k: {"best_s": min(v), "median_s": statistics.median(v), "n": len(v)}
        for k, v in times.items()
    }


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|")

    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(cell(x) for x in r) + " |" for r in rows]
    return "\n".join(out)


def verdict(ok: bool | None) -> str:
    """Markdown mark for a target: met, missed, or not measured."""
    if ok is None:
        return "n/a"
    return "met" if ok else "**missed**"


def generic_render(result: dict[str, Any]) -> str:
    """Fallback renderer: one row per top-level key (nested values shown as JSON-ish text)."""
    rows = [[k, v if not isinstance(v, float) else f"{v:.4g}"] for k, v in result.items()]
    return md_table(["key", "value"], rows)
