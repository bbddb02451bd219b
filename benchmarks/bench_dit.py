"""DiT vs UNet (issue 16): training speed and MFU at matched FLOPs and at matched parameters, and
classifier-FID after the same training time.

Speed: the flow-matching training step of bench_models, interleaved round-robin over every model in
one run, against the oneDNN/MKL matmul ceiling measured in the same run. The `dit-*` presets are
FLOP-matched to the UNet of the same size; the `*-params` DiTs match the UNet's parameter count.

Quality after the same time (opt-in, ``--only dit_quality``): a wall-time budget T is turned into
steps for each model from its interleaved img/s (steps = T·img/s / batch), so the other jobs that
share the two cores during training cannot tilt the comparison; each model is then trained with
``decentdiff train monolith`` on mnist5k and scored with ``decentdiff eval`` (classifier features,
held-out reference), 3 seeds.
"""

from __future__ import annotations

import json
import math
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from bench_models import BATCH, _cli, matmul_fns, train_flops, train_step_fn
from common import Benchmark, Context, interleaved, md_table

from decentdiff.models.dit import DiT, DiTConfig
from decentdiff.models.registry import build_network, count_params, network_config

MATMUL_N = 2048
#: UNet size -> a DiT/2 with about its parameters (the dit-* preset matches its FLOPs instead)
PARAM_MATCHED = {
    "compact": DiTConfig(dim=80, depth=6, heads=4),
    "small": DiTConfig(dim=128, depth=8, heads=4),
}
PAIRS = ("tiny", "compact", "small")
QUALITY_PAIRS = ("tiny", "compact")
QUALITY_BUDGET_S = 90.0  # idle-machine seconds of training per model
QUALITY_BATCH = 64
QUALITY_N = 500
QUALITY_SAMPLE_STEPS = 50  # Euler steps per sample (sample.steps' default)
SEEDS = (0, 1, 2)


def models() -> dict[str, torch.nn.Module]:
    out: dict[str, torch.nn.Module] = {}
    for size in PAIRS:
        torch.manual_seed(0)
        out[size] = build_network(network_config(size, 1))
        out[f"dit-{size}"] = build_network(network_config(f"dit-{size}", 1))
        if size in PARAM_MATCHED:
            out[f"dit-{size}-params"] = DiT(PARAM_MATCHED[size])
    out["dit-tiny-params"] = out["dit-tiny"]  # dit-tiny matches both (80k vs 87k parameters)
    return out


def bench_speed(ctx: Context) -> dict[str, Any]:
    rounds = 2 if ctx.quick else 6
    ms = {k: v for k, v in models().items() if k != "dit-tiny-params"}
    flops = {k: train_flops(m) for k, m in ms.items()}
    items: dict[str, Any] = matmul_fns(MATMUL_N)
    reps = dict.fromkeys(items, 3)
    for k, m in ms.items():
        items[k] = train_step_fn(m)
        reps[k] = 1 if flops[k] > 2e11 else 2 if flops[k] > 5e10 else 4
    t0 = time.perf_counter()
    times = interleaved(items, rounds=rounds, reps=reps)
    ceiling = max(2 * MATMUL_N**3 / times[k]["best_s"] / 1e9 for k in items if "matmul" in k)
    out = {}
    for k, m in ms.items():
        best, med = times[k]["best_s"], times[k]["median_s"]
        out[k] = {
            "params": count_params(m),
            "gflop_per_img": flops[k] / BATCH / 1e9,
            "img_s": BATCH / best,
            "img_s_median": BATCH / med,
            "mfu": flops[k] / best / 1e9 / ceiling,
        }
    return {
        "batch": BATCH,
        "rounds": rounds,
        "ceiling_gflops": ceiling,
        "models": out,
        "seconds": time.perf_counter() - t0,
    }


HEADERS = ["model", "matched to the UNet's", "params", "GFLOP/img (fwd+bwd)", "img/s", "MFU",
           "img/s vs UNet"]  # fmt: skip


def render_speed(r: dict[str, Any]) -> str:
    m = r["models"]
    rows = []
    for size in PAIRS:
        u = m[size]
        for k in (size, f"dit-{size}", f"dit-{size}-params"):
            if k not in m:
                continue
            x = m[k]
            match = ("" if k == size else "FLOPs" if k == f"dit-{size}" else "parameters") + (
                " (and parameters)" if k == "dit-tiny" else ""
            )
            rows.append([
                k, match, f"{x['params'] / 1e6:.2f}M", f"{x['gflop_per_img']:.3f}",
                f"{x['img_s']:.0f} ({x['img_s_median']:.0f})", f"{x['mfu']:.2f}",
                "" if k == size else f"{x['img_s'] / u['img_s']:.2f}",
            ])  # fmt: skip
    ratios = [
        m[k]["img_s"] / m[size]["img_s"]
        for size in PAIRS
        for k in (f"dit-{size}", f"dit-{size}-params")
        if k in m
    ]
    return "\n".join(
        [
            f"Flow-matching training step, batch {r['batch']}, 1×28×28, {r['rounds']} interleaved "
            "rounds (best-of img/s, median in brackets); MFU against the fp32 matmul ceiling "
            f"measured in the same run ({r['ceiling_gflops']:.0f} GFLOP/s). FLOPs by the project's "
            "counter, which includes the attention products on the CPU.",
            "",
            md_table(HEADERS, rows),
            "",
            f"Every DiT ran at {min(ratios):.2f}-{max(ratios):.2f}x the img/s of its UNet.",
            *_noise(m, r),
        ]
    )


