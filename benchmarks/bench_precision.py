"""bf16 vs fp32 (issue 16, item 4): training and sampling img/s per preset, interleaved, and FID
at equal steps of ``small`` on mnist5k, trained and scored with the command line.

The speed figures are what ``--precision auto`` is built on (:mod:`decentdiff.precision`): bf16
where it wins, fp32 where it does not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from bench_models import BATCH, CHANNELS, RES, _preset_model, train_step_fn
from common import Benchmark, Context, interleaved, md_table, verdict

from decentdiff.diffusion.paths import FlowMatching
from decentdiff.precision import BF16_MIN_FORWARD_FLOPS, autocast, autocast_velocity, fast_bf16

PRESETS = ("tiny", "compact", "small", "base")
SAMPLE_BATCH = 256  # sample.batch's default: the batch `sample` and `eval` run the network at
TARGET_SPEED, TARGET_FID = 1.3, 1.05

# FID at equal steps: `small` (where bf16 is faster), trained from scratch with each precision.
FID_PRESET, FID_STEPS, FID_SEEDS, FID_N = "small", 250, (0, 1, 2), 1000
FID_ROOT = "runs/bench-precision"


def _bf16_train_step(model: torch.nn.Module, batch: int = BATCH):
    """:func:`bench_models.train_step_fn` with the loss under bf16 autocast (as the loop does)."""
    fm = FlowMatching()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(batch, CHANNELS, RES, RES, generator=g) * 2 - 1

    def step() -> None:
        with autocast("bf16", "cpu"):
            loss = fm.loss(model, x0, None, g)
        opt.zero_grad(set_to_none=True)
        loss.float().backward()
        opt.step()

    return step


def _sample_call(model: torch.nn.Module, precision: str):
    """One network call of sampling (a velocity evaluation at batch SAMPLE_BATCH, no gradient)."""
    v = autocast_velocity(FlowMatching().velocity(model.eval()), precision, "cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SAMPLE_BATCH, CHANNELS, RES, RES, generator=g)
    t = torch.full((SAMPLE_BATCH,), 0.5)

    def call() -> None:
        with torch.no_grad():
            v(x, t, None)

    return call


def _speed(quick: bool) -> dict[str, Any]:
    rounds = 2 if quick else 4
    out: dict[str, Any] = {}
    for p in PRESETS:
        m32, m16 = _preset_model(p), _preset_model(p)
        reps = 1 if p == "base" else 2
        tr = interleaved(
            {"fp32": train_step_fn(m32), "bf16": _bf16_train_step(m16)}, rounds=rounds, reps=reps
        )
        net = _preset_model(p)
        sa = interleaved(
            {"fp32": _sample_call(net, "fp32"), "bf16": _sample_call(net, "bf16")},
            rounds=rounds,
            reps=reps,
        )
        from decentdiff.evaluation.flops import forward_flops

        fwd = forward_flops(net, (torch.zeros(2, CHANNELS, RES, RES), torch.full((2,), 0.5), None))
        out[p] = {
            "forward_gflop_per_img": fwd / 2 / 1e9,
            "train_img_s": {k: BATCH / v["best_s"] for k, v in tr.items()},
            "train_ratio": tr["fp32"]["best_s"] / tr["bf16"]["best_s"],
            "train_ratio_median": tr["fp32"]["median_s"] / tr["bf16"]["median_s"],
            "sample_img_s": {k: SAMPLE_BATCH / v["best_s"] for k, v in sa.items()},
            "sample_ratio": sa["fp32"]["best_s"] / sa["bf16"]["best_s"],
            "sample_ratio_median": sa["fp32"]["median_s"] / sa["bf16"]["median_s"],
            "auto": "bf16" if fast_bf16("cpu") and fwd / 2 >= BF16_MIN_FORWARD_FLOPS else "fp32",
        }
        print(f"[bench] precision {p}: {out[p]['train_ratio']:.2f}x train", file=sys.stderr)
    return {"rounds": rounds, "presets": out}


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root / "src"), env.get("PYTHONPATH", "")]).strip(
        os.pathsep
    )
    cmd = [sys.executable, "-m", "decentdiff", *args]
    return subprocess.run(cmd, check=True, cwd=root, capture_output=True, text=True, env=env)


def _eval_row(run: Path, seed: int, precision: str) -> dict[str, Any] | None:
    """The last eval row of RUN for this bench's settings, or None."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    rows = [
        r
        for r in rows
        if r.get("kind") == "eval"
        and r.get("n") == FID_N
        and r.get("seed") == seed
        and r.get("steps") == 50
        and r.get("sample_precision") == precision
    ]
    return rows[-1] if rows else None


