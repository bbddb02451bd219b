"""Model benchmarks: the matmul ceiling, training speed and MFU per preset, the diffusers baseline,
peak memory per preset, and (opt-in) the 10-minute quality run of the ``small`` preset.
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

import torch
from common import Benchmark, Context, interleaved, md_table, verdict
from torch import Tensor, nn

from decentdiff.diffusion.paths import FlowMatching
from decentdiff.models.registry import PRESETS, build_network, count_params, network_config

BATCH, RES, CHANNELS = 128, 28, 1  # 28×28×1 MNIST-sized training batches
MATMUL_N = 2048
TARGET_MFU_SMALL = 0.6
TARGET_VS_DIFFUSERS = 1.5


# ------------------------------------------------------------------ helpers
def matmul_fns(n: int = MATMUL_N) -> dict[str, Any]:
    """fp32 n×n matrix products through torch.mm (MKL here) and through oneDNN, when available.

    On AMD CPUs MKL may take its AVX2 path while oneDNN (which runs torch's CPU convolutions) uses
    AVX-512, so the oneDNN product can be about twice as fast: the ceiling is the faster of the two.
    """
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    fns = {"matmul_mm": lambda: a @ b}
    try:
        am, bm = a.to_mkldnn(), b.to_mkldnn()
        out = torch._C._nn.mkldnn_linear(am, bm, None).to_dense()  # a @ b.T
        if torch.allclose(out, a @ b.T, atol=1e-2, rtol=1e-3):
            fns["matmul_onednn"] = lambda: torch._C._nn.mkldnn_linear(am, bm, None)
    except (AttributeError, RuntimeError, TypeError):
        pass
    return fns


class _DiffusersVelocity(nn.Module):
    """diffusers' UNet2DModel behind decentdiff's ``model(x, t, cond)`` (t ∈ [0, 1] → 0..1000)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.unet(x, t * 1000).sample


def diffusers_matched(target_params: int) -> tuple[nn.Module, dict[str, Any]] | None:
    """A standard diffusers UNet2DModel whose parameter count is closest to ``target_params``.

    Three levels of widths (c, 2c, 4c), one ResNet layer per block, attention at the lowest
    resolution only with 64-channel heads, GroupNorm with 8 groups: decentdiff's own choices, so
    the comparison is of implementations, not of settings. (diffusers' default 8-channel heads
    measured about 10% slower here, and channels_last weights did not help it.) Returns None when
    diffusers is absent.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from diffusers import UNet2DModel
    except ImportError:
        return None
    import diffusers

    best = None
    for c in (16, 32, 48, 64):  # 4c splits into 64-channel heads
        kw = dict(
            sample_size=RES,
            in_channels=CHANNELS,
            out_channels=CHANNELS,
            block_out_channels=(c, 2 * c, 4 * c),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
            norm_num_groups=8,
            attention_head_dim=64,
        )
        torch.manual_seed(0)
        m = UNet2DModel(**kw)
        p = count_params(m)
        if best is None or abs(p - target_params) < abs(best[1] - target_params):
            best = (m, p, kw)
    m, p, kw = best
    info = {
        "diffusers": diffusers.__version__,
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()},
        "params": p,
        "params_ratio_to_small": p / target_params,
    }
    return _DiffusersVelocity(m), info


def train_step_fn(model: nn.Module, batch: int = BATCH):
    """One flow-matching training step (loss, backward, AdamW) on a fixed batch."""
    fm = FlowMatching()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(batch, CHANNELS, RES, RES, generator=g) * 2 - 1

    def step() -> None:
        loss = fm.loss(model, x0, None, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def train_flops(model: nn.Module, batch: int = BATCH) -> float:
    """FLOPs of one forward + backward of the flow-matching loss (torch.utils.flop_counter)."""
    from decentdiff.evaluation.flops import flop_counter

    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(batch, CHANNELS, RES, RES, generator=g) * 2 - 1
    counter = flop_counter()
    with counter:
        FlowMatching().loss(model, x0, None, g).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def _preset_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return build_network(network_config(name, CHANNELS))


# ------------------------------------------------------------------ training speed and MFU
def bench_train(ctx: Context) -> dict[str, Any]:
    rounds = 2 if ctx.quick else 8
    models: dict[str, nn.Module] = {p: _preset_model(p) for p in PRESETS}
    baseline = diffusers_matched(count_params(models["small"]))
    notes = []
    diff_info = None
    if baseline is None:
        notes.append("diffusers is not installed: the baseline comparison was skipped")
    else:
        models["diffusers"], diff_info = baseline
    flops = {k: train_flops(m) for k, m in models.items()}
    items: dict[str, Any] = matmul_fns()
    reps = dict.fromkeys(items, 3)
    for k, m in models.items():
        items[k] = train_step_fn(m)
        # about a second of work per item per round, at least one step
        reps[k] = 1 if flops[k] > 2e11 else 2 if flops[k] > 5e10 else 4
    t0 = time.perf_counter()
    times = interleaved(items, rounds=rounds, reps=reps)
    mm_flops = 2 * MATMUL_N**3
    matmul = {
        k: {
            "gflops": mm_flops / times[k]["best_s"] / 1e9,
            "gflops_median": mm_flops / times[k]["median_s"] / 1e9,
        }
        for k in items
        if k.startswith("matmul")
    }
    ceiling = max(v["gflops"] for v in matmul.values())
    out_models = {}
    for k, m in models.items():
        tb, tm = times[k]["best_s"], times[k]["median_s"]
        gflops = flops[k] / tb / 1e9
        out_models[k] = {
            "params": count_params(m),
            "gflop_per_img": flops[k] / BATCH / 1e9,
            "img_s": BATCH / tb,
            "img_s_median": BATCH / tm,
            "gflops": gflops,
            "mfu": gflops / ceiling,
            "mfu_vs_mm": gflops / matmul["matmul_mm"]["gflops"],
            "config": PRESETS[k].to_dict() if k in PRESETS else diff_info["config"],
        }
    res: dict[str, Any] = {
        "batch": BATCH,
        "image": [CHANNELS, RES, RES],
        "rounds": rounds,
        "seconds": time.perf_counter() - t0,
        "matmul": matmul,
        "ceiling_gflops": ceiling,
        "models": out_models,
        "targets": {"small_mfu": TARGET_MFU_SMALL, "small_vs_diffusers": TARGET_VS_DIFFUSERS},
        "notes": notes,
    }
    if diff_info is not None:
        s, d = out_models["small"], out_models["diffusers"]
        res["diffusers"] = diff_info
        res["small_vs_diffusers"] = s["img_s"] / d["img_s"]
        res["small_vs_diffusers_median"] = s["img_s_median"] / d["img_s_median"]
    return res


def render_train(r: dict[str, Any]) -> str:
    mm = r["matmul"]
    lines = [
        f"Flow-matching training step (loss, backward, AdamW), batch {r['batch']}, images "
        f"{'×'.join(map(str, r['image']))}; {r['rounds']} interleaved rounds, best-of times "
        "(median in brackets). FLOPs per step from `torch.utils.flop_counter.FlopCounterMode` "
        "(one forward + backward); MFU = achieved GFLOP/s ÷ the fp32 matmul ceiling below.",
        "",
        md_table(
            ["fp32 matmul 2048²", "GFLOP/s"],
            [
                [k.removeprefix("matmul_"), f"{v['gflops']:.0f} ({v['gflops_median']:.0f})"]
                for k, v in mm.items()
            ],
        ),
        "",
        f"Ceiling used for MFU: **{r['ceiling_gflops']:.0f} GFLOP/s**. `mm` is `torch.mm` (MKL); "
        "`onednn` is the same product through oneDNN, the library that runs torch's CPU "
        "convolutions. On AMD CPUs MKL can run its AVX2 code while oneDNN uses AVX-512, so the "
        "`mm` figure alone understates the machine and would give MFUs above 1 "
        "(column *vs mm*).",
        "",
    ]
    rows = []
    small_mfu_ok = None
    for k, m in r["models"].items():
        target = ""
        if k == "small":
            small_mfu_ok = m["mfu"] >= r["targets"]["small_mfu"]
            target = f"≥ {r['targets']['small_mfu']} ({verdict(small_mfu_ok)})"
        rows.append(
            [
                k,
                f"{m['params'] / 1e6:.2f}M",
                f"{m['gflop_per_img']:.2f}",
                f"{m['img_s']:.0f} ({m['img_s_median']:.0f})",
                f"{m['gflops']:.0f}",
                f"{m['mfu']:.2f}",
                target,
                f"{m['mfu_vs_mm']:.2f}",
            ]
        )
    lines.append(
        md_table(
            [
                "model",
                "params",
                "GFLOP/img (fwd+bwd)",
                "img/s",
                "GFLOP/s",
                "MFU",
                "target",
                "vs mm",
            ],
            rows,
        )
    )
    if "small_vs_diffusers" in r:
        ratio = r["small_vs_diffusers"]
        d = r["diffusers"]
        cfg = d["config"]
        ok = ratio >= r["targets"]["small_vs_diffusers"]
        lines += [
            "",
            f"**small vs diffusers: {ratio:.2f}× the img/s** (median {r['small_vs_diffusers_median']:.2f}×); "
            f"target ≥ {r['targets']['small_vs_diffusers']}× — {verdict(ok)}. Baseline: diffusers "
            f"{d['diffusers']} `UNet2DModel(block_out_channels={tuple(cfg['block_out_channels'])}, "
            f"layers_per_block={cfg['layers_per_block']}, attention at the lowest level, "
            f"attention_head_dim={cfg.get('attention_head_dim', 8)}, "
            f"norm_num_groups={cfg['norm_num_groups']})`, {d['params'] / 1e6:.2f}M parameters "
            f"({d['params_ratio_to_small']:.2f}× small's), same loss, batch and optimizer.",
        ]
    for n in r.get("notes", []):
        lines += ["", f"Note: {n}."]
    return "\n".join(lines)


# ------------------------------------------------------------------ peak memory
def _status_mb(key: str) -> float | None:
    """A memory figure of this process from /proc/self/status (Linux), in MB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def memory_child(name: str, steps: int = 3) -> dict[str, Any]:
    """Run in a fresh process: peak RSS while training preset ``name`` for ``steps`` steps.

    Uses the kernel's high-water mark (VmHWM), reset after the model is built, so the figure is
    the training's own peak; ``ru_maxrss`` would carry the parent's size across fork and exec.
    """
    if name == "diffusers":
        matched = diffusers_matched(count_params(_preset_model("small")))
        if matched is None:
            return {"skipped": "diffusers is not installed"}
        model = matched[0]
    else:
        model = _preset_model(name)
    before = _status_mb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS to the current RSS (Linux ≥ 4.0)
        how = "VmHWM"
    except OSError:
        how = None
    step = train_step_fn(model)
    for _ in range(steps):
        step()
    peak = _status_mb("VmHWM") if how else None
    if peak is None or before is None:  # not Linux: the process's lifetime peak
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak, how = (kb / 1024 if sys.platform != "darwin" else kb / 2**20), "ru_maxrss"
        before = before or 0.0
    return {"peak_rss_mb": peak, "before_training_mb": before, "steps": steps, "how": how}


def bench_memory(ctx: Context) -> dict[str, Any]:
    out = {}
    for name in [*PRESETS, "diffusers"]:
        cmd = [sys.executable, str(Path(__file__).with_name("run.py")), "--memory-child", name]
        p = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ctx.root)
        if p.returncode != 0:
            out[name] = {"error": (p.stderr.strip().splitlines() or ["failed"])[-1]}
            continue
        out[name] = json.loads(p.stdout.strip().splitlines()[-1])
    return {"batch": BATCH, "models": out}


