"""Client-level differential privacy for federated rounds (``--dp``); pure NumPy, no Flower.

The mechanism is central DP with clipping (McMahan et al., arXiv 1710.06963; Flower's
``DifferentialPrivacy{Server,Client}Side{Fixed,Adaptive}Clipping``), done in decentdiff's own
aggregation step, because that step decodes quantised updates and combines each key over the
clients that reported it (USPLIT), which Flower's wrappers, clipping whole replies of one shape,
cannot do. Each round:

1. each client's update Δ_i = θ_i − θ_global, over all the floating-point keys it reports, is
   clipped to norm C: Δ_i · min(1, C/||Δ_i||) (``--dp server``: by the server after decoding;
   ``--dp client``: by the client before encoding, and again by the server, which enforces the
   bound after quantisation error);
2. per key, the clipped updates of the clients assigned to report it are summed, Gaussian noise
   N(0, (σ_Δ·C)²) is added to every coordinate of the sum, and the sum is divided by n_g, the
   number of clients assigned that key's group this round (fixed before any reply: Flower's
   ``num_sampled_clients``). Every client weighs alike (the average is not weighted by examples).

One client's clipped vector spans all the groups it reports and has norm ≤ C, so the sums over
every group together have L2 sensitivity C under add/remove-one-client adjacency: each round is
one Gaussian mechanism of noise multiplier σ (for every method; USPLIT's halves included), and
T rounds compose to a Gaussian mechanism of multiplier σ/√T, i.e. μ-GDP with μ = √T/σ (Dong,
Roth & Su, arXiv 1905.02383). :func:`epsilon` converts that exactly to (ε, δ) (the analytic
Gaussian mechanism, Balle & Wang, arXiv 1805.06530); :func:`rdp_epsilon` gives the looser RDP
bound (Mironov, arXiv 1702.07476, with the conversion of Canonne, Kamath & Steinke, arXiv
2004.00010) that Flower's ``RdpAccountant`` and Opacus report. No amplification by subsampling
is claimed: every client takes part in every round.

With ``--secagg`` (``--dp client``, fixed clipping only): the server never sees an update, so
it cannot clip; each client clips its own before SecAgg+ masks it, and the server gets only the
sum (:func:`.secagg.private_release`), to which :meth:`Privacy.release` adds the same noise and
the same division by n_g. SecAgg+'s stochastic rounding moves one client's contribution by up to
ρ more, so the sensitivity is C + ρ and each round is accounted at σ·C/(C + ρ)
(:func:`effective_sigma`; rounds of different ρ compose as μ² = Σ σ_t^−2).

Adaptive clipping (``--dp-adaptive``; Andrew et al., arXiv 1905.03871): C follows the target
quantile γ = 0.5 of the update norms, C ← C·exp(−η_C·(b̃ − γ)) with η_C = 0.2, where b̃ is the
noisy fraction of updates that were not clipped, computed from centred bits over the run's
number of clients m (public, fixed): b̃ = (Σ_i (1[||Δ_i|| ≤ C] − ½) + N(0, σ_b²))/m + ½, so that
adding or removing one client moves the released sum by at most ½ (Andrew et al.; TensorFlow
Privacy's quantile estimator does the same). Releasing b̃ costs privacy too; the model noise is raised to σ_Δ = (σ^−2 − (2σ_b)^−2)^−1/2 so that the two
releases together are again one Gaussian mechanism of multiplier σ (Andrew et al., Theorem 1;
Flower's ``compute_adaptive_noise_params``). σ_b defaults to n/20, as Flower's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError

DP_MODES = ("off", "server", "client")
#: Adaptive clipping's target quantile γ and clip learning rate η_C (Andrew et al.; Flower's).
TARGET_QUANTILE = 0.5
CLIP_LR = 0.2
#: The default δ: well below 1/clients for any federation (a client's data may leak with
#: probability δ, so δ must be far below one over the number of users).
DEFAULT_DELTA = 1e-5
#: RDP orders: dp-accounting's default grid (1.1 … 11, 12 … 63, 128, 256, 512).
RDP_ORDERS = tuple([1 + x / 10.0 for x in range(1, 101)] + list(range(12, 64)) + [128, 256, 512])


# ------------------------------------------------------------------------------ accountant
def _phi(x: float) -> float:
    """The standard normal CDF."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def gdp_mu(rounds: int, sigma: float) -> float:
    """μ of the T-fold Gaussian mechanism of noise multiplier σ: √T/σ (0 rounds: 0)."""
    return math.sqrt(rounds) / sigma if rounds > 0 else 0.0


