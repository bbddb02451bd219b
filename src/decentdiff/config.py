"""Typed configuration: dataclasses with small CPU-sized defaults, TOML files, ``--set`` overrides.

Precedence, lowest first: dataclass defaults < ``--config FILE`` < ``--set section.key=value`` <
explicit command-line options. Unknown sections or keys are errors that list the valid ones.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomllib

from .errors import ConfigError


@dataclass
class DataConfig:
    source: str = "mnist5k"  # a data source spec (see `decentdiff data list`)
    heldout: float = 0.2  # share of each class kept out of training, for evaluation
    # A second source to evaluate against instead (e.g. tinyimagenet-val:DIR, the official
    # validation split); then the whole of `source` trains and `heldout` is not used.
    heldout_source: str = ""
    split_seed: int = 0
    # Image files (folder:DIR, hf:NAME) and any other source: resize the short side to `size` with
    # PIL's bicubic filter, then centre-crop size x size; 0 = keep the images' own size (they must
    # all agree). docs/data.md.
    size: int = 0
    channels: int = 0  # 1 (grey) | 3 (RGB) | 0 = as the data: 1 if every image is grey, else 3
    # folder:DIR: share of its image files that may be unusable (skipped with a warning and a
    # count) before loading fails; 0 = any unusable file is an error.
    skip_bad: float = 0.0


@dataclass
class ModelConfig:
    preset: str = "small"  # tiny | compact | small | base (UNet); dit-tiny … dit-base (DiT)
    arch: str = ""  # '' = as the preset's name says | unet | dit (dit + small = dit-small)
    vae: str = ""  # a local diffusers AutoencoderKL directory: train and sample in its latent space
    class_cond: bool = False  # condition on labels (with a null class for guidance)


@dataclass
class ObjectiveConfig:
    kind: str = "fm"  # fm (rectified flow matching) | ddpm (ε-prediction) | vpred (v-prediction)
    time_dist: str = "logit_normal"  # fm: uniform | logit_normal
    schedule: str = "linear"  # ddpm: linear | cosine
    loss: str = "mse"  # mse | huber
    timesteps: int = 1000  # ddpm: T
    # ddpm: velocity:G (the ε-loss weighted as the flow-matching loss, capped at G; docs/models.md) |
    # uniform (Ho et al.'s simple loss); vpred, fm: uniform. auto = the kind's default (AUTO).
    weighting: str = "auto"
    eps_param: str = (
        "skip"  # ddpm: skip (ε̂ = √(1−ᾱ)·z + √ᾱ·network, docs/models.md) | direct (network = ε̂)
    )
    # ddpm, vpred: logit_normal (flow matching's noise levels, at the DDPM step of the same SNR) |
    # uniform (integer steps, Ho et al.). auto = the kind's default (AUTO): ddpm logit_normal
    # and vpred uniform, as measured (docs/models.md, "How well ε- and v-models sample").
    step_dist: str = "auto"

    #: What a model recorded before a field existed was trained with (its meta.json lacks it).
    LEGACY: typing.ClassVar[dict[str, Any]] = {
        "eps_param": "direct",
        "step_dist": "uniform",
        "weighting": "uniform",
    }
    #: What ``auto`` means per objective kind (every record stores the resolved value).
    AUTO: typing.ClassVar[dict[str, dict[str, str]]] = {
        "ddpm": {"weighting": "velocity:100", "step_dist": "logit_normal"},
        "vpred": {"weighting": "uniform", "step_dist": "uniform"},
        "fm": {"weighting": "uniform", "step_dist": "uniform"},
    }

    def resolved(self) -> ObjectiveConfig:
        """A copy with every ``auto`` replaced by the kind's default (:attr:`AUTO`); what trains
        and what is recorded (meta.json, fed.json), so a later change of a default never changes
        how a recorded model is read. An unknown kind is left for the objective to report."""
        auto = self.AUTO.get(self.kind, self.AUTO["fm"])
        return dataclasses.replace(
            self, **{k: v for k, v in auto.items() if getattr(self, k) == "auto"}
        )

    @classmethod
    def from_meta(cls, d: dict[str, Any]) -> ObjectiveConfig:
        """The objective a checkpoint's or a federation's record describes; fields it predates
        take what models were trained with then (:attr:`LEGACY`), not today's defaults."""
        return cls(**{**cls.LEGACY, **d}).resolved()


