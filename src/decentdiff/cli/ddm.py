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
    DiagnoseNOpt,
    ExpertBatchOpt,
    GuidanceOpt,
    LogOpt,
    NewDataOpt,
    ObjectiveOpt,
    OldForceOpt,
    OldRoutingsOpt,
    OldSampleStepsOpt,
    PartitionFeaturesOpt,
    PartitionFreshOpt,
    PartitionSeedOpt,
    PartsOpt,
    PrecisionOpt,
    PresetOpt,
    QuietOpt,
    RouterStepsOpt,
    RoutingsOpt,
    RunArg,
    SampleSeedOpt,
    SampleStepsOpt,
    SeedOpt,
    SetOpt,
    SolverOpt,
    StepsOpt,
    TrainDeviceOpt,
    VaeOpt,
    resolve_config,
)


def partition(
    run: RunArg,
    parts: PartsOpt,
    data: DataOpt = None,
    by: Annotated[
        str,
        typer.Option(
            "--by",
            help="kmeans (paper), classes (k-means over whole classes: many-class data), random or label (controls).",
        ),
    ] = "kmeans",
    features: PartitionFeaturesOpt = "auto",
    seed: PartitionSeedOpt = 0,
    fine: Annotated[
        int | None, typer.Option("--fine", help="Fine k-means centroids. (default: min(1024, N/4))")
    ] = None,
    fresh: PartitionFreshOpt = False,
    vae: VaeOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    old_force: OldForceOpt = False,
) -> None:
    """Split the training part of the data into K disjoint clusters (RUN/partition.npz + a figure)."""
    from ..ddm.cluster import partition_run
    from ..run import Run

    r = Run(run)
    cfg = resolve_config(r, config, set_, data=data, vae=vae)
    p = partition_run(r, cfg, parts, by=by, features=features, seed=seed, fine=fine, force=fresh)
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
    device: TrainDeviceOpt = None,
    steps: RouterStepsOpt = None,
    seed: SeedOpt = None,
    quiet: QuietOpt = False,
    log: LogOpt = None,
    precision: PrecisionOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Withdraw cluster K for good: delete its expert (and models trained on its data), renumber
    the others, retrain only the router; RUN/membership.json records it for the report."""
    from ..ddm.membership import remove_expert
    from ..run import Run

    r = Run(run)
    cfg = resolve_config(
        r,
        config,
        set_,
        preset=preset,
        arch=arch,
        device=device,
        steps=steps,
        seed=seed,
        log=log,
        precision=precision,
    )
    ev = remove_expert(r, expert, cfg, progress=not quiet)
    typer.echo(
        f"expert {expert} withdrawn ({ev['withdrawn_images']} images); renumbered "
        f"{ev['renumbered'] or 'none'}; deleted {', '.join(ev['deleted']) or 'nothing'}; router retrained"
    )


@experts_app.command("add")
def experts_add(
    run: DdmRunArg,
    data: NewDataOpt,
    preset: PresetOpt = None,
    arch: ArchOpt = None,
    vae: VaeOpt = None,
    device: TrainDeviceOpt = None,
    objective: ObjectiveOpt = None,
    steps: StepsOpt = None,
    batch: ExpertBatchOpt = None,
    seed: SeedOpt = None,
    quiet: QuietOpt = False,
    log: LogOpt = None,
    precision: PrecisionOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Add a data source as cluster K: a new expert trained alone on it, then the router retrained;
    no other expert's file changes."""
    from ..ddm.membership import add_expert
    from ..run import Run

    r = Run(run)
    cfg = resolve_config(
        r,
        config,
        set_,
        preset=preset,
        arch=arch,
        vae=vae,
        device=device,
        objective=objective,
        steps=steps,
        seed=seed,
        log=log,
        precision=precision,
    )
    ev = add_expert(r, data, cfg, batch=batch, progress=not quiet)
    typer.echo(f"expert {ev['expert']} added: {ev['images']} images of {data}; router retrained")


def diagnose(
    run: DdmRunArg,
    routing: RoutingsOpt = "top1",
    n: DiagnoseNOpt = 256,
    sample_steps: SampleStepsOpt = None,
    solver: SolverOpt = None,
    guidance: GuidanceOpt = None,
    seed: SampleSeedOpt = None,
    precision: PrecisionOpt = None,
    device: DeviceOpt = "auto",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    old_routings: OldRoutingsOpt = None,
    old_steps: OldSampleStepsOpt = None,
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

    names = tuple(split_routings(routing))
    r = Run(run)
    cfg = resolve_config(
        r,
        config,
        set_,
        sample_steps=sample_steps,
        solver=solver,
        guidance=guidance,
        sample_seed=seed,
        sample_precision=precision,
    )
    if n < 1:
        raise ConfigError(f"--n must be >= 1, got {n}")
    out = run_diagnose(r, cfg, routings=names, n=n, device=resolve_device(device))
    for line in summary_lines(out):
        typer.echo(line)
    typer.echo(
        f"-> {r.path / 'diagnostics.json'}, {r.path / 'figures' / 'routing_diagnostics.png'}"
    )
