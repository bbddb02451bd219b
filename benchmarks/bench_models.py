"""Model benchmarks: the matmul ceiling, training speed and MFU per preset, the diffusers baseline,
peak memory per preset, and (opt-in) the 10-minute quality run of the ``small`` preset.

``train`` measures 28×28 grey batches; ``train_colour`` the same step on class-conditional colour
images at 32×32 and 64×64 (the natural-image sizes), each preset beside a diffusers UNet2DModel of
matched parameters built for that shape (:class:`Images` says what a step sees).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from common import Benchmark, Context, interleaved, machine_info, md_table, verdict
from torch import Tensor, nn

from decentdiff.diffusion.paths import FlowMatching
from decentdiff.models.registry import PRESETS, build_network, count_params, network_config

BATCH, RES, CHANNELS = 128, 28, 1  # 28×28×1 MNIST-sized training batches
MATMUL_N = 2048
TARGET_MFU_SMALL = 0.6
TARGET_VS_DIFFUSERS = 1.5
COND_DROP = 0.1  # class-conditional batches: labels replaced by the null class (as trained)


@dataclass(frozen=True)
class Images:
    """What a training step sees: ``batch`` images of channels × res × res, with class labels
    (``classes`` classes plus the null class, dropped to at the training's rate) when ``classes``
    > 0."""

    batch: int = BATCH
    channels: int = CHANNELS
    res: int = RES
    classes: int = 0

    @property
    def shape(self) -> list[int]:
        return [self.channels, self.res, self.res]

    def draw(self, g: torch.Generator) -> tuple[Tensor, Tensor | None]:
        """A fixed batch (x0 in [−1, 1], class ids or None) from ``g``."""
        x0 = torch.rand(self.batch, *self.shape, generator=g) * 2 - 1
        if not self.classes:
            return x0, None
        cond = torch.randint(0, self.classes, (self.batch,), generator=g)
        cond[torch.rand(self.batch, generator=g) < COND_DROP] = self.classes
        return x0, cond


GREY = Images()  # the `train` benchmark's 28×28×1 batches of 128, unconditional


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
        if cond is None:
            return self.unet(x, t * 1000).sample
        return self.unet(x, t * 1000, class_labels=cond).sample


def diffusers_matched(
    target_params: int, images: Images = GREY
) -> tuple[nn.Module, dict[str, Any]] | None:
    """A standard diffusers UNet2DModel whose parameter count is closest to ``target_params``.

    Three levels of widths (c, 2c, 4c), one ResNet layer per block, attention at the lowest
    resolution only with 64-channel heads, GroupNorm with 8 groups: decentdiff's own choices, so
    the comparison is of implementations, not of settings. (diffusers' default 8-channel heads
    measured about 10% slower here, and channels_last weights did not help it.) Built for
    ``images``' channels and size; class-conditional ones get ``num_class_embeds`` = classes + 1
    (the null class), a table added to the time embedding as decentdiff's ``class_embed`` is.
    Returns None when diffusers is absent.
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
            sample_size=images.res,
            in_channels=images.channels,
            out_channels=images.channels,
            block_out_channels=(c, 2 * c, 4 * c),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
            norm_num_groups=8,
            attention_head_dim=64,
        )
        if images.classes:
            kw["num_class_embeds"] = images.classes + 1
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


