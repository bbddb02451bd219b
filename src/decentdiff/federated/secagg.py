"""Secure aggregation (``fed run --secagg``): Flower's own SecAgg+ protocol (Bell et al., CCS
2020) for the one server step that is a plain weighted sum, so the server sees the clients'
weighted average and never one client's update. The protocol is Flower's, not ours: the server
side is ``flwr.server.workflow.SecAggPlusWorkflow`` (its four stages: setup, share keys, collect
masked vectors, unmask), the client side ``flwr.client.mod.secaggplus_mod``.

How it is plugged in. In Flower 1.41 the workflow runs only inside the legacy ``DefaultWorkflow``
(a ``LegacyContext`` with a legacy ``flwr.server.strategy.Strategy``), while decentdiff's server
is ``flwr.serverapp.strategy.FedAvg.start``'s loop. :class:`SecAggGrid` bridges them for one
round at a time: ``Strategy.start`` hands it the round's train messages; it runs the workflow over
the real grid with a relay strategy (:class:`_Relay`: ``configure_fit`` returns those messages as
``FitIns``, ``aggregate_fit`` keeps the unmasked weighted mean) and returns a :class:`SecureRound`
in place of the replies, which :meth:`.strategy.PartialAverage.aggregate_train` turns into the new
global model. Node sampling, rounds.jsonl, checkpoints, server optimisers and the server EMA stay
as they are.

What the arithmetic is. Client i with n_i examples sends, per weight, the stochastically rounded
integer q_i = SR((r_i·θ_i + c)·Q/(2c)) masked modulo M, where r_i = round(n_i/W·Q)/Q (W =
``--secagg-max-weight``, c = ``--secagg-clip``, Q = 2^``--secagg-bits``, M = 2^32); the server
unmasks Σ q_i and returns Σ r_i θ_i / Σ r_i up to the rounding. :func:`error_bound` is the bound
the tests check it against.

Which runs cannot use it (refused in one line by :func:`validate`, before any round):
USPLIT (clients report different groups; the masked sum needs one vector of one length from
every client), ``--aggregate`` robust rules (a median or Krum needs the individual updates; the
server only has their sum), ``--dp`` (decentdiff's DP aggregator clips each update and reads each
client's clip bit on the server; client-side clipping with the noise added to the secure sum is
possible in principle but not wired), ``--quantize`` (8-bit codes carry a per-client offset and
step: they cannot be added), and too few clients for the shares / threshold.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError

#: Flower's modulus for the masks (``modulus_range``): 2^32, its maximum.
MODULUS = 2**32
#: The ``--secagg-*`` options' defaults (FedSettings repeats them; tested equal): Flower's clipping
#: range 8, 2^22 quantisation levels and maximum weight 1000; shares and threshold 0 = every
#: client and a majority of the shares.
DEFAULTS: dict[str, float] = {
    "secagg_shares": 0,
    "secagg_threshold": 0,
    "secagg_clip": 8.0,
    "secagg_bits": 22,
    "secagg_max_weight": 1000.0,
}
#: Keys of a train config that name the downlink arrays' order (legacy Parameters are a list).
KEYS_KEY = "secagg-keys"


# ----------------------------------------------------------------------------- settings
def shares_of(s: Any) -> int:
    """The shares each client's secret is split into: ``--secagg-shares``, or every client."""
    return int(s.secagg_shares) or int(s.clients)


def threshold_of(s: Any) -> int:
    """Shares needed to reconstruct: ``--secagg-threshold``, or a majority of the shares."""
    return int(s.secagg_threshold) or shares_of(s) // 2 + 1


