"""CLI commands of the DDM extensions: ``distill``, ``experts remove|add``, ``train expert`` under
torchrun, and ``train experts --launcher local|process|ray``. Registered in ``decentdiff.cli``;
the shared option types and config resolution come from there, so conventions stay one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..cli import (
    ConfigOpt,
    FreshOpt,
    ObjectiveOpt,
    PresetOpt,
    QuietOpt,
    SeedOpt,
    SetOpt,
    StepsOpt,
    _resolve,
)
from ..errors import ConfigError

RunDDM = Annotated[Path, typer.Argument(help="Run directory with a partition and trained experts.")]

experts_app = typer.Typer(
    no_args_is_help=True,
    help="Change the members of a DDM run: withdraw a cluster's expert, or add a new data source.",
)


def distill_cmd(
    run: RunDDM,
    steps: StepsOpt = None,
    batch: Annotated[
        int | None,
        typer.Option("--batch", help="Student batch. (default: train.batch / 4, as the paper)"),
    ] = None,
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
    fresh: FreshOpt = False,
    quiet: QuietOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Distil the experts into one dense student into RUN/distilled; then
    `sample/eval/compare --model distilled`."""
    from ..run import Run
    from .distill import distill

    r = Run(run)
    cfg = _resolve(r, config, set_, seed=seed)
    meta = distill(
        r, cfg, steps=steps, batch=batch, fresh=fresh, progress=not quiet, teacher=teacher
    )
    typer.echo(
        f"distilled: step {meta['step']}, batch {meta['train']['batch']}, loss {meta.get('loss')}, "
        f"{meta['train_flops'] / 1e12:.3f} TFLOPs (teachers' forwards included) "
        f"-> {r.model_dir('distilled')}"
    )


