"""The Flower strategies: FedAvg whose messages carry only what a method exchanges, and Flower's
own server optimisers (FedAvgM, FedAdam, FedYogi, FedAdagrad) on top of that average.

:class:`PartialAverage` is a small subclass of ``flwr.serverapp.strategy.FedAvg`` (style of flwr's
``fedprox.py``): node sampling, message construction and reply bookkeeping stay FedAvg's; the
overrides only

- ``configure_train``: per node, send the method's downlink groups and tell it which groups to
  report (``parts.assignments``), and record the bytes sent;
- ``aggregate_train``: validate each reply (``aggregate.decode_update``; a bad update is rejected
  and logged, never averaged) and average per key over the clients that reported it
  (``aggregate.aggregate``), or with ``--aggregate`` combine each group by a robust rule
  (``robust.aggregate_updates``). FedAvg's own aggregation cannot be used: it demands the same
  keys from every client, which USPLIT's clients do not send.

Server optimisers are composed, not re-implemented (:func:`make_strategy`). Python's MRO puts
Flower's optimiser between our front mixin and the partial average::

    PartialFedAdam -> _ServerOpt -> _RunRound -> FedAdam -> FedOpt -> PartialAverage -> FedAvg

so FedAdam's ``super().aggregate_train`` is the validated partial average, and Flower applies its
step to (average − current). What the composition has to fix, it fixes around Flower's code:

- rounds: Flower's ``server_round`` restarts at 1 when a run resumes; :class:`_RunRound` turns it
  into the run's round once, for every class below it (FedAdam's bias correction included);
- keys nobody reported this round (UDEC's private parts, a USPLIT group whose client was
  rejected) are put back bitwise, with their optimiser state as it was: they neither move nor
  accumulate momentum;
- dtypes: FedAdam's step comes back in float64 (a NumPy float64 scalar times float32); the global
  model keeps its dtypes;
- resume: the optimiser state (``m_t``, ``v_t``; FedAvgM's ``momentum_vector``) is exported by
  :meth:`_ServerOpt.optimizer_state` and restored by :meth:`_ServerOpt.load_optimizer_state`
  (the ServerApp stores it in the checkpoint's ``state.safetensors``); FedAvgM's
  ``current_arrays`` is taken from the round's model every round, not only from the first.

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
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedYogi
from flwr.supercore import log

from . import aggregate as A
from . import parts as P
from . import privacy as D
from . import robust as R
from . import secagg as S
from .settings import FedSettings
from .store import OPT_STATE_PREFIX as STATE_PREFIX


def record_bytes(record: ArrayRecord) -> tuple[int, int]:
    """(payload, wire) bytes of an ArrayRecord: Σ numel·itemsize, and Flower's own count."""
    payload = sum(math.prod(a.shape) * np.dtype(a.dtype).itemsize for a in record.values())
    return payload, record.count_bytes()


def _fedavg_args(settings: FedSettings) -> dict[str, Any]:
    return {
        "fraction_train": 1.0,  # the paper: every client, every round
        "fraction_evaluate": 0.0,  # no client-side evaluation round
        "min_train_nodes": settings.clients,
        "min_available_nodes": settings.clients,
    }


