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

With ``--dp client`` (fixed clipping; :func:`private_release`). Each client masks its own
update Δ_i = θ_i − θ_global clipped to norm C (:func:`dp_update`: privacy.py's clip, redone in
float64 as the last step before masking), not θ_i, with weight 1: DP averages every client alike
(privacy.py's aggregate is unweighted), and W is then 1 (:func:`max_weight_of`), so r_i = 1
exactly. Sending Δ_i rather than θ_i is equivalent for the mean and keeps every coordinate within
[−c, c] whatever θ_global is (|Δ_ij| ≤ C ≤ c is required): Flower's clamp to ±c never cuts a
clipped update. The server unmasks Σ_i q_i, i.e. the mean over the n_rep clients whose masked
vectors were unmasked; n_rep · mean is the sum of clipped updates, to which privacy.py adds
N(0, (σ·C)²) per coordinate and divides by n_g (the clients sampled), as on the plain path.

Trust model: the server cannot enforce the clip, as it never sees an update; the bound rests on
each client clipping its own (as in Flower's client-side DP wrappers). Sensitivity: the server's
sum moves, when one client is added or removed, by that client's Δ_i plus its rounding error,
< 1 step 2c/(Q·r_i) per coordinate, so by at most C + ρ with ρ = √d·2c/Q
(:func:`rounding_bound`, d the floating coordinates summed). Each round is therefore accounted
as a Gaussian mechanism of multiplier σ·C/(C + ρ) (``sigma_effective`` in rounds.jsonl; ε uses
it). With the defaults (c = 8, 22 bits) and the tiny preset's model, see docs/federated.md.
Before any round :func:`check_rounding` refuses ρ ≥ C (σ_eff ≤ σ/2), warns at ρ ≥ C/10.

Which runs cannot use it (refused in one line by :func:`validate`, before any round):
USPLIT (clients report different groups; the masked sum needs one vector of one length from
every client), ``--aggregate`` robust rules (a median or Krum needs the individual updates; the
server only has their sum), ``--dp server`` (the server cannot clip what it never sees),
``--dp-adaptive`` (it needs the count of clipped updates, which SecAgg+ hides), ``--target-epsilon``
(σ would have to be found for an ε that depends on the model's size through ρ), a
``--secagg-max-weight`` other than 1 under ``--dp`` (it would inflate the rounding by 1/r_i),
``--dp-clip`` above ``--secagg-clip``, ``--quantize`` (8-bit codes carry a per-client offset and
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
#: ``--secagg --dp client``: ρ/C from which :func:`check_rounding` refuses, and warns. σ_eff =
#: σ/(1 + ρ/C) and ε grows about as 1/σ_eff. ρ ≥ C: σ_eff ≤ σ/2 (ε about doubled or worse), the
#: rounding outweighs the clipped update: a misconfiguration. ρ ≥ C/10: σ_eff ≥ 9% below σ, worth
#: knowing. Below: < 9%, reported in rounds.jsonl (``sigma_effective``), as it always is.
ROUNDING_REFUSE = 1.0
ROUNDING_WARN = 0.1


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
        _validate_dp(s)
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


def _validate_dp(s: Any) -> None:
    """``--secagg --dp``: only client-side fixed clipping combines (see the module doc)."""
    if s.dp == "server":
        raise ConfigError(
            "--secagg with --dp server: the server cannot clip updates it never sees; use "
            "--dp client (each client clips its own update before masking)"
        )
    if s.dp_adaptive:
        raise ConfigError(
            "--secagg with --dp-adaptive: adaptive clipping needs the count of clipped updates, "
            "which SecAgg+ hides; drop --dp-adaptive (fixed clipping at --dp-clip)"
        )
    if s.target_epsilon:
        raise ConfigError(
            "--secagg with --target-epsilon: the ε also depends on SecAgg+'s rounding, which "
            "depends on the model's size; give --noise-multiplier instead (rounds.jsonl "
            "reports the ε)"
        )
    if s.secagg_max_weight not in (DEFAULTS["secagg_max_weight"], 1.0):
        raise ConfigError(
            f"--secagg-max-weight {s.secagg_max_weight:g} with --dp: DP weighs every client 1, "
            "and SecAgg+ then uses max weight 1 (a larger one coarsens its rounding); drop it"
        )
    if s.dp_clip > s.secagg_clip:
        raise ConfigError(
            f"--dp-clip {s.dp_clip:g} above --secagg-clip {s.secagg_clip:g}: SecAgg+ would "
            "cut the clipped updates' coordinates; use --secagg-clip ≥ --dp-clip"
        )


def max_weight_of(s: Any) -> float:
    """W the workflow uses: ``--secagg-max-weight``, or 1 under ``--dp`` (every weight is 1)."""
    return 1.0 if s.dp != "off" else float(s.secagg_max_weight)


def _max_bits(clients: int) -> int:
    return min(30, math.floor(math.log2(MODULUS / clients - 1)))


def check_sizes(s: Any, sizes: list[int]) -> None:
    """Refuse a client whose weight (training images) exceeds ``--secagg-max-weight``: its
    weighted values r·θ with r > 1 could be clipped at c, and the sum overflow (not under
    ``--dp``: every weight is 1)."""
    if s.secagg and s.dp == "off" and sizes and max(sizes) > s.secagg_max_weight:
        raise ConfigError(
            f"--secagg-max-weight {s.secagg_max_weight:g} is below the largest client's "
            f"{max(sizes)} training images: set --secagg-max-weight {max(sizes)} or more"
        )


def coordinates(arrays: Any, keys: Iterable[str]) -> int:
    """d: the floating weights among ``keys`` of ``arrays`` (what SecAgg+ sums and rounds under
    ``--dp``; integer buffers are not released)."""
    return sum(
        int(np.size(arrays[k]))
        for k in keys
        if np.issubdtype(np.asarray(arrays[k]).dtype, np.floating)
    )


def check_rounding(s: Any, arrays: Any = None) -> float | None:
    """``--secagg --dp client``, before any round: ρ (:func:`rounding_bound`) for the largest d
    any round of the run uploads (``--full-rounds``' FULL rounds, then the method's groups), from
    ``arrays`` (default: the server's round-0 model's). ConfigError
    if ρ ≥ :data:`ROUNDING_REFUSE`·C, a warning on stderr if ρ ≥ :data:`ROUNDING_WARN`·C; each
    names σ_eff and the fix. Returns ρ (None without ``--secagg --dp``)."""
    if not (s.secagg and s.dp != "off"):
        return None
    import sys

    import torch

    from ..models.registry import build_network, config_from_dict
    from . import parts as P
    from .privacy import effective_sigma

    if arrays is None:  # the round-0 model's shapes (store.initial_arrays; its values don't count)
        with torch.random.fork_rng(devices=[]):  # the caller's RNG kept
            net = build_network(config_from_dict(s.unet))
        arrays = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    rounds = {1, min(s.full_rounds + 1, s.rounds)}  # FULL rounds (if any), then the method's
    groups = [P.assignments(s.method, [0], r, full_rounds=s.full_rounds)[0] for r in rounds]
    d = max(coordinates(arrays, P.keys_for(g, list(arrays))) for g in groups)
    c, bits, C, sigma = s.secagg_clip, int(s.secagg_bits), s.dp_clip, s.noise_multiplier
    rho = rounding_bound(d, clip=c, bits=bits, max_weight=max_weight_of(s))
    if rho < ROUNDING_WARN * C:
        return rho
    what = (
        f"--secagg --dp client: SecAgg+'s rounding ρ = √d·2c/2^bits = {rho:.3g} (d = {d:,} "
        f"weights, c = {c:g}, {bits} bits) is {rho / C:.0%} of --dp-clip {C:g}, so each round "
        f"is accounted at σ_eff = σ·C/(C + ρ) = {effective_sigma(sigma, C, rho):.3g} instead of "
        f"σ = {sigma:g}"
    )
    # the fix: ρ below ROUNDING_WARN·C, by one of the three settings alone
    fixes, root = [], math.sqrt(d)
    need = math.floor(math.log2(root * 2 * c / (ROUNDING_WARN * C))) + 1
    if need <= _max_bits(s.clients):
        fixes.append(f"raise --secagg-bits to {need}")
    if (top := ROUNDING_WARN * C * 2.0**bits / (2 * root)) > C:
        fixes.append(f"lower --secagg-clip below {top:.3g} (≥ --dp-clip)")
    if (low := rho / ROUNDING_WARN) < c:
        fixes.append(f"raise --dp-clip above {low:.3g}")
    fix = ", or ".join(fixes) or "drop --secagg or use a smaller model"
    if rho >= ROUNDING_REFUSE * C:
        raise ConfigError(f"{what} (≤ σ/2: ε far above what σ gives); {fix}")
    print(f"decentdiff: warning: {what} (a larger ε than σ gives); {fix}", file=sys.stderr)
    return rho


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


def rounding_bound(
    coordinates: int, *, clip: float, bits: int, max_weight: float, weight: float = 1.0
) -> float:
    """ρ, the most SecAgg+'s rounding moves one client's contribution to the unmasked sum, in
    L2 norm and in the values' own units: stochastic rounding moves each of the ``coordinates``
    integers by < 1 step of 2c/Q, i.e. the value by < 2c/(Q·r) with r = round(weight/W·Q)/Q
    (the weight the client's values were multiplied by), so ρ = √d·2c/(Q·r). Under ``--dp``
    the weight is 1 and W is 1 (:func:`max_weight_of`): r = 1, ρ = √d·2c/Q."""
    q = 2.0**bits
    r = round(weight / max_weight * q) / q
    return math.sqrt(coordinates) * 2 * clip / (q * r)


def private_release(
    privacy: Any, global_: dict[str, np.ndarray], sec: SecureRound, assigned: dict[str, int], s: Any
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``--secagg --dp client``: the DP round from SecAgg+'s mean of the clients' clipped updates.

    Every client masked Δ_i clipped to C with weight 1 (:func:`fitres_content`), so the unmasked
    mean is Σ_i Δ_i / n_rep over the n_rep clients whose masked vectors were unmasked, and
    n_rep · mean is the sum privacy.py's :meth:`~.privacy.Privacy.aggregate` would have formed,
    each Δ_i moved by at most :func:`rounding_bound` (d = the floating coordinates summed).
    :meth:`~.privacy.Privacy.release` adds its noise, divides by n_g and accounts the round at
    the multiplier that the sensitivity C + ρ leaves. Non-floating keys keep the server's values.
    """
    n_rep = len(sec.clients)
    sums: dict[str, np.ndarray] = {}
    for k, v in zip(sec.keys, sec.mean or [], strict=True):
        ref = np.asarray(global_[k])
        if np.issubdtype(ref.dtype, np.floating):
            sums[k] = n_rep * np.asarray(v, np.float64).reshape(ref.shape)
    d = coordinates(global_, sec.keys)  # what check_rounding counted before round 1
    rho = rounding_bound(
        d, clip=float(s.secagg_clip), bits=int(s.secagg_bits), max_weight=max_weight_of(s)
    )
    new, row = privacy.release(global_, sums, assigned, rho)
    row.update(reporting=n_rep, coordinates=d)
    return new, row


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
            max_weight=max_weight_of(s),
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


def fitres_content(
    update: dict[str, np.ndarray],
    metrics: dict[str, Any],
    settings: Any,
    received: dict[str, np.ndarray] | None = None,
) -> Any:
    """The reply ``secaggplus_mod`` masks: the update's arrays in sorted key order (the server's
    :func:`report_keys`), weighted by num-examples, which must not exceed the max weight.

    ``--dp client``: instead the clipped update Δ_i (:func:`dp_update`, against ``received``)
    with weight 1, and no clip bit among the metrics (it would reveal that client's norm)."""
    import flwr.compat.common.recorddict_compat as compat
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

    n = int(metrics["num-examples"])
    if settings.dp != "off":
        if received is None:
            raise ValueError("--secagg --dp: the received arrays are needed to send the update")
        update = dp_update(update, received, float(settings.dp_clip))
        metrics = {k: v for k, v in metrics.items() if k != "dp-unclipped"}
        n = 1
    elif n > settings.secagg_max_weight:
        raise ConfigError(
            f"--secagg-max-weight {settings.secagg_max_weight:g} is below this client's {n} "
            f"training images: set --secagg-max-weight {n} or more"
        )
    params = ndarrays_to_parameters([np.asarray(update[k]) for k in sorted(update)])
    scalars = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    return compat.fitres_to_recorddict(FitRes(Status(Code.OK, ""), params, n, scalars), True)


def seed_rounding(seed: int, round_: int, partition: int) -> None:
    """Seed NumPy's global generator per (run seed, round, client) right before the reply goes to
    ``secaggplus_mod``: Flower's stochastic rounding (``flwr.common.secure_aggregation.
    quantization``) draws from that generator, so without this a ``--secagg`` run would not repeat
    or resume bit for bit. The rounding's randomness is no secret (the masks hide each vector,
    and they come from the key agreement, not from this generator)."""
    state = np.random.SeedSequence([int(seed), int(round_), int(partition)]).generate_state(1)
    np.random.seed(int(state[0]))  # noqa: NPY002 (Flower draws from the legacy global one)


def dp_update(
    values: dict[str, np.ndarray], received: dict[str, np.ndarray], c: float
) -> dict[str, np.ndarray]:
    """``--secagg --dp client``: what a client masks, Δ_i = values − received over the floating
    keys, clipped (again, in float64, as the last step before masking) to norm c; zeros for the
    other keys (integer buffers are not released under DP: the server keeps its own)."""
    from .privacy import clip

    fk = [k for k, v in values.items() if np.issubdtype(np.asarray(v).dtype, np.floating)]
    delta, _ = clip(
        {k: np.asarray(values[k], np.float64) - np.asarray(received[k], np.float64) for k in fk},
        c,
    )
    return {k: delta[k] if k in delta else np.zeros(np.shape(v)) for k, v in values.items()}
