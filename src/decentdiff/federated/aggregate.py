"""Pure federated arithmetic: validate and decode updates, average per part, quantise, count bytes.

Nothing here imports Flower: arrays are ``dict[str, np.ndarray]`` (a state dict in NumPy form).

- Aggregation (de Goede et al., arXiv 2406.12575): for every key, the average of the clients that
  reported it, weighted by their data size; a key nobody reported keeps its global value.
- FedProx (Li et al., arXiv 1812.06127): the client adds (μ/2)·||θ − θ_global||² to its loss.
- Quantised updates (Vora et al., FedDM, arXiv 2407.14730): a client sends Δ = θ_local − θ_global
  per tensor as 8-bit codes plus (offset, step); the server decodes θ_global + Δ̂.
- Server EMA (:func:`ema_update`): an exponential moving average of the global model across
  rounds, kept on the server (no bytes travel), bias-corrected so that no weight is left on the
  random initial model.
- Bytes: ``payload`` counts the array elements sent (numel × itemsize); ``wire`` counts what
  Flower's ``ArrayRecord.count_bytes`` counts (each array's ``np.save`` bytes, header included,
  plus its key). Both are predicted exactly by :func:`predict_bytes`.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from . import parts as P

#: Suffix of the key that carries a quantised tensor's (offset, step) as float32 (2,).
QPARAMS = "::qparams"
QUANTIZE_BITS = (8,)
#: A reply whose change ||θ_client − θ_global|| (over the keys it reports) exceeds this multiple of
#: max(||θ_global||, 1) is rejected: honest local training moves a model by a small fraction of its
#: norm, while a finite but huge update (a scaling attack) would dominate the weighted average.
MAX_UPDATE_NORM_RATIO = 100.0

Arrays = Mapping[str, np.ndarray]


class UpdateRejected(ValueError):
    """A client's update failed validation; ``str(e)`` is the reason logged in rounds.jsonl."""


@dataclass(frozen=True)
class Update:
    """A validated, decoded update: full parameter values for the keys the client reported."""

    client: int
    weight: float  # the client's number of training examples
    arrays: dict[str, np.ndarray]