def validate(s: Any) -> None:
    """Refuse (ConfigError, one line naming the problem and the fix) a ``--secagg`` run that the
    protocol cannot serve, before any round; options given without ``--secagg`` too."""
    if not s.secagg:
        given = [
            name
            for name, field in (
                ("--secagg-shares", "secagg_shares"),
                ("--secagg-threshold", "secagg_threshold"),
                ("--secagg-clip", "secagg_clip"),
                ("--secagg-bits", "secagg_bits"),
                ("--secagg-max-weight", "secagg_max_weight"),
            )
            if getattr(s, field) != DEFAULTS[field]
        ]
        if given:
            raise ConfigError(f"{', '.join(given)} without --secagg: add --secagg, or drop them")
        return
    from .parts import get_method

    if get_method(s.method).split:
        raise ConfigError(
            "--secagg with --method usplit: its clients report different groups, and a secure "
            "sum needs the same vector from every client; use full, udec or ulatdec"
        )
    if s.aggregate != "fedavg":
        raise ConfigError(
            f"--secagg with --aggregate {s.aggregate}: the server only gets the clients' sum, "
            "and a robust rule needs each update; drop one of them"
        )
    if s.dp != "off":
        raise ConfigError(
            "--secagg with --dp: decentdiff's DP clips and counts each client's update on the "
            "server, which SecAgg+ hides (not wired yet); drop one of them"
        )
    if s.quantize:
        raise ConfigError(
            "--secagg with --quantize: 8-bit updates carry a per-client offset and step and "
            "cannot be summed (SecAgg+ quantises by itself: --secagg-bits); drop --quantize"
        )
    if s.clients < 3:
        raise ConfigError(
            f"--secagg with {s.clients} clients: with 2 each client can subtract its own update "
            "from the sum (and Flower needs > 2 shares); use --clients ≥ 3"
        )
    shares, thr = shares_of(s), threshold_of(s)
    if not 3 <= shares <= s.clients:
        raise ConfigError(
            f"--secagg-shares {shares} with {s.clients} clients: each client's secret is split "
            f"among its neighbours, so it must be in 3..{s.clients} (0 = every client)"
        )
    if not 2 <= thr < shares:
        raise ConfigError(
            f"--secagg-threshold {thr} with {shares} shares: it must be in 2..{shares - 1} "
            "(0 = a majority); raise --secagg-shares/--clients or lower the threshold"
        )
    if not (math.isfinite(s.secagg_clip) and s.secagg_clip > 0):
        raise ConfigError(f"--secagg-clip must be > 0, got {s.secagg_clip}")
    if not (math.isfinite(s.secagg_max_weight) and s.secagg_max_weight > 0):
        raise ConfigError(f"--secagg-max-weight must be > 0, got {s.secagg_max_weight}")
    if not 8 <= s.secagg_bits <= 30 or s.clients * 2**s.secagg_bits >= MODULUS:
        raise ConfigError(
            f"--secagg-bits {s.secagg_bits} with {s.clients} clients: the sum of "
            f"{s.clients} values below 2^bits must stay below 2^32; use 8..{_max_bits(s.clients)}"
        )


def _max_bits(clients: int) -> int:
    return min(30, math.floor(math.log2(MODULUS / clients - 1)))


def check_sizes(s: Any, sizes: list[int]) -> None:
    """Refuse a client whose weight (training images) exceeds ``--secagg-max-weight``: its
    weighted values r·θ with r > 1 could be clipped at c, and the sum overflow."""
    if s.secagg and sizes and max(sizes) > s.secagg_max_weight:
        raise ConfigError(
            f"--secagg-max-weight {s.secagg_max_weight:g} is below the largest client's "
            f"{max(sizes)} training images: set --secagg-max-weight {max(sizes)} or more"
        )


def error_bound(
    weights: list[float], spread: float, *, clip: float, bits: int, max_weight: float
) -> float:
    """Largest |secure − plain| per weight, the plain one being Σ n_i θ_i / Σ n_i.

    With Q = 2^bits, r_i = round(n_i/W·Q)/Q and no value clipped (|r_i θ_i| ≤ c): stochastic
    rounding moves each q_i by < 1, i.e. r_i θ_i by < 2c/Q, so the unmasked Σ r_i θ_i is off by
    < n·2c/Q; the weights r_i differ from n_i/W by ≤ 1/(2Q), which moves Σ r_i θ_i / Σ r_i from
    the plain mean m by ≤ Σ |δ_i|·|θ_i − m| / Σ r_i ≤ n/(2Q)·spread / Σ r_i, where spread is
    max_i |θ_i − m|. So |secure − m| < n·(2c + spread/2) / (Q·Σ r_i).
    """
    q = 2.0**bits
    r = sum(round(w / max_weight * q) / q for w in weights)
    n = len(weights)
    return n * (2 * clip + spread / 2) / (q * r)


