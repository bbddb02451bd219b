"""Data larger than memory (issue 17, item 2): peak memory and time of every stage on a folder of
100,000 images of mixed sizes, read through the on-disk cache of decoded images.

A folder of RGB images 24–40 px a side (PNG and JPEG, ten class folders; a class is a hue plus
noise) is generated under the temporary directory; the smaller sizes are folders of symlinks to
its first files. For each size, each stage runs as its own ``decentdiff`` process (the way a user
runs it) with ``data.size=28`` and reports its wall time and peak resident memory (``ru_maxrss``,
i.e. VmHWM, of that process; file-backed pages of the memory-mapped cache that the process touched
count too): the first read (``decentdiff data show``, which decodes the folder into the cache),
``partition`` (k-means, K=4, on PCA features), ``train monolith`` (100 steps, preset tiny, batch
64) and ``eval`` (200 samples, 5 steps; the feature classifier is trained on the training part,
with an empty classifier cache). Opt-in: ``benchmarks/run.py --only larger_than_memory``.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_scaling import _stage
from common import Benchmark, Context, md_table, verdict

STAGES = ("decode", "partition", "train", "eval")
#: Colour data evaluate on Inception features by default; its cost is per held-out image (~40,000
#: Inception passes at 100,000 images: hours on two CPU cores), so the eval stage here uses the
#: labelled folder's classifier features at every size and Inception ("eval_inception") at the
#: smallest size only, for its peak memory.
RSS_TARGET_MB = 2048
#: eval trains the feature classifier for 8 epochs over the training part, at most
#: classifier.MAX_STEPS (2,000) steps: uncapped that was 6,250 steps at 100,000 images (20-40
#: minutes here), and eval was measured up to 25,000 images only. Now every size.
EVAL_UP_TO = 100_000
CLASSES = 10


def generate_folder(root: Path, n: int, seed: int = 0) -> float:
    """n images in CLASSES class folders (i % CLASSES), mixed sizes, half PNG, half JPEG."""
    from PIL import Image

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    hues = rng.integers(0, 256, (CLASSES, 3))
    for c in range(CLASSES):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        c = i % CLASSES
        w, h = (int(v) for v in rng.integers(24, 41, 2))
        noise = rng.integers(-40, 41, (h, w, 3))
        arr = np.clip(hues[c] + noise, 0, 255).astype(np.uint8)
        arr[h // 4 : h // 2, w // 4 : 3 * w // 4] = 255 - hues[c]  # a bar, so there is structure
        img = Image.fromarray(arr, "RGB")
        name = root / f"class{c}" / f"{i:06d}"
        if i % 2:
            img.save(f"{name}.jpg", quality=90)
        else:
            img.save(f"{name}.png", compress_level=1)
    return time.perf_counter() - t0


def subset_folder(full: Path, dest: Path, n: int) -> None:
    """The first n images of ``full`` (n / CLASSES per class) as symlinks."""
    for c in range(CLASSES):
        src = full / f"class{c}"
        (dest / f"class{c}").mkdir(parents=True, exist_ok=True)
        for name in sorted(os.listdir(src))[: n // CLASSES]:
            os.symlink(src / name, dest / f"class{c}" / name)


def bench_larger_than_memory(ctx: Context) -> dict[str, Any]:
    sizes = (5_000, 10_000) if ctx.quick else (25_000, 50_000, 100_000)
    eval_up_to = sizes[-1] if ctx.quick else EVAL_UP_TO
    out: dict[str, Any] = {
        "data_size": 28,
        "train_steps": 100,
        "preset": "tiny",
        "eval_n": 200,
        "rss_target_mb": RSS_TARGET_MB,
        "sizes": {},
    }
    base = Path(os.environ.get("DECENTDIFF_BENCH_TMP", tempfile.gettempdir()))
    tmp = Path(tempfile.mkdtemp(prefix="decentdiff-bench-mem-", dir=base))
    try:
        full = tmp / f"imgs-{sizes[-1]}"
        out["generate_s"] = generate_folder(full, sizes[-1])
        out["folder_mb"] = sum(p.stat().st_size for p in full.rglob("*") if p.is_file()) / 2**20
        print(f"larger_than_memory: generated {sizes[-1]} images in {out['generate_s']:.0f} s")
        for n in sizes:
            folder = full if n == sizes[-1] else tmp / f"imgs-{n}"
            if folder != full:
                subset_folder(full, folder, n)
            spec = f"folder:{folder}"
            cache = tmp / f"cache-{n}"
            env = {**os.environ, "DECENTDIFF_CACHE": str(cache)}
            run = str(tmp / f"run-{n}")
            size = ["--set", "data.size=28"]
            row: dict[str, Any] = {}
            row["decode"] = _stage(["data", "show", spec, *size], env, tmp)
            row["partition"] = _stage(
                ["partition", run, "--data", spec, *size, "-K", "4"], env, tmp
            )
            row["train"] = _stage(
                ["train", "monolith", run, "--preset", "tiny", "--steps", "100", "--batch", "64",
                 "--quiet"],
                env,
                tmp,
            )  # fmt: skip
            ev = ["eval", run, "--model", "monolith", "--n", "200", "--steps", "5", "--quiet"]
            if n <= eval_up_to:
                row["eval"] = _stage([*ev, "--features", "classifier"], env, tmp)
            if n == sizes[0]:
                row["eval_inception"] = _stage([*ev, "--features", "inception"], env, tmp)
            entries = list((cache / "data").glob("*/images.npy"))
            row["cache_mb"] = sum(p.stat().st_size for p in entries) / 2**20
            row["cache_entries"] = len(entries)
            out["sizes"][str(n)] = row
            print(f"larger_than_memory {n}: " + json.dumps(row), flush=True)
            shutil.rmtree(cache, ignore_errors=True)
            shutil.rmtree(run, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    first, last = str(sizes[0]), str(sizes[-1])
    grow = int(last) / int(first)
    out["data_growth"] = grow
    out["eval_up_to"] = eval_up_to
    out["growth"] = {
        s: out["sizes"][last][s]["wall_s"] / out["sizes"][first][s]["wall_s"]
        for s in STAGES
        if s in out["sizes"][last]
    }
    out["max_rss_mb"] = max(
        r[s]["peak_rss_mb"]
        for r in out["sizes"].values()
        for s in (*STAGES, "eval_inception")
        if s in r
    )
    out["rss_ok"] = out["max_rss_mb"] < RSS_TARGET_MB
    out["superlinear"] = superlinear(out["sizes"])
    out["superlinear_strict"] = superlinear(out["sizes"], 1.0)
    out["linear_ok"] = not out["superlinear"]
    return out


#: Timing noise on the shared 2-core machine: the same stage and step (decode, 25,000 → 50,000)
#: measured 2.15× and 1.62× in two runs. Growth within this factor of the data's counts as linear.
NOISE = 1.10


def superlinear(sizes: dict[str, Any], tolerance: float = NOISE) -> list[str]:
    """Every step between consecutive sizes where a stage's time grew faster than the data (by
    more than ``tolerance``: 1.0 is the strict rule)."""
    found = []
    ns = sorted(sizes, key=int)
    for a, b in itertools.pairwise(ns):
        for s in STAGES:
            if s in sizes[a] and s in sizes[b]:
                g = sizes[b][s]["wall_s"] / sizes[a][s]["wall_s"]
                if g > tolerance * int(b) / int(a):
                    found.append(
                        f"{s} {int(a):,} → {int(b):,}: {g:.2f}× for {int(b) / int(a):.0f}×"
                    )
    return found


def render_larger_than_memory(r: dict[str, Any]) -> str:
    rows = []
    for n, row in r["sizes"].items():
        cells = [f"{int(n):,}"]
        for s in STAGES:
            if s in row:
                cells.append(f"{row[s]['wall_s']:.1f} s / {row[s]['peak_rss_mb']:.0f} MB")
            else:
                cells.append("not measured")
        cells.append(f"{row['cache_mb']:.0f} MB")
        rows.append(cells)
    text = md_table(
        [
            "images",
            "first read (decode into the cache)",
            "partition (K=4)",
            f"train monolith ({r['train_steps']} steps, {r['preset']})",
            f"eval (n={r['eval_n']})",
            "cache on disk",
        ],
        rows,
    )
    g = r["growth"]
    text += (
        f"\n\nWall time / peak RSS (VmHWM) of each stage, each its own process, on a generated "
        f"folder of RGB PNG and JPEG images 24–40 px a side ({r['folder_mb']:.0f} MB for the "
        f"largest; generated in {r['generate_s']:.0f} s), read with data.size={r['data_size']}. "
        f"From the smallest to the largest size ({r['data_growth']:.0f}× the data) the times grew "
        f"{', '.join(f'{s} {g[s]:.2f}×' for s in STAGES if s in g)}. "
        f"Peak RSS under {r['rss_target_mb']} MB in every measured stage: {verdict(r['rss_ok'])} "
        f"(largest {r['max_rss_mb']:.0f} MB). Training runs a fixed number of steps, so its time "
        "should stay flat (it varies with the machine's load)."
    )
    slow = superlinear(r["sizes"])  # from the figures, between every pair of consecutive sizes
    strict = superlinear(r["sizes"], 1.0)
    text += (
        " Time per stage no faster than linear between consecutive sizes (within "
        f"{NOISE - 1:.0%}, this machine's timing noise: the same step measured 2.15× and 1.62× in "
        f"two runs): {verdict(not slow)}"
    )
    if strict and not slow:
        text += f" (strictly faster than linear, within the noise: {'; '.join(strict)})"
    if slow:
        text += f" ({'; '.join(slow)})"
        if any(x.startswith("partition") for x in slow):
            text += (
                ". Partition: the fine k-means runs full Lloyd iterations on one thread up to "
                "20,000 items and MiniBatchKMeans above (data/partition.py), so its time per image "
                "is not one curve across that switch"
            )
    text += "."
    if r["eval_up_to"] < max(int(n) for n in r["sizes"]):
        text += (
            f" **eval was measured only up to {r['eval_up_to']:,} images**: it trained the feature "
            "classifier for 8 epochs over the training part (6,250 steps at 100,000 images), which "
            "at 0.2–0.4 s a step on this shared 2-CPU machine (load average ~7) took 20–40 minutes; "
            "its RSS and time "
            "at 50,000 and 100,000 images were not measured (the targets were open for eval there)."
        )
    else:
        text += (
            " eval uses the classifier features (`--features classifier`; the folder is labelled), "
            "whose training is 8 epochs over the training part, at most 2,000 steps "
            "(evaluation/classifier.py, MAX_STEPS): from 32,000 training images on, its training "
            "time stops growing with the data."
        )
    inc = [(n, row["eval_inception"]) for n, row in r["sizes"].items() if "eval_inception" in row]
    for n, s in inc:
        text += (
            f" With Inception features (the default for colour data) eval at {int(n):,} images took "
            f"{s['wall_s']:.0f} s and peaked at {s['peak_rss_mb']:.0f} MB: Inception runs once per "
            "held-out image and once per image of an equal slice of the training part (the floor), "
            "so its time grows with the data; it is measured at the smallest size only."
        )
    return text


BENCHMARKS = [
    Benchmark(
        "larger_than_memory",
        "Data larger than memory",
        bench_larger_than_memory,
        render_larger_than_memory,
        default=False,
    )
]