def _trained(run: Path, steps: int, seed: int, precision: str) -> bool:
    """RUN/monolith already holds this bench's model (then it is reused, not retrained)."""
    meta_path = run / "monolith" / "meta.json"
    if not meta_path.is_file():
        return False
    meta = json.loads(meta_path.read_text())
    t = meta.get("train", {})
    return (
        meta.get("step") == steps
        and meta.get("precision") == precision
        and t.get("seed") == seed
        and t.get("batch") == 128
        and meta.get("model", {}).get("preset") == FID_PRESET
    )


def _fid(root: Path, quick: bool) -> dict[str, Any]:
    """Per seed: `small` trained FID_STEPS steps in fp32 and in bf16 (the same seed), each scored
    by `decentdiff eval` in its own precision; the fp32 model also sampled in bf16."""
    steps = 30 if quick else FID_STEPS
    seeds = FID_SEEDS[:1] if quick else FID_SEEDS
    runs = []
    for seed in seeds:
        row: dict[str, Any] = {"seed": seed}
        for prec in ("fp32", "bf16"):
            run = root / FID_ROOT / f"{prec}-s{seed}"
            reused = _trained(run, steps, seed, prec)
            if not reused:
                _cli(
                    root,
                    "train", "monolith", str(run), "--data", "mnist5k", "--preset", FID_PRESET,
                    "--steps", str(steps), "--seed", str(seed), "--precision", prec, "--fresh",
                    "-q",
                )  # fmt: skip
            meta = json.loads((run / "monolith" / "meta.json").read_text())
            logged = [
                json.loads(x) for x in (run / "monolith" / "metrics.jsonl").read_text().splitlines()
            ]
            # The loop's own img/s over the run (its last row), as the quality section does.
            row[f"train_img_s_{prec}"] = logged[-1]["img_per_s"]
            row[f"loss_{prec}"] = meta.get("loss")
            row[f"reused_{prec}"] = reused
            evals = [prec] if prec == "bf16" else ["fp32", "bf16"]
            for sp in evals:
                ev = None if not reused else _eval_row(run, seed, sp)
                if ev is None:
                    _cli(
                        root,
                        "eval", str(run), "--model", "monolith", "--n", str(FID_N), "--seed",
                        str(seed), "--precision", sp, "-q",
                    )  # fmt: skip
                    ev = _eval_row(run, seed, sp)
                key = f"{prec}_train_{sp}_sample"
                row[key] = {
                    "fid": ev["fid"],
                    "kid_mean": ev["kid_mean"],
                    "sample_wall_s": ev["sample_wall_s"],
                    "sample_precision": ev.get("sample_precision"),
                    "floor_fid": ev["floor"]["fid"],
                }
        runs.append(row)
        print(f"[bench] precision FID seed {seed}: {row}", file=sys.stderr)
    fid32 = [r["fp32_train_fp32_sample"]["fid"] for r in runs]
    fid16 = [r["bf16_train_bf16_sample"]["fid"] for r in runs]
    cross = [r["fp32_train_bf16_sample"]["fid"] for r in runs]
    per_seed = [b / a for a, b in zip(fid32, fid16, strict=True)]
    return {
        "preset": FID_PRESET,
        "steps": steps,
        "per_seed_ratio": per_seed,
        "ratio_interval95": _t_interval(per_seed),
        "batch": 128,
        "n": FID_N,
        "sample_steps": 50,
        "runs": runs,
        "fid_ratio": (sum(fid16) / len(fid16)) / (sum(fid32) / len(fid32)),
        "fid_ratio_sampling_only": (sum(cross) / len(cross)) / (sum(fid32) / len(fid32)),
    }


