"""`make demo`, recorded: wall time per stage, the comparison table, sample grids.

Reads the RUN of a finished `decentdiff demo` (``runs/demo``, or ``$DECENTDIFF_DEMO_RUN``): its
``demo.json`` (wall time of the invocation, per stage), ``metrics.jsonl`` (the compare rows) and
sample grids, which are copied to ``docs/figures/demo-*.png``. With no finished demo there, it runs
``decentdiff demo`` itself first (about ten minutes on an idle reference machine). A matmul is timed
in the same run so the wall time can be judged against the machine's speed at the time (these
machines are shared: the same demo has been seen to take 2-4x longer on a busy day).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import Benchmark, Context, md_table

TARGET_S = 600.0
TARGET_CONFIDENT = 0.90


def _matmul_gflops() -> float:
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * 2048**3 / best / 1e9


def bench_demo(ctx: Context) -> dict[str, Any]:
    root = Path(ctx.root)
    run = Path(os.environ.get("DECENTDIFF_DEMO_RUN", root / "runs" / "demo"))
    if not (run / "demo.json").is_file():
        subprocess.run([sys.executable, "-m", "decentdiff", "demo", str(run), "-q"], check=True)
    return record(run, root, "demo")


def record(run: Path, root: Path, prefix: str) -> dict[str, Any]:
    """A finished demo RUN's timings, compare rows and figures (copied to docs/figures/<prefix>-*)."""
    timing = json.loads((run / "demo.json").read_text())
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    latest: dict[tuple, dict] = {}
    for r in rows:
        if r.get("kind") == "eval":
            latest[(r["model"], r.get("routing"))] = r
    table = [
        {
            k: r.get(k)
            for k in (
                "model",
                "routing",
                "n",
                "steps",
                "guidance",
                "fid",
                "precision",
                "recall",
                "confident_share",
                "sample_gflops_per_image",
                "train_flops",
                "features",
            )
        }
        for r in latest.values()
    ]
    floor = next(iter(latest.values()))["floor"] if latest else {}
    figures = []
    out = root / "docs" / "figures"
    out.mkdir(parents=True, exist_ok=True)
    from decentdiff.ddm.defaults import DEFAULT_ROUTING, DEFAULT_ROUTINGS
    from decentdiff.loading import sample_name

    names = [sample_name("ensemble", r) for r in DEFAULT_ROUTINGS] + ["monolith"]
    for name in names:
        src = run / "samples" / f"{name}.png"
        if src.is_file():
            shutil.copy2(src, out / f"{prefix}-{name}.png")
            figures.append(f"docs/figures/{prefix}-{name}.png")
    for name in (
        "partition",
        "attribution",
        "router_accuracy",
        "routing_diagnostics",
        "class_histogram",
    ):
        src = run / "figures" / f"{name}.png"
        if src.is_file():
            shutil.copy2(src, out / f"{prefix}-{name}.png")
            figures.append(f"docs/figures/{prefix}-{name}.png")
    from decentdiff.ddm.load import resolve_routing
    from decentdiff.run import Run

    chosen = resolve_routing(Run(run), DEFAULT_ROUTING)
    default = latest.get(("ensemble", chosen), {})
    import tomllib

    model = tomllib.loads((run / "run.toml").read_text()).get("model", {})
    return {
        "run": str(run),
        "preset": model.get("preset"),
        "wall_s": timing["wall_s"],
        "stages_s": timing["stages_s"],
        "demo_time": timing.get("time"),
        "note": timing.get("note"),
        "matmul_gflops_now": _matmul_gflops(),
        "rows": table,
        "floor": {k: floor.get(k) for k in ("fid", "precision", "recall", "confident_share")},
        "figures": figures,
        "time_met": timing["wall_s"] <= TARGET_S,
        "default_routing": f"{DEFAULT_ROUTING} = {chosen}",
        "confident_met": (default.get("confident_share") or 0) >= TARGET_CONFIDENT,
    }


def render_demo(r: dict[str, Any], *, as_demo: bool = True) -> str:
    """The section's text; ``as_demo`` False: another demo RUN (no `make demo` time target)."""
    from common import verdict

    stages = ", ".join(f"{k} {v:.0f} s" for k, v in r["stages_s"].items())
    if not as_demo:
        text = (
            f"The `{r.get('preset')}` UNet; {r['wall_s'] / 60:.1f} min on "
            f"{r.get('demo_time') or 'the day recorded'} ({stages}; fp32 2048² matmul at the "
            f"time: {r['matmul_gflops_now']:.0f} GFLOP/s).\n\n"
        )
    else:
        text = (
            f"`make demo` (= `decentdiff demo runs/demo`, defaults: the `{r.get('preset')}` UNet) "
            f"finished in **{r['wall_s'] / 60:.1f} "
            f"min** on {r.get('demo_time') or 'the day recorded'} (target ≤ 10 min: "
            f"{verdict(r['time_met'])})"
            + (f"; stages: {stages}" if stages else "")
            + ". "
            + (f"({r['note']}.) " if r.get("note") else "")
            + f"The fp32 2048² matmul measured when this section was written: "
            f"{r['matmul_gflops_now']:.0f} GFLOP/s; compare the training section's figure — these "
            "shared machines' speed varies from day to day, and the demo's time with it.\n\n"
        )
    rows = [
        [
            x["model"],
            x["routing"] or "–",
            f"{x['fid']:.2f}",
            f"{x['precision']:.3f}",
            f"{x['recall']:.3f}",
            "–" if x["confident_share"] is None else f"{x['confident_share']:.3f}",
            f"{x['sample_gflops_per_image']:.2f}",
            f"{x['train_flops'] / 1e12:.1f}",
        ]
        for x in r["rows"]
    ]
    f = r["floor"]
    rows.append(
        [
            "*floor: train vs held-out*",
            "–",
            f"{f['fid']:.2f}",
            f"{f['precision']:.3f}",
            f"{f['recall']:.3f}",
            "–" if f.get("confident_share") is None else f"{f['confident_share']:.3f}",
            "–",
            "–",
        ]
    )
    n = r["rows"][0]["n"] if r["rows"] else 0
    g = r["rows"][0]["guidance"] if r["rows"] else 1
    feats = (r["rows"][0].get("features") or "classifier") if r["rows"] else "classifier"
    text += (
        f"{n} samples per row, Euler, guidance {g} inside each expert; {feats} features"
        + (" (FID here is not comparable with Inception FIDs)" if feats == "classifier" else "")
        + ".\n\n"
    )
    text += md_table(
        [
            "model",
            "routing",
            "FID",
            "precision",
            "recall",
            "confident ≥ 0.9",
            "GFLOPs/img",
            "train TFLOPs",
        ],
        rows,
    )
    if feats == "classifier":
        text += (
            f"\n\nSamples of the default routing (`{r.get('default_routing', 'top1')}`) classified "
            f"with confidence ≥ 0.9: target ≥ {TARGET_CONFIDENT:.0%}: "
            f"{verdict(r['confident_met'])}."
        )
    text += "\n\n"
    text += " ".join(f"![{Path(p).stem}]({p})" for p in r["figures"])
    return text


BENCHMARKS = [
    Benchmark("demo", "`make demo`: the whole DDM pipeline", bench_demo, render_demo, default=False)
]