def delta_of(eps: float, mu: float) -> float:
    """δ(ε) of μ-GDP: Φ(−ε/μ + μ/2) − e^ε·Φ(−ε/μ − μ/2) (Balle & Wang 2018, Theorem 8)."""
    if mu <= 0:
        return 0.0
    tail = _phi(-eps / mu - mu / 2)
    # e^ε·Φ(…) ≤ Φ(−ε/μ + μ/2) ≤ 1 in exact arithmetic: in logs, so a large ε cannot overflow
    second = math.exp(min(0.0, eps + math.log(tail))) if tail > 0 else 0.0
    return max(0.0, _phi(-eps / mu + mu / 2) - second)


def epsilon(rounds: int, sigma: float, delta: float) -> float:
    """The exact ε at ``delta`` after ``rounds`` Gaussian releases of multiplier ``sigma``.

    The least ε with δ(ε) ≤ ``delta`` (δ(ε) decreases in ε), by bisection to 1e-12 relative;
    0 for no rounds, ∞ for σ = 0.
    """
    if rounds <= 0:
        return 0.0
    if sigma <= 0:
        return math.inf
    mu = gdp_mu(rounds, sigma)
    if delta_of(0.0, mu) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while delta_of(hi, mu) > delta:
        lo, hi = hi, 2 * hi
        if hi > 1e6:
            return math.inf
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if delta_of(mid, mu) > delta:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return hi


def rdp_epsilon(
    rounds: int, sigma: float, delta: float, orders: Sequence[float] = RDP_ORDERS
) -> tuple[float, float]:
    """(ε, the best order α) from Rényi DP: T·α/(2σ²) at each order, converted by
    ε = rdp + log((α − 1)/α) − (log δ + log α)/(α − 1) (Canonne, Kamath & Steinke 2020, as
    dp-accounting's ``RdpAccountant``); an upper bound on :func:`epsilon`."""
    if rounds <= 0:
        return 0.0, float(orders[0])
    best = (math.inf, float(orders[0]))
    for a in orders:
        rdp = rounds * a / (2 * sigma**2)
        eps = rdp + math.log1p(-1 / a) - (math.log(delta) + math.log(a)) / (a - 1)
        best = min(best, (max(0.0, eps), float(a)))
    return best


def sigma_for(target_eps: float, rounds: int, delta: float) -> float:
    """The least noise multiplier σ whose ``rounds`` releases stay within (target_eps, delta)."""
    lo, hi = 1e-3, 1.0
    while epsilon(rounds, hi, delta) > target_eps:
        lo, hi = hi, 2 * hi
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if epsilon(rounds, mid, delta) > target_eps:
            lo = mid
        else:
            hi = mid
    return hi


def max_rounds(target_eps: float, sigma: float, delta: float, limit: int = 10**6) -> int:
    """The most rounds at multiplier σ whose ε at δ stays ≤ target_eps (0: not even one)."""
    if epsilon(1, sigma, delta) > target_eps:
        return 0
    lo, hi = 1, 2
    while hi < limit and epsilon(hi, sigma, delta) <= target_eps:
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if epsilon(mid, sigma, delta) <= target_eps:
            lo = mid
        else:
            hi = mid
    return lo


# ------------------------------------------------------------------------------ the mechanism
def count_std(n: int, given: float = 0.0) -> float:
    """σ_b, the noise on adaptive clipping's count: ``given``, or n/20 (Flower's default)."""
    return given if given > 0 else n / 20.0