# ------------------------------------------------------------------------------ aggregation
def _content_key(u: Update) -> tuple[bytes, float]:
    """sha256 of an update's keys and bytes (then its weight): an order no client can influence
    beyond its own content, and the same in every run."""
    h = hashlib.sha256()
    for k in sorted(u.arrays):
        a = np.ascontiguousarray(u.arrays[k])
        h.update(f"{k}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.digest(), float(u.weight)


def canonical_order(updates: Iterable[Update]) -> list[Update]:
    """The updates by content, not by arrival: float sums (and a robust rule's ties) depend on
    their order, and replies arrive in whatever order the clients finish, so without this a
    re-run could differ bitwise."""
    return sorted(updates, key=_content_key)


def aggregate(global_: Arrays, updates: Sequence[Update]) -> dict[str, np.ndarray]:
    """Per-key average weighted by client data size, over the clients that reported the key.

    Args:
        global_: the current global arrays (key -> array).
        updates: validated updates; each may hold any subset of ``global_``'s keys.
    Returns:
        New global arrays (same keys, shapes and dtypes); keys nobody reported are the same
        objects as in ``global_`` (bitwise unchanged).
    """
    out = dict(global_)
    updates = canonical_order(updates)
    for key, ref in global_.items():
        got = [(u.weight, u.arrays[key]) for u in updates if key in u.arrays]
        if not got:
            continue
        total = math.fsum(w for w, _ in got)
        acc = np.zeros(ref.shape, dtype=np.float64)
        for w, a in got:
            acc += (w / total) * a.astype(np.float64)
        out[key] = acc.astype(ref.dtype)
    return out


# ------------------------------------------------------------------------------ server EMA
def ema_decay(decay: float, n: int) -> float:
    """The weight the server EMA keeps of its previous value at its ``n``-th update (n ≥ 1).

    Bias-corrected (as Adam's moments, Kingma & Ba 2014): d_n = β(1 − β^(n−1)) / (1 − β^n), so after
    n updates the EMA is Σ_i (1 − β)β^(n−i)·θ_i / (1 − β^n), the normalised exponentially weighted
    average of the n global models so far. d_1 = 0 (the first EMA is round 1's model: nothing of
    the random initial model), d_2 = β/(1 + β), and d_n → β. The central trainer's warm-up
    min(β, (1 + n)/(10 + n)) suits thousands of steps, not 15 rounds: it would keep 10% of the
    initial model after round 1 and stay below β = 0.9 for 80 rounds.
    """
    if n < 1:
        raise ValueError(f"EMA updates count from 1, got {n}")
    return decay * (1.0 - decay ** (n - 1)) / (1.0 - decay**n) if decay > 0 else 0.0


def ema_update(ema: Arrays, current: Arrays, decay: float, n: int) -> dict[str, np.ndarray]:
    """The server EMA after its ``n``-th update with ``current`` (each key in its own dtype).

    Computed in float64, stored in the model's dtype: the stored EMA is exactly the one in memory,
    so a resumed run continues it bitwise.
    """
    d = ema_decay(decay, n)
    out: dict[str, np.ndarray] = {}
    for k, x in current.items():
        acc = d * np.asarray(ema[k], dtype=np.float64) + (1.0 - d) * x.astype(np.float64)
        out[k] = acc.astype(x.dtype)
    return out


# ------------------------------------------------------------------------------ quantisation
def quantize(x: np.ndarray, bits: int = 8) -> tuple[np.ndarray, float, float]:
    """Affine per-tensor quantisation to ``bits``-bit unsigned codes.

    Args:
        x: a float array.
    Returns:
        (codes uint8 of x's shape, offset, step) with x ≈ offset + codes·step and
        |x − x̂| ≤ step/2 element-wise (up to float32 rounding).
    """
    if bits not in QUANTIZE_BITS:
        raise ValueError(f"only {QUANTIZE_BITS}-bit quantisation is supported, got {bits}")
    levels = (1 << bits) - 1
    x64 = np.asarray(x, dtype=np.float64)
    lo = float(x64.min()) if x64.size else 0.0
    hi = float(x64.max()) if x64.size else 0.0
    step = (hi - lo) / levels
    if step == 0.0:
        return np.zeros(x64.shape, dtype=np.uint8), lo, 0.0
    codes = np.clip(np.rint((x64 - lo) / step), 0, levels).astype(np.uint8)
    return codes, lo, step


def dequantize(codes: np.ndarray, offset: float, step: float) -> np.ndarray:
    """Inverse of :func:`quantize` (float64)."""
    return offset + codes.astype(np.float64) * step


def encode_update(
    local: Arrays, reference: Arrays, keys: Iterable[str], bits: int | None = None
) -> dict[str, np.ndarray]:
    """What a client sends for ``keys``: the values, or (bits) quantised deltas from ``reference``.

    Args:
        local: the client's arrays after local training.
        reference: the global arrays the client received this round (the delta's origin).
        keys: the keys to report.
        bits: None for full precision, 8 for 8-bit quantised updates.
    """
    out: dict[str, np.ndarray] = {}
    for k in keys:
        x = np.asarray(local[k])
        if bits is None or not np.issubdtype(x.dtype, np.floating):
            out[k] = x
            continue
        delta = x.astype(np.float64) - np.asarray(reference[k], dtype=np.float64)
        codes, lo, step = quantize(delta, bits)
        out[k] = codes
        out[k + QPARAMS] = np.array([lo, step], dtype=np.float32)
    return out


def expected_layout(
    layout: Mapping[str, tuple[tuple[int, ...], np.dtype]], keys: Iterable[str], bits: int | None
) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """key -> (shape, dtype) of every array a valid update for ``keys`` carries.

    Args:
        layout: the global model's key -> (shape, dtype) (see :func:`layout_of`).
    """
    out: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    for k in keys:
        shape, dtype = tuple(layout[k][0]), np.dtype(layout[k][1])
        if bits is None or not np.issubdtype(dtype, np.floating):
            out[k] = (shape, dtype)
        else:
            out[k] = (shape, np.dtype(np.uint8))
            out[k + QPARAMS] = ((2,), np.dtype(np.float32))
    return out


def decode_update(
    client: int,
    weight: float,
    arrays: Arrays,
    global_: Arrays,
    keys: Iterable[str],
    bits: int | None = None,
    max_norm_ratio: float | None = MAX_UPDATE_NORM_RATIO,
) -> Update:
    """Validate a client's reply and turn it into full values; raise UpdateRejected otherwise.

    Checks, in order: the weight (a positive finite number), the total size (no larger than a
    valid update for ``keys``), the key set (none missing, none unexpected), each array's dtype and
    shape, finiteness (of values, of quantisation parameters and of the decoded result), and the
    size of the change: ||θ − θ_global|| ≤ max_norm_ratio · max(||θ_global||, 1) over the
    reported floating-point keys.

    Args:
        client: the client's id (for the Update).
        weight: the client's claimed number of examples.
        arrays: what the client sent.
        global_: the global arrays sent this round (shapes, dtypes and the quantisation origin).
        keys: the keys this client had to report this round.
        bits: the quantisation the run uses (None: full precision).
        max_norm_ratio: the norm guard (None: off).
    """
    keys = list(keys)
    layout = expected_layout(layout_of(global_), keys, bits)
    try:
        w = float(weight)
    except (TypeError, ValueError):
        raise UpdateRejected(f"num-examples {weight!r} is not a number") from None
    if not (math.isfinite(w) and w > 0):
        raise UpdateRejected(f"num-examples must be a positive finite number, got {weight!r}")
    budget = sum(math.prod(s) * d.itemsize for s, d in layout.values())
    size = sum(np.asarray(a).nbytes for a in arrays.values())
    if size > budget:
        raise UpdateRejected(f"oversized: {size} bytes where at most {budget} were expected")
    missing = sorted(set(layout) - set(arrays))
    extra = sorted(set(arrays) - set(layout))
    if extra:
        raise UpdateRejected(f"unexpected keys {extra[:3]}{'…' if len(extra) > 3 else ''}")
    if missing:
        raise UpdateRejected(f"missing keys {missing[:3]}{'…' if len(missing) > 3 else ''}")
    for k, (shape, dtype) in layout.items():
        a = np.asarray(arrays[k])
        if a.dtype != dtype:
            raise UpdateRejected(f"{k}: dtype {a.dtype}, expected {dtype}")
        if a.shape != tuple(shape):
            raise UpdateRejected(f"{k}: shape {a.shape}, expected {tuple(shape)}")
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            raise UpdateRejected(f"{k}: non-finite values (NaN or Inf)")
    out: dict[str, np.ndarray] = {}
    for k in keys:
        ref = np.asarray(global_[k])
        if k + QPARAMS in layout:
            lo, step = (float(v) for v in arrays[k + QPARAMS])
            if step < 0:
                raise UpdateRejected(f"{k}: negative quantisation step {step}")
            val = (ref.astype(np.float64) + dequantize(arrays[k], lo, step)).astype(ref.dtype)
            if not np.isfinite(val).all():
                raise UpdateRejected(f"{k}: decoded update is not finite")
            out[k] = val
        else:
            out[k] = np.array(arrays[k], copy=True)
    if max_norm_ratio is not None:
        d2 = g2 = 0.0
        for k, v in out.items():
            if np.issubdtype(v.dtype, np.floating):
                ref = np.asarray(global_[k], dtype=np.float64)
                d2 += float(np.sum(np.square(v.astype(np.float64) - ref)))
                g2 += float(np.sum(np.square(ref)))
        limit = max_norm_ratio * max(math.sqrt(g2), 1.0)
        if not math.sqrt(d2) <= limit:
            raise UpdateRejected(
                f"huge norm: ||update − global|| = {math.sqrt(d2):.3g} exceeds "
                f"{max_norm_ratio:g}·max(||global||, 1) = {limit:.3g}"
            )
    return Update(client, w, out)


# ------------------------------------------------------------------------------ FedProx
def prox_penalty(
    named_params: Iterable[tuple[str, object]], anchor: Mapping[str, object], mu: float
):
    """(μ/2)·Σ ||θ_k − θ_global,k||² over the parameters that have an anchor (a torch scalar).

    Li et al., FedProx, arXiv 1812.06127. Its gradient w.r.t. θ_k is μ(θ_k − θ_global,k); parameters
    without an anchor (a client's private parts under UDEC/ULATDEC) are not pulled anywhere.

    Args:
        named_params: ``model.named_parameters()``.
        anchor: key -> torch tensor of the global values received this round (detached).
        mu: the proximal weight μ ≥ 0.
    """
    total = None
    for name, p in named_params:
        ref = anchor.get(name)
        if ref is None:
            continue
        term = (p - ref).pow(2).sum()  # type: ignore[operator]
        total = term if total is None else total + term
    if total is None:
        import torch

        return torch.zeros(())
    return 0.5 * mu * total


# ------------------------------------------------------------------------------ bytes
@lru_cache(maxsize=4096)
def _npy_header_len(shape: tuple[int, ...], dtype: str) -> int:
    """Length of the ``np.save`` header of an array (what Flower's Array.data starts with)."""
    # np.empty does not touch its pages; only the header is written.
    d = np.lib.format.header_data_from_array_1_0(np.empty(shape, dtype=dtype))
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, d)
    return buf.tell()


