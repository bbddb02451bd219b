"""Federated runs: settings, the RUN/federated layout, resume, and the simulation driver.

``run_federated`` drives Flower's simulation engine on this machine; the same ServerApp and
ClientApp run under ``flwr run`` and on a real SuperLink with SuperNodes. The settings travel to
every client as one JSON string in the round's ConfigRecord, so a SuperNode needs nothing but its
own data; ``RUN/federated/fed.json`` keeps them for resume.

Layout of ``RUN/federated/``::

    fed.json          the run's settings
    rounds.jsonl      one row per round: bytes each way per client (initial broadcast included),
                      loss, rejected or failed clients
    global/           FULL, USPLIT: the global model, an ordinary generative checkpoint
    shared/           UDEC, ULATDEC: the server's shared parts only (not a generator)
    clients/<i>/      UDEC, ULATDEC: each client's own model, an ordinary generative checkpoint
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config, ObjectiveConfig
from ..errors import ConfigError
from . import aggregate as A
from . import parts as P

#: How often Ray restarts a client's worker process that died during a simulation.
ACTOR_RESTARTS = 3

#: Paper defaults (de Goede et al., arXiv 2406.12575): DDPM ε with Huber loss, linear β, T = 1000,
#: Adam lr 1e-4 re-created every round, batch 128. Warm-up would restart every round, so it is off;
#: EMA across re-created optimisers means nothing, so clients keep none (decay 0: EMA == weights).
FED_BASE: dict[str, dict[str, Any]] = {
    "objective": {"kind": "ddpm", "loss": "huber", "schedule": "linear", "timesteps": 1000},
    "train": {"lr": 1e-4, "warmup": 0, "batch": 128, "ema_decay": 0.0, "weight_decay": 0.0},
}

#: Keys that must not change when a federated run is resumed.
IDENTITY = ("method", "clients", "split", "seed", "prox", "quantize", "unet", "objective", "data")


@dataclass
class FedSettings:
    """Everything a federated run needs besides the data itself."""

    method: str = "full"
    clients: int = 5
    split: str = "iid"
    rounds: int = 15
    local_epochs: float = 1.0  # E: each client takes ceil(E · n_i / batch) steps per round
    local_steps: int = 0  # > 0 overrides E (tests, quick looks)
    prox: float = 0.0  # FedProx μ (0 = plain FedAvg)
    quantize: int = 0  # 0 = full precision; 8 = 8-bit updates
    seed: int = 0
    min_replies: int = 1  # a round completes when at least this many valid updates arrived
    round_timeout: float = 3600.0  # seconds the server waits for a round's replies
    min_client_size: int = 2
    client_threads: int = 0  # torch threads per client (0: torch's default); a node may override
    run_dir: str = ""  # simulation: clients save personal models under RUN/federated/clients/<i>
    data: dict[str, Any] = field(default_factory=dict)  # DataConfig as a dict
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig as a dict
    objective: dict[str, Any] = field(default_factory=dict)  # ObjectiveConfig as a dict
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig as a dict
    unet: dict[str, Any] = field(default_factory=dict)  # UNetConfig.to_dict()
    image_shape: list[int] = field(default_factory=list)
    num_classes: int = 0  # classes the UNet is conditioned on (0 = unconditional)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FedSettings:
        raw = json.loads(text)
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})

    @property
    def bits(self) -> int | None:
        return self.quantize or None

    def validate(self) -> FedSettings:
        """Raise ConfigError (one line) on a bad value; returns self."""
        from ..data.partition import parse_client_split

        P.get_method(self.method)
        self.method = self.method.strip().lower()
        parse_client_split(self.split)
        checks = [
            (self.clients >= 1, f"--clients must be ≥ 1, got {self.clients}"),
            (self.rounds >= 1, f"--rounds must be ≥ 1, got {self.rounds}"),
            (
                self.local_epochs > 0,
                f"--local-epochs must be > 0, got {self.local_epochs}",
            ),
            (self.local_steps >= 0, f"--local-steps must be ≥ 0, got {self.local_steps}"),
            (self.prox >= 0, f"--prox μ must be ≥ 0, got {self.prox}"),
            (
                self.quantize in (0, *A.QUANTIZE_BITS),
                f"--quantize must be 0 (off) or 8, got {self.quantize}",
            ),
            (
                1 <= self.min_replies <= self.clients,
                f"--min-replies must be in 1..{self.clients}, got {self.min_replies}",
            ),
            (self.round_timeout > 0, f"--round-timeout must be > 0, got {self.round_timeout}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        return self


def config_from(settings: FedSettings) -> Config:
    """The project Config (data, model, objective, train) recorded in ``settings``."""
    from ..config import DataConfig, ModelConfig, ObjectiveConfig, TrainConfig

    return Config(
        data=DataConfig(**settings.data),
        model=ModelConfig(**settings.model),
        objective=ObjectiveConfig(**settings.objective),
        train=TrainConfig(**settings.train),
    )


# ------------------------------------------------------------------------------ building settings
def build_settings(
    cfg: Config,
    *,
    method: str,
    clients: int,
    split: str,
    rounds: int,
    local_epochs: float,
    local_steps: int = 0,
    prox: float = 0.0,
    quantize: int = 0,
    seed: int = 0,
    min_replies: int = 1,
    round_timeout: float = 3600.0,
    run_dir: str = "",
    image_shape: tuple[int, int, int],
    num_classes: int,
) -> FedSettings:
    """Validated settings for a run on images of ``image_shape`` (C, H, W)."""
    from ..models.registry import unet_config

    n_cls = num_classes if cfg.model.class_cond else 0
    if cfg.model.class_cond and num_classes == 0:
        raise ConfigError("model.class_cond = true needs a labelled data source")
    s = FedSettings(
        method=method,
        clients=clients,
        split=split,
        rounds=rounds,
        local_epochs=local_epochs,
        local_steps=local_steps,
        prox=prox,
        quantize=quantize,
        seed=seed,
        min_replies=min_replies,
        round_timeout=round_timeout,
        run_dir=run_dir,
        data=asdict(cfg.data),
        model=asdict(cfg.model),
        objective=asdict(cfg.objective),
        train=asdict(cfg.train),
        unet=unet_config(cfg.model.preset, image_shape[0], n_cls).to_dict(),
        image_shape=list(image_shape),
        num_classes=n_cls,
    )
    from ..training.loop import validate

    validate(cfg.train)
    return s.validate()


def fed_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "federated"


def global_dir(run_dir: str | Path, method: str) -> Path:
    """Where the server keeps its model: ``global`` (a generator) or ``shared`` (parts only)."""
    personal = P.get_method(method).personal
    return fed_dir(run_dir) / ("shared" if personal else "global")


def model_dir(run_dir: str | Path, spec: str) -> Path:
    """``federated`` -> the global model; ``client:i`` -> client i's personal model.

    For ``decentdiff sample/eval --model``; raises ConfigError / RunError with the fix.
    """
    from ..errors import RunError

    settings = read_settings(run_dir)
    if settings is None:
        raise RunError(f"{run_dir} has no federated run; run `decentdiff fed run {run_dir} ...`")
    m = P.get_method(settings.method)
    if spec in ("federated", "global"):
        if m.personal:
            raise ConfigError(
                f"the {m.name} server model is not a usable generator (only shared parts are "
                f"averaged); use --model client:I with I in 0..{settings.clients - 1}"
            )
        return fed_dir(run_dir) / "global"
    if spec.startswith("client:"):
        if not m.personal:
            raise ConfigError(f"{m.name} has no personal models; use --model federated")
        try:
            i = int(spec.split(":", 1)[1])
        except ValueError:
            raise ConfigError(f"--model {spec!r}: expected client:I with an integer I") from None
        if not 0 <= i < settings.clients:
            raise ConfigError(f"--model {spec}: clients are 0..{settings.clients - 1}")
        return fed_dir(run_dir) / "clients" / str(i)
    raise ConfigError(f"unknown federated model {spec!r}; use federated or client:I")


def read_settings(run_dir: str | Path) -> FedSettings | None:
    p = fed_dir(run_dir) / "fed.json"
    if not p.is_file():
        return None
    try:
        return FedSettings.from_json(p.read_text())
    except (json.JSONDecodeError, TypeError):
        from ..errors import RunError

        raise RunError(f"{p} is not valid; delete RUN/federated or pass --fresh") from None


def _identity(s: FedSettings) -> dict[str, Any]:
    d = asdict(s)
    # Objective fields added after a run was started (e.g. `weighting`) take their defaults, so
    # a fed.json written by an earlier version still resumes.
    known = {f.name for f in fields(ObjectiveConfig)}
    obj = d.get("objective") or {}
    d["objective"] = {**asdict(ObjectiveConfig()), **obj} if set(obj) <= known else obj
    return {k: d[k] for k in IDENTITY}


def check_resumable(old: FedSettings, new: FedSettings) -> None:
    """A resumed run must be the same experiment (more rounds are fine)."""
    a, b = _identity(old), _identity(new)
    diff = [k for k in IDENTITY if a[k] != b[k]]
    if diff:
        raise ConfigError(
            f"RUN/federated holds a different federated run (differs in {', '.join(diff)}); use "
            "the same settings to resume, --fresh to start over, or another RUN"
        )


# ------------------------------------------------------------------------------ checkpoints
def _meta_common(settings: FedSettings) -> dict[str, Any]:
    return {
        "kind": "generative",
        "unet": settings.unet,
        "objective": settings.objective,
        "model": settings.model,
        "image_shape": settings.image_shape,
        "train": settings.train,
        "federated": {
            k: getattr(settings, k)
            for k in ("method", "clients", "split", "local_epochs", "prox", "quantize", "seed")
        },
    }


def personal_meta(
    settings: FedSettings, partition: int, num_images: int, data: Any, **extra: Any
) -> dict[str, Any]:
    """meta.json of a client's own model (the layout of ``train_generative``'s checkpoints)."""
    return {
        **_meta_common(settings),
        "role": f"federated client {partition}",
        "client": partition,
        "num_images": num_images,
        "data_fingerprint": getattr(data, "fingerprint", None),
        "source": getattr(data, "source", None),
        **extra,
    }


def save_server_model(
    run_dir: str | Path,
    settings: FedSettings,
    arrays: dict[str, np.ndarray],
    round_: int,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the server's model after ``round_``.

    FULL, USPLIT: ``global/``, a generative checkpoint (``ema`` = ``model``: the server keeps no
    EMA). UDEC, ULATDEC: ``shared/`` with only the shared parts and ``kind = federated-shared``, so
    nothing mistakes it for a generator.
    """
    import torch

    from ..training.checkpoint import save_checkpoint

    m = P.get_method(settings.method)
    out = global_dir(run_dir, m.name)
    keys = P.keys_for(m.shared, list(arrays)) if m.personal else list(arrays)
    sd = {k: torch.from_numpy(np.ascontiguousarray(arrays[k])) for k in keys}
    meta = {**_meta_common(settings), "round": round_, "step": round_, **(extra or {})}
    if m.personal:
        meta = {
            "kind": "federated-shared",
            "note": f"{m.name}: only {sorted(m.shared)} are averaged; the generators are "
            "RUN/federated/clients/<i>",
            "shared_groups": sorted(m.shared),
            "round": round_,
            "federated": meta["federated"],
        }
    else:
        meta["role"] = "federated global"
    save_checkpoint(out, {"model": sd, "ema": sd, "state": {"step": torch.tensor(round_)}}, meta)
    return out