def render_memory(r: dict[str, Any]) -> str:
    steps = next(iter(r["models"].values())).get("steps", 3)
    rows = []
    for k, m in r["models"].items():
        if "peak_rss_mb" in m:
            rows.append(
                [k, f"{m['peak_rss_mb']:.0f}", f"{m['peak_rss_mb'] - m['before_training_mb']:.0f}"]
            )
        else:
            rows.append([k, m.get("skipped") or m.get("error"), ""])
    return (
        "Peak resident memory (the kernel's VmHWM, reset once the model is built) of a fresh "
        f"process that builds the model and runs {steps} training steps at batch {r['batch']}; "
        "*training* is that peak minus the resident memory just before the first step (imports, "
        "model). No target.\n\n" + md_table(["model", "peak RSS (MB)", "training (MB)"], rows)
    )


# ------------------------------------------------------------------ 10-minute quality run
QUALITY_STEPS, QUALITY_BATCH = 1500, 128  # about ten minutes of `small` on two idle cores
QUALITY_RUN = "runs/bench-small-10min"
FIGURE = "docs/figures/small-10min.png"


def _cli(root: Path, *args: str) -> list[str]:
    exe = Path(sys.executable).with_name("decentdiff")
    return [str(exe) if exe.exists() else "decentdiff", *args]