def payload_bytes(layout: Mapping[str, tuple[tuple[int, ...], np.dtype]]) -> int:
    """Bytes of the array elements: Σ numel × itemsize."""
    return sum(math.prod(s) * np.dtype(d).itemsize for s, d in layout.values())


def wire_bytes(layout: Mapping[str, tuple[tuple[int, ...], np.dtype]]) -> int:
    """What ``flwr.app.ArrayRecord.count_bytes`` reports for arrays of this layout."""
    return sum(
        math.prod(s) * np.dtype(d).itemsize + _npy_header_len(tuple(s), np.dtype(d).str) + len(k)
        for k, (s, d) in layout.items()
    )


def layout_of(arrays: Arrays) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """key -> (shape, dtype)."""
    return {k: (np.asarray(v).shape, np.asarray(v).dtype) for k, v in arrays.items()}


def predict_bytes(
    layout: Mapping[str, tuple[tuple[int, ...], np.dtype]],
    method: str,
    n_clients: int,
    rounds: int,
    *,
    bits: int | None = None,
    seed: int = 0,
    full_rounds: int = 0,
) -> dict[str, object]:
    """Bytes a run would send when every client replies every round (no training needed).

    Args:
        layout: the global model's key -> (shape, dtype).
        method: full, usplit, udec or ulatdec.
        n_clients: clients per round (all take part).
        rounds: number of rounds; round 1's downlink is the whole model (initial broadcast).
        bits: quantisation of the uplink (None or 8).
        seed: the run's seed (USPLIT's assignments depend on it).
        full_rounds: FULL rounds before the method's own (UDEC / ULATDEC's ``--full-rounds``).
    Returns:
        {"up", "down", "total", "up_wire", "down_wire", "per_round": [{"round", "up", "down",
        "up_wire", "down_wire"}, ...]}; ``up``/``down``/``total`` are payload bytes.
    """
    m = P.get_method(method)
    keys = list(layout)
    per_round = []
    clients = list(range(n_clients))
    for r in range(1, rounds + 1):
        down = P.downlink_groups(m, r, full_rounds=full_rounds)
        down_lay = {k: layout[k] for k in P.keys_for(down, keys)}
        up = upw = 0
        for groups in P.assignments(m, clients, r, seed, full_rounds=full_rounds).values():
            lay = expected_layout(layout, P.keys_for(groups, keys), bits)
            up += payload_bytes(lay)
            upw += wire_bytes(lay)
        per_round.append(
            {
                "round": r,
                "up": up,
                "down": payload_bytes(down_lay) * n_clients,
                "up_wire": upw,
                "down_wire": wire_bytes(down_lay) * n_clients,
            }
        )
    up = sum(x["up"] for x in per_round)
    down = sum(x["down"] for x in per_round)
    return {
        "up": up,
        "down": down,
        "total": up + down,
        "up_wire": sum(x["up_wire"] for x in per_round),
        "down_wire": sum(x["down_wire"] for x in per_round),
        "per_round": per_round,
    }


def bytes_table(
    layout: Mapping[str, tuple[tuple[int, ...], np.dtype]],
    n_clients: int,
    rounds: int,
    *,
    bits: int | None = None,
    seed: int = 0,
    full_rounds: int = 0,
) -> dict[str, dict[str, object]]:
    """``predict_bytes`` for every method, with ``ratio_to_full`` (total / FULL's full-precision
    total); ``full_rounds`` applies to the personal methods (UDEC, ULATDEC) only."""
    full = predict_bytes(layout, "full", n_clients, rounds, bits=None, seed=seed)["total"]
    out = {}
    for name, m in P.METHODS.items():
        fr = full_rounds if m.personal else 0
        pb = predict_bytes(layout, name, n_clients, rounds, bits=bits, seed=seed, full_rounds=fr)
        out[name] = {
            "up": pb["up"],
            "down": pb["down"],
            "total": pb["total"],
            "ratio_to_full": pb["total"] / full if full else float("nan"),
            "up_wire": pb["up_wire"],
            "down_wire": pb["down_wire"],
        }
    return out
