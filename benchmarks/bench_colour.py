"""The DDM pipeline on colour images (issue 17, item 5): `decentdiff demo` on the embedded coloured
MNIST (`cmnist5k`) at 32×32, and at 64×64 (the same images upscaled by `data.size`).

Each size is one `decentdiff demo` run (partition, K = 4 experts, router, FLOP-matched monolith,
samples, eval, report) in ``runs/bench-colour-<size>``; it resumes when interrupted. Colour data
is scored with Inception features (`--features auto`). Opt-in (``--only colour``): the two runs
take about half an hour of two CPU cores. ``DECENTDIFF_COLOUR_SIZES=32`` runs one size only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench_demo import record, render_demo
from common import Benchmark, Context

#: size -> (preset, steps per expert and monolith, router steps, images per FID): the 64×64 run
#: is 4× the pixels, so it trains a smaller budget to stay in a quarter of an hour here.
PLAN = {32: ("compact", 350, 400, 250), 64: ("compact", 200, 250, 250)}


def bench_colour(ctx: Context) -> dict[str, Any]:
    root = Path(ctx.root)
    sizes = [int(s) for s in os.environ.get("DECENTDIFF_COLOUR_SIZES", "32,64").split(",")]
    # A size not asked for this time keeps its earlier record (DECENTDIFF_COLOUR_SIZES=64 adds the
    # 64×64 run beside a 32×32 one measured before).
    section = ctx.results.get("benchmarks", {}).get("colour", {})
    same_kind = section.get("_run", {}).get("quick", False) == ctx.quick
    before = section.get("sizes", {}) if same_kind else {}
    out: dict[str, Any] = {k: v for k, v in before.items() if int(k) not in sizes}
    for size in sizes:
        preset, steps, router_steps, n = PLAN[size]
        if ctx.quick:
            steps, router_steps, n = 4, 4, 20
        run = root / "runs" / f"bench-colour-{size}{'-quick' if ctx.quick else ''}"
        if not (run / "demo.json").is_file():
            subprocess.run(
                [sys.executable, "-m", "decentdiff", "demo", str(run), "--data", "cmnist5k",
                 "--set", f"data.size={size}", "--preset", preset, "--steps", str(steps),
                 "--router-steps", str(router_steps), "--n", str(n), "-q",
                 "--guidance", "2"],  # as recorded (the colour default is now 3)
                check=True,
            )  # fmt: skip
        rec = record(run, root, f"colour{size}")
        rec["figures"] = _small_grids(run, root, f"colour{size}", rec["figures"])
        out[str(size)] = {
            **rec,
            "size": size,
            "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }
    return {"sizes": dict(sorted(out.items(), key=lambda kv: int(kv[0])))}


def _small_grids(run: Path, root: Path, prefix: str, figures: list[str]) -> list[str]:
    """Sample grids of 64 images (the demo's hold 256 colour images, ~0.5 MB each) for the
    mixture and the monolith only; the other routings' grids are dropped from docs/figures."""
    import numpy as np
    import torch

    from decentdiff.training.generative import to_uint8
    from decentdiff.viz import save_grid

    kept = []
    for fig in figures:
        name = Path(fig).stem.removeprefix(f"{prefix}-")
        npz = run / "samples" / f"{name}.npz"
        if not npz.is_file():
            kept.append(fig)  # a diagnostic figure, not a sample grid
            continue
        if name not in ("ensemble-mixture", "monolith"):
            (root / fig).unlink(missing_ok=True)
            continue
        with np.load(npz) as z:
            images = torch.from_numpy(z["images"][:64])
        save_grid(to_uint8(images), root / fig, nrow=8)
        kept.append(fig)
    return kept


def render_colour(r: dict[str, Any]) -> str:
    parts = [
        "`decentdiff demo --data cmnist5k --set data.size=S` (the embedded coloured MNIST: each "
        "digit drawn in one of 3 stroke colours on one of 2 backgrounds; 64×64 is the 28×28 "
        "images upscaled). Class-conditional, guidance 2 inside each expert, Inception features "
        "(the default for colour data), so these FIDs are not comparable with the classifier-"
        "feature FIDs of the grey sections."
    ]
    parts[0] += (
        " One run per size and 250 samples per FID: a single measurement, not an interval. "
        "The grids show 64 of each model's samples. Reproduce: `.venv/bin/python "
        "benchmarks/run.py --only colour` (opt-in; `DECENTDIFF_COLOUR_SIZES=32` for one size)."
    )
    for size, run in r["sizes"].items():
        when = f" (measured {run['measured']})" if "measured" in run else ""
        parts += ["", f"**{size}×{size}**{when}", "", render_demo(run, as_demo=False)]
    missing = [str(s) for s in PLAN if str(s) not in r["sizes"]]
    if missing:
        parts += ["", f"Not run yet: {', '.join(f'{s}×{s}' for s in missing)}."]
    return "\n".join(parts)


BENCHMARKS = [
    Benchmark(
        "colour",
        "The DDM pipeline on colour images (32×32 and 64×64)",
        bench_colour,
        render_colour,
        default=False,
    )
]
