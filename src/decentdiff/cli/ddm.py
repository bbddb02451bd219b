"""The DDM commands besides training: ``partition`` (step 1), ``experts add|remove`` (changing
the members of a run) and ``diagnose`` (why a routing helps or hurts)."""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import ConfigError
from .options import (
    ArchOpt,
    ConfigOpt,
    DataOpt,
    DdmRunArg,
    DeviceOpt,
    PresetOpt,
    QuietOpt,
    RunArg,
    SampleSeedOpt,
    SampleStepsOpt,
    SeedOpt,
    SetOpt,
    StepsOpt,
    VaeOpt,
    resolve_config,
)


def partition(
    run: RunArg,
    parts: Annotated[
        int, typer.Option("--parts", "-K", help="Number of clusters K (one expert each).")
    ],
    data: DataOpt = None,
    by: Annotated[
        str, typer.Option("--by", help="kmeans (paper), random or label (controls).")
    ] = "kmeans",
    features: Annotated[
        str,
        typer.Option(
            "--features",
            help="Features k-means clusters: auto (pca for labelled grey images, inception for "
            "colour or unlabeled data), pca (pixels), inception (the FID network's pool3: "
            "content; cached per data), classifier (trained on the labels).",
        ),
    ] = "auto",
    seed: Annotated[int, typer.Option("--seed", help="Partition seed.")] = 0,
    fine: Annotated[
        int | None, typer.Option("--fine", help="Fine k-means centroids. (default: min(1024, N/4))")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace a partition that experts were trained on.")
    ] = False,
    vae: VaeOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Split the training part of the data into K disjoint clusters (RUN/partition.npz + a figure)."""
    from ..ddm.cluster import partition_run
    from ..run import Run

    r = Run(run)
    cfg = resolve_config(r, config, set_, data=data, vae=vae)
    p = partition_run(r, cfg, parts, by=by, features=features, seed=seed, fine=fine, force=force)
    typer.echo(p.summary())
    typer.echo(f"-> {p.path}, {p.figure}")


experts_app = typer.Typer(
    no_args_is_help=True,
    help="Change the members of a DDM run: withdraw a cluster's expert, or add a new data source.",
)


@experts_app.command("remove")
def experts_remove(
    run: DdmRunArg,
    expert: Annotated[int, typer.Argument(help="The expert (cluster) whose data owner withdrew.")],
    preset: PresetOpt = None,
    arch: ArchOpt = None,
    steps: Annotated[
        int | None, typer.Option("--steps", help="Router training steps. (default: train.steps)")
    ] = None,
    quiet: QuietOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Withdraw cluster K for good: delete its expert (and models trained on its data), renumber
    the others, retrain only the router; RUN/membership.json records it for the report."""
    from ..ddm.membership import remove_expert
    from ..run import Run

    r = Run(run)
    cfg = resolve_config(r, config, set_, preset=preset, arch=arch, steps=steps)
    ev = remove_expert(r, expert, cfg, progress=not quiet)
    typer.echo(
        f"expert {expert} withdrawn ({ev['withdrawn_images']} images); renumbered "
        f"{ev['renumbered'] or 'none'}; deleted {', '.join(ev['deleted']) or 'nothing'}; router retrained"
    )


@experts_app.command("add")
def experts_add(
    run: DdmRunArg,
    data: Annotated[str, typer.Option("--data", help="The new data source (same image shape).")],
    preset: PresetOpt = None,
    arch: ArchOpt = None,
    steps: StepsOpt = None,
    batch: Annotated[
        int | None, typer.Option("--batch", help="New expert's batch. (default: train.batch / K)")
    ] = None,
    seed: SeedOpt = None,
    quiet: QuietOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Add a data source as cluster K: a new expert trained alone on it, then the router retrained;
    no other expert's file changes."""
    from ..ddm.membership import add_expert
    from ..run import Run

    r = Run(run)
    cfg = resolve_config(r, config, set_, preset=preset, arch=arch, steps=steps, seed=seed)
    ev = add_expert(r, data, cfg, batch=batch, progress=not quiet)
    typer.echo(f"expert {ev['expert']} added: {ev['images']} images of {data}; router retrained")


def diagnose(
    run: DdmRunArg,
    routings: Annotated[
        str,
        typer.Option(
            "--routings",
            help="Router-driven routings whose expert usage per step is traced (comma-separated).",
        ),
    ] = "top1",
    n: Annotated[int, typer.Option("--n", help="Images sampled per traced routing.")] = 256,
    steps: SampleStepsOpt = None,
    seed: SampleSeedOpt = None,
    device: DeviceOpt = "auto",
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Why a routing helps or hurts: the router's accuracy, entropy and calibration (ECE) per
    noise level, and which expert each traced routing picks at every sampling step (usage, and
    how often an image switches expert). Writes RUN/diagnostics.json and
    RUN/figures/routing_diagnostics.png; `report` shows them."""
    from ..ddm.diagnostics import diagnose as run_diagnose
    from ..ddm.diagnostics import summary_lines
    from ..ddm.routing import split_routings
    from ..run import Run
    from ..training.loop import resolve_device

    names = tuple(split_routings(routings))
    r = Run(run)
    cfg = resolve_config(r, config, set_, sample_steps=steps, sample_seed=seed)
    if n < 1:
        raise ConfigError(f"--n must be >= 1, got {n}")
    out = run_diagnose(r, cfg, routings=names, n=n, device=resolve_device(device))
    for line in summary_lines(out):
        typer.echo(line)
    typer.echo(
        f"-> {r.path / 'diagnostics.json'}, {r.path / 'figures' / 'routing_diagnostics.png'}"
    )