def bench_quality(ctx: Context) -> dict[str, Any]:
    """Train ``small`` on mnist5k with the CLI for about ten minutes, sample 64, keep the grid.

    A finished run of the same architecture and steps in ``QUALITY_RUN`` is reused (delete the
    folder to retrain); the training time is read from the run's own metrics either way.
    """
    root = Path(ctx.root)
    run = root / QUALITY_RUN
    train_args = [
        "train",
        "monolith",
        QUALITY_RUN,
        "--data",
        "mnist5k",
        "--preset",
        "small",
        "--steps",
        str(QUALITY_STEPS),
        "--batch",
        str(QUALITY_BATCH),
    ]
    sample_args = [
        "sample",
        QUALITY_RUN,
        "--model",
        "monolith",
        "--n",
        "64",
        "--out",
        f"{QUALITY_RUN}/s.npz",
    ]
    meta_path = run / "monolith" / "meta.json"
    reused = False
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        reused = (
            meta.get("step") == QUALITY_STEPS
            and meta.get("unet") == network_config("small", CHANNELS).to_dict()
            and meta.get("train", {}).get("batch") == QUALITY_BATCH
        )
    if not reused:
        subprocess.run(_cli(root, *train_args, "--fresh", "-q"), check=True, cwd=root)
    t0 = time.perf_counter()
    subprocess.run(_cli(root, *sample_args), check=True, cwd=root, capture_output=True)
    t_sample = time.perf_counter() - t0
    (root / FIGURE).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / "s.png", root / FIGURE)
    meta = json.loads(meta_path.read_text())
    rows = [json.loads(x) for x in (run / "monolith" / "metrics.jsonl").read_text().splitlines()]
    img_s = rows[-1]["img_per_s"]  # the loop's own images per second over the whole run
    res: dict[str, Any] = {
        "command": "decentdiff " + " ".join(train_args),
        "sample_command": "decentdiff " + " ".join(sample_args),
        "reused_run": reused,
        "train_s": QUALITY_STEPS * QUALITY_BATCH / img_s,
        "train_img_s": img_s,
        "sample_s": t_sample,
        "steps": QUALITY_STEPS,
        "batch": QUALITY_BATCH,
        "params": meta.get("params"),
        "final_loss": meta.get("loss"),
        "figure": FIGURE,
        "figure_bytes": (root / FIGURE).stat().st_size,
    }
    try:  # the project's own metrics against held-out images, when `decentdiff eval` works
        subprocess.run(
            _cli(root, "eval", QUALITY_RUN, "--model", "monolith", "-q"),
            check=True,
            cwd=root,
            capture_output=True,
            text=True,
        )
        lines = (run / "metrics.jsonl").read_text().splitlines()
        ev = [r for r in map(json.loads, lines) if r.get("kind") == "eval"][-1]
        res["eval"] = {"command": f"decentdiff eval {QUALITY_RUN} --model monolith", **ev}
    except (subprocess.CalledProcessError, OSError, IndexError, ValueError) as e:
        res["eval_error"] = str(getattr(e, "stderr", "") or e).strip().splitlines()[-1:]
    return res


