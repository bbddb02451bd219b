"""One data silo's side of a federated round, without Flower.

:func:`client_round` trains with the project's one training loop: the optimiser is re-created
every round (``fresh=True``), as in de Goede et al. (arXiv 2406.12575). :func:`client_turn` wraps
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
from typing import Any

import numpy as np

from . import aggregate as A
from . import parts as P
from .settings import FedSettings, config_from
from .store import personal_meta, write_activity

Arrays = dict[str, np.ndarray]


@dataclass
class ClientData:
    images: np.ndarray  # uint8 (n, C, H, W)
    labels: np.ndarray | None
    num_classes: int
    fingerprint: str
    source: str
    partition: int


@lru_cache(maxsize=4)
def _load(source: str, data: tuple[tuple[str, Any], ...]):
    from ..config import DataConfig
    from ..run import load_data

    return load_data(DataConfig(**{**dict(data), "source": source}))


def client_data(
    settings: FedSettings, partition: int, num_partitions: int, source: str | None = None
) -> ClientData:
    """This client's training images: its share (``settings.split``) of the source's train split.

    Args:
        partition: 0-based client index.
        num_partitions: number of clients the source is split among (1: the whole source).
        source: the silo's own data source spec (default: the run's).
    """
    from ..data.client_split import client_split
    from ..errors import ConfigError

    if not 0 <= partition < num_partitions:
        raise ConfigError(f"partition {partition} is outside 0..{num_partitions - 1}")
    dc = settings.data
    d = _load(source or dc["source"], tuple(sorted(dc.items())))
    train_idx = d.train_idx
    if num_partitions > 1:
        labels = d.labels[train_idx] if d.labels is not None else np.zeros(len(train_idx), int)
        shares = client_split(
            settings.split,
            labels,
            num_partitions,
            seed=settings.seed,
            min_size=settings.min_client_size,
        )
        train_idx = train_idx[shares[partition]]
    return ClientData(
        images=d.images[train_idx],
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
    Returns:
        (update arrays to send, the client's new full model, metrics).
    """
    import torch
    from torch import nn

    from ..errors import RunError
    from ..models.registry import build_network, config_from_dict
    from ..training.generative import image_batches, objective_from
    from ..training.loop import resolve_device, train

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
            fresh=True,  # Adam re-created every round (paper)
            progress=False,
            flops_per_step=_FLOPS.get(fkey),
        )
    _FLOPS[fkey] = float(meta["flops_per_step"])
    local = {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
    keys = P.keys_for(report, list(ref))
    update = A.encode_update(local, received, keys, settings.bits)
    metrics = {
        "num-examples": len(data.images),
        "loss": float(meta["loss"]) if meta.get("loss") is not None else float("nan"),
        "steps": steps,
        "train-flops": float(meta["flops_per_step"]) * steps,
        "partition-id": data.partition,
    }
    return update, local, metrics


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
) -> tuple[Arrays, Arrays, dict[str, Any], int]:
    """A node's whole part in round ``round_``: :func:`client_round` and what surrounds it.

    Args:
        kept: (full model, cumulative steps) the node kept from its previous round, if any.
        out_dir: where this client's personal model is saved (UDEC, ULATDEC), if anywhere.
        threads: torch intra-op threads (0: leave as is).
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
    write_activity(settings, data.partition, round_, "training")
    update, local, metrics = client_round(
        settings, data, round_, received, report, state, threads=threads
    )
    metrics["private-from"] = origin
    step = steps_before + int(metrics["steps"])
    if personal and out_dir is not None:
        save_personal(out_dir, settings, data, local, round=round_, step=step)
    write_activity(settings, data.partition, round_, "done")
    return update, local, metrics, step


def save_personal(
    out_dir: Path, settings: FedSettings, data: ClientData, local: Arrays, **extra: Any
) -> None:
    """Write a client's own model as an ordinary generative checkpoint (``sample`` accepts it)."""
    import torch

    from ..training.checkpoint import save_checkpoint

    sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in local.items()}
    meta = personal_meta(settings, data.partition, len(data.images), data, **extra)
    step = int(extra.get("step", 0))
    save_checkpoint(out_dir, {"model": sd, "ema": sd, "state": {"step": torch.tensor(step)}}, meta)


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
