"""One data silo's side of a federated round, without Flower.

:func:`client_round` trains with the project's one training loop. By default the optimiser is
re-created every round, as in de Goede et al. (arXiv 2406.12575); ``client_state = "keep"`` carries
Adam's moments from round to round instead, and a personal model (UDEC, ULATDEC) with
``train.ema_decay > 0`` keeps an EMA across rounds (:class:`~decentdiff.training.loop.Carry`). :func:`client_turn` wraps
it with what a node does around it: find its private parts (UDEC, ULATDEC) in what the node kept
or, after a restart, in its saved personal model; mark itself busy; save its personal model. The
ClientApp only moves arrays between Flower's messages and these functions.

Where a client's data comes from: its partition of the run's data source, split by
``settings.split`` (:func:`client_data`), or the silo's own source.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import aggregate as A
from . import parts as P
from .settings import FedSettings, central_ema_per_round, config_from
from .store import personal_meta, write_activity

if TYPE_CHECKING:
    from ..training.loop import Carry

Arrays = dict[str, np.ndarray]


@dataclass
class ClientData:
    images: Any  # uint8 (n, C, H, W): an array, or ImageRows of the data cache's memmap
    labels: np.ndarray | None
    num_classes: int
    fingerprint: str
    source: str
    partition: int


@lru_cache(maxsize=4)
def _load(source: str, data: tuple[tuple[str, Any], ...]):
    from ..config import DataConfig
    from ..run import load_data, training_only

    return load_data(training_only(DataConfig(**{**dict(data), "source": source})))


def client_shares(
    settings: FedSettings,
    labels: np.ndarray | None,
    train_idx: np.ndarray,
    num_partitions: int | None = None,
) -> list[np.ndarray]:
    """Each client's rows of ``train_idx`` (positions, int64), by ``settings.split``: the images
    client i trains on are ``images[train_idx[shares[i]]]``.

    Args:
        labels: labels of the whole source (None: unlabelled, every image one class).
        train_idx: the source's training rows.
        num_partitions: clients to split among (default: ``settings.clients``).
    """
    from ..data.client_split import client_split

    n = settings.clients if num_partitions is None else num_partitions
    y = labels[train_idx] if labels is not None else np.zeros(len(train_idx), int)
    return client_split(settings.split, y, n, seed=settings.seed, min_size=settings.min_client_size)


def client_data(
    settings: FedSettings, partition: int, num_partitions: int, source: str | None = None
) -> ClientData:
    """This client's training images: its share (``settings.split``) of the source's train split.

    Args:
        partition: 0-based client index.
        num_partitions: number of clients the source is split among (1: the whole source).
        source: the silo's own data source spec (default: the run's).
    """
    from ..errors import ConfigError

    if not 0 <= partition < num_partitions:
        raise ConfigError(f"partition {partition} is outside 0..{num_partitions - 1}")
    dc = settings.data
    d = _load(source or dc["source"], tuple(sorted(dc.items())))
    train_idx = d.train_idx
    if num_partitions > 1:
        train_idx = train_idx[
            client_shares(settings, d.labels, train_idx, num_partitions)[partition]
        ]
    from ..data.cache import rows_of

    return ClientData(
        images=rows_of(d.images, train_idx),  # a cached (memmap) source's rows stay on disk
        labels=d.labels[train_idx] if d.labels is not None else None,
        num_classes=d.num_classes,
        fingerprint=d.fingerprint,
        source=d.source,
        partition=partition,
    )


def local_steps(settings: FedSettings, n: int) -> int:
    """Steps of one round: ceil(E · n / batch), or ``settings.local_steps`` when set."""
    if settings.local_steps > 0:
        return settings.local_steps
    return max(1, math.ceil(settings.local_epochs * n / int(settings.train["batch"])))


def with_central_ema(settings: FedSettings, sizes: list[int]) -> FedSettings:
    """``settings`` with a recipe's server EMA (``Recipe.server_ema_auto``): for a global
    generator (FULL, USPLIT) whose ``server_ema`` is 0 (off), :func:`central_ema_per_round` at the
    clients' local steps averaged by shard size (``sizes``; FedAvg's own weights, so a client with
    ten times the images counts ten times) and ``train.ema_decay``; otherwise (or without sizes)
    unchanged. ``fed run`` and ``flwr run`` both set it through here."""
    if settings.method_spec.personal or settings.server_ema != 0 or sum(sizes) <= 0:
        return settings
    steps = max(1, round(sum(n * local_steps(settings, n) for n in sizes) / sum(sizes)))
    decay = float(settings.train["ema_decay"])
    return replace(settings, server_ema=central_ema_per_round(settings.rounds, steps, decay))


def round_seed(seed: int, partition: int, round_: int) -> int:
    """A training seed per (run seed, client, round): rounds and clients draw different batches."""
    return int(np.random.SeedSequence([seed, partition, round_]).generate_state(1)[0])


_FLOPS: dict[str, float] = {}


def client_round(
    settings: FedSettings,
    data: ClientData,
    round_: int,
    received: Arrays,
    report: frozenset[str],
    state: Arrays | None,
    *,
    threads: int = 0,
    carry: Carry | None = None,
) -> tuple[Arrays, Arrays, dict[str, float]]:
    """One client round: load weights, train E local epochs, encode the update.

    Args:
        settings: the run's settings.
        data: this client's images.
        round_: the round (from 1).
        received: the global arrays the server sent (the whole model in round 1, else the
            method's shared parts).
        report: the groups this client reports this round.
        state: the client's full model after its previous round (None in round 1 or when lost).
        threads: torch intra-op threads (0: leave as is).
        carry: the client's optimizer and EMA from its previous round (``client_state = keep``,
            personal EMA); updated in place. Without one the optimizer is new every round (the
            paper). Either way the learning-rate schedule (warm-up) and the EMA's warm-up run on
            the client's sequential step, (round − 1) · steps + s, not restart each round.
    Returns:
        (update arrays to send, the client's new full model, metrics).
    """
    import torch
    from torch import nn

    from ..errors import RunError
    from ..models.registry import build_network, config_from_dict
    from ..training.generative import image_batches, objective_from
    from ..training.loop import Carry, resolve_device, train

    if threads > 0:
        torch.set_num_threads(threads)
    cfg = config_from(settings)
    model = build_network(config_from_dict(settings.unet))
    ref = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    unknown = sorted(set(received) - set(ref))
    if unknown:
        raise RunError(f"the server sent unknown arrays {unknown[:3]}; update decentdiff")
    start = dict(state) if state is not None else {}
    start.update(received)
    missing = sorted(set(ref) - set(start))
    if missing:
        raise RunError(
            f"client {data.partition} has no local model for round {round_} (private parts "
            f"{missing[:2]}… lost); restart the run with --fresh"
        )
    model.load_state_dict({k: torch.from_numpy(np.array(start[k])) for k in ref})
    dev = resolve_device(cfg.train.device)  # a silo with a GPU uses it; the simulation hides GPUs
    model.to(dev)
    objective = objective_from(cfg.objective)
    n_cls = settings.num_classes
    draw = image_batches(data.images, data.labels, cfg.train.batch, dev, cfg.train.cond_drop, n_cls)
    mu = float(settings.prox)
    anchor = {k: torch.from_numpy(np.array(v)).to(dev) for k, v in received.items()} if mu else {}

    def loss_fn(m: nn.Module, g: torch.Generator):
        x0, cond, _ = draw(g)
        loss = objective.loss(m, x0, cond, g)
        if not anchor:
            return loss
        prox = A.prox_penalty(m.named_parameters(), anchor, mu)
        return loss + prox, {"prox": float(prox.detach())}

    steps = local_steps(settings, len(data.images))
    carry = carry if carry is not None else Carry()
    carry.offset = (round_ - 1) * steps
    tcfg = replace(
        cfg.train,
        steps=steps,
        seed=round_seed(settings.seed, data.partition, round_),
        ckpt_every=steps,
        log_every=steps,
        threads=threads,
    )
    fkey = settings.to_json()  # FLOPs per step depend on the model and batch only: measure once
    with tempfile.TemporaryDirectory(prefix="decentdiff-client-") as work:
        meta = train(
            model,
            loss_fn,
            Path(work),
            tcfg,
            role=f"client {data.partition}",
            fresh=True,  # this call is one round; what carries over is in `carry`
            carry=carry,
            progress=False,
            flops_per_step=_FLOPS.get(fkey),
        )
    _FLOPS[fkey] = float(meta["flops_per_step"])
    local = {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
    keys = P.keys_for(report, list(ref))
    sent = _sent(settings, data, round_, local, received, keys)
    dp_bit = None
    if settings.dp == "client":  # clipped here, before encoding (privacy.py)
        from .privacy import client_clip

        sent, dp_bit = client_clip(sent, received, keys, settings.dp_clip)
    update = A.encode_update(sent, received, keys, settings.bits)
    metrics = {
        "num-examples": len(data.images),
        "loss": float(meta["loss"]) if meta.get("loss") is not None else float("nan"),
        "steps": steps,
        "train-flops": float(meta["flops_per_step"]) * steps,
        "partition-id": data.partition,
    }
    if dp_bit is not None:
        metrics["dp-unclipped"] = float(dp_bit)
    return update, local, metrics


def _sent(
    settings: FedSettings,
    data: ClientData,
    round_: int,
    local: Arrays,
    received: Arrays,
    keys: list[str],
) -> Arrays:
    """What the client reports for ``keys``: its model, or under ``--attack`` (studies of robust
    aggregation) a corrupted update; its own model is never changed."""
    from .robust import parse_attack

    attack = parse_attack(settings.attack)
    if attack is None or data.partition not in attack.clients:
        return local
    rng = np.random.default_rng([settings.seed, data.partition, round_, 0xA77AC])
    return {**local, **attack.corrupt(local, received, keys, rng)}


def client_turn(
    settings: FedSettings,
    data: ClientData,
    round_: int,
    received: Arrays,
    report: frozenset[str],
    *,
    kept: tuple[Arrays, int] | None = None,
    out_dir: Path | None = None,
    threads: int = 0,
    carry: Carry | None = None,
) -> tuple[Arrays, Arrays, dict[str, Any], int]:
    """A node's whole part in round ``round_``: :func:`client_round` and what surrounds it.

    Args:
        kept: (full model, cumulative steps) the node kept from its previous round, if any.
        out_dir: where this client's personal model is saved (UDEC, ULATDEC), if anywhere.
        threads: torch intra-op threads (0: leave as is).
        carry: the optimizer / EMA state the node kept from its previous round (empty: none
            kept, e.g. a restarted process; it is then read back from ``out_dir/carry``). Updated
            in place when the run carries state (:func:`carries`), else left empty.
    Returns:
        (update to send, the new full model, metrics, cumulative local steps). ``metrics``
        includes ``private-from``: where the private parts came from (0 nowhere, 1 the node's
        state, 2 the saved personal model: a resumed run).
    """
    state, steps_before, origin = None, 0, 0
    if kept is not None:
        (state, steps_before), origin = kept, 1
    personal = settings.method_spec.personal
    if state is None and round_ > 1 and personal and out_dir is not None:
        # Resumed run (fresh process): private parts come back from the last personal checkpoint.
        if (out_dir / "meta.json").is_file():
            arrays, saved_round, saved_step = load_personal(out_dir, list(settings_keys(settings)))
            # round_ itself: the server crashed after this client saved but before it did, so
            # the round is re-run (from a model one round further on: private parts only).
            if saved_round in (round_ - 1, round_):
                state, steps_before, origin = arrays, saved_step, 2
    keep_opt, keep_ema = carries(settings)
    work = _start_carry(carry, out_dir, round_, data.partition, keep_opt, keep_ema)
    write_activity(settings, data.partition, round_, "training")
    update, local, metrics = client_round(
        settings, data, round_, received, report, state, threads=threads, carry=work
    )
    metrics["private-from"] = origin
    step = steps_before + int(metrics["steps"])
    ema = None
    if keep_opt or keep_ema:
        _trim(work, keep_opt, keep_ema)
        if carry is not None:
            carry.offset, carry.optimizer, carry.ema = work.offset, work.optimizer, work.ema
        if out_dir is not None:
            save_carry(out_dir, work, round_)
        if work.ema is not None:
            ema = {k: v.numpy() for k, v in work.ema.items()}
    if personal and out_dir is not None:
        save_personal(out_dir, settings, data, local, ema=ema, round=round_, step=step)
    write_activity(settings, data.partition, round_, "done")
    return update, local, metrics, step


def _start_carry(
    carry: Carry | None,
    out_dir: Path | None,
    round_: int,
    partition: int,
    keep_opt: bool,
    keep_ema: bool,
) -> Carry:
    """The state a round starts from: the node's (``carry``), else the newest one on disk, else a
    new one (said on stderr after round 1), trimmed to what the run keeps."""
    from ..training.loop import Carry

    work = Carry()
    if not (keep_opt or keep_ema):
        return work
    if carry is not None and (carry.optimizer or carry.ema):
        work = carry
    elif round_ > 1 and out_dir is not None:
        found = latest_carry(out_dir, round_)
        if found is not None:
            work, from_round = found
            if from_round != round_ - 1:
                _warn_carry(partition, round_, f"from round {from_round}")
        else:
            _warn_carry(partition, round_, "none found: a new one")
    return _trim(work, keep_opt, keep_ema)


def _trim(work: Carry, keep_opt: bool, keep_ema: bool) -> Carry:
    """Drop from ``work`` what the run does not keep (the optimizer with reset, the EMA of a
    non-personal model); returns it."""
    if not keep_opt:
        work.optimizer = None
    if not keep_ema:
        work.ema = None
    return work


def _warn_carry(partition: int, round_: int, what: str) -> None:
    import sys

    print(
        f"decentdiff: warning: client {partition}, round {round_}: no optimizer/EMA state from "
        f"round {round_ - 1} (the client missed it or its state was lost); {what}",
        file=sys.stderr,
    )


def carries(settings: FedSettings) -> tuple[bool, bool]:
    """(keep the optimizer, keep an EMA) from round to round, by the run's settings.

    The optimizer with ``client_state = "keep"``; an EMA for personal models (UDEC, ULATDEC) with
    ``train.ema_decay > 0`` (a FULL/USPLIT client's weights are replaced by the server's every
    round, and its EMA would never leave the node: the server's EMA is the one that counts there).
    """
    keep_opt = settings.client_state == "keep"
    keep_ema = settings.method_spec.personal and float(settings.train.get("ema_decay", 0)) > 0
    return keep_opt, keep_ema


CARRY_DIR = "carry"  # under a client's out_dir: carry/<round>/, its state after that round


def save_carry(out_dir: Path, carry: Carry, round_: int) -> None:
    """Write ``carry`` atomically to ``out_dir/carry/<round_>``; keep only that and round − 1's.

    One directory per round: a round re-run after a crash (even twice) overwrites its own entry
    and never the previous round's, which the re-run starts from.
    """
    import shutil

    import torch

    from ..training.checkpoint import save_checkpoint

    tensors = {"state": {"offset": torch.tensor(carry.offset), **(carry.optimizer or {})}}
    if carry.ema is not None:
        tensors["ema"] = carry.ema
    meta = {"kind": "federated-client-carry", "round": round_, "offset": carry.offset}
    save_checkpoint(out_dir / CARRY_DIR / str(round_), tensors, meta)
    for old, _ in _carry_rounds(out_dir):
        if old < round_ - 1:
            shutil.rmtree(out_dir / CARRY_DIR / str(old), ignore_errors=True)


def _carry_rounds(out_dir: Path) -> list[tuple[int, Path]]:
    """(round, directory) of the saved carries, newest first."""
    root = out_dir / CARRY_DIR
    found = [(int(d.name), d) for d in root.iterdir() if d.name.isdigit()] if root.is_dir() else []
    return sorted(found, reverse=True)


def load_carry(out_dir: Path, round_: int) -> Carry | None:
    """The carry a client saved after ``round_``, else None (absent, or damaged beyond its
    ``.prev``)."""
    return _read_carry(out_dir / CARRY_DIR / str(round_))


def _read_carry(d: Path) -> Carry | None:
    from ..errors import CheckpointError
    from ..training.checkpoint import PREVIOUS, load_tensors, read_meta
    from ..training.loop import Carry

    for where in (d, d / PREVIOUS):
        if not (where / "meta.json").is_file():
            continue
        try:
            meta = read_meta(where)
            state = load_tensors(where, "state", meta)
            has_ema = "ema.safetensors" in meta.get("files", {})
            ema = load_tensors(where, "ema", meta) if has_ema else None
        except CheckpointError:
            continue  # a torn write: the copy in .prev (same round) may be whole
        offset = int(state.pop("offset"))
        return Carry(offset=offset, optimizer=state or None, ema=ema)
    return None


def latest_carry(out_dir: Path, before: int) -> tuple[Carry, int] | None:
    """The newest readable carry saved after a round < ``before``, with its round; else None."""
    for rnd, d in _carry_rounds(out_dir):
        if rnd < before:
            c = _read_carry(d)
            if c is not None:
                return c, rnd
    return None


def save_personal(
    out_dir: Path,
    settings: FedSettings,
    data: ClientData,
    local: Arrays,
    *,
    ema: Arrays | None = None,
    **extra: Any,
) -> None:
    """Write a client's own model as an ordinary generative checkpoint (``sample`` accepts it).

    ``ema``: the client's EMA across rounds, if it keeps one (else the EMA slot holds the model).
    """
    import torch

    from ..training.checkpoint import save_checkpoint

    sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in local.items()}
    ema_sd = (
        sd
        if ema is None
        else {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in ema.items()}
    )
    meta = personal_meta(settings, data.partition, len(data.images), data, **extra)
    step = int(extra.get("step", 0))
    save_checkpoint(
        out_dir, {"model": sd, "ema": ema_sd, "state": {"step": torch.tensor(step)}}, meta
    )


def load_personal(out_dir: Path, ref_keys: list[str]) -> tuple[Arrays, int, int]:
    """(arrays, round, cumulative steps) of a saved personal model; RunError if absent."""
    from ..training.checkpoint import load_tensors, read_meta

    meta = read_meta(out_dir)
    t = load_tensors(out_dir, "model", meta)
    if sorted(t) != sorted(ref_keys):
        from ..errors import CheckpointError

        raise CheckpointError(f"{out_dir} does not fit this run's model; use --fresh")
    return {k: v.numpy() for k, v in t.items()}, int(meta.get("round", 0)), int(meta.get("step", 0))


@lru_cache(maxsize=8)
def _keys_cached(unet_json: str) -> tuple[str, ...]:
    from ..models.registry import build_network, config_from_dict

    return tuple(build_network(config_from_dict(json.loads(unet_json))).state_dict())


def settings_keys(settings: FedSettings) -> tuple[str, ...]:
    """The model's state-dict keys for ``settings.unet``."""
    return _keys_cached(json.dumps(settings.unet, sort_keys=True))