def initial_arrays(settings: FedSettings) -> dict[str, np.ndarray]:
    """The round-0 model: the UNet initialised from the run's seed."""
    import torch

    from ..models.registry import build_unet
    from ..models.unet import UNetConfig

    torch.manual_seed(settings.seed)  # parameter initialisation only
    model = build_unet(UNetConfig.from_dict(settings.unet))
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def resume_point(run_dir: str | Path, settings: FedSettings) -> tuple[dict[str, np.ndarray], int]:
    """(the server's arrays, rounds already done): from the last checkpoint, or the initial model.

    For UDEC/ULATDEC only the shared parts are stored; the rest is the initial model, which the
    server never sends again after round 1.
    """
    from ..training.checkpoint import load_tensors, read_meta

    arrays = initial_arrays(settings)
    d = global_dir(run_dir, settings.method)
    if not (d / "meta.json").is_file():
        return arrays, 0
    meta = read_meta(d)
    t = load_tensors(d, "model", meta)
    unknown = sorted(set(t) - set(arrays))
    # A stored tensor must also have the run's shape and dtype (a tampered or foreign checkpoint
    # with the right names would otherwise fail later, inside Flower, with a traceback).
    misfit = [
        k
        for k, v in t.items()
        if k in arrays and (tuple(v.shape) != arrays[k].shape or v.numpy().dtype != arrays[k].dtype)
    ]
    if unknown or misfit:
        from ..errors import CheckpointError

        what = unknown[:3] or misfit[:3]
        raise CheckpointError(
            f"{d}/model.safetensors does not fit this run's model ({', '.join(what)}); pass --fresh"
        )
    for k, v in t.items():
        arrays[k] = v.numpy()
    return arrays, int(meta.get("round", 0))


