"""Flower ClientApp: adapts Flower's messages and node context to :func:`.client.client_turn`.

The node keeps its full local model in ``ctx.state`` so private parts (UDEC, ULATDEC) survive
across rounds; they never leave the node.

Node config keys: ``partition-id`` and ``num-partitions`` (set by the simulation engine, or by
``decentdiff fed supernode --partition i/N``), optionally ``data`` (the silo's own data source
spec), ``out-dir`` (where its personal model goes) and ``threads``; otherwise the run's settings
sent by the server.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from . import secagg
from .client import client_data, client_turn
from .settings import FedSettings
from .store import client_dir

STATE_KEY = "local-model"  # ctx.state ArrayRecord: the client's full model after its last round
ROUND_KEY = "local-round"  # ctx.state ConfigRecord: which round that model is from
OPT_KEY = "local-optimizer"  # ctx.state ArrayRecord: Adam's state (client_state = "keep")
EMA_KEY = "local-ema"  # ctx.state ArrayRecord: the personal model's EMA across rounds
CARRY_ROUND_KEY = "local-carry-round"  # ctx.state ConfigRecord: the round the two are from


def _record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def _out_dir(ctx: Context, settings: FedSettings, partition: int) -> Path | None:
    if "out-dir" in ctx.node_config:
        return Path(str(ctx.node_config["out-dir"]))
    if settings.run_dir:
        return client_dir(settings.run_dir, partition)
    return None


def _carry_from(ctx: Context, round_: int):
    """The optimizer / EMA this node kept after its last round before ``round_`` (normally
    round_ − 1; an older one when it missed rounds), or an empty Carry."""
    import torch

    from ..training.loop import Carry

    carry = Carry()
    conf = ctx.state.config_records.get(CARRY_ROUND_KEY)
    if conf is None or int(conf.get("round", round_)) >= round_:
        return carry  # none yet (or, impossibly, from this round on): client_turn looks on disk
    recs = ctx.state.array_records
    scalars = set(str(conf.get("scalars", "")).split(","))  # Flower stores 0-d arrays as (1,)

    def tensors(key: str) -> dict[str, torch.Tensor]:
        out = {k: torch.from_numpy(a.numpy().copy()) for k, a in recs[key].items()}
        return {k: v.reshape(()) if f"{key}/{k}" in scalars else v for k, v in out.items()}

    if OPT_KEY in recs:
        carry.optimizer = tensors(OPT_KEY)
    if EMA_KEY in recs:
        carry.ema = tensors(EMA_KEY)
    return carry


def _carry_to(ctx: Context, carry, round_: int) -> None:
    """Keep ``carry`` in the node's state for the next round (nothing if the run carries none)."""
    scalars = []
    for key, part in ((OPT_KEY, carry.optimizer), (EMA_KEY, carry.ema)):
        if part:
            ctx.state.array_records[key] = _record({k: v.numpy() for k, v in part.items()})
            scalars += [f"{key}/{k}" for k, v in part.items() if v.dim() == 0]
    if carry.optimizer or carry.ema:
        conf = {"round": round_, "scalars": ",".join(scalars)}
        ctx.state.config_records[CARRY_ROUND_KEY] = ConfigRecord(conf)


app = ClientApp(mods=[secagg.client_mod])  # --secagg rounds through Flower's secaggplus_mod


@app.train()
def train_handler(msg: Message, ctx: Context) -> Message:
    """Train on this node's data; reply with the update (only the groups it must report).
    A ``--secagg`` round's message is in Flower's legacy FitIns layout, and so is its reply,
    which ``secaggplus_mod`` masks before it leaves the node."""
    secure = secagg.is_secure(msg.content)
    if secure:
        conf, received = secagg.read_fitins(msg.content)
    else:
        conf = msg.content["config"]
        received = {k: a.numpy() for k, a in msg.content["arrays"].items()}
    settings = FedSettings.from_json(str(conf["settings"]))
    if "dp-clip" in conf:  # --dp: this round's clipping norm (adaptive clipping moves it)
        settings.dp_clip = float(conf["dp-clip"])
    round_ = int(conf["round"])
    report = frozenset(g for g in str(conf["report"]).split(",") if g)
    partition = int(ctx.node_config.get("partition-id", 0))
    num_parts = int(ctx.node_config.get("num-partitions", settings.clients))
    source = ctx.node_config.get("data")
    data = client_data(settings, partition, num_parts, str(source) if source else None)
    kept = None
    if STATE_KEY in ctx.state.array_records:
        arrays = {k: a.numpy() for k, a in ctx.state.array_records[STATE_KEY].items()}
        kept = arrays, int(ctx.state.config_records[ROUND_KEY].get("step", 0))
    carry = _carry_from(ctx, round_)
    update, local, metrics, step = client_turn(
        settings,
        data,
        round_,
        received,
        report,
        kept=kept,
        out_dir=_out_dir(ctx, settings, partition),
        threads=int(ctx.node_config.get("threads", 0)) or settings.client_threads,
        carry=carry,
    )
    if settings.method_spec.personal:
        ctx.state.array_records[STATE_KEY] = _record(local)
        ctx.state.config_records[ROUND_KEY] = ConfigRecord({"round": round_, "step": step})
    _carry_to(ctx, carry, round_)
    if secure:
        # a run repeats bit for bit; without a partition id (a SuperNode not given one), the
        # node id keeps the clients' rounding streams apart
        key = int(ctx.node_config.get("partition-id", ctx.node_id))
        secagg.seed_rounding(settings.seed, round_, key)
        return Message(secagg.fitres_content(update, metrics, settings, received), reply_to=msg)
    reply = RecordDict({"arrays": _record(update), "metrics": MetricRecord(metrics)})
    return Message(reply, reply_to=msg)