def train_step_fn(model: nn.Module, images: Images = GREY):
    """One flow-matching training step (loss, backward, AdamW) on a fixed batch."""
    fm = FlowMatching()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    x0, cond = images.draw(g)

    def step() -> None:
        loss = fm.loss(model, x0, cond, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def train_flops(model: nn.Module, images: Images = GREY) -> float:
    """FLOPs of one forward + backward of the flow-matching loss (torch.utils.flop_counter)."""
    from decentdiff.evaluation.flops import flop_counter

    g = torch.Generator().manual_seed(0)
    x0, cond = images.draw(g)
    counter = flop_counter()
    with counter:
        FlowMatching().loss(model, x0, cond, g).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def _preset_model(name: str, images: Images = GREY) -> nn.Module:
    torch.manual_seed(0)
    return build_network(network_config(name, images.channels, images.classes))


def measure_training(
    cases: dict[str, tuple[nn.Module, Images]], rounds: int
) -> tuple[dict[str, Any], float, dict[str, Any]]:
    """Training steps of every case interleaved round-robin with the fp32 matmuls.

    Returns:
        (matmul GFLOP/s per product, the ceiling: the faster product, per case: parameters, FLOPs,
        img/s (best-of and median), GFLOP/s and MFU against the ceiling and against ``torch.mm``).
    """
    flops = {k: train_flops(m, im) for k, (m, im) in cases.items()}
    items: dict[str, Any] = matmul_fns()
    reps = dict.fromkeys(items, 3)
    for k, (m, im) in cases.items():
        items[k] = train_step_fn(m, im)
        # about a second of work per item per round, at least one step
        reps[k] = 1 if flops[k] > 2e11 else 2 if flops[k] > 5e10 else 4
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
    out = {}
    for k, (m, im) in cases.items():
        tb, tm = times[k]["best_s"], times[k]["median_s"]
        gflops = flops[k] / tb / 1e9
        out[k] = {
            "params": count_params(m),
            "gflop_per_img": flops[k] / im.batch / 1e9,
            "img_s": im.batch / tb,
            "img_s_median": im.batch / tm,
            "gflops": gflops,
            "mfu": gflops / ceiling,
            "mfu_vs_mm": gflops / matmul["matmul_mm"]["gflops"],
        }
    return matmul, ceiling, out


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
    t0 = time.perf_counter()
    matmul, ceiling, out_models = measure_training(
        {k: (m, GREY) for k, m in models.items()}, rounds
    )
    for k, m in out_models.items():
        m["config"] = PRESETS[k].to_dict() if k in PRESETS else diff_info["config"]
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


# ------------------------------------------------------------------ colour: 32×32 and 64×64
TINY_IMAGENET_CLASSES = 200
#: size -> what a step sees: RGB, class-conditional on Tiny ImageNet's classes (as the DDM experts
#: train there), at batches sized for a CPU (a 64×64 image is 4× the pixels of a 32×32 one).
COLOUR = {
    32: Images(batch=64, channels=3, res=32, classes=TINY_IMAGENET_CLASSES),
    64: Images(batch=32, channels=3, res=64, classes=TINY_IMAGENET_CLASSES),
}
COLOUR_PRESETS = ("compact", "small")  # the presets a user would pick at these sizes


def bench_train_colour(ctx: Context) -> dict[str, Any]:
    """``train`` at every size of :data:`COLOUR`, each preset beside the diffusers UNet2DModel
    whose parameters match it at that shape; every size and model in one interleaved run."""
    rounds = 3 if ctx.quick else 8
    mi = machine_info()
    cases: dict[str, tuple[nn.Module, Images]] = {}
    diff_info: dict[str, Any] = {}
    notes = []
    for size, im in COLOUR.items():
        for p in COLOUR_PRESETS:
            net = _preset_model(p, im)
            cases[f"{size}/{p}"] = (net, im)
            baseline = diffusers_matched(count_params(net), im)
            if baseline is not None:
                cases[f"{size}/diffusers-{p}"], diff_info[f"{size}/diffusers-{p}"] = (
                    (baseline[0], im),
                    baseline[1],
                )
    if not diff_info:
        notes.append("diffusers is not installed: the baseline comparison was skipped")
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    t0 = time.perf_counter()
    matmul, ceiling, measured = measure_training(cases, rounds)
    sizes: dict[str, Any] = {}
    for size, im in COLOUR.items():
        models: dict[str, Any] = {}
        vs: dict[str, Any] = {}
        for p in COLOUR_PRESETS:
            ours = measured[f"{size}/{p}"]
            models[p] = {**ours, "config": network_config(p, im.channels, im.classes).to_dict()}
            key = f"{size}/diffusers-{p}"
            if key in measured:
                d = measured[key]
                info = diff_info[key]
                models[f"diffusers-{p}"] = {
                    **d,
                    "config": info["config"],
                    "params_ratio": d["params"] / ours["params"],
                }
                vs[p] = {
                    "img_s": ours["img_s"] / d["img_s"],
                    "img_s_median": ours["img_s_median"] / d["img_s_median"],
                }
        sizes[str(size)] = {"batch": im.batch, "image": im.shape, "models": models}
        if vs:
            sizes[str(size)]["ours_vs_diffusers"] = vs
    res: dict[str, Any] = {
        "classes": TINY_IMAGENET_CLASSES,
        "cond_drop": COND_DROP,
        "rounds": rounds,
        "seconds": time.perf_counter() - t0,
        "matmul": matmul,
        "ceiling_gflops": ceiling,
        "sizes": sizes,
        "cpu": {k: mi[k] for k in ("cpu_model", "usable_cpus", "simd", "torch", "torch_threads")},
        "load_before": list(load) if load else None,
        "notes": notes,
    }
    if diff_info:
        res["diffusers"] = next(iter(diff_info.values()))["diffusers"]
    return res


def render_train_colour(r: dict[str, Any]) -> str:
    cpu = r["cpu"]
    amx = "amx_bf16" in cpu["simd"]
    sizes = r["sizes"]
    batches = ", ".join(
        f"{v['batch']} at {'×'.join(map(str, v['image'][1:]))}×{v['image'][0]}"
        for v in sizes.values()
    )
    quick = r.get("_run", {}).get("quick")
    lines = [
        "The `train` step (flow matching: loss, backward, AdamW) on colour images, "
        f"class-conditional on {r['classes']} classes (Tiny ImageNet's; {r['cond_drop']:.0%} of "
        f"the labels dropped to the null class, as training does): batch {batches}. Each preset "
        "beside the diffusers "
        f"{r.get('diffusers', '')} `UNet2DModel` of the nearest parameter count built for that "
        "shape (widths (c, 2c, 4c), one ResNet layer per block, attention at the lowest level "
        "with 64-channel heads, 8 GroupNorm groups, `num_class_embeds` = classes + 1): the "
        "grey section's baseline at these shapes. Both have three levels, so attention runs at "
        "8×8 for 32×32 images and at 16×16 for 64×64. "
        f"{r['rounds']} interleaved rounds over every size and model"
        f"{' (a quick run)' if quick else ''}, best-of times (median in brackets); FLOPs counted "
        "by `decentdiff.evaluation.flops` (forward + backward, attention included); MFU = "
        "GFLOP/s ÷ the fp32 matmul ceiling measured in the same run, "
        f"**{r['ceiling_gflops']:.0f} GFLOP/s** ("
        + ", ".join(
            f"{k.removeprefix('matmul_')} {v['gflops']:.0f}" for k, v in r["matmul"].items()
        )
        + f"). This section's CPU: {cpu['cpu_model']}, {cpu['usable_cpus']} usable, "
        f"{cpu['torch_threads']} threads, SIMD {', '.join(cpu['simd']) or '?'}, "
        f"AMX {'yes' if amx else 'no'}"
        + (
            f"; load average {r['load_before'][0]:.1f} when it started (other jobs shared it)"
            if r.get("load_before")
            else ""
        )
        + ".",
        "",
    ]
    rows = []
    ratios: dict[str, list[float]] = {"img_s": [], "img_s_median": [], "flops": [], "gflops": []}
    for size, v in sizes.items():
        image = f"{size}×{size}×{v['image'][0]}"
        for k, m in v["models"].items():
            vs = v.get("ours_vs_diffusers", {}).get(k)
            if vs:
                d = v["models"][f"diffusers-{k}"]
                ratios["img_s"].append(vs["img_s"])
                ratios["img_s_median"].append(vs["img_s_median"])
                ratios["flops"].append(m["gflop_per_img"] / d["gflop_per_img"])
                ratios["gflops"].append(m["gflops"] / d["gflops"])
            cfg = m["config"]
            desc = (
                f"{k} ({'-'.join(map(str, cfg['block_out_channels']))}, "
                f"{m['params_ratio']:.2f}× the params)"
                if "block_out_channels" in cfg
                else k
            )
            rows.append(
                [
                    image,
                    v["batch"],
                    desc,
                    f"{m['params'] / 1e6:.2f}M",
                    f"{m['gflop_per_img']:.2f}",
                    f"{m['img_s']:.0f} ({m['img_s_median']:.0f})",
                    f"{m['gflops']:.0f}",
                    f"{m['mfu']:.2f}",
                    f"**{vs['img_s']:.2f}×** ({vs['img_s_median']:.2f}×)" if vs else "",
                ]
            )
    headers = ["image", "batch", "model", "params", "GFLOP/img (fwd+bwd)", "img/s", "GFLOP/s"]
    lines.append(md_table([*headers, "MFU", "img/s ours / diffusers"], rows))
    if ratios["img_s"]:

        def span(k: str) -> str:
            return f"{min(ratios[k]):.2f}-{max(ratios[k]):.2f}×"

        lines += [
            "",
            f"Ours / diffusers at matched parameters: **{span('img_s')} the img/s** (best-of; "
            f"{span('img_s_median')} from the medians): {span('flops')} the FLOPs per image, run "
            f"at {span('gflops')} the GFLOP/s.",
        ]
    noisy = [
        f"{size}×{size} {k}"
        for size, v in sizes.items()
        for k, m in v["models"].items()
        if m["img_s"] > 1.5 * m["img_s_median"]
    ]
    if noisy:
        lines += [
            "",
            f"**Noisy run** (best-of and median more than 1.5× apart for {', '.join(noisy)}): "
            "other jobs shared the cores, so read the figures as rough.",
        ]
    lines += [
        "",
        "Reproduce: `.venv/bin/python benchmarks/run.py --only train_colour` (`--quick` for 3 "
        "rounds).",
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
    Benchmark(
        "train_colour",
        "Training speed and MFU on colour images, 32×32 and 64×64 (vs diffusers)",
        bench_train_colour,
        render_train_colour,
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