class PartialAverage(FedAvg):
    """FedAvg for FULL, USPLIT, UDEC and ULATDEC (de Goede et al., arXiv 2406.12575).

    The ``server_round`` its methods receive is the run's round (:class:`_RunRound` in front of
    every strategy turns Flower's into it). No ``__init__`` of its own, so Flower's optimisers'
    ``super().__init__`` chains pass through to FedAvg; :meth:`_bind` adds the run's settings.
    """

    def _bind(self, settings: FedSettings, round_offset: int) -> None:
        self.settings = settings
        self.method = settings.method_spec
        self.rule = R.parse_rule(settings.aggregate)
        self.round_offset = round_offset
        self.rounds: dict[int, dict[str, Any]] = {}
        self._global: dict[str, np.ndarray] = {}
        self._assigned: dict[int, frozenset[str]] = {}
        self._reported: set[str] = set()  # keys of the last round's accepted updates
        self.privacy = D.from_settings(settings)  # --dp: clip, noise, account (privacy.py)
        if self.privacy is not None and settings.run_dir:
            from .store import read_rounds

            self.privacy.resume(read_rounds(settings.run_dir))

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """The server optimiser's state to checkpoint (none for the plain average)."""
        return {}

    def load_optimizer_state(
        self, tensors: dict[str, np.ndarray], arrays: dict[str, np.ndarray]
    ) -> None:
        """Restore :meth:`optimizer_state` on resume (nothing for the plain average)."""

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's sampling, then one message per node with its groups to send and report."""
        rnd = server_round
        config["round"] = rnd
        base = list(super().configure_train(server_round, arrays, config, grid))
        nodes = [m.metadata.dst_node_id for m in base]
        self._global = {k: a.numpy() for k, a in arrays.items()}
        full = self.settings.full_rounds
        self._assigned = P.assignments(
            self.method, nodes, rnd, self.settings.seed, full_rounds=full
        )
        down = P.downlink_groups(self.method, rnd, full_rounds=full)
        down_keys = P.keys_for(down, list(arrays.keys()))
        down = ArrayRecord({k: arrays[k] for k in down_keys})
        payload, wire = record_bytes(down)
        info: dict[str, Any] = {"round": rnd, "clients": {}}
        messages = []
        for node in nodes:
            report = ",".join(sorted(self._assigned[node]))
            cfg = ConfigRecord({**config, "report": report})
            if self.privacy is not None:  # the round's C (adaptive clipping moves it)
                cfg["dp-clip"] = self.privacy.clip_norm
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
        rnd = server_round
        self._reported = set()
        info = self.rounds.setdefault(rnd, {"round": rnd, "clients": {}})
        if isinstance(replies, S.SecureRound):  # --secagg: only the mean came back (secagg.py)
            return self._secure(rnd, info, replies)
        rows = info["clients"]
        valid, failed = self._check_and_log_replies(list(replies), is_train=True, validate=False)
        for msg in failed:
            node = msg.metadata.src_node_id
            rows.setdefault(node, {"node": node})
            rows[node].update(status="failed", reason=str(msg.error.reason)[:300])
        updates: list[A.Update] = []
        accepted: list[RecordDict] = []
        bits: list[bool | None] = []  # --dp client: each client's "was within C"
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
            bit = metrics.get("dp-unclipped")
            bits.append(None if bit is None else bool(bit))
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
        self._reported = {k for u in updates for k in u.arrays}
        if self.privacy is not None:
            new, info["dp"] = self._private(updates, bits)
        else:
            new, groups = R.aggregate_updates(self.rule, self._global, updates)
            if self.rule.robust:
                self._record_rule(rnd, info, groups)
        arrays = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in new.items()})
        metrics = self.train_metrics_aggr_fn(accepted, self.weighted_by_key)
        return arrays, metrics

    def _secure(
        self, rnd: int, info: dict[str, Any], sec: S.SecureRound
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """``--secagg``: SecAgg+'s weighted mean is the average (no update to validate: the
        server never sees one); per client only its weight, metrics and bytes are known."""
        rows = info["clients"]
        for node, row in rows.items():
            row["down_wire"] = sec.down_wire.get(node, 0)
            row["up"] = row["up_wire"] = sec.up_wire.get(node, 0)
        accepted: list[RecordDict] = []
        for node, res in sec.clients.items():
            row = rows.setdefault(node, {"node": node})
            metrics = {k: v for k, v in res["metrics"].items() if k != "num-examples"}
            n = res["metrics"].get("num-examples", res["num_examples"])  # --dp: weight 1
            row.update(status="ok", **metrics, num_examples=int(n))
            accepted.append(RecordDict({"metrics": MetricRecord(dict(res["metrics"]))}))
        for node, row in rows.items():
            if node not in sec.clients and row.get("status") == "no reply":
                row["status"] = "dropped"
        info["secagg"] = {
            "shares": S.shares_of(self.settings),
            "threshold": S.threshold_of(self.settings),
            "seconds": round(sec.seconds, 3),
            "failures": sec.failures,
        }
        ok = sec.mean is not None and len(sec.clients) >= self.settings.min_replies
        info["accepted"] = len(sec.clients) if sec.mean is not None else 0
        info["complete"] = ok
        if not ok or sec.mean is None:
            log(WARNING, "round %s: secure aggregation halted; the global model is unchanged", rnd)
            return None, None
        if self.privacy is not None:  # --dp client: the mean of clipped updates (secagg.py)
            new, info["dp"] = S.private_release(
                self.privacy, self._global, sec, self._assigned_counts(), self.settings
            )
        else:
            new = dict(self._global)
            for k, v in zip(sec.keys, sec.mean, strict=True):
                ref = self._global[k]
                new[k] = np.asarray(v).astype(ref.dtype).reshape(ref.shape)
        self._reported = set(sec.keys)
        arrays = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in new.items()})
        return arrays, self.train_metrics_aggr_fn(accepted, self.weighted_by_key)

    def _private(
        self, updates: list[A.Update], bits: list[bool | None]
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``--dp``: clipped sum + Gaussian noise per key over its assigned reporters."""
        assigned = self._assigned_counts()
        client = self.privacy.mode == "client"  # type: ignore[union-attr]
        return self.privacy.aggregate(  # type: ignore[union-attr]
            self._global, [u.arrays for u in updates], assigned, bits if client else None
        )

    def _assigned_counts(self) -> dict[str, int]:
        """Key -> the clients assigned to report it this round (n_g, fixed before any reply)."""
        keys = list(self._global)
        assigned: dict[str, int] = {}
        for groups in self._assigned.values():
            for k in P.keys_for(groups, keys):
                assigned[k] = assigned.get(k, 0) + 1
        return assigned

    def _record_rule(self, rnd: int, info: dict[str, Any], groups: dict[str, Any]) -> None:
        """The rule's round in ``info`` (picks by partition id); a group it could not combine
        (too few valid updates) kept its value and counts as not reported."""
        rows = info["clients"]
        for row in groups.values():
            if "picked" in row:
                row["picked"] = [rows.get(c, {}).get("partition-id", c) for c in row["picked"]]
        info["aggregate"] = {"rule": str(self.rule), "groups": groups}
        kept = [g for g, row in groups.items() if not row["applied"]]
        if kept:
            self._reported -= set(P.keys_for(kept, list(self._global)))
            log(
                WARNING,
                "round %s: %s cannot combine %s (too few valid updates); kept unchanged",
                rnd,
                self.rule,
                ", ".join(f"{g} ({groups[g]['n']})" for g in kept),
            )

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


class _RunRound:
    """First in every strategy's MRO: Flower's round (from 1 in every ServerApp run) becomes the
    run's round, once, for every class after it (FedAdam's bias correction included)."""

    round_offset: int

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return super().configure_train(  # type: ignore[misc]
            server_round + self.round_offset, arrays, config, grid
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return super().aggregate_train(server_round + self.round_offset, replies)  # type: ignore[misc]


class PartialFedAvg(_RunRound, PartialAverage):
    """``--server-opt fedavg``: the validated per-key average is the new global model (η = 1).

    Args:
        settings: the run's settings (method, seed, quantisation, minimum replies, ...).
        round_offset: rounds already done (resume): Flower's round r is the run's r + offset.
    """

    def __init__(self, settings: FedSettings, *, round_offset: int = 0) -> None:
        super().__init__(**_fedavg_args(settings))
        self._bind(settings, round_offset)


class _ServerOpt(_RunRound):
    """Wraps a Flower server optimiser (next in the MRO) around :class:`PartialAverage`.

    ``_STATE`` names the optimiser's state attributes (dicts key -> array; FedAvgM's is a list in
    the model's key order). Only what Flower cannot know is done here: unreported keys and their
    state are put back, dtypes restored, the state exported and restored (see the module doc).
    """

    _STATE: tuple[str, ...] = ()
    _global: dict[str, np.ndarray]
    _reported: set[str]
    method: P.Method

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's step on the partial average; unreported keys keep value and state bitwise."""
        before = {name: self._get_state(name) for name in self._STATE}
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None:  # no round (too few valid replies): Flower took no step either
            return arrays, metrics
        frozen = [k for k in self._global if k not in self._reported]
        new = {
            k: ref if k in frozen else np.ascontiguousarray(arrays[k].numpy(), dtype=ref.dtype)
            for k, ref in self._global.items()
        }
        for name in self._STATE:
            after = self._get_state(name)
            if after is None:
                continue
            old = before[name]
            for k in frozen:
                after[k] = old[k] if old is not None else np.zeros_like(self._global[k])
            self._set_state(name, after, list(self._global))
        out = ArrayRecord({k: Array(v) for k, v in new.items()})
        self._after_step(out)
        return out, metrics

    def _after_step(self, arrays: ArrayRecord) -> None:
        """Hook: what the optimiser must know of the round's result (FedAvgM's current model)."""

    def _get_state(self, name: str) -> dict[str, np.ndarray] | None:
        value = getattr(self, name)
        return dict(value) if value else None

    def _set_state(self, name: str, value: dict[str, np.ndarray], order: list[str]) -> None:
        setattr(self, name, value)

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """The optimiser's state as ``server_opt.<name>.<key>`` arrays (the stored keys only:
        for UDEC/ULATDEC the shared parts; the others' state is zero, they are never reported)."""
        keys = list(self._global)
        if self.method.personal:
            keys = P.keys_for(self.method.shared, keys)
        out: dict[str, np.ndarray] = {}
        for name in self._STATE:
            state = self._get_state(name)
            if state is not None:
                out.update({f"{STATE_PREFIX}{name}.{k}": state[k] for k in keys})
        return out

    def load_optimizer_state(
        self, tensors: dict[str, np.ndarray], arrays: dict[str, np.ndarray]
    ) -> None:
        """Restore what :meth:`optimizer_state` exported; missing keys get zeros (as unreported).

        Args:
            tensors: ``server_opt.<name>.<key>`` arrays (checked by the caller).
            arrays: the model the run resumes from (its keys and their order).
        """
        for name in self._STATE:
            prefix = f"{STATE_PREFIX}{name}."
            got = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            if got:  # else Flower creates the state at its first step
                full = {k: got.get(k, np.zeros_like(ref)) for k, ref in arrays.items()}
                self._set_state(name, full, list(arrays))


