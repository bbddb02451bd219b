"""Scaling: time and peak memory of partition, training and evaluation as the data grows.

Data: the first 1,000 and all 5,000 images of the embedded MNIST subset, and 10,000 (the 5,000
plus a copy shifted by one pixel); for partition alone also 20,000 and 50,000 (more shifted
copies). Each stage runs as its own ``decentdiff`` process (the way a user runs it) and reports
its wall time and its peak resident memory (``ru_maxrss`` of that process). Training is a fixed
number of steps, so its cost should not grow with N (only the data loaded grows); partition
(k-means with min(1024, N/4) fine centroids) and evaluation (the feature classifier is trained on
the training part, here with an empty cache each time) do grow with N.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import Benchmark, Context, md_table

#: Runs decentdiff in a child process and writes its own peak RSS (KiB on Linux) to a file.
_CHILD = (
    "import resource, sys\n"
    "from decentdiff.cli import main\n"
    "try:\n"
    "    main(sys.argv[2:])\n"
    "finally:\n"
    "    open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))\n"
)


def _stage(args: list[str], env: dict[str, str], tmp: Path) -> dict[str, float]:
    rss = tmp / "rss.txt"
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", _CHILD, str(rss), *args],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "peak_rss_mb": int(rss.read_text()) / 1024}


def _dataset(tmp: Path, n: int) -> str:
    """An npz source of n MNIST images (shifted copies beyond the 5,000 of mnist5k)."""
    from decentdiff.data.sources import load_source

    base = load_source("mnist5k")
    x, y = base.images, base.labels
    parts, labels, shift = [], [], 0
    while sum(len(p) for p in parts) < n:
        parts.append(np.roll(x, shift, axis=-1) if shift else x)
        labels.append(y)
        shift += 1
    xs = np.concatenate(parts)[:n]
    ys = np.concatenate(labels)[:n]
    path = tmp / f"mnist-{n}.npz"
    np.savez(path, x=xs, y=ys)
    return f"npz:{path}"


def bench_scaling(ctx: Context) -> dict[str, Any]:
    sizes = (1000, 5000) if ctx.quick else (1000, 5000, 10000)
    partition_only = () if ctx.quick else (20000, 50000)
    steps = 30
    out: dict[str, Any] = {"train_steps": steps, "batch": 64, "preset": "compact", "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        for n in (*sizes, *partition_only):
            src = _dataset(tmp, n)
            env = {**os.environ, "DECENTDIFF_CACHE": str(tmp / f"cache-{n}")}
            run = str(tmp / f"run-{n}")
            row: dict[str, Any] = {}
            row["partition"] = _stage(["partition", run, "--data", src, "-K", "4"], env, tmp)
            if n in sizes:
                row["train"] = _stage(
                    ["train", "monolith", run, "--preset", "compact", "--steps", str(steps),
                     "--batch", "64", "--quiet"],
                    env,
                    tmp,
                )  # fmt: skip
                row["eval"] = _stage(
                    ["eval", run, "--model", "monolith", "--n", "200", "--steps", "5", "--quiet"],
                    env,
                    tmp,
                )
            out["sizes"][str(n)] = row
            print(f"scaling {n}: " + json.dumps(row), flush=True)
    first, last = str(sizes[0]), str(sizes[-1])
    grow = int(last) / int(first)
    out["growth"] = {
        stage: out["sizes"][last][stage]["wall_s"] / out["sizes"][first][stage]["wall_s"]
        for stage in ("partition", "train", "eval")
    }
    out["data_growth"] = grow
    return out


def render_scaling(r: dict[str, Any]) -> str:
    rows = []
    for n, row in r["sizes"].items():
        cells = [f"{int(n):,}"]
        for stage in ("partition", "train", "eval"):
            s = row.get(stage)
            cells.append("–" if s is None else f"{s['wall_s']:.1f} s / {s['peak_rss_mb']:.0f} MB")
        rows.append(cells)
    text = md_table(
        ["images", "partition (K=4)", f"train ({r['train_steps']} steps)", "eval (n=200)"], rows
    )
    g = r["growth"]
    text += (
        f"\n\nWall time and peak memory of each stage, each its own process (interpreter start-up "
        f"and imports included: they dominate partition below 20,000 images). From the smallest to "
        f"the largest full set ({r['data_growth']:.0f}× the data): "
        f"partition {g['partition']:.2f}×, training {g['train']:.2f}× (fixed steps: should stay "
        f"flat), evaluation {g['eval']:.2f}× (the feature classifier is trained on the training "
        "part each time, and the real features are computed once per run)."
    )
    return text


BENCHMARKS = [Benchmark("scaling", "Scaling with the data size", bench_scaling, render_scaling)]