def render_quality(r: dict[str, Any]) -> str:
    lines = [
        f"![64 samples of small after {r['steps']} steps]({r['figure']})",
        "",
        "```",
        r["command"],
        r["sample_command"],
        "```",
        "",
        f"Training: {r['steps']} steps × batch {r['batch']} = {r['steps'] * r['batch']:,} images "
        f"in {r['train_s'] / 60:.1f} min at {r['train_img_s']:.0f} img/s (target ≈ 10 min on an "
        "otherwise idle machine; other jobs sharing the two cores stretch it). Sampling 64 images "
        f"(Euler, 50 steps): {r['sample_s']:.0f} s. {r['params']:,} parameters, final training "
        f"loss {r['final_loss']:.3f}."
        + (" The run folder was reused from an earlier identical run." if r["reused_run"] else ""),
    ]
    ev = r.get("eval")
    if ev:
        floor = ev.get("floor") or {}
        shown = ("fid", "kid_mean", "precision", "recall", "coverage", "confident_share", "entropy")
        keys = [k for k in shown if isinstance(ev.get(k), float) and k in floor]
        if keys:
            lines += [
                "",
                f"`{ev['command']}` ({ev.get('n')} samples, {ev.get('features')} features; the "
                "floor is the same metric between training and held-out real images):",
                "",
                md_table(
                    ["metric", *keys],
                    [
                        ["samples", *(f"{ev[k]:.3g}" for k in keys)],
                        ["floor", *(f"{floor[k]:.3g}" for k in keys)],
                    ],
                ),
            ]
    elif r.get("eval_error"):
        lines += ["", f"`decentdiff eval` failed: {' '.join(r['eval_error'])}"]
    return "\n".join(lines)


BENCHMARKS = [
    Benchmark(
        "train", "Training speed and MFU per preset (vs diffusers)", bench_train, render_train
    ),
    Benchmark("memory", "Peak memory per preset", bench_memory, render_memory),
    Benchmark(
        "quality_small_10min",
        "Ten minutes of `small` on mnist5k",
        bench_quality,
        render_quality,
        default=False,
    ),
]