@dataclass
class TrainConfig:
    steps: int = 3000
    batch: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup: int = 100  # linear warm-up steps; then constant (keeps resume exact for any --steps)
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    ckpt_every: int = 250  # steps between checkpoints (always one at the end)
    log_every: int = 50
    cond_drop: float = 0.1  # class-conditional: share of labels replaced by the null class
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    log: str = "jsonl"  # jsonl (metrics.jsonl only) | tensorboard (also TensorBoard event files)
    precision: str = "auto"  # auto | fp32 | bf16 (autocast; weights, EMA, checkpoints stay fp32)
    # adamw (the default) | sgd: plain SGD, no momentum -- for FedSGD-style federated clients whose
    # server optimiser (fed run --server-opt fedadam) adapts the step (see OPTIMIZERS)
    optimizer: str = "adamw"


#: train.precision and sample.precision: ``auto`` resolves by device and network size
#: (:mod:`decentdiff.precision`).
PRECISIONS = ("auto", "fp32", "bf16")

#: train.optimizer: AdamW (lr, weight_decay; PyTorch's betas and eps) or plain SGD (lr,
#: weight_decay; no momentum). SGD's update is lr x the gradient, so a federated client that takes
#: one SGD step sends the server its (lr-scaled) gradient: FedSGD, which a server Adam
#: (--server-opt fedadam) turns into central large-batch Adam.
OPTIMIZERS = ("adamw", "sgd")

#: --precision's help, shared by the training commands, sample and eval.
PRECISION_HELP = (
    "fp32, bf16 (torch.autocast around the network calls; weights, optimizer, EMA, checkpoints "
    "and the sampler's state stay fp32) or auto (the default): bf16 only where it was measured "
    "to win -- a device with fast bf16 (a CPU with AMX tiles; a CUDA GPU with bf16, not measured "
    "here) and a network of at least 0.16 GFLOP per image forward (small: 1.4x the training and "
    "1.8x the sampling img/s on an idle AMX CPU, FID at equal steps 0.96x of fp32's over 3 "
    "seeds); "
    "fp32 elsewhere (tiny, compact: no gain, compact sampling slower; a CPU with avx512_bf16 but "
    "no AMX ran small at 0.8x) -- BENCHMARKS.md, bf16 vs fp32. Also settable as "
    "train.precision / sample.precision."
)

#: --solver's help, shared by sample, eval, compare and fed eval.
SOLVER_HELP = (
    "auto (the default): ancestral ddpm for a model with any DDPM ε-network (its best sampler; "
    "Euler scored 1.28x its FID with the default ε-recipe, 1.16x with Ho et al.'s steps and "
    "loss, 5.7-8.6x with a plain ε-network), euler for flow matching and v-prediction "
    "(deterministic; ancestral was better unconditionally, not in the guided class-conditional "
    "demo) -- docs/models.md, how well ε- and v-models sample. Or euler, heun (2 evaluations per "
    "step), ddim, ddpm."
)


#: The guidance scale a class-conditional model samples at when no --guidance, --set or --config
#: names one (``sample.guidance = None``, resolved per model by
#: :func:`decentdiff.loading.resolve_guidance`), by the channels of its images; an unconditional
#: model has no guidance (1). Measured, each the lowest FID of the scales tried, on 3 seeds: grey digits
#: 2 (1, 2, 3, 4 on mnist5k; 3 and 4 are worse than none there), colour natural images 3 (1, 2, 3
#: on Tiny ImageNet, 3 the lowest for ensemble and monolith on every seed): docs/models.md,
#: samplers. Other channel counts take the colour value.
CLASS_COND_GUIDANCE = {1: 2.0, 3: 3.0}


def class_cond_guidance(channels: int) -> float:
    """The default guidance scale of a class-conditional model of ``channels``-channel images."""
    return CLASS_COND_GUIDANCE.get(channels, CLASS_COND_GUIDANCE[3])


@dataclass
class SampleConfig:
    n: int = 64
    steps: int = 50
    solver: str = "auto"  # auto (by the model's objective) | euler | heun | ddim | ddpm
    guidance: float | None = None  # classifier-free (1 = none); None: the model's default
    seed: int = 0
    ema: bool = True  # sample from the EMA weights
    batch: int = 256  # images per forward pass
    model: str = ""  # which model of the RUN; "" = the command's default (see `sample --help`)
    routing: str = "auto"  # an ensemble's routing (ddm/defaults.py: auto resolves by the RUN)
    precision: str = "auto"  # auto | fp32 | bf16: the network calls (the solver's x stays fp32)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