class PartialFedAvgM(_ServerOpt, FedAvgM, PartialAverage):
    """``--server-opt fedavgm``: Flower's FedAvgM (Hsu et al., arXiv 1909.06335) on the partial
    average: v ← β·v + (θ − avg), θ ← θ − η·v."""

    _STATE = ("momentum_vector",)

    def __init__(self, settings: FedSettings, *, round_offset: int = 0) -> None:
        super().__init__(
            **_fedavg_args(settings),
            server_learning_rate=settings.server_lr,
            server_momentum=settings.server_momentum,
        )
        self._bind(settings, round_offset)

    def _after_step(self, arrays: ArrayRecord) -> None:
        # FedAvgM takes current_arrays from its first configure_train and then from its own
        # step; the step's result here is ours (unreported keys put back, dtypes kept).
        self.current_arrays = arrays

    def _get_state(self, name: str) -> dict[str, np.ndarray] | None:
        value = self.momentum_vector
        return None if value is None else dict(zip(self._global, value, strict=True))

    def _set_state(self, name: str, value: dict[str, np.ndarray], order: list[str]) -> None:
        self.momentum_vector = [value[k] for k in order]


class PartialFedAdam(_ServerOpt, FedAdam, PartialAverage):
    """``--server-opt fedadam``: Flower's FedAdam (Reddi et al., arXiv 2003.00295) on the partial
    average, bias-corrected with the run's round t as Flower does: η·√(1 − β2^(t+1))/(1 − β1^(t+1))."""

    _STATE = ("m_t", "v_t")

    def __init__(self, settings: FedSettings, *, round_offset: int = 0) -> None:
        super().__init__(
            **_fedavg_args(settings),
            eta=settings.server_lr,
            beta_1=settings.server_momentum,
            beta_2=settings.server_beta2,
            tau=settings.server_tau,
        )
        self._bind(settings, round_offset)


