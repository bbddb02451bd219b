"""Using trained models: ``sample`` (images to a file), ``eval`` (one metrics row), ``compare``
(every model and routing, the paper's Table 1) and ``report`` (RUN/report.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..ddm.defaults import DEFAULT_ROUTINGS
from ..errors import ConfigError
from .options import (
    CompareFreshOpt,
    ConfigOpt,
    CopyThresholdOpt,
    DeviceOpt,
    EvalFeaturesOpt,
    EvalModelOpt,
    EvalNOpt,
    ExistingRunArg,
    ExportFreshOpt,
    GuidanceOpt,
    LogOpt,
    MemorisationOpt,
    OldEvalFeaturesOpt,
    OldForceOpt,
    OldRecomputeOpt,
    OldRoutingsOpt,
    OldSampleStepsOpt,
    PrecisionOpt,
    QuietOpt,
    RoutingOpt,
    RoutingsOpt,
    SampleModelOpt,
    SampleNOpt,
    SampleSeedOpt,
    SamplesOutOpt,
    SampleStepsOpt,
    SetOpt,
    SolverOpt,
    copy_threshold,
    eval_config,
    existing_run,
    resolve_config,
)


def sample(
    run: ExistingRunArg,
    out: SamplesOutOpt,
    model: SampleModelOpt = None,
    routing: RoutingOpt = None,
    drop_expert: Annotated[
        list[int] | None,
        typer.Option(
            "--drop-expert",
            help="Leave expert K out of the ensemble, renormalising the router (repeatable).",
        ),
    ] = None,
    n: SampleNOpt = None,
    sample_steps: SampleStepsOpt = None,
    solver: SolverOpt = None,
    guidance: GuidanceOpt = None,
    label: Annotated[
        int | None,
        typer.Option(
            "--label",
            help="Class to generate (class-conditional models); default cycles through classes.",
        ),
    ] = None,
    seed: SampleSeedOpt = None,
    precision: PrecisionOpt = None,
    device: DeviceOpt = "auto",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    old_steps: OldSampleStepsOpt = None,
) -> None:
    """Generate images with a trained model of RUN."""
    from ..generate import generate, save_samples
    from ..loading import default_model
    from ..training.loop import resolve_device

    r = existing_run(run, fix="train a model into it first")
    if model is not None:
        from ..loading import parse_model

        parse_model(model)  # an explicit --model "" is an error, not "the default"
    cfg = resolve_config(
        r,
        config,
        set_,
        n=n,
        sample_steps=sample_steps,
        solver=solver,
        guidance=guidance,
        sample_seed=seed,
        model_spec=model,
        routing=routing,
        sample_precision=precision,
    )
    if out.suffix != ".npz":
        raise ConfigError(
            f"--out {out}: the output must end in .npz (a .png grid is written beside it)"
        )
    gen = generate(
        r,
        cfg.sample.model or default_model(r),
        cfg.sample,
        routing=cfg.sample.routing,
        drop=tuple(drop_expert or ()),
        label=label,
        device=resolve_device(device),
    )
    png = save_samples(out, gen)
    typer.echo(
        f"{cfg.sample.n} samples -> {out} (grid {png}); "
        f"{gen.cost['gflops_per_image']:.2f} GFLOPs/image, {gen.wall_s:.1f} s"
    )


def evaluate(
    run: ExistingRunArg,
    model: EvalModelOpt = None,
    routing: RoutingOpt = None,
    n: EvalNOpt = None,
    eval_features: EvalFeaturesOpt = "auto",
    sample_steps: SampleStepsOpt = None,
    solver: SolverOpt = None,
    guidance: GuidanceOpt = None,
    seed: SampleSeedOpt = None,
    precision: PrecisionOpt = None,
    memorisation: MemorisationOpt = False,
    copy_threshold_: CopyThresholdOpt = None,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
    log: LogOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    old_steps: OldSampleStepsOpt = None,
    old_features: OldEvalFeaturesOpt = None,
) -> None:
    """Sample a model and score it against the held-out images; appends a row to RUN/metrics.jsonl.
    With --memorisation, also the generated images' nearest training images and how many are
    copies."""
    from ..ddm.load import resolve_routing
    from ..evaluation.evaluate import evaluate as run_eval
    from ..loading import sample_name, samples_path
    from ..training.loop import resolve_device

    r = existing_run(run)
    if model is not None:
        from ..loading import parse_model

        parse_model(model)  # an explicit --model "" is an error, not "the default"
    cfg = eval_config(
        r,
        config,
        set_,
        n,
        sample_steps=sample_steps,
        sample_seed=seed,
        solver=solver,
        guidance=guidance,
        model_spec=model,
        routing=routing,
        log=log,
        sample_precision=precision,
    )
    model = cfg.sample.model or "ensemble"
    routing = resolve_routing(r, cfg.sample.routing) if model == "ensemble" else None
    name = sample_name(model, routing)
    row = run_eval(
        r,
        cfg,
        model,
        routing=routing or cfg.sample.routing,
        features=eval_features,
        device=resolve_device(device),
        progress=not quiet,
        save_samples_to=samples_path(r, model, routing),
        memorisation=copy_threshold(memorisation, copy_threshold_),
    )
    typer.echo(
        f"{name}: FID {row['fid']:.2f} (floor {row['floor']['fid']:.2f}), KID {row['kid_mean']:.4f}, "
        f"precision {row['precision']:.3f}, recall {row['recall']:.3f}, "
        f"{row['sample_gflops_per_image']:.2f} GFLOPs/image -> {r.metrics_path}"
    )
    if "memorisation" in row:
        from ..evaluation.memorisation import summary_line

        typer.echo(f"{name}: " + summary_line(row["memorisation"]))


def compare(
    run: ExistingRunArg,
    routing: RoutingsOpt = ",".join(DEFAULT_ROUTINGS),
    n: EvalNOpt = None,
    eval_features: EvalFeaturesOpt = "auto",
    sample_steps: SampleStepsOpt = None,
    solver: SolverOpt = None,
    guidance: GuidanceOpt = None,
    seed: SampleSeedOpt = None,
    precision: PrecisionOpt = None,
    fresh: CompareFreshOpt = False,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
    log: LogOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    old_routings: OldRoutingsOpt = None,
    old_steps: OldSampleStepsOpt = None,
    old_features: OldEvalFeaturesOpt = None,
    old_recompute: OldRecomputeOpt = False,
) -> None:
    """The ensemble under each routing vs the monolith (and distilled): a table like the paper's Table 1."""
    from ..ddm.load import resolve_routing
    from ..ddm.routing import split_routings
    from ..report import compare as run_compare
    from ..report import comparison_table
    from ..training.loop import resolve_device

    # Every routing is checked before anything is computed or written.
    r = existing_run(run)
    names = tuple(dict.fromkeys(resolve_routing(r, x) for x in split_routings(routing)))
    cfg = eval_config(
        r,
        config,
        set_,
        n,
        sample_steps=sample_steps,
        sample_seed=seed,
        solver=solver,
        guidance=guidance,
        log=log,
        sample_precision=precision,
    )
    rows = run_compare(
        r,
        cfg,
        routings=names,
        features=eval_features,
        recompute=fresh,
        device=resolve_device(device),
        progress=not quiet,
    )
    typer.echo(comparison_table(rows))
    typer.echo(f"-> {r.path / 'compare.md'}, {r.path / 'figures' / 'fid_vs_flops.png'}")


def report(
    run: ExistingRunArg,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Write RUN/report.md: data, partition, training curves, router, samples, comparison, attribution."""
    from ..report import write_report

    r = existing_run(run)
    out = write_report(r, resolve_config(r, config, set_))
    typer.echo(f"report -> {out}")


def export(
    run: ExistingRunArg,
    out: Annotated[Path, typer.Argument(help="The folder to write (must not exist, or be empty).")],
    license: Annotated[
        str,
        typer.Option(
            "--license", help="License of the models for the model card (an SPDX id, or other)."
        ),
    ] = "other",
    fresh: ExportFreshOpt = False,
    old_force: OldForceOpt = False,
) -> None:
    """Write RUN's trained models to OUT to share: weights (safetensors), config.json and a
    README.md model card; `decentdiff sample OUT` and `decentdiff.load(OUT)` work on it."""
    from ..export import export_run

    r = existing_run(run)
    path = export_run(r, out, license=license, force=fresh)
    n = len(json.loads((path / "config.json").read_text())["models"])
    typer.echo(f"{n} models -> {path} (model card {path / 'README.md'})")