def model_noise_multiplier(sigma: float, adaptive: bool, sigma_b: float) -> float:
    """σ_Δ: σ itself, or with adaptive clipping (σ^−2 − (2σ_b)^−2)^−1/2 (needs σ < 2σ_b)."""
    if not adaptive:
        return sigma
    if sigma >= 2 * sigma_b:
        raise ValueError(f"σ = {sigma} needs σ < 2σ_b = {2 * sigma_b}")
    return (sigma**-2 - (2 * sigma_b) ** -2) ** -0.5


def clip(delta: Mapping[str, np.ndarray], c: float) -> tuple[dict[str, np.ndarray], float]:
    """(Δ · min(1, c/||Δ||) in float64, ||Δ||): the norm over all of Δ's arrays (FlatClip)."""
    norm = math.sqrt(
        math.fsum(float(np.sum(np.square(v, dtype=np.float64))) for v in delta.values())
    )
    scale = min(1.0, c / norm) if norm > 0 else 1.0
    return {k: np.asarray(v, dtype=np.float64) * scale for k, v in delta.items()}, norm


def _floating(arrays: Mapping[str, np.ndarray]) -> list[str]:
    return [k for k, v in arrays.items() if np.issubdtype(np.asarray(v).dtype, np.floating)]


def client_clip(
    local: Mapping[str, np.ndarray],
    received: Mapping[str, np.ndarray],
    keys: Sequence[str],
    c: float,
) -> tuple[dict[str, np.ndarray], bool]:
    """``--dp client``: the values a client reports for ``keys``, its update clipped to norm c,
    and whether the update was within c (adaptive clipping's bit)."""
    fk = [k for k in keys if k in _floating(local)]
    d, norm = clip(
        {k: np.asarray(local[k], np.float64) - np.asarray(received[k], np.float64) for k in fk}, c
    )
    out = dict(local)
    for k in fk:
        out[k] = (np.asarray(received[k], np.float64) + d[k]).astype(np.asarray(local[k]).dtype)
    return out, norm <= c