def _noise(m: dict[str, Any], r: dict[str, Any]) -> list[str]:
    """A warning when other jobs shared the cores: best-of and median img/s > 1.5x apart."""
    noisy = [k for k, x in m.items() if x["img_s"] > 1.5 * x["img_s_median"]]
    if not noisy:
        return []
    return [
        "",
        f"**Noisy run** ({r['rounds']} rounds; best-of and median more than 1.5x apart for "
        f"{', '.join(noisy)}): other jobs shared the two cores during the run, so read the "
        "ratios as rough.",
    ]


def _monolith(run: Path, preset_args: list[str], steps: int, seed: int, root: Path) -> dict:
    args = ["train", "monolith", str(run), "--data", "mnist5k", *preset_args, "--steps",
            str(steps), "--batch", str(QUALITY_BATCH), "--seed", str(seed), "-q"]  # fmt: skip
    subprocess.run(_cli(root, *args), check=True, cwd=root, capture_output=True)
    ev = ["eval", str(run), "--model", "monolith", "--n", str(QUALITY_N), "--seed", str(seed),
          "--steps", str(QUALITY_SAMPLE_STEPS), "--solver", "euler", "-q"]  # fmt: skip
    subprocess.run(_cli(root, *ev), check=True, cwd=root, capture_output=True)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    row = [x for x in rows if x.get("kind") == "eval"][-1]
    return {"fid": row["fid"], "floor": (row.get("floor") or {}).get("fid"), "steps": steps}


def bench_quality(ctx: Context) -> dict[str, Any]:
    root = Path(ctx.root)
    speed = ctx.results.get("benchmarks", {}).get("dit_speed", {}).get("models")
    if not speed:
        speed = bench_speed(ctx)["models"]
    out: dict[str, Any] = {"budget_s": QUALITY_BUDGET_S, "batch": QUALITY_BATCH, "n": QUALITY_N,
                           "sample_steps": QUALITY_SAMPLE_STEPS}  # fmt: skip
    cells: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="dit-quality-") as tmp:
        for size in QUALITY_PAIRS:
            for name in (size, f"dit-{size}"):
                # training images per second at batch 128 convert to steps at the quality batch
                steps = max(1, math.floor(QUALITY_BUDGET_S * speed[name]["img_s"] / QUALITY_BATCH))
                per_seed = [
                    _monolith(Path(tmp) / f"{name}-{s}", ["--preset", name], steps, s, root)
                    for s in SEEDS
                ]
                fids = [p["fid"] for p in per_seed]
                mean = sum(fids) / len(fids)
                std = (sum((f - mean) ** 2 for f in fids) / (len(fids) - 1)) ** 0.5
                cells[name] = {"steps": steps, "fids": fids, "mean": mean, "std": std,
                               "floor": per_seed[0]["floor"]}  # fmt: skip
    out["cells"] = cells
    return out


def render_quality(r: dict[str, Any]) -> str:
    rows = []
    for size in QUALITY_PAIRS:
        u = r["cells"][size]
        for name in (size, f"dit-{size}"):
            c = r["cells"][name]
            ratio = "" if name == size else f"{c['mean'] / u['mean']:.2f}"
            rows.append([name, c["steps"], f"{c['mean']:.2f} ± {c['std']:.2f}",
                         ", ".join(f"{f:.2f}" for f in c["fids"]), ratio])  # fmt: skip
    floor = next(iter(r["cells"].values()))["floor"]
    return "\n".join(
        [
            f"The same {r['budget_s']:.0f} s of training on an idle machine (steps from each "
            f"model's interleaved img/s), batch {r['batch']}, mnist5k; classifier-FID of "
            f"{r['n']} samples ({r.get('sample_steps', 50)} Euler steps) against the held-out "
            "images (floor "
            f"{floor:.2f}); mean ± std over 3 seeds.",
            "",
            md_table(["model", "steps", "FID", "per seed", "FID vs UNet"], rows),
            "",
            "In the same time every DiT scored "
            + ", ".join(
                f"{r['cells'][f'dit-{z}']['mean'] / r['cells'][z]['mean']:.1f}x"
                for z in QUALITY_PAIRS
            )
            + " its UNet's FID: it takes fewer steps in the time (its img/s is lower) and learns "
            "less per step at this scale (docs/reproduction.md, study 14). Reproduce (opt-in, "
            "about 30 min on an idle 2-core machine): `.venv/bin/python benchmarks/run.py --only "
            "dit_quality`; it takes each model's img/s from the `dit_speed` section of "
            "results.json.",
        ]
    )


BENCHMARKS = [
    Benchmark("dit_speed", "DiT vs UNet: training speed and MFU", bench_speed, render_speed),
    Benchmark(
        "dit_quality",
        "DiT vs UNet: FID after the same training time",
        bench_quality,
        render_quality,
        default=False,
    ),
]