def _t_interval(xs: list[float]) -> list[float] | None:
    """95% Student-t interval of the mean of xs (None for fewer than two values)."""
    if len(xs) < 2:
        return None
    from scipy import stats

    n = len(xs)
    mean = sum(xs) / n
    sd = (sum((x - mean) ** 2 for x in xs) / (n - 1)) ** 0.5
    half = float(stats.t.ppf(0.975, n - 1)) * sd / n**0.5
    return [mean - half, mean + half]


def bench_precision(ctx: Context) -> dict[str, Any]:
    from common import machine_info

    return {
        "fast_bf16_cpu": fast_bf16("cpu"),
        "simd": machine_info()["simd"],
        "min_forward_gflop": BF16_MIN_FORWARD_FLOPS / 1e9,
        "speed": _speed(ctx.quick),
    }


def bench_precision_fid(ctx: Context) -> dict[str, Any]:
    return _fid(Path(ctx.root), ctx.quick)


def render_precision(r: dict[str, Any]) -> str:
    sp = r["speed"]
    rows = []
    for p, v in sp["presets"].items():
        rows.append(
            [
                p,
                f"{v['forward_gflop_per_img']:.3f}",
                f"{v['train_img_s']['fp32']:.0f} / {v['train_img_s']['bf16']:.0f}",
                f"**{v['train_ratio']:.2f}×** ({v['train_ratio_median']:.2f}×)",
                f"{v['sample_img_s']['fp32']:.0f} / {v['sample_img_s']['bf16']:.0f}",
                f"**{v['sample_ratio']:.2f}×** ({v['sample_ratio_median']:.2f}×)",
                verdict(min(v["train_ratio"], v["sample_ratio"]) >= TARGET_SPEED),
                v["auto"],
            ]
        )
    lines = [
        "`--precision bf16` (torch.autocast around the network calls; weights, optimizer, EMA, "
        "checkpoints and the sampler's x stay fp32) against fp32. Training: the flow-matching "
        f"step (loss, backward, AdamW), batch {BATCH}; sampling: one network call at batch "
        f"{SAMPLE_BATCH} (`sample.batch`), no gradient. {sp['rounds']} interleaved rounds, "
        "best-of ratios (median in brackets). CPU bf16 units: "
        f"{', '.join(x for x in r['simd'] if 'bf16' in x or 'amx' in x) or 'none'}.",
        "",
        md_table(
            [
                "preset",
                "fwd GFLOP/img",
                "train img/s fp32 / bf16",
                "train bf16÷fp32",
                "sample img/s fp32 / bf16",
                "sample bf16÷fp32",
                f"≥ {TARGET_SPEED}×",
                "auto picks",
            ],
            rows,
        ),
        "",
    ]
    noisy = [
        f"{p} {v[k]:.2f}× vs {v[k + '_median']:.2f}×"
        for p, v in sp["presets"].items()
        for k in ("train_ratio", "sample_ratio")
        if max(v[k], v[k + "_median"]) > 1.5 * min(v[k], v[k + "_median"])
    ]
    if noisy:
        lines += [
            "",
            "**Noisy run**: best-of and median ratios disagree by more than 1.5× ("
            + "; ".join(noisy)
            + "): other jobs shared the two cores during this run, so read these ratios as "
            "rough.",
        ]
    lines += [
        "",
        f"`auto` = bf16 for a network of ≥ {r['min_forward_gflop']:.2f} forward GFLOP per image "
        "on a device with fast bf16 (here: AMX tiles "
        f"{'present' if r['fast_bf16_cpu'] else 'absent'}), else fp32: the small presets spend "
        "more on the casts than bf16 saves them.",
    ]
    return "\n".join(lines)


