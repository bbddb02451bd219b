"""``decentdiff train monolith|expert|experts|router`` and ``decentdiff distill``: every command
that trains a model into a RUN. Each resumes from its checkpoint unless ``--fresh``."""

from __future__ import annotations

from typing import Annotated

import typer

from .options import (
    ArchOpt,
    BatchOpt,
    ClassCondOpt,
    ConfigOpt,
    DataOpt,
    DdmRunArg,
    ExpertBatchOpt,
    ExpertInitOpt,
    FreshOpt,
    IslandThreadsOpt,
    LogOpt,
    ObjectiveOpt,
    PartitionedRunArg,
    PrecisionOpt,
    PresetOpt,
    QuietOpt,
    RunArg,
    SeedOpt,
    SetOpt,
    StepsOpt,
    StudentBatchOpt,
    StudentInitOpt,
    StudentPresetOpt,
    TrainDeviceOpt,
    VaeOpt,
    resolve_config,
)


def train_monolith(
    run: RunArg,
    data: DataOpt = None,
    preset: PresetOpt = None,
    arch: ArchOpt = None,
    vae: VaeOpt = None,
    device: TrainDeviceOpt = None,
    objective: ObjectiveOpt = None,
    steps: StepsOpt = None,
    batch: BatchOpt = None,
    seed: SeedOpt = None,
    class_cond: ClassCondOpt = None,
    flop_match: Annotated[
        bool,
        typer.Option(
            "--flop-match",
            help="Match the experts' total compute: batch = sum of the experts' batches, the "
            "same steps (needs trained experts).",
        ),
    ] = False,
    fresh: FreshOpt = False,
    quiet: QuietOpt = False,
    log: LogOpt = None,
    precision: PrecisionOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Train one model on all training data (the baseline) into RUN/monolith."""
    from ..ddm import monolith
    from ..run import Run

    r = Run(run)
    cfg = resolve_config(
        r,
        config,
        set_,
        data=data,
        preset=preset,
        arch=arch,
        vae=vae,
        device=device,
        objective=objective,
        steps=steps,
        batch=batch,
        seed=seed,
        class_cond=class_cond,
        log=log,
        precision=precision,
    )
    if flop_match:
        k = monolith.flop_match(r, cfg)
        typer.echo(f"flop-matched to {k} experts: batch {cfg.train.batch}, {cfg.train.steps} steps")
    meta = monolith.train_monolith(r, cfg, fresh=fresh, progress=not quiet)
    typer.echo(monolith.summary(r, cfg, meta))


def train_expert(
    run: PartitionedRunArg,
    expert: Annotated[
        int, typer.Option("--expert", "-k", help="Which expert (cluster) to train, 0..K-1.")
    ],
    preset: PresetOpt = None,
    arch: ArchOpt = None,
    vae: VaeOpt = None,
    device: TrainDeviceOpt = None,
    objective: ObjectiveOpt = None,
    steps: StepsOpt = None,
    batch: ExpertBatchOpt = None,
    seed: SeedOpt = None,
    init: ExpertInitOpt = "random",
    fresh: FreshOpt = False,
    quiet: QuietOpt = False,
    log: LogOpt = None,
    precision: PrecisionOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Train one expert on its own cluster only (one compute island; writes only RUN/experts/<k>).
    Under `torchrun --nproc_per_node=W`, the island trains with DDP (batch split over W ranks)."""
    from ..ddm.experts import loss_text
    from ..ddm.experts import train_expert as train
    from ..ddm.warm import check_init
    from ..run import Run
    from ..training.distributed import dist_env, train_expert_ddp

    check_init(init)
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
    env = dist_env()
    if env is None:
        meta = train(r, expert, cfg, batch=batch, fresh=fresh, progress=not quiet, init=init)
    else:
        meta = train_expert_ddp(
            r, expert, cfg, env, batch=batch, fresh=fresh, progress=not quiet, init=init
        )
        if not env.is_main:
            return
    rec = meta.get("init")
    since = f", from the monolith's step {rec['step']}" if isinstance(rec, dict) else ""
    typer.echo(
        f"expert {expert}: step {meta['step']}{since}, batch {meta['train']['batch']}, "
        f"{meta['shard_size']} images, loss {loss_text(meta.get('loss'))}"
    )


def train_experts(
    run: PartitionedRunArg,
    launcher: Annotated[
        str,
        typer.Option(
            "--launcher",
            help="local: one after another in this process; process: --jobs parallel "
            "subprocesses; ray: one Ray task per expert, retried from its checkpoint. "
            "(default: local)",
        ),
    ] = "local",
    jobs: Annotated[
        int | None,
        typer.Option("--jobs", "-j", help="Parallel islands. (default: K, at most the cores)"),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option("--address", help="Ray cluster address. (default: start a local Ray)"),
    ] = None,
    retries: Annotated[
        int, typer.Option("--retries", help="Ray: retries of a failed island. (default: 2)")
    ] = 2,
    threads: IslandThreadsOpt = None,
    preset: PresetOpt = None,
    arch: ArchOpt = None,
    vae: VaeOpt = None,
    device: TrainDeviceOpt = None,
    objective: ObjectiveOpt = None,
    steps: StepsOpt = None,
    batch: ExpertBatchOpt = None,
    seed: SeedOpt = None,
    init: ExpertInitOpt = "random",
    fresh: FreshOpt = False,
    quiet: QuietOpt = False,
    log: LogOpt = None,
    precision: PrecisionOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Train all K experts (each only on its cluster), here, as parallel processes, or on Ray."""
    from ..ddm.experts import expert_summary
    from ..ddm.launchers import train_experts as train
    from ..ddm.warm import check_init
    from ..run import Run

    check_init(init)
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
    metas = train(
        r,
        cfg,
        launcher=launcher,
        jobs=jobs,
        address=address,
        batch=batch,
        fresh=fresh,
        progress=not quiet,
        max_retries=retries,
        threads=threads,
        init=init,
    )
    for k, meta in metas.items():
        typer.echo(expert_summary(k, meta))


def train_router(
    run: PartitionedRunArg,
    preset: PresetOpt = None,
    arch: ArchOpt = None,
    vae: VaeOpt = None,
    device: TrainDeviceOpt = None,
    steps: StepsOpt = None,
    batch: BatchOpt = None,
    seed: SeedOpt = None,
    fresh: FreshOpt = False,
    quiet: QuietOpt = False,
    log: LogOpt = None,
    precision: PrecisionOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Train the router: which cluster did a noisy image come from? Draws figures/router_accuracy.png."""
    from ..ddm.router import router_summary
    from ..ddm.router import train_router as train
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
        steps=steps,
        batch=batch,
        seed=seed,
        log=log,
        precision=precision,
    )
    typer.echo(router_summary(r, train(r, cfg, fresh=fresh, progress=not quiet)))


def distill(
    run: DdmRunArg,
    preset: StudentPresetOpt = None,
    arch: ArchOpt = None,
    device: TrainDeviceOpt = None,
    steps: StepsOpt = None,
    batch: StudentBatchOpt = None,
    seed: SeedOpt = None,
    teacher: Annotated[
        str,
        typer.Option(
            "--teacher",
            help="own: each example's cluster expert (the paper's; no router). Or a per-step "
            "routing of the ensemble (full, top1, topk:K, ...): the router-weighted velocity, "
            "a lower-variance target (full costs K expert forwards per example).",
        ),
    ] = "own",
    init: StudentInitOpt = "random",
    fresh: FreshOpt = False,
    quiet: QuietOpt = False,
    log: LogOpt = None,
    precision: PrecisionOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Distil the experts into one dense student into RUN/distilled; then
    `sample/eval/compare --model distilled`."""
    from ..ddm.distill import distill as run_distill
    from ..ddm.experts import loss_text
    from ..run import Run

    r = Run(run)
    cfg = resolve_config(r, config, set_, seed=seed, log=log, device=device, precision=precision)
    meta = run_distill(
        r,
        cfg,
        steps=steps,
        batch=batch,
        fresh=fresh,
        progress=not quiet,
        teacher=teacher,
        preset=preset,
        arch=arch or "",
        init=init,
    )
    typer.echo(
        f"distilled: step {meta['step']}, batch {meta['train']['batch']}, "
        f"loss {loss_text(meta.get('loss'))}, "
        f"{meta['train_flops'] / 1e12:.3f} TFLOPs (teachers' forwards included) "
        f"-> {r.model_dir('distilled')}"
    )
