"""How the presets were chosen: a record of the tuning measurements (2026-11-22, this machine).

These figures are *not* re-measured by ``make bench`` (the quality runs take most of an hour on a
shared machine); the section exists so that the reasons for the presets travel with the numbers.
The speed figures are from interleaved runs (best-of, batch 128, 28×28×1, flow matching, AdamW);
only ratios within one table are meaningful.
"""

from __future__ import annotations

from typing import Any

from common import Benchmark, Context, md_table

#: Training speed of architecture variants, interleaved in one run each (img/s at batch 128).
SWEEP = [
    # (variant, params M, GFLOP/img fwd+bwd, img/s) — run A
    (
        "A",
        "original small: (32,64,128), 1 block/level, ADM skips (decoder 2 blocks/level, every "
        "encoder activation a skip, 1×1 projections), 3×3 conv after upsampling",
        2.67,
        1.68,
        175,
    ),
    (
        "A",
        "**small now**: (32,64,128), encoder blocks (0,1,2), decoder (1,1,2), one skip per level "
        "into the conv path, identity residuals, 1×1-then-nearest upsampling",
        2.58,
        0.98,
        328,
    ),
    (
        "A",
        "diffusers UNet2DModel (32,64,128), 1 layer/block, attention at 7×7, 8-ch heads",
        2.73,
        1.73,
        147,
    ),
    ("A", "same, 64-channel heads (the baseline in the table above)", 2.73, 1.73, 162),
    ("B", "(32,64,128), 1 block/level, one skip per level, 1×1 skip projections", 1.99, 0.92, 285),
    ("B", "same with identity residuals (skip feeds the conv path only)", 1.95, 0.90, 315),
    ("B", "(32,64,128), blocks (1,1,2)/(1,1,2), identity residuals", 2.60, 1.07, 269),
    ("B", "same, nearest + 3×3 conv upsampling instead of 1×1 + nearest", 2.69, 1.24, 230),
    ("B", "(32,64,128), blocks (0,1,2)/(1,1,2) (= small now, 1 head)", 2.58, 0.98, 299),
    ("B", "(32,96,192), blocks (0,1,2)/(1,1,2)", 5.52, 2.02, 163),
    ("B", "(32,64,128), blocks (1,2,2)/(1,2,2)", 2.79, 1.24, 213),
    ("B", "(16,64,128), blocks (0,1,2)/(1,1,2): 16 channels at 28×28", 2.54, 0.87, 339),
    ("B", "(32,64,128,128), 4 levels (28/14/7/4), 1 block each", 2.92, 0.85, 307),
    ("C", "small now without the 7×7 attention", 2.51, 0.96, 337),
    ("C", "small now", 2.58, 0.98, 316),
]

#: Conclusions drawn from the quality runs.
QUALITY_NOTES = [
    "At the same compute the tuned small beats the original clearly (FD 15.8 vs 26.7, confident "
    "share 0.72 vs 0.63, lower validation loss): it sees 1.9× the images.",
    "Batch 64 for 3,000 steps (R3) vs batch 128 for 1,500 (R4), same images: validation loss "
    "0.1549 vs 0.1557, FD 23.5 vs 16.1, `decentdiff eval` FID 2.57 vs 2.34, precision 0.705 vs "
    "0.695, recall 0.903 vs 0.911: no better with the smaller batch, so the default stays 128.",
    "One vs two attention heads (R2 vs R4): no measurable difference (FD 15.8 vs 16.1).",
    "Half-sample noise of the FD: ±2–4. CPU seconds are per process with one thread (R1, R2 ran "
    "side by side); R3 and R4 used two threads.",
    "Not tested: learning rates other than 2e-3 (a 1e-3 run was stopped: too slow while the "
    "machine was shared).",
]

#: Other speed findings (ratios measured within one run).
FINDINGS = [
    "channels_last activations: +3–9% img/s over NCHW. The original model asked for channels_last "
    "on its 1-channel input, which is both layouts at once, so every activation stayed NCHW; the "
    "conversion now happens after the stem.",
    "Dropping the decoder's 1×1 skip projections (the skip now joins the conv path only, the "
    "residual is the identity) bought +10% img/s for 3% fewer FLOPs: such thin layers, and their "
    "backward pass in particular, run far below the CPU's peak.",
    "Convolutions with 16–32 channels at 28×28 run at 15–70 GFLOP/s, 3×3 convolutions with ≥ 128 "
    "channels at 7×7 or 14×14 at 350–490: depth belongs at the low resolutions.",
    "bf16 autocast (the CPU has avx512_bf16): 0.8× for the new small, 1.35× for the original: no "
    "default change.",
    "torch.mm (MKL) reaches ~190 GFLOP/s on this AMD CPU, oneDNN's fp32 matmul ~430 and its best "
    "3×3 convolutions ~490: MKL takes its AVX2 path here. The MFU ceiling is therefore the oneDNN "
    "figure.",
    "Throughput per image is nearly the same at batch 64 and 128 for small (±5%).",
]