def render_precision_fid(f: dict[str, Any]) -> str:
    lines: list[str] = []
    if f:
        frows = []
        for run in f["runs"]:
            a, b, c = (
                run["fp32_train_fp32_sample"],
                run["bf16_train_bf16_sample"],
                run["fp32_train_bf16_sample"],
            )
            frows.append(
                [
                    run["seed"],
                    f"{a['fid']:.2f}",
                    f"{b['fid']:.2f}",
                    f"{c['fid']:.2f}",
                    f"{run['train_img_s_fp32']:.0f} / {run['train_img_s_bf16']:.0f}",
                    f"{a['sample_wall_s']:.0f} / {b['sample_wall_s']:.0f}",
                    f"{a['floor_fid']:.2f}",
                ]
            )
        ok = f["fid_ratio"] <= TARGET_FID
        lines += [
            "",
            f"FID at equal steps: `{f['preset']}` trained {f['steps']} steps × batch {f['batch']} "
            "on mnist5k with `decentdiff train monolith --precision P --seed S`, scored by "
            f"`decentdiff eval --model monolith --n {f['n']} --precision P` (Euler, "
            f"{f['sample_steps']} steps, classifier features, EMA weights). Train seed = sample "
            "seed = S. *fp32 → bf16 sampling*: the fp32-trained model sampled in bf16 (sampling's "
            "share of the difference). Training img/s is the loop's own figure over the run; "
            "sampling seconds are `eval`'s (the 1,000 samples); both from a machine other jobs may "
            "share, so the interleaved speed section above is the better speed figure.",
            "",
            md_table(
                [
                    "seed",
                    "FID fp32",
                    "FID bf16",
                    "FID fp32 → bf16 sampling",
                    "train img/s fp32 / bf16",
                    "sample s fp32 / bf16",
                    "floor",
                ],
                frows,
            ),
            "",
            f"FID ratio bf16 ÷ fp32 (of the mean FIDs): **{f['fid_ratio']:.3f}** (target ≤ {TARGET_FID}: "
            f"{verdict(ok)}); sampling alone in bf16: {f['fid_ratio_sampling_only']:.3f}."
            + (
                " Per seed: "
                + ", ".join(f"{x:.3f}" for x in f["per_seed_ratio"])
                + "; their mean "
                + f"{sum(f['per_seed_ratio']) / len(f['per_seed_ratio']):.3f}, 95% t-interval "
                + "{:.3f}–{:.3f}".format(*f["ratio_interval95"])
                + (
                    " (the interval crosses the target: not settled by these seeds)."
                    if f["ratio_interval95"][0] <= TARGET_FID < f["ratio_interval95"][1]
                    else " (the whole interval is above the target)."
                    if f["ratio_interval95"][0] > TARGET_FID
                    else " (the whole interval is within the target)."
                )
                if f.get("ratio_interval95")
                else ""
            )
            + (
                " The models and eval rows were reused from an earlier identical run in "
                f"`{FID_ROOT}` (delete it to retrain)."
                if all(run.get("reused_fp32") and run.get("reused_bf16") for run in f["runs"])
                else ""
            )
            + (
                " One seed only (the time budget on a shared 2-core machine): the "
                "ratio carries the noise of one training run and one 1,000-sample FID, which "
                "this section does not measure."
                if len(f["runs"]) == 1
                else ""
            ),
        ]
    return "\n".join(lines)


BENCHMARKS = [
    Benchmark(
        "precision", "bf16 vs fp32 (`--precision`): speed", bench_precision, render_precision
    ),
    Benchmark(
        "precision_fid",
        "bf16 vs fp32 (`--precision`): FID at equal steps",
        bench_precision_fid,
        render_precision_fid,
    ),
]