# ----------------------------------------------------------------------------- the server side
@dataclass
class SecureRound:
    """What :class:`SecAggGrid` returns for a round's train messages instead of the replies."""

    keys: list[str]  # the reported keys, in the order the vectors were summed
    mean: list[np.ndarray] | None  # Σ r_i θ_i / Σ r_i per key (None: the protocol halted)
    clients: dict[int, dict[str, Any]] = field(
        default_factory=dict
    )  # node -> num_examples, metrics
    failures: list[str] = field(default_factory=list)
    up_wire: dict[int, int] = field(default_factory=dict)  # node -> bytes sent, four stages
    down_wire: dict[int, int] = field(default_factory=dict)  # node -> bytes received
    seconds: float = 0.0


def _value_bytes(v: Any) -> int:
    if isinstance(v, list):
        return sum(_value_bytes(x) for x in v)
    if isinstance(v, bytes | str):
        return len(v)
    return 8  # bool, int, float: as Flower counts them


def content_bytes(content: Any) -> int:
    """The bytes of a RecordDict's records: Flower's ``count_bytes`` for array and metric
    records; config records counted the same way (key + value bytes) but with list values too,
    which Flower 1.41's ``ConfigRecord.count_bytes`` rejects (SecAgg+ sends lists of bytes)."""
    from flwr.app import ConfigRecord

    total = 0
    for rec in content.values():
        if isinstance(rec, ConfigRecord):
            total += sum(len(k) + _value_bytes(v) for k, v in rec.items())
        else:
            total += int(rec.count_bytes())
    return total


class _Proxy:
    """The one thing the workflow asks of a legacy ClientProxy: its node id."""

    def __init__(self, node_id: int) -> None:
        self.node_id = node_id


def _relay(fitins: dict[int, Any]) -> Any:
    from flwr.server.strategy import Strategy

    class Relay(Strategy):
        """A legacy strategy that only relays: the round's FitIns out, the secure mean back."""

        results: list[Any] = []  # noqa: RUF012 (set per instance below)

        def initialize_parameters(self, client_manager):
            return None

        def configure_fit(self, server_round, parameters, client_manager):
            return [(_Proxy(n), ins) for n, ins in fitins.items()]

        def aggregate_fit(self, server_round, results, failures):
            self.results = list(results)
            return None, {}

        def configure_evaluate(self, server_round, parameters, client_manager):
            return []

        def aggregate_evaluate(self, server_round, results, failures):
            return None, {}

        def evaluate(self, server_round, parameters):
            return None

    return Relay()


class _Counting:
    """The grid, counting the bytes of every message it carries, per node."""

    def __init__(self, grid: Any) -> None:
        self.grid = grid
        self.up: dict[int, int] = {}
        self.down: dict[int, int] = {}

    def send_and_receive(self, messages: Iterable[Any], *, timeout: float | None = None) -> Any:
        messages = list(messages)
        for m in messages:
            node = m.metadata.dst_node_id
            self.down[node] = self.down.get(node, 0) + content_bytes(m.content)
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        for m in replies:
            if not m.has_error():
                node = m.metadata.src_node_id
                self.up[node] = self.up.get(node, 0) + content_bytes(m.content)
        return replies

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)


