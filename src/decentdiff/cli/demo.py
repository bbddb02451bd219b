"""``decentdiff demo``: the whole DDM pipeline on the embedded MNIST (:func:`decentdiff.demo.run_demo`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .options import (
    ConfigOpt,
    DemoBatchOpt,
    DemoClassCondOpt,
    DemoDataOpt,
    DemoGuidanceOpt,
    DemoNOpt,
    DemoPresetOpt,
    DemoSampleStepsOpt,
    DemoSeedOpt,
    DemoStepsOpt,
    DeviceOpt,
    PartsOpt,
    PrecisionOpt,
    QuietOpt,
    SetOpt,
    SolverOpt,
)


def demo(
    run: Annotated[Path, typer.Argument(help="Run directory.")] = Path("runs/demo"),
    parts: PartsOpt = 4,
    data: DemoDataOpt = "mnist5k",
    steps: DemoStepsOpt = 350,
    batch: DemoBatchOpt = 128,
    router_steps: Annotated[
        int, typer.Option("--router-steps", help="Router training steps.")
    ] = 400,
    preset: DemoPresetOpt = "compact",
    class_cond: DemoClassCondOpt = True,
    guidance: DemoGuidanceOpt = None,
    n: DemoNOpt = 250,
    sample_steps: DemoSampleStepsOpt = 20,
    solver: SolverOpt = None,
    seed: DemoSeedOpt = None,
    precision: PrecisionOpt = None,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """The whole DDM pipeline on the embedded MNIST: partition, K experts, router, FLOP-matched
    monolith, samples with mixture/top1/topk:2, eval, compare, routing diagnostics, report.
    Resumes if interrupted.

    The defaults (the `compact` UNet, 350 steps) are sized for ten minutes on two slow CPU cores
    (measured: BENCHMARKS.md); --steps, --n and --preset scale it."""
    from ..demo import run_demo
    from ..run import Run

    run_demo(
        Run(run),
        parts=parts,
        data=data,
        steps=steps,
        batch=batch,
        router_steps=router_steps,
        preset=preset,
        class_cond=class_cond,
        guidance=guidance,
        n=n,
        sample_steps=sample_steps,
        solver=solver,
        seed=seed,
        precision=precision,
        config=config,
        # --device: where the demo trains as well as where it samples (options beat --set)
        sets=[*(set_ or []), *([f"train.device={device}"] if device != "auto" else [])],
        device=device,
        progress=not quiet,
        echo=typer.echo,
    )