def _section_types(obj: Any) -> dict[str, Any]:
    hints = typing.get_type_hints(type(obj))
    return {f.name: hints[f.name] for f in fields(obj)}


def _coerce(value: Any, typ: Any, where: str) -> Any:
    """Convert a TOML value or a ``--set`` string to a field's type, or raise ConfigError."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        typ = args[0]
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if typ is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if typ is str:
            if not isinstance(value, str | int | float):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        name = getattr(typ, "__name__", str(typ))
        raise ConfigError(f"{where}: expected {name}, got {value!r}") from None
    return value


def apply_dict(cfg: Config, data: dict[str, Any], origin: str) -> Config:
    """Overlay a nested dict (as read from TOML) onto ``cfg``; unknown keys are errors."""
    sections = {f.name for f in fields(cfg)}
    for sec, values in data.items():
        if sec not in sections:
            raise ConfigError(
                f"{origin}: unknown section [{sec}]; valid sections: {', '.join(sorted(sections))}"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: [{sec}] must be a table of key = value")
        obj = getattr(cfg, sec)
        types_ = _section_types(obj)
        for key, val in values.items():
            if key not in types_:
                raise ConfigError(
                    f"{origin}: unknown key {sec}.{key}; valid keys: {', '.join(sorted(types_))}"
                )
            setattr(obj, key, _coerce(val, types_[key], f"{origin}: {sec}.{key}"))
    return cfg


def load_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} not found; pass an existing TOML file to --config")
    try:
        return tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {p} is not valid TOML ({e}); fix the syntax") from None


def parse_set(items: list[str] | None) -> dict[str, dict[str, str]]:
    """``["train.steps=100", ...]`` -> ``{"train": {"steps": "100"}}``."""
    out: dict[str, dict[str, str]] = {}
    for item in items or []:
        key, sep, val = item.partition("=")
        sec, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. train.steps=500")
        out.setdefault(sec, {})[name] = val.strip()
    return out


#: Named overrides (a command line's explicit options, a library call's keyword arguments) and
#: the config value each one sets.
OVERRIDES: dict[str, tuple[str, str]] = {
    "data": ("data", "source"),
    "preset": ("model", "preset"),
    "arch": ("model", "arch"),
    "vae": ("model", "vae"),
    "device": ("train", "device"),
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
    "model_spec": ("sample", "model"),
    "routing": ("sample", "routing"),
    "log": ("train", "log"),
    "precision": ("train", "precision"),
    "sample_precision": ("sample", "precision"),
}


def resolve(
    config_file: str | Path | None = None,
    sets: list[str] | None = None,
    base: dict[str, Any] | None = None,
    **overrides: Any,
) -> Config:
    """Defaults, then ``base`` (e.g. a RUN's run.toml), then the file, then ``--set``, then the
    named ``overrides`` that are not None (keys of :data:`OVERRIDES`)."""
    cfg = Config()
    if base:
        apply_dict(cfg, base, "run.toml")
    if config_file:
        apply_dict(cfg, load_toml(config_file), str(config_file))
    if sets:
        apply_dict(cfg, parse_set(sets), "--set")
    for name, value in overrides.items():
        if name not in OVERRIDES:
            raise TypeError(f"unknown override {name!r}; known: {', '.join(OVERRIDES)}")
        if value is not None:
            section, key = OVERRIDES[name]
            setattr(getattr(cfg, section), key, value)
    if cfg.train.optimizer not in OPTIMIZERS:
        raise ConfigError(
            f"train.optimizer = {cfg.train.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}"
        )
    for section in ("train", "sample"):
        value = getattr(cfg, section).precision
        if value not in PRECISIONS:
            raise ConfigError(
                f"{section}.precision = {value!r}: choose one of {', '.join(PRECISIONS)}"
            )
    return cfg


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dump_toml(data: dict[str, dict[str, Any]]) -> str:
    """Write a two-level dict (sections of scalars/lists) as TOML; None values are omitted."""
    lines: list[str] = []
    for sec, values in data.items():
        lines.append(f"[{sec}]")
        for k, v in values.items():
            if v is not None:
                lines.append(f"{k} = {_toml_value(v)}")
        lines.append("")
    return "\n".join(lines)