class PartialFedYogi(_ServerOpt, FedYogi, PartialAverage):
    """``--server-opt fedyogi``: Flower's FedYogi (Reddi et al.) on the partial average."""

    _STATE = ("m_t", "v_t")

    def __init__(self, settings: FedSettings, *, round_offset: int = 0) -> None:
        super().__init__(
            **_fedavg_args(settings),
            eta=settings.server_lr,
            beta_1=settings.server_momentum,
            beta_2=settings.server_beta2,
            tau=settings.server_tau,
        )
        self._bind(settings, round_offset)


class PartialFedAdagrad(_ServerOpt, FedAdagrad, PartialAverage):
    """``--server-opt fedadagrad``: Flower's FedAdagrad (Reddi et al.; β1 = 0) on the partial
    average."""

    _STATE = ("m_t", "v_t")

    def __init__(self, settings: FedSettings, *, round_offset: int = 0) -> None:
        super().__init__(**_fedavg_args(settings), eta=settings.server_lr, tau=settings.server_tau)
        self._bind(settings, round_offset)


#: ``--server-opt`` -> its strategy class.
STRATEGIES: dict[str, type[PartialAverage]] = {
    "fedavg": PartialFedAvg,
    "fedavgm": PartialFedAvgM,
    "fedadam": PartialFedAdam,
    "fedyogi": PartialFedYogi,
    "fedadagrad": PartialFedAdagrad,
}


def make_strategy(settings: FedSettings, *, round_offset: int = 0) -> PartialAverage:
    """The run's strategy: the partial average, with ``settings.server_opt`` on top of it."""
    return STRATEGIES[settings.server_opt](settings, round_offset=round_offset)  # type: ignore[call-arg]
