"""The ``RUN/federated/`` layout: settings, round log, checkpoints, resume point, activity markers.

Layout of ``RUN/federated/``::

    fed.json          the run's settings (:class:`~.settings.FedSettings`)
    rounds.jsonl      one row per round: bytes each way per client (initial broadcast included),
                      loss, rejected or failed clients
    global/           FULL, USPLIT: the global model, an ordinary generative checkpoint (its
                      ``ema`` is the server EMA with --server-ema, else the model itself)
    shared/           UDEC, ULATDEC: the server's shared parts only (not a generator)
                      (both: ``state.safetensors`` holds the round and, with --server-opt other
                      than fedavg, the server optimiser's state; all in one atomic checkpoint)
    clients/<i>/      UDEC, ULATDEC: each client's own model, an ordinary generative checkpoint
    live/client-<i>.json   what client i is doing (round, state, PID), replaced atomically

No Flower here: the simulation driver, the ServerApp and the pure client round all use it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ObjectiveConfig
from ..errors import ConfigError, RunError
from . import parts as P
from .settings import IDENTITY, FedSettings

#: Prefix of the server optimiser's state in a server checkpoint's state.safetensors:
#: ``server_opt.<m_t|v_t|momentum_vector>.<parameter key>``.
OPT_STATE_PREFIX = "server_opt."


# ------------------------------------------------------------------------------ paths
def fed_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "federated"


def global_dir(run_dir: str | Path, method: P.Method) -> Path:
    """Where the server keeps its model: ``global`` (a generator) or ``shared`` (parts only)."""
    return fed_dir(run_dir) / ("shared" if method.personal else "global")


def client_dir(run_dir: str | Path, partition: int) -> Path:
    """Where client ``partition`` of a simulation keeps its own model (UDEC, ULATDEC)."""
    return fed_dir(run_dir) / "clients" / str(partition)


def model_dir(run_dir: str | Path, spec: str) -> Path:
    """``federated`` -> the global model; ``client:i`` -> client i's personal model.

    For ``decentdiff sample/eval --model``; raises ConfigError / RunError with the fix.
    """
    settings = read_settings(run_dir)
    if settings is None:
        raise RunError(f"{run_dir} has no federated run; run `decentdiff fed run {run_dir} ...`")
    m = settings.method_spec
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
        return client_dir(run_dir, i)
    raise ConfigError(f"unknown federated model {spec!r}; use federated or client:I")


# ------------------------------------------------------------------------------ fed.json
def read_settings(run_dir: str | Path) -> FedSettings | None:
    p = fed_dir(run_dir) / "fed.json"
    if not p.is_file():
        return None
    try:
        return FedSettings.from_json(p.read_text())
    except (json.JSONDecodeError, TypeError):
        raise RunError(f"{p} is not valid; delete RUN/federated or pass --fresh") from None


def _identity(s: FedSettings) -> dict[str, Any]:
    d = asdict(s)
    # Objective fields added after a run was started (e.g. `weighting`) take what that version
    # trained with (ObjectiveConfig.LEGACY, else the default), so an earlier fed.json still resumes.
    known = {f.name for f in fields(ObjectiveConfig)}
    obj = d.get("objective") or {}
    d["objective"] = asdict(ObjectiveConfig.from_meta(obj)) if set(obj) <= known else obj
    return {k: d[k] for k in IDENTITY}


#: The training settings a resumed federation must keep: the clients' schedule, optimizer and EMA
#: continue across rounds, so changing them mid-run would not be the same experiment (device,
#: threads, logging and precision may change).
TRAIN_IDENTITY = (
    "lr",
    "warmup",
    "ema_decay",
    "batch",
    "weight_decay",
    "grad_clip",
    "cond_drop",
    "optimizer",
)


def _train_identity(s: FedSettings) -> dict[str, Any]:
    from ..config import TrainConfig

    train = {**asdict(TrainConfig()), **(s.train or {})}  # keys added later: their defaults
    return {k: train.get(k) for k in TRAIN_IDENTITY}


def check_resumable(old: FedSettings, new: FedSettings) -> None:
    """A resumed run must be the same experiment (more rounds are fine)."""
    a, b = _identity(old), _identity(new)
    diff = [k for k in IDENTITY if a[k] != b[k]]
    ta, tb = _train_identity(old), _train_identity(new)
    diff += [f"train.{k}" for k in TRAIN_IDENTITY if ta[k] != tb[k]]
    if diff:
        raise ConfigError(
            f"RUN/federated holds a different federated run (differs in {', '.join(diff)}); use "
            "the same settings to resume (a run started before `pooled` became the default "
            "recipe: add --recipe paper), --fresh to start over, or another RUN"
        )


def record_settings(run_dir: str | Path, settings: FedSettings) -> None:
    """Write ``fed.json``, after checking that a run already there is the same experiment."""
    old = read_settings(run_dir)
    if old is not None:
        check_resumable(old, settings)
    _write_settings(run_dir, settings)


def record_server_ema(run_dir: str | Path, settings: FedSettings) -> None:
    """Write ``fed.json`` with the server EMA ``settings`` now has, where the recorded run had
    none yet (0): a recipe's server EMA that ``flwr run`` could set only once the clients'
    sizes were known (:func:`.server_app.serve`). Anything else must be the same experiment."""
    old = read_settings(run_dir)
    if old is not None:
        check_resumable(replace(old, server_ema=old.server_ema or settings.server_ema), settings)
    _write_settings(run_dir, settings)


def _write_settings(run_dir: str | Path, settings: FedSettings) -> None:
    from ..training.checkpoint import atomic_write_text

    root = fed_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / "fed.json", json.dumps(asdict(settings), indent=2) + "\n")


# ------------------------------------------------------------------------------ rounds.jsonl
def round_row(info: dict[str, Any], settings: FedSettings, seconds: float) -> dict[str, Any]:
    """The rounds.jsonl row of one round (clients ordered by partition id when known).

    ``info`` is what the strategy recorded of the round: its clients' rows, accepted, complete.
    """
    clients = sorted(
        info.get("clients", {}).values(),
        key=lambda r: (r.get("partition-id", math.inf), r.get("node", 0)),
    )
    ok = [c for c in clients if c.get("status") == "ok"]
    n = sum(c.get("num_examples", 0) for c in ok)
    loss = sum(c["loss"] * c["num_examples"] for c in ok) / n if n else None
    up = sum(c.get("up", 0) for c in clients)
    down = sum(c.get("down", 0) for c in clients)
    # A robust rule's round (--aggregate): per group, n updates, applied, Krum's / Bulyan's picks.
    robust = {"aggregate": info["aggregate"]} if "aggregate" in info else {}
    if "dp" in info:  # --dp: the round's clip, noise and (ε, δ) so far (privacy.py)
        robust["dp"] = info["dp"]
    if "secagg" in info:  # --secagg: SecAgg+'s shares, threshold, seconds (secagg.py)
        robust["secagg"] = info["secagg"]
    return {
        "round": info["round"],
        "method": settings.method,
        "quantize": settings.quantize,
        "complete": bool(info.get("complete", False)),
        "accepted": info.get("accepted", 0),
        "up": up,
        "down": down,
        "total": up + down,
        "up_wire": sum(c.get("up_wire", 0) for c in clients),
        "down_wire": sum(c.get("down_wire", 0) for c in clients),
        "loss": loss,
        "seconds": round(seconds, 3),
        **robust,
        "clients": clients,
    }


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
            for k in (
                "method",
                "clients",
                "split",
                "local_epochs",
                "prox",
                "quantize",
                "seed",
                "server_opt",
                "server_lr",
                "server_momentum",
                "server_beta2",
                "server_tau",
                "server_ema",
                "client_state",
                "full_rounds",
            )
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
    *,
    ema: dict[str, np.ndarray] | None = None,
    ema_updates: int = 0,
    optimizer: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write the server's model after ``round_``, with what a resume needs, in one checkpoint.

    FULL, USPLIT: ``global/``, a generative checkpoint; ``ema`` is the server EMA (``--server-ema``)
    or, without one, the model itself. UDEC, ULATDEC: ``shared/`` with only the shared parts and
    ``kind = federated-shared``, so nothing mistakes it for a generator. ``state.safetensors``
    holds ``step`` (the round), ``ema_updates`` and the server optimiser's state (``optimizer``,
    ``server_opt.<name>.<key>`` arrays); meta.json commits them all at once.
    """
    import torch

    from ..training.checkpoint import save_checkpoint

    m = settings.method_spec
    out = global_dir(run_dir, m)
    # UDEC/ULATDEC keep only the shared parts, except while the next round's downlink is the
    # whole model (--full-rounds N: after rounds 1..N): a resume then needs all of it.
    whole = not m.personal or round_ <= settings.full_rounds
    keys = list(arrays) if whole else P.keys_for(m.shared, list(arrays))

    def tensors(a: dict[str, np.ndarray]) -> dict[str, Any]:
        return {k: torch.from_numpy(np.ascontiguousarray(a[k])) for k in keys}

    sd = tensors(arrays)
    ema_sd = tensors(ema) if ema is not None else sd
    state = {"step": torch.tensor(round_), "ema_updates": torch.tensor(ema_updates)}
    state.update(
        {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in (optimizer or {}).items()}
    )
    meta = {**_meta_common(settings), "round": round_, "step": round_, **(extra or {})}
    if m.personal:
        meta = {
            "kind": "federated-shared",
            "note": f"{m.name}: only {sorted(m.shared)} are averaged; the generators are "
            "RUN/federated/clients/<i>",
            "shared_groups": sorted(m.shared),
            "holds": "the whole model (the next round's downlink is the whole model)"
            if whole
            else "the shared groups only",
            "round": round_,
            "federated": meta["federated"],
        }
    else:
        meta["role"] = "federated global"
        meta["ema"] = (
            f"server EMA, decay {settings.server_ema} per round (bias-corrected)"
            if ema is not None
            else "none (ema = model)"
        )
    save_checkpoint(out, {"model": sd, "ema": ema_sd, "state": state}, meta)
    return out