#: Quality at equal compute: ~10 idle-machine minutes of training each, mnist5k (4,000 training
#: images), EMA weights, 1,000 samples with Euler 50 steps, seed 0. Metrics from a small CNN
#: classifier trained on mnist5k (98.4% held-out accuracy): FD of its 128-d features against 2,000
#: real images (1,000 real images score 5.2), share of samples classified with p > 0.9 (real: 0.93),
#: and the validation flow-matching loss on the 1,000 held-out images (fixed noise).
QUALITY = [
    # (run, model, batch, steps, lr, images seen, CPU s, val loss, FD, share p>0.9)
    ("R1", "original small", 128, 773, 2e-3, 98_944, 1150, 0.1603, 26.7, 0.63),
    ("R2", "small now (1 head)", 128, 1476, 2e-3, 188_928, 1177, 0.1561, 15.8, 0.72),
    ("R3", "small now", 64, 3000, 2e-3, 192_000, None, 0.1549, 23.5, 0.72),
    ("R4", "small now (the figure above)", 128, 1500, 2e-3, 192_000, None, 0.1557, 16.1, 0.72),
]


def bench_tuning(ctx: Context) -> dict[str, Any]:
    return {
        "recorded": "2026-11-22",
        "sweep": [
            {"run": r, "variant": v, "params_m": p, "gflop_per_img": f, "img_s": s}
            for r, v, p, f, s in SWEEP
        ],
        "findings": FINDINGS,
        "quality": [
            dict(
                zip(
                    [
                        "run",
                        "model",
                        "batch",
                        "steps",
                        "lr",
                        "images",
                        "cpu_s",
                        "val_loss",
                        "fd",
                        "confident",
                    ],
                    q,
                    strict=True,
                )
            )
            for q in QUALITY
        ],
        "quality_notes": QUALITY_NOTES,
    }


def render_tuning(r: dict[str, Any]) -> str:
    lines = [
        f"Recorded during tuning on {r['recorded']}; not re-measured by `make bench`. Speed of "
        "variants, batch 128 (runs A, B, C are separate interleaved runs: compare within a run):",
        "",
        md_table(
            ["run", "variant", "params (M)", "GFLOP/img", "img/s"],
            [
                [
                    s["run"],
                    s["variant"],
                    f"{s['params_m']:.2f}",
                    f"{s['gflop_per_img']:.2f}",
                    s["img_s"],
                ]
                for s in r["sweep"]
            ],
        ),
        "",
        *[f"- {f}" for f in r["findings"]],
        "",
        "Quality at equal compute (about ten idle-machine minutes each; EMA weights; 1,000 samples, "
        "Euler 50 steps). FD: Fréchet distance in the 128-d features of a small digit classifier "
        "(1,000 real images score 5.2); *confident*: share of samples the classifier labels with "
        "p > 0.9 (real images: 0.93); validation loss: flow-matching loss on the held-out images "
        "with fixed noise. Lower FD and loss, higher share are better.",
        "",
        md_table(
            [
                "run",
                "model",
                "batch",
                "steps",
                "lr",
                "images",
                "CPU s",
                "val loss",
                "FD",
                "confident",
            ],
            [
                [
                    q["run"],
                    q["model"],
                    q["batch"],
                    q["steps"],
                    q["lr"],
                    f"{q['images']:,}",
                    q["cpu_s"] or "",
                    f"{q['val_loss']:.4f}",
                    f"{q['fd']:.1f}",
                    f"{q['confident']:.2f}",
                ]
                for q in r["quality"]
            ],
        ),
        "",
        *[f"- {n}" for n in r.get("quality_notes", [])],
    ]
    return "\n".join(lines)


BENCHMARKS = [
    Benchmark("tuning", "How the presets were tuned (recorded)", bench_tuning, render_tuning),
]