def truncate_rounds(run_dir: str | Path, last_round: int) -> None:
    """Drop rounds.jsonl rows after ``last_round`` (written just before a crash, never saved)."""
    from ..training.checkpoint import atomic_write_text

    p = fed_dir(run_dir) / "rounds.jsonl"
    if not p.is_file():
        return
    rows = [r for r in p.read_text().splitlines() if r.strip()]
    keep = [r for r in rows if json.loads(r).get("round", 0) <= last_round]
    if len(keep) != len(rows):
        atomic_write_text(p, "".join(r + "\n" for r in keep))


def read_rounds(run_dir: str | Path) -> list[dict[str, Any]]:
    p = fed_dir(run_dir) / "rounds.jsonl"
    if not p.is_file():
        return []
    return [json.loads(r) for r in p.read_text().splitlines() if r.strip()]


def append_round(run_dir: str | Path, row: dict[str, Any]) -> None:
    p = fed_dir(run_dir) / "rounds.jsonl"
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("a") as f:
        f.write(json.dumps(row) + "\n")


# ------------------------------------------------------------------------------ figure
def bytes_figure(run_dir: str | Path, settings: FedSettings) -> Path:
    """RUN/figures/fed_bytes.png: cumulative bytes of this run (measured) and every method (predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from ..models.registry import build_unet
    from ..models.unet import UNetConfig

    layout = A.layout_of(
        {
            k: v.numpy()
            for k, v in build_unet(UNetConfig.from_dict(settings.unet)).state_dict().items()
        }
    )
    rows = read_rounds(run_dir)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in P.METHODS:
        pr = A.predict_bytes(
            layout, name, settings.clients, settings.rounds, bits=settings.bits, seed=settings.seed
        )["per_round"]
        cum = np.cumsum([0] + [r["up"] + r["down"] for r in pr]) / 1e6
        ax.plot(range(len(cum)), cum, "--", alpha=0.7, label=f"{name} (predicted)")
    if rows:
        cum = np.cumsum([0] + [r["up"] + r["down"] for r in rows]) / 1e6
        x = [0] + [r["round"] for r in rows]
        ax.plot(x, cum, "o", color="k", ms=4, label=f"{settings.method} (measured)")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    q = f", {settings.quantize}-bit updates" if settings.quantize else ""
    ax.set(
        xlabel="round",
        ylabel="cumulative MB sent (up + down)",
        title=f"{settings.clients} clients{q}",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(run_dir) / "figures" / "fed_bytes.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


# ------------------------------------------------------------------------------ simulation
def run_federated(
    run: Any,
    cfg: Config,
    *,
    clients: int = 5,
    split: str = "iid",
    method: str = "full",
    rounds: int = 15,
    local_epochs: float = 1.0,
    local_steps: int = 0,
    prox: float = 0.0,
    quantize: int = 0,
    seed: int = 0,
    min_replies: int = 1,
    round_timeout: float = 3600.0,
    parallel: int = 0,
    fresh: bool = False,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    evaluate_fn: Callable[[int, dict[str, np.ndarray]], dict[str, float] | None] | None = None,
    quiet_flower: bool = True,
) -> dict[str, Any]:
    """Run federated training with Flower's simulation engine; resumes unless ``fresh``.

    Args:
        run: a :class:`decentdiff.run.Run` (RUN directory).
        cfg: the resolved project config (data, model, objective, train).
        clients, split, method, rounds, local_epochs, local_steps, prox, quantize, seed: see
            :class:`FedSettings`.
        min_replies: valid updates a round needs to complete.
        parallel: clients trained at once (0: one per CPU core); each gets cores/parallel threads.
        fresh: delete RUN/federated first.
        on_round: called with each rounds.jsonl row (progress).
        evaluate_fn: hook ``(round, global arrays) -> metrics`` for FULL/USPLIT's global model
            (e.g. FID); its result is stored in the round's row. Not called for UDEC/ULATDEC,
            whose server model is not a generator.
    Returns:
        {"settings", "rounds" (rows), "model_dirs", "figure", "seconds"}.
    """
    import logging
    import os
    import shutil
    import time

    from ..data.partition import client_split
    from ..errors import DataError

    t0 = time.perf_counter()
    FedSettings(
        method=method,
        clients=clients,
        split=split,
        rounds=rounds,
        local_epochs=local_epochs,
        local_steps=local_steps,
        prox=prox,
        quantize=quantize,
        min_replies=min_replies,
        round_timeout=round_timeout,
    ).validate()  # bad options fail before RUN is touched
    if run.exists():
        d = run.data(cfg)
    else:
        from ..run import load_data

        d = load_data(cfg.data)
    settings = build_settings(
        cfg,
        method=method,
        clients=clients,
        split=split,
        rounds=rounds,
        local_epochs=local_epochs,
        local_steps=local_steps,
        prox=prox,
        quantize=quantize,
        seed=seed,
        min_replies=min_replies,
        round_timeout=round_timeout,
        run_dir=str(Path(run.path).resolve()),
        image_shape=d.shape,
        num_classes=d.num_classes,
    )
    n_train = len(d.train_idx)
    if clients > n_train:
        raise DataError(
            f"{clients} clients but only {n_train} training images; use at most {n_train} clients"
        )
    # Fail fast (one line) on a split that cannot be made, before starting Flower.
    labels = d.labels[d.train_idx] if d.labels is not None else np.zeros(n_train, int)
    shares = client_split(split, labels, clients, seed=seed, min_size=settings.min_client_size)
    sizes = [len(s) for s in shares]
    if not run.exists():
        run.data(cfg)  # creates RUN/run.toml now that every check passed
    root = fed_dir(run.path)
    if fresh and root.exists():
        shutil.rmtree(root)
    old = read_settings(run.path)
    if old is not None:
        check_resumable(old, settings)
    from ..training.checkpoint import atomic_write_text

    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / "fed.json", json.dumps(asdict(settings), indent=2) + "\n")
    _, done = resume_point(run.path, settings)
    truncate_rounds(run.path, done)
    if done < settings.rounds:
        from flwr.simulation import run_simulation

        from .client_app import app as client_app
        from .server_app import make_server_app

        cpus = os.cpu_count() or 1
        par = max(1, min(parallel or cpus, clients))
        threads = max(1, cpus // par)
        settings.client_threads = threads
        os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
        os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        # Ray actors start with OMP_NUM_THREADS = their CPUs; torch in each uses `threads`.
        # A client's worker process that dies (OOM killer, SIGKILL) is restarted by Ray and its
        # task re-run once: a client round is a pure function of (seed, round, client), so the
        # re-run sends the same update. Without this, Flower 1.41 keeps the dead actor in its
        # pool and every later task sent to it fails.
        backend = {
            "client_resources": {
                "num_cpus": threads,
                "num_gpus": 0.0,
                "max_restarts": ACTOR_RESTARTS,
                "max_task_retries": 1,
            },
            "init_args": {"num_cpus": par * threads, "include_dashboard": False},
        }
        flwr_log = logging.getLogger("flwr")
        level = flwr_log.level
        if quiet_flower:
            flwr_log.setLevel(logging.ERROR)  # rejections and failures go to rounds.jsonl
        try:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                run_simulation(
                    server_app=make_server_app(
                        settings, on_round=on_round, evaluate_fn=evaluate_fn
                    ),
                    client_app=client_app,
                    num_supernodes=clients,
                    backend_config=backend,
                )
        finally:
            flwr_log.setLevel(level)
    rows = read_rounds(run.path)
    fig = bytes_figure(run.path, settings)
    m = P.get_method(settings.method)
    dirs = [root / "clients" / str(i) for i in range(clients)] if m.personal else [root / "global"]
    return {
        "settings": settings,
        "sizes": sizes,
        "rounds": rows,
        "model_dirs": dirs,
        "figure": fig,
        "seconds": time.perf_counter() - t0,
    }