def initial_arrays(settings: FedSettings) -> dict[str, np.ndarray]:
    """The round-0 model: the UNet initialised from the run's seed."""
    import torch

    from ..models.registry import build_network, config_from_dict

    torch.manual_seed(settings.seed)  # parameter initialisation only
    model = build_network(config_from_dict(settings.unet))
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def resume_point(run_dir: str | Path, settings: FedSettings) -> tuple[dict[str, np.ndarray], int]:
    """(the server's arrays, rounds already done): from the last checkpoint, or the initial model.

    For UDEC/ULATDEC only the shared parts are stored (all of the model before a FULL round of
    ``--full-rounds``); the rest is the initial model, which the server never sends again.
    """
    from ..training.checkpoint import load_tensors, read_meta

    arrays = initial_arrays(settings)
    d = global_dir(run_dir, settings.method_spec)
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


def resume_server_state(
    run_dir: str | Path, settings: FedSettings, arrays: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray] | None, int, dict[str, np.ndarray]]:
    """(server EMA or None, its number of updates, optimiser state) saved with the last round.

    ``arrays`` is what :func:`resume_point` returned (names, shapes and dtypes to check against);
    nothing saved yet gives (None, 0, {}). The EMA is read only with ``--server-ema``.
    """
    from ..errors import CheckpointError
    from ..training.checkpoint import load_tensors, read_meta

    d = global_dir(run_dir, settings.method_spec)
    if not (d / "meta.json").is_file():
        return None, 0, {}
    meta = read_meta(d)
    state = {k: v.numpy() for k, v in load_tensors(d, "state", meta).items()}
    prefix = OPT_STATE_PREFIX
    opt: dict[str, np.ndarray] = {}
    for name, v in state.items():
        if not name.startswith(prefix):
            continue
        key = name[len(prefix) :].split(".", 1)[-1]
        ref = arrays.get(key)
        if ref is None or v.shape != ref.shape or v.dtype != ref.dtype:
            raise CheckpointError(
                f"{d}/state.safetensors: {name} does not fit this run's model; pass --fresh"
            )
        opt[name] = v
    updates = int(state["ema_updates"]) if "ema_updates" in state else 0
    if settings.server_ema <= 0 or updates == 0:
        return None, updates, opt
    ema = dict(arrays)
    for k, v in load_tensors(d, "ema", meta).items():
        ref = arrays.get(k)
        if ref is None or tuple(v.shape) != ref.shape or v.numpy().dtype != ref.dtype:
            raise CheckpointError(
                f"{d}/ema.safetensors does not fit this run's model ({k}); pass --fresh"
            )
        ema[k] = v.numpy()
    return ema, updates, opt


# ------------------------------------------------------------------------------ activity markers
def activity_path(run_dir: str | Path, partition: int) -> Path:
    """Where client ``partition`` records what it is doing: RUN/federated/live/client-<i>.json."""
    return fed_dir(run_dir) / "live" / f"client-{partition}.json"


def write_activity(settings: FedSettings, partition: int, round_: int, state: str) -> None:
    """Record that this process is ``state`` ("training" or "done") round ``round_``.

    One small JSON file per client, replaced atomically: partition, round, state, the PID of the
    process doing the work, host and time. It lets a user (or a test) see which client is busy
    and with which process. Written only where the RUN exists on this machine (a simulation, or
    a deployment on one host); a failure to write never fails the round.
    """
    import os
    import socket
    import time

    if not settings.run_dir or not fed_dir(settings.run_dir).is_dir():
        return
    path = activity_path(settings.run_dir, partition)
    row = {
        "partition": partition,
        "round": round_,
        "state": state,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    try:
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(row) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass
