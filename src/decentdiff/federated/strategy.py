"""The Flower strategy: FedAvg whose messages carry only what a method exchanges.

A small subclass of ``flwr.serverapp.strategy.FedAvg`` (style of flwr's ``fedprox.py``): node
sampling, message construction and reply bookkeeping stay FedAvg's; the overrides only

- ``configure_train``: per node, send the method's downlink groups and tell it which groups to
  report (``parts.assignments``), and record the bytes sent;
- ``aggregate_train``: validate each reply (``aggregate.decode_update``; a bad update is rejected
  and logged, never averaged) and average per key over the clients that reported it
  (``aggregate.aggregate``). FedAvg's own aggregation cannot be used: it demands the same keys from
  every client, which USPLIT's clients do not send.

What happened in each round (bytes per client, rejections, failures) is kept in ``self.rounds``
for the ServerApp to write to rounds.jsonl.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from logging import WARNING
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from . import aggregate as A
from . import parts as P
from .settings import FedSettings


def record_bytes(record: ArrayRecord) -> tuple[int, int]:
    """(payload, wire) bytes of an ArrayRecord: Σ numel·itemsize, and Flower's own count."""
    payload = sum(math.prod(a.shape) * np.dtype(a.dtype).itemsize for a in record.values())
    return payload, record.count_bytes()


class PartialFedAvg(FedAvg):
    """FedAvg for FULL, USPLIT, UDEC and ULATDEC (de Goede et al., arXiv 2406.12575).

    Args:
        settings: the run's settings (method, seed, quantisation, minimum replies, ...).
        round_offset: rounds already done (resume): Flower's round r is the run's r + offset.
    """

    def __init__(self, settings: FedSettings, *, round_offset: int = 0) -> None:
        super().__init__(
            fraction_train=1.0,  # the paper: every client, every round
            fraction_evaluate=0.0,  # no client-side evaluation round
            min_train_nodes=settings.clients,
            min_available_nodes=settings.clients,
        )
        self.settings = settings
        self.method = settings.method_spec
        self.round_offset = round_offset
        self.rounds: dict[int, dict[str, Any]] = {}
        self._global: dict[str, np.ndarray] = {}
        self._assigned: dict[int, frozenset[str]] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's sampling, then one message per node with its groups to send and report."""
        rnd = server_round + self.round_offset
        config["round"] = rnd
        base = list(super().configure_train(server_round, arrays, config, grid))
        nodes = [m.metadata.dst_node_id for m in base]
        self._global = {k: a.numpy() for k, a in arrays.items()}
        self._assigned = P.assignments(self.method, nodes, rnd, self.settings.seed)
        down_keys = P.keys_for(P.downlink_groups(self.method, rnd), list(arrays.keys()))
        down = ArrayRecord({k: arrays[k] for k in down_keys})
        payload, wire = record_bytes(down)
        info: dict[str, Any] = {"round": rnd, "clients": {}}
        messages = []
        for node in nodes:
            report = ",".join(sorted(self._assigned[node]))
            cfg = ConfigRecord({**config, "report": report})
            messages.append(
                Message(
                    RecordDict({self.arrayrecord_key: down, self.configrecord_key: cfg}),
                    message_type=MessageType.TRAIN,
                    dst_node_id=node,
                )
            )
            info["clients"][node] = {
                "node": node,
                "report": sorted(self._assigned[node]),
                "down": payload,
                "down_wire": wire,
                "up": 0,
                "up_wire": 0,
                "status": "no reply",
            }
        self.rounds[rnd] = info
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate every reply, then average per key the valid ones (weighted by num-examples)."""
        rnd = server_round + self.round_offset
        info = self.rounds.setdefault(rnd, {"round": rnd, "clients": {}})
        rows = info["clients"]
        valid, failed = self._check_and_log_replies(list(replies), is_train=True, validate=False)
        for msg in failed:
            node = msg.metadata.src_node_id
            rows.setdefault(node, {"node": node})
            rows[node].update(status="failed", reason=str(msg.error.reason)[:300])
        updates: list[A.Update] = []
        accepted: list[RecordDict] = []
        keys = list(self._global)
        for msg in valid:
            node = msg.metadata.src_node_id
            row = rows.setdefault(node, {"node": node, "down": 0, "down_wire": 0})
            try:
                update, metrics = self._decode(node, msg.content, keys, row)
            except A.UpdateRejected as e:
                row.update(status="rejected", reason=str(e))
                log(WARNING, "round %s: update of node %s rejected: %s", rnd, node, e)
                continue
            row.update(status="ok", **{k: v for k, v in metrics.items() if k != "num-examples"})
            row["num_examples"] = int(update.weight)
            updates.append(update)
            accepted.append(msg.content)
        info["accepted"] = len(updates)
        if len(updates) < self.settings.min_replies:
            info["complete"] = False
            log(
                WARNING,
                "round %s: %d valid updates < --min-replies %d; the global model is unchanged",
                rnd,
                len(updates),
                self.settings.min_replies,
            )
            return None, None
        info["complete"] = True
        new = A.aggregate(self._global, updates)
        arrays = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in new.items()})
        metrics = self.train_metrics_aggr_fn(accepted, self.weighted_by_key)
        return arrays, metrics

    def _decode(
        self, node: int, content: RecordDict, keys: list[str], row: dict[str, Any]
    ) -> tuple[A.Update, dict[str, Any]]:
        """One reply -> a validated Update (raises UpdateRejected), recording its bytes in row."""
        if node not in self._assigned:
            raise A.UpdateRejected("reply from a node that was not asked this round")
        records = content.array_records
        metrics_recs = content.metric_records
        if len(records) != 1 or len(metrics_recs) != 1:
            raise A.UpdateRejected("expected exactly one ArrayRecord and one MetricRecord")
        record = next(iter(records.values()))
        metrics = dict(next(iter(metrics_recs.values())))
        row["up"], row["up_wire"] = record_bytes(record)
        report_keys = P.keys_for(self._assigned[node], keys)
        layout = A.expected_layout(A.layout_of(self._global), report_keys, self.settings.bits)
        # Checked before deserialising anything: an oversized reply is never unpacked.
        if row["up_wire"] > A.wire_bytes(layout):
            raise A.UpdateRejected(
                f"oversized: {row['up_wire']} bytes where at most {A.wire_bytes(layout)} were expected"
            )
        try:
            arrays = {k: a.numpy() for k, a in record.items()}
        except (ValueError, TypeError, OSError) as e:
            raise A.UpdateRejected(f"undecodable array ({e})") from None
        update = A.decode_update(
            node,
            metrics.get(self.weighted_by_key),
            arrays,
            self._global,
            report_keys,
            self.settings.bits,
        )
        return update, metrics