class SecAggGrid:
    """A Grid whose train round runs Flower's SecAgg+ workflow (every other call passes through)."""

    def __init__(self, grid: Any, settings: Any) -> None:
        self.grid = grid
        self.settings = settings

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)

    def workflow(self) -> Any:
        from flwr.server.workflow import SecAggPlusWorkflow

        s = self.settings
        shares, thr = shares_of(s), threshold_of(s)
        return SecAggPlusWorkflow(
            num_shares=shares,
            reconstruction_threshold=thr,
            max_weight=float(s.secagg_max_weight),
            clipping_range=float(s.secagg_clip),
            quantization_range=2 ** int(s.secagg_bits),
            modulus_range=MODULUS,
            timeout=float(s.round_timeout),
        )

    def send_and_receive(
        self, messages: Iterable[Any], *, timeout: float | None = None
    ) -> SecureRound | Iterable[Any]:
        from flwr.app import MessageType

        messages = list(messages)
        if not messages or any(m.metadata.message_type != MessageType.TRAIN for m in messages):
            return self.grid.send_and_receive(messages, timeout=timeout)
        return self.secure_round(messages)

    def secure_round(self, messages: list[Any]) -> SecureRound:
        from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
        from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
        from flwr.server.compat.legacy_context import LegacyContext
        from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
        from flwr.server.workflow.constant import Key as WKey

        t0 = time.perf_counter()
        fitins: dict[int, Any] = {}
        reports = set()
        rnd = 0
        for m in messages:
            arrays = m.content.array_records["arrays"]
            cfg = dict(m.content.config_records["config"])
            keys = list(arrays.keys())
            cfg[KEYS_KEY] = ",".join(keys)
            params = ndarrays_to_parameters([arrays[k].numpy() for k in keys])
            fitins[m.metadata.dst_node_id] = FitIns(params, cfg)
            reports.add(str(cfg["report"]))
            rnd = int(cfg["round"])
        if len(reports) != 1:  # validate() refuses USPLIT; anything else is a bug
            raise ConfigError(f"--secagg: clients asked for different groups {sorted(reports)}")
        report = reports.pop()
        relay = _relay(fitins)
        ctx = LegacyContext(
            Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}),
            strategy=relay,
        )
        ctx.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WKey.CURRENT_ROUND: rnd})
        ctx.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
        grid = _Counting(self.grid)
        self.workflow()(grid, ctx)  # type: ignore[arg-type]
        out = SecureRound(keys=report_keys(report, fitins), mean=None)
        for proxy, res in relay.results:
            out.clients[proxy.node_id] = {
                "num_examples": int(res.num_examples),
                "metrics": dict(res.metrics),
            }
        if relay.results:
            out.mean = parameters_to_ndarrays(relay.results[0][1].parameters)
        out.up_wire, out.down_wire = grid.up, grid.down
        out.seconds = time.perf_counter() - t0
        return out


def report_keys(report: str, fitins: dict[int, Any]) -> list[str]:
    """The keys every client reports, sorted: the order of the summed vectors on both sides."""
    from . import parts as P

    some = next(iter(fitins.values()))
    groups = [g for g in report.split(",") if g]
    return sorted(P.keys_for(groups, str(some.config[KEYS_KEY]).split(",")))


# ----------------------------------------------------------------------------- the client side
def client_mod(msg: Any, ctx: Any, call_next: Any) -> Any:
    """``secaggplus_mod`` for the SecAgg+ messages only: a plain round passes straight through,
    so one ClientApp serves runs with and without ``--secagg``."""
    from flwr.client.mod import secaggplus_mod
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, ctx, call_next)
    return call_next(msg, ctx)


def is_secure(content: Any) -> bool:
    """Whether a train message is SecAgg+'s (legacy FitIns layout) rather than a plain round's."""
    return "fitins.config" in content.config_records


def read_fitins(content: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A SecAgg+ train message -> (the round's config, the downlink arrays by key)."""
    import flwr.compat.common.recorddict_compat as compat
    from flwr.common import parameters_to_ndarrays

    ins = compat.recorddict_to_fitins(content, keep_input=True)
    conf = dict(ins.config)
    keys = str(conf.pop(KEYS_KEY)).split(",")
    return conf, dict(zip(keys, parameters_to_ndarrays(ins.parameters), strict=True))


def fitres_content(update: dict[str, np.ndarray], metrics: dict[str, Any], settings: Any) -> Any:
    """The reply ``secaggplus_mod`` masks: the update's arrays in sorted key order (the server's
    :func:`report_keys`), weighted by num-examples, which must not exceed the max weight."""
    import flwr.compat.common.recorddict_compat as compat
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

    n = int(metrics["num-examples"])
    if n > settings.secagg_max_weight:
        raise ConfigError(
            f"--secagg-max-weight {settings.secagg_max_weight:g} is below this client's {n} "
            f"training images: set --secagg-max-weight {n} or more"
        )
    params = ndarrays_to_parameters([np.asarray(update[k]) for k in sorted(update)])
    scalars = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    return compat.fitres_to_recorddict(FitRes(Status(Code.OK, ""), params, n, scalars), True)
