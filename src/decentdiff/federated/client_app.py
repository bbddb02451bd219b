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

from .client import client_data, client_turn
from .settings import FedSettings
from .store import client_dir

STATE_KEY = "local-model"  # ctx.state ArrayRecord: the client's full model after its last round
ROUND_KEY = "local-round"  # ctx.state ConfigRecord: which round that model is from


def _record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def _out_dir(ctx: Context, settings: FedSettings, partition: int) -> Path | None:
    if "out-dir" in ctx.node_config:
        return Path(str(ctx.node_config["out-dir"]))
    if settings.run_dir:
        return client_dir(settings.run_dir, partition)
    return None


app = ClientApp()


@app.train()
def train_handler(msg: Message, ctx: Context) -> Message:
    """Train on this node's data; reply with the update (only the groups it must report)."""
    conf = msg.content["config"]
    settings = FedSettings.from_json(str(conf["settings"]))
    round_ = int(conf["round"])
    report = frozenset(g for g in str(conf["report"]).split(",") if g)
    partition = int(ctx.node_config.get("partition-id", 0))
    num_parts = int(ctx.node_config.get("num-partitions", settings.clients))
    source = ctx.node_config.get("data")
    data = client_data(settings, partition, num_parts, str(source) if source else None)
    received = {k: a.numpy() for k, a in msg.content["arrays"].items()}
    kept = None
    if STATE_KEY in ctx.state.array_records:
        arrays = {k: a.numpy() for k, a in ctx.state.array_records[STATE_KEY].items()}
        kept = arrays, int(ctx.state.config_records[ROUND_KEY].get("step", 0))
    update, local, metrics, step = client_turn(
        settings,
        data,
        round_,
        received,
        report,
        kept=kept,
        out_dir=_out_dir(ctx, settings, partition),
        threads=int(ctx.node_config.get("threads", 0)) or settings.client_threads,
    )
    if settings.method_spec.personal:
        ctx.state.array_records[STATE_KEY] = _record(local)
        ctx.state.config_records[ROUND_KEY] = ConfigRecord({"round": round_, "step": step})
    reply = RecordDict({"arrays": _record(update), "metrics": MetricRecord(metrics)})
    return Message(reply, reply_to=msg)
