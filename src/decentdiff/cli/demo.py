"""``decentdiff demo``: the whole DDM pipeline on the embedded MNIST (:func:`decentdiff.demo.run_demo`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .options import ConfigOpt, QuietOpt, SetOpt


def demo(
    run: Annotated[Path, typer.Argument(help="Run directory.")] = Path("runs/demo"),
    parts: Annotated[int, typer.Option("--parts", "-K", help="Number of experts.")] = 4,
    data: Annotated[
        str, typer.Option("--data", help="Data source (default: the embedded MNIST subset).")
    ] = "mnist5k",
    steps: Annotated[
        int,
        typer.Option(
            "--steps", help="Training steps of each expert (and of the FLOP-matched monolith)."
        ),
    ] = 350,
    batch: Annotated[
        int, typer.Option("--batch", help="Monolith batch B; each expert uses B/K.")
    ] = 128,
    router_steps: Annotated[
        int, typer.Option("--router-steps", help="Router training steps.")
    ] = 400,
    preset: Annotated[
        str, typer.Option("--preset", help="Model size of experts, router and monolith.")
    ] = "compact",
    class_cond: Annotated[
        bool,
        typer.Option(
            "--class-cond/--no-class-cond",
            help="Class-conditional experts, router and monolith (as the paper's ImageNet "
            "experts), sampled with classifier-free guidance inside each expert.",
        ),
    ] = True,
    guidance: Annotated[
        float, typer.Option("--guidance", help="Classifier-free guidance scale (1 = none).")
    ] = 2.0,
    n: Annotated[int, typer.Option("--n", help="Images per evaluated model.")] = 250,
    sample_steps: Annotated[
        int, typer.Option("--sample-steps", help="Euler steps per sample.")
    ] = 20,
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
        config=config,
        sets=set_,
        progress=not quiet,
        echo=typer.echo,
    )
