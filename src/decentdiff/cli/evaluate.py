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
    ConfigOpt,
    DeviceOpt,
    EvalNOpt,
    ExistingRunArg,
    FeaturesOpt,
    LogOpt,
    PrecisionOpt,
    QuietOpt,
    RoutingOpt,
    SampleSeedOpt,
    SampleStepsOpt,
    SetOpt,
    SolverOpt,
    default_of,
    eval_config,
    existing_run,
    resolve_config,
)

MODEL_HELP = (
    "ensemble (experts + router), monolith, distilled, expert:K, or of a federated run "
    "federated / client:I. Also settable as sample.model."
)


def sample(
    run: ExistingRunArg,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Output .npz (key `images`, float32 in [−1, 1]); a .png grid is written beside it.",
        ),
    ],
    model: Annotated[
        str | None, typer.Option("--model", help=MODEL_HELP + " (default: monolith)")
    ] = None,
    routing: RoutingOpt = None,
    drop_expert: Annotated[
        list[int] | None,
        typer.Option(
            "--drop-expert",
            help="Leave expert K out of the ensemble, renormalising the router (repeatable).",
        ),
    ] = None,
    n: Annotated[
        int | None, typer.Option("--n", help=f"Number of images. {default_of('sample', 'n')}")
    ] = None,
    steps: SampleStepsOpt = None,
    solver: SolverOpt = None,
    guidance: Annotated[
        float | None,
        typer.Option(
            "--guidance",
            help=f"Classifier-free guidance scale. {default_of('sample', 'guidance')}",
        ),
    ] = None,
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
) -> None:
    """Generate images with a trained model of RUN."""
    from ..generate import generate, save_samples
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
        sample_steps=steps,
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
        cfg.sample.model or "monolith",
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
    model: Annotated[
        str | None, typer.Option("--model", help=MODEL_HELP + " (default: ensemble)")
    ] = None,
    routing: RoutingOpt = None,
    n: EvalNOpt = None,
    features: FeaturesOpt = "auto",
    steps: SampleStepsOpt = None,
    solver: SolverOpt = None,
    seed: SampleSeedOpt = None,
    precision: PrecisionOpt = None,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
    log: LogOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Sample a model and score it against the held-out images; appends a row to RUN/metrics.jsonl."""
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
        sample_steps=steps,
        sample_seed=seed,
        solver=solver,
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
        features=features,
        device=resolve_device(device),
        progress=not quiet,
        save_samples_to=samples_path(r, model, routing),
    )
    typer.echo(
        f"{name}: FID {row['fid']:.2f} (floor {row['floor']['fid']:.2f}), KID {row['kid_mean']:.4f}, "
        f"precision {row['precision']:.3f}, recall {row['recall']:.3f}, "
        f"{row['sample_gflops_per_image']:.2f} GFLOPs/image -> {r.metrics_path}"
    )


def compare(
    run: Annotated[
        Path, typer.Argument(help="Run directory with experts + router and/or a monolith.")
    ],
    routings: Annotated[
        str,
        typer.Option(
            "--routings",
            help="Comma-separated routings for the ensemble (forms as --routing of `eval`).",
        ),
    ] = ",".join(DEFAULT_ROUTINGS),
    n: EvalNOpt = None,
    features: FeaturesOpt = "auto",
    steps: SampleStepsOpt = None,
    seed: SampleSeedOpt = None,
    solver: SolverOpt = None,
    recompute: Annotated[
        bool, typer.Option("--recompute", help="Ignore matching rows already in metrics.jsonl.")
    ] = False,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
    log: LogOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """The ensemble under each routing vs the monolith (and distilled): a table like the paper's Table 1."""
    from ..ddm.load import resolve_routing
    from ..ddm.routing import split_routings
    from ..report import compare as run_compare
    from ..report import comparison_table
    from ..training.loop import resolve_device

    # Every routing is checked before anything is computed or written.
    r = existing_run(run)
    names = tuple(dict.fromkeys(resolve_routing(r, x) for x in split_routings(routings)))
    cfg = eval_config(
        r, config, set_, n, sample_steps=steps, sample_seed=seed, solver=solver, log=log
    )
    rows = run_compare(
        r,
        cfg,
        routings=names,
        features=features,
        recompute=recompute,
        device=resolve_device(device),
        progress=not quiet,
    )
    typer.echo(comparison_table(rows))
    typer.echo(f"-> {r.path / 'compare.md'}, {r.path / 'figures' / 'fid_vs_flops.png'}")


def report(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
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
    force: Annotated[bool, typer.Option("--force", help="Replace an existing folder.")] = False,
) -> None:
    """Write RUN's trained models to OUT to share: weights (safetensors), config.json and a
    README.md model card; `decentdiff sample OUT` and `decentdiff.load(OUT)` work on it."""
    from ..export import export_run

    r = existing_run(run)
    path = export_run(r, out, license=license, force=force)
    n = len(json.loads((path / "config.json").read_text())["models"])
    typer.echo(f"{n} models -> {path} (model card {path / 'README.md'})")