@dataclass
class Privacy:
    """A run's DP state on the server: the mechanism's parameters and what it has released.

    Attributes:
        sigma: the noise multiplier σ the guarantee is stated for.
        clip_norm: C for the next round (adaptive: updated every round).
        delta: the δ that ε is reported at.
        adaptive: adaptive clipping on.
        sigma_b: the count's noise (adaptive; 0 otherwise).
        releases: rounds released so far (the run's completed DP rounds).
        mode: server or client (where the clip first happens).
    """

    sigma: float
    clip_norm: float
    delta: float
    adaptive: bool = False
    sigma_b: float = 0.0
    releases: int = 0
    mode: str = "server"
    rng: np.random.Generator | None = None
    clients: int = 0  # m, the run's clients: the adaptive count's public denominator
    precision: float = 0.0  # Σ σ_t^−2 over the rounds released by :meth:`release` (else 0)

    @property
    def sigma_model(self) -> float:
        return model_noise_multiplier(self.sigma, self.adaptive, self.sigma_b)

    def aggregate(
        self,
        global_: Mapping[str, np.ndarray],
        updates: Sequence[Mapping[str, np.ndarray]],
        assigned: Mapping[str, int],
        unclipped_bits: Sequence[bool | None] | None = None,
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """One DP round: clip, sum per key, noise, divide by the assigned reporters.

        Args:
            global_: the current global arrays.
            updates: each valid client's full values for the keys it reported.
            assigned: key -> the number of clients assigned to report it this round (n_g).
            unclipped_bits: ``--dp client``: each client's own report of whether its update was
                within C (adaptive clipping; None: the server's view is used).
        Returns:
            (new global arrays: keys no valid update reported keep their arrays bitwise, and so do
            non-floating keys; the round's row for rounds.jsonl).
        """
        rng = self.rng if self.rng is not None else np.random.default_rng()
        c = self.clip_norm
        sums: dict[str, np.ndarray] = {}
        within = []
        norms = []
        for i, u in enumerate(updates):
            fk = [k for k in _floating(u) if k in global_]
            d, norm = clip(
                {k: np.asarray(u[k], np.float64) - np.asarray(global_[k], np.float64) for k in fk},
                c,
            )
            bit = norm <= c
            if unclipped_bits is not None and unclipped_bits[i] is not None:
                bit = bool(unclipped_bits[i])
            within.append(bit)
            norms.append(norm)
            for k, v in d.items():
                sums[k] = sums[k] + v if k in sums else v
        out = _noisy_mean(global_, sums, assigned, self.sigma_model * c, rng)
        row: dict[str, Any] = {
            "mode": self.mode,
            "clip": c,
            "sigma": self.sigma,
            "sigma_model": self.sigma_model,
            "clipped": sum(1 for b in within if not b),
            "norms": [round(x, 6) for x in norms],
        }
        if self.adaptive and updates:
            m = self.clients or len(updates)
            centred = sum(within) - len(within) / 2  # sensitivity ½ per client
            frac = (centred + rng.normal(0.0, self.sigma_b)) / m + 0.5
            self.clip_norm = c * math.exp(-CLIP_LR * (frac - TARGET_QUANTILE))
            row["next_clip"] = self.clip_norm
        self.releases += 1
        row.update(self.spent())
        return out, row

    def release(
        self,
        global_: Mapping[str, np.ndarray],
        sums: Mapping[str, np.ndarray],
        assigned: Mapping[str, int],
        rounding: float,
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """One DP round from a sum the server did not form itself (``--secagg --dp client``):
        ``sums`` is, per floating key, Σ_i of the clients' own clipped updates, each moved by at
        most ``rounding`` in L2 norm (SecAgg+'s rounding: :func:`.secagg.rounding_bound`).

        The noise is :meth:`aggregate`'s, N(0, (σ·C)²) per coordinate, the division by n_g too;
        but one client now moves the sum by up to C + rounding, so the round is accounted as a
        Gaussian mechanism of multiplier :func:`effective_sigma` (rounds.jsonl's
        ``sigma_effective``; ε and ε_RDP use it). Fixed clipping only (no clip bits to count).
        """
        if self.adaptive:
            raise ValueError("adaptive clipping needs each client's clip bit")
        rng = self.rng if self.rng is not None else np.random.default_rng()
        c = self.clip_norm
        out = _noisy_mean(global_, sums, assigned, self.sigma_model * c, rng)
        eff = effective_sigma(self.sigma, c, rounding)
        self.releases += 1
        self.precision += eff**-2
        row: dict[str, Any] = {
            "mode": self.mode,
            "clip": c,
            "sigma": self.sigma,
            "sigma_model": self.sigma_model,
            "rounding": rounding,
            "sensitivity": c + rounding,
            "sigma_effective": eff,
        }
        row.update(self.spent())
        return out, row

    def spent(self) -> dict[str, Any]:
        """The guarantee so far: {"releases", "epsilon", "delta", "epsilon_rdp"}, plus
        "sigma_accounted" when the rounds had their own effective multipliers (:meth:`release`):
        T Gaussian releases of multipliers σ_t compose to μ-GDP with μ² = Σ σ_t^−2, i.e. T
        releases of σ̄ = (T / Σ σ_t^−2)^½ (for ε and for the RDP bound alike)."""
        sigma = self.sigma
        if self.precision > 0:
            sigma = math.sqrt(self.releases / self.precision)
        out = {
            "releases": self.releases,
            "epsilon": epsilon(self.releases, sigma, self.delta),
            "delta": self.delta,
            "epsilon_rdp": rdp_epsilon(self.releases, sigma, self.delta)[0],
        }
        if self.precision > 0:
            out["sigma_accounted"] = sigma
        return out

    def resume(self, rows: Sequence[Mapping[str, Any]]) -> Privacy:
        """Continue from a run's rounds.jsonl rows: the releases so far and the next C."""
        done = [r["dp"] for r in rows if r.get("complete") and "dp" in r]
        self.releases = len(done)
        self.precision = sum(
            float(r["sigma_effective"]) ** -2 for r in done if "sigma_effective" in r
        )
        if done and self.adaptive and "next_clip" in done[-1]:
            self.clip_norm = float(done[-1]["next_clip"])
        return self


def _noisy_mean(
    global_: Mapping[str, np.ndarray],
    sums: Mapping[str, np.ndarray],
    assigned: Mapping[str, int],
    std: float,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Per assigned floating key: global + (sum + N(0, std²)) / n_g; every other key as is."""
    out = dict(global_)
    for k, n in assigned.items():
        ref = np.asarray(global_[k])
        if n <= 0 or not np.issubdtype(ref.dtype, np.floating):
            continue  # nobody assigned (or an integer buffer): nothing released, kept as is
        # assigned but nobody's update arrived: noise alone, so that "unchanged" cannot tell
        # whether a client contributed
        total = sums.get(k, np.zeros(ref.shape, np.float64))
        noisy = total + rng.normal(0.0, std, size=ref.shape) if std > 0 else total
        out[k] = (ref.astype(np.float64) + noisy / n).astype(ref.dtype)
    return out


def effective_sigma(sigma: float, c: float, rounding: float) -> float:
    """The multiplier a round is accounted at when noise σ·C meets sensitivity C + rounding:
    σ·C / (C + rounding) (σ itself when nothing rounds)."""
    return sigma * c / (c + rounding)


def from_settings(settings: Any) -> Privacy | None:
    """The run's :class:`Privacy` (None when ``settings.dp`` is off); validated settings."""
    if settings.dp == "off":
        return None
    n = settings.clients
    return Privacy(
        sigma=settings.noise_multiplier,
        clip_norm=settings.dp_clip,
        delta=settings.dp_delta,
        adaptive=settings.dp_adaptive,
        sigma_b=count_std(n, settings.dp_count_std) if settings.dp_adaptive else 0.0,
        mode=settings.dp,
        clients=n,
    )


# ------------------------------------------------------------------------------ validation
def validate(s: Any) -> None:
    """Check (and resolve: σ from ``target_epsilon``) a FedSettings' DP fields; ConfigError in
    one line naming the problem and the fix, before any round."""
    s.dp = str(s.dp).strip().lower() or "off"
    if s.dp not in DP_MODES:
        raise ConfigError(f"unknown --dp {s.dp!r}; choose one of: {', '.join(DP_MODES)}")
    if s.dp == "off":
        given = [
            name
            for name, on in (
                ("--dp-clip", s.dp_clip != 0),
                ("--noise-multiplier", s.noise_multiplier != 0),
                ("--dp-adaptive", s.dp_adaptive),
                ("--dp-delta", s.dp_delta != DEFAULT_DELTA),
                ("--target-epsilon", s.target_epsilon != 0),
                ("--dp-count-std", s.dp_count_std != 0),
            )
            if on
        ]
        if given:
            raise ConfigError(
                f"{', '.join(given)} without --dp: add --dp server (or client), or drop them"
            )
        return
    if s.aggregate != "fedavg":
        raise ConfigError(
            f"--dp with --aggregate {s.aggregate}: DP calibrates its noise to an average of "
            "clipped updates, and a robust rule's output moves differently with one client "
            "(clipping already bounds what one client can do); drop --aggregate or --dp"
        )
    if not (math.isfinite(s.dp_clip) and s.dp_clip > 0):
        raise ConfigError(
            f"--dp needs --dp-clip C > 0, the norm each client's update is clipped to (got "
            f"{s.dp_clip:g}); pick C near the median update norm (rounds.jsonl's dp.norms), or "
            "start there and add --dp-adaptive"
        )
    if not (0 < s.dp_delta < 1 / s.clients):
        raise ConfigError(
            f"--dp-delta must be in (0, 1/clients = {1 / s.clients:.3g}) (got {s.dp_delta:g}): "
            "δ is the chance one client's data leaks; use 1e-5 or less"
        )
    t = s.target_epsilon
    if t != 0 and not (math.isfinite(t) and t > 0):
        raise ConfigError(f"--target-epsilon must be a finite ε > 0 (got {t:g}); e.g. 8 or 1")
    sigma = s.noise_multiplier
    if sigma < 0 or (sigma == 0 and t == 0) or not math.isfinite(sigma):
        raise ConfigError(
            f"--noise-multiplier must be > 0 with --dp (got {sigma:g}): σ = 1 gives ε = "
            f"{epsilon(s.rounds, 1.0, s.dp_delta):.3g} at δ = {s.dp_delta:g} over "
            f"{s.rounds} rounds; or give --target-epsilon E to pick σ"
        )
    if t > 0 and sigma > 0:
        most = max_rounds(t, sigma, s.dp_delta)
        if most == 0:
            raise ConfigError(
                f"--target-epsilon {t:g}: σ = {sigma:g} spends ε = "
                f"{epsilon(1, sigma, s.dp_delta):.3g} at δ = {s.dp_delta:g} in one round, so "
                f"no round count meets it; use --noise-multiplier ≥ "
                f"{sigma_for(t, s.rounds, s.dp_delta):.3g} for {s.rounds} rounds, or drop it to "
                "let --target-epsilon pick σ"
            )
        if most < s.rounds:
            raise ConfigError(
                f"--target-epsilon {t:g}: σ = {sigma:g} reaches it after {most} rounds, not "
                f"{s.rounds}; use --rounds {most}, or --noise-multiplier ≥ "
                f"{sigma_for(t, s.rounds, s.dp_delta):.3g}, or drop --noise-multiplier"
            )
    elif t > 0:
        s.noise_multiplier = sigma_for(t, s.rounds, s.dp_delta)
    if s.dp_count_std < 0 or not math.isfinite(s.dp_count_std):
        raise ConfigError(f"--dp-count-std must be ≥ 0 (0 = clients/20), got {s.dp_count_std:g}")
    if s.dp_adaptive:
        sb = count_std(s.clients, s.dp_count_std)
        if s.noise_multiplier >= 2 * sb:
            raise ConfigError(
                f"--dp-adaptive: σ = {s.noise_multiplier:.3g} needs the clipped-count noise σ_b "
                f"> σ/2 = {s.noise_multiplier / 2:.3g} (σ_b = {sb:.3g}"
                f"{' = clients/20' if s.dp_count_std == 0 else ''}); give --dp-count-std "
                f"{s.noise_multiplier:.3g} or more, or fixed clipping"
            )


# ------------------------------------------------------------------------------ reporting
def final(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The guarantee at the end of a run's rounds.jsonl rows (None: no DP round):
    {"epsilon", "delta", "releases", "epsilon_rdp", "sigma", "mode"}."""
    done = [r["dp"] for r in rows if r.get("complete") and "dp" in r]
    if not done:
        return None
    last = done[-1]
    keys = ("epsilon", "delta", "releases", "epsilon_rdp", "sigma", "mode")
    out = {k: last.get(k) for k in keys}
    if "sigma_accounted" in last:  # --secagg: ε is at the multiplier the rounding leaves
        out["sigma_accounted"] = last["sigma_accounted"]
    return out


def summary_line(rows: Sequence[Mapping[str, Any]]) -> str:
    """One line: the (ε, δ) a run's rounds spent, as ``fed run`` and ``fed eval`` print it."""
    f = final(rows)
    if f is None:
        return "differential privacy: no round released yet"
    acc = f.get("sigma_accounted")
    sigma = f"σ = {f['sigma']:.4g}" + (
        f", accounted at {acc:.4g} for SecAgg+'s rounding" if acc is not None else ""
    )
    return (
        f"differential privacy ({f['mode']}-side clipping, {sigma}): "
        f"(ε = {f['epsilon']:.3g}, δ = {f['delta']:g}) after {f['releases']} rounds, "
        "client-level, exact Gaussian accountant "
        f"(RDP: ε = {f['epsilon_rdp']:.3g})"
    )