@experts_app.command("remove")
def experts_remove_cmd(
    run: RunDDM,
    expert: Annotated[int, typer.Argument(help="The expert (cluster) whose data owner withdrew.")],
    preset: PresetOpt = None,
    steps: Annotated[
        int | None, typer.Option("--steps", help="Router training steps. (default: train.steps)")
    ] = None,
    quiet: QuietOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Withdraw cluster K for good: delete its expert (and models trained on its data), renumber
    the others, retrain only the router; RUN/membership.json records it for the report."""
    from ..run import Run
    from .membership import remove_expert

    r = Run(run)
    cfg = _resolve(r, config, set_, preset=preset, steps=steps)
    ev = remove_expert(r, expert, cfg, progress=not quiet)
    typer.echo(
        f"expert {expert} withdrawn ({ev['withdrawn_images']} images); renumbered "
        f"{ev['renumbered'] or 'none'}; deleted {', '.join(ev['deleted']) or 'nothing'}; router retrained"
    )


@experts_app.command("add")
def experts_add_cmd(
    run: RunDDM,
    data: Annotated[str, typer.Option("--data", help="The new data source (same image shape).")],
    preset: PresetOpt = None,
    steps: StepsOpt = None,
    batch: Annotated[
        int | None, typer.Option("--batch", help="New expert's batch. (default: train.batch / K)")
    ] = None,
    quiet: QuietOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Add a data source as cluster K: a new expert trained alone on it, then the router retrained;
    no other expert's file changes."""
    from ..run import Run
    from .membership import add_expert

    r = Run(run)
    cfg = _resolve(r, config, set_, preset=preset, steps=steps)
    ev = add_expert(r, data, cfg, batch=batch, progress=not quiet)
    typer.echo(f"expert {ev['expert']} added: {ev['images']} images of {data}; router retrained")


def train_expert_cmd(
    run: Annotated[Path, typer.Argument(help="Run directory with a partition.")],
    expert: Annotated[
        int, typer.Option("--expert", "-k", help="Which expert (cluster) to train, 0..K-1.")
    ],
    preset: PresetOpt = None,
    objective: ObjectiveOpt = None,
    steps: StepsOpt = None,
    batch: Annotated[
        int | None,
        typer.Option(
            "--batch", help="Expert batch. (default: train.batch / K, FLOP-matched to the monolith)"
        ),
    ] = None,
    seed: SeedOpt = None,
    fresh: FreshOpt = False,
    quiet: QuietOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Train one expert on its own cluster only (one compute island; writes only RUN/experts/<k>).
    Under `torchrun --nproc_per_node=W`, the island trains with DDP (batch split over W ranks)."""
    from ..run import Run
    from ..training.distributed import dist_env, train_expert_ddp
    from .experts import train_expert

    r = Run(run)
    cfg = _resolve(r, config, set_, preset=preset, objective=objective, steps=steps, seed=seed)
    env = dist_env()
    if env is None:
        meta = train_expert(r, expert, cfg, batch=batch, fresh=fresh, progress=not quiet)
    else:
        meta = train_expert_ddp(r, expert, cfg, env, batch=batch, fresh=fresh, progress=not quiet)
        if not env.is_main:
            return
    typer.echo(
        f"expert {expert}: step {meta['step']}, batch {meta['train']['batch']}, "
        f"{meta['shard_size']} images, loss {meta.get('loss')}"
    )


def train_experts_cmd(
    run: Annotated[Path, typer.Argument(help="Run directory with a partition.")],
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
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads", help="process/ray: torch threads per island. (default: cores / jobs)"
        ),
    ] = None,
    preset: PresetOpt = None,
    objective: ObjectiveOpt = None,
    steps: StepsOpt = None,
    batch: Annotated[
        int | None, typer.Option("--batch", help="Expert batch. (default: train.batch / K)")
    ] = None,
    seed: SeedOpt = None,
    fresh: FreshOpt = False,
    quiet: QuietOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Train all K experts (each only on its cluster), here, as parallel processes, or on Ray."""
    from ..run import Run
    from .launchers import train_experts

    r = Run(run)
    cfg = _resolve(r, config, set_, preset=preset, objective=objective, steps=steps, seed=seed)
    metas = train_experts(
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
    )
    for k, meta in metas.items():
        typer.echo(
            f"expert {k}: step {meta['step']}, {meta['shard_size']} images, loss {meta.get('loss')}"
        )


def diagnose_cmd(
    run: RunDDM,
    routings: Annotated[
        str,
        typer.Option(
            "--routings",
            help="Router-driven routings whose expert usage per step is traced (comma-separated).",
        ),
    ] = "top1",
    n: Annotated[int, typer.Option("--n", help="Images sampled per traced routing.")] = 256,
    steps: Annotated[
        int | None, typer.Option("--steps", help="Solver steps. (default: sample.steps)")
    ] = None,
    seed: SeedOpt = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, mps.")] = "auto",
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Why a routing helps or hurts: the router's accuracy, entropy and calibration (ECE) per
    noise level, and which expert each traced routing picks at every sampling step (usage, and
    how often an image switches expert). Writes RUN/diagnostics.json and
    RUN/figures/routing_diagnostics.png; `report` shows them."""
    from ..run import Run
    from ..training.loop import resolve_device
    from .diagnostics import diagnose, summary_lines
    from .ensemble import split_routings

    names = tuple(split_routings(routings))
    r = Run(run)
    cfg = _resolve(r, config, set_, sample_steps=steps, sample_seed=seed)
    if n < 1:
        raise ConfigError(f"--n must be >= 1, got {n}")
    out = diagnose(r, cfg, routings=names, n=n, device=resolve_device(device))
    for line in summary_lines(out):
        typer.echo(line)
    typer.echo(
        f"-> {r.path / 'diagnostics.json'}, {r.path / 'figures' / 'routing_diagnostics.png'}"
    )


def register(app: typer.Typer, train_app: typer.Typer) -> None:
    """Add these commands to the ``decentdiff`` app (replacing ``train expert``/``train experts``).

    Idempotent: a command of the same name registered before is dropped first.
    """
    new = {"expert": train_expert_cmd, "experts": train_experts_cmd}
    train_app.registered_commands = [c for c in train_app.registered_commands if c.name not in new]
    for name, fn in new.items():
        train_app.command(name)(fn)
    app.registered_commands = [
        c for c in app.registered_commands if c.name not in ("distill", "diagnose")
    ]
    app.command("distill")(distill_cmd)
    app.command("diagnose")(diagnose_cmd)
    app.registered_groups = [g for g in app.registered_groups if g.name != "experts"]
    app.add_typer(experts_app, name="experts")
