"""Client-level DP (privacy.py): the accountant against a closed form and two other accountants,
clipping and noise against Flower's own DP functions, the refusals, and rounds through the real
ServerApp loop."""

import math

import numpy as np
import pytest
from scipy.stats import norm

from decentdiff.errors import ConfigError
from decentdiff.federated import privacy as D
from decentdiff.federated.settings import FedSettings

CASES = [(1, 0.5, 1e-5), (15, 1.0, 1e-5), (15, 3.0, 1e-6), (100, 5.0, 1e-5), (1000, 20.0, 1e-7)]


# ------------------------------------------------------------------------------ the accountant
@pytest.mark.parametrize(("rounds", "sigma", "delta"), CASES)
def test_the_reported_epsilon_meets_delta_exactly_by_the_analytic_gaussian(rounds, sigma, delta):
    """T Gaussian releases of multiplier σ are one of multiplier σ/√T (μ = √T/σ); at the ε the
    accountant reports, the analytic Gaussian's δ(ε) (Balle & Wang 2018), evaluated with
    scipy's normal CDF, equals the δ asked for, and any smaller ε exceeds it."""
    eps = D.epsilon(rounds, sigma, delta)
    mu = math.sqrt(rounds) / sigma

    def delta_of(e):
        return norm.cdf(-e / mu + mu / 2) - math.exp(e) * norm.cdf(-e / mu - mu / 2)

    assert delta_of(eps) == pytest.approx(delta, rel=1e-6)
    assert delta_of(eps * (1 - 1e-4)) > delta


@pytest.mark.parametrize(("rounds", "sigma", "delta"), CASES)
def test_the_accountant_agrees_with_google_dp_accounting(rounds, sigma, delta):
    """dp-accounting's PLD accountant (near-exact) gives the same ε; its RDP accountant gives
    the same RDP bound as ours, over the same orders and conversion."""
    dpa = pytest.importorskip("dp_accounting")
    from dp_accounting import pld, rdp

    p = pld.PLDAccountant()
    p.compose(dpa.GaussianDpEvent(sigma), rounds)
    assert D.epsilon(rounds, sigma, delta) == pytest.approx(p.get_epsilon(delta), rel=1e-6)
    r = rdp.RdpAccountant()
    r.compose(dpa.GaussianDpEvent(sigma), rounds)
    assert D.rdp_epsilon(rounds, sigma, delta)[0] == pytest.approx(r.get_epsilon(delta), rel=1e-9)
    assert D.epsilon(rounds, sigma, delta) <= D.rdp_epsilon(rounds, sigma, delta)[0]


def test_the_accountant_agrees_with_flowers_rdp_accountant():
    """Flower 1.41's own RdpAccountant (client-level, no amplification, add/remove one client)
    reports our RDP ε for the same rounds."""
    pytest.importorskip("dp_accounting")
    from flwr.supercore.privacy_accounting import (
        GaussianPrivacyEvent,
        NeighboringRelation,
        PrivacyConfig,
        SamplingMethod,
    )
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    cfg = PrivacyConfig(1e-5, 5, NeighboringRelation.ADD_OR_REMOVE_ONE,
                        SamplingMethod.NO_AMPLIFICATION)  # fmt: skip
    acc = RdpAccountant(cfg)
    acc.compose(GaussianPrivacyEvent(1.3, 5, 5), 15)
    assert D.rdp_epsilon(15, 1.3, 1e-5)[0] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)


def test_sigma_for_and_max_rounds_invert_the_accountant():
    for target in (1.0, 8.0):
        s = D.sigma_for(target, 15, 1e-5)
        assert D.epsilon(15, s, 1e-5) <= target < D.epsilon(15, s * 0.999, 1e-5)
    most = D.max_rounds(8.0, 1.0, 1e-5)
    assert D.epsilon(most, 1.0, 1e-5) <= 8.0 < D.epsilon(most + 1, 1.0, 1e-5)
    assert D.max_rounds(1.0, 0.5, 1e-5) == 0


# ------------------------------------------------------------------------------ the mechanism
def _arrays(rng, scale=1.0):
    return {"a": (scale * rng.normal(size=(3, 4))).astype(np.float32),
            "b": (scale * rng.normal(size=(5,))).astype(np.float32)}  # fmt: skip


def test_clipping_bounds_a_huge_update_and_matches_flowers_clip():
    """An update ×1000 leaves the clip with norm C exactly; the clipped values are Flower's
    compute_clip_model_update's."""
    from flwr.supercore.differential_privacy import compute_clip_model_update, get_norm

    rng = np.random.default_rng(0)
    g = _arrays(rng)
    local = {k: g[k] + 1000 * v for k, v in _arrays(rng).items()}
    sent, within = D.client_clip(local, g, list(g), 0.5)
    d = [sent[k].astype(np.float64) - g[k] for k in g]
    assert not within and get_norm(d) == pytest.approx(0.5, rel=1e-5)
    theirs = [local[k].astype(np.float64) for k in g]
    compute_clip_model_update(theirs, [g[k].astype(np.float64) for k in g], 0.5)
    for k, t in zip(g, theirs, strict=True):
        np.testing.assert_allclose(sent[k], t, rtol=1e-6, atol=1e-6)
    small = {k: g[k] + 1e-4 * v for k, v in _arrays(rng).items()}
    same, within = D.client_clip(small, g, list(g), 0.5)
    assert within and all(np.array_equal(same[k], small[k]) for k in g)


def test_one_client_moves_the_aggregate_by_at_most_c_over_n():
    """Without noise worth the name, the aggregate is the unweighted mean of the clipped updates
    per key over its assigned reporters; one client ×1000 shifts it by ≤ C/n."""
    rng = np.random.default_rng(1)
    g = {k: v.astype(np.float64) for k, v in _arrays(rng).items()}
    ups = [{k: g[k] + 0.01 * v for k, v in _arrays(rng).items()} for _ in range(4)]
    p = D.Privacy(sigma=1e-12, clip_norm=0.1, delta=1e-5, rng=np.random.default_rng(0))
    base, row = p.aggregate(g, ups, {"a": 4, "b": 4})
    bad = [*ups[:3], {k: g[k] + 1000 * (ups[3][k] - g[k]) for k in g}]
    moved, row2 = p.aggregate(g, bad, {"a": 4, "b": 4})
    shift = math.sqrt(sum(np.sum((moved[k] - base[k]) ** 2) for k in g))
    assert shift <= 2 * 0.1 / 4 + 1e-9  # the honest update (≤ C) replaced by one of norm C
    assert row["clipped"] == 0 and row2["clipped"] == 1
    want = {k: g[k] + sum(u[k] - g[k] for u in ups) / 4 for k in g}  # all within C
    for k in g:
        np.testing.assert_allclose(base[k], want[k], atol=1e-9)
    # USPLIT-like: "b" reported by only one of two assigned clients -> divided by 2 anyway.
    half, _ = p.aggregate(g, [ups[0], {"a": ups[1]["a"]}], {"a": 2, "b": 2})
    np.testing.assert_allclose(half["b"], g["b"] + (ups[0]["b"] - g["b"]) / 2, atol=1e-9)


def test_the_noise_std_is_sigma_c_over_n_as_flowers():
    """Zero updates from n = 4 clients: the aggregate is pure noise whose std is σC/n
    (Flower's compute_stdv), within 2% over 200,000 coordinates; its mean is 0."""
    from flwr.supercore.differential_privacy import compute_stdv

    g = {"w": np.zeros(200_000, dtype=np.float32)}
    p = D.Privacy(sigma=1.5, clip_norm=2.0, delta=1e-5, rng=np.random.default_rng(7))
    out, row = p.aggregate(g, [dict(g) for _ in range(4)], {"w": 4})
    want = compute_stdv(1.5, 2.0, 4)
    assert want == 0.75
    assert np.std(out["w"]) == pytest.approx(want, rel=0.02)
    assert abs(np.mean(out["w"])) < 5 * want / math.sqrt(200_000)
    assert row["releases"] == 1 and row["epsilon"] == D.epsilon(1, 1.5, 1e-5)


def test_adaptive_clipping_follows_andrew_et_al_and_pays_within_sigma():
    """The model's noise multiplier is Flower's compute_adaptive_noise_params'; C moves by
    exp(−η_C(b̃ − γ)) with b̃ the noisy fraction of unclipped updates: all clipped -> C grows."""
    from flwr.supercore.differential_privacy import compute_adaptive_noise_params

    sb, sm = compute_adaptive_noise_params(1.0, 40, None)
    assert D.count_std(40) == sb and D.model_noise_multiplier(1.0, True, sb) == pytest.approx(sm)
    rng = np.random.default_rng(2)
    g = {k: v.astype(np.float64) for k, v in _arrays(rng).items()}
    ups = [{k: g[k] + 10 * v for k, v in _arrays(rng).items()} for _ in range(4)]
    p = D.Privacy(sigma=1e-6, clip_norm=1.0, delta=1e-5, adaptive=True, sigma_b=1e-6,
                  rng=np.random.default_rng(0))  # fmt: skip
    _, row = p.aggregate(g, ups, {"a": 4, "b": 4})
    assert row["clipped"] == 4
    assert p.clip_norm == pytest.approx(math.exp(-D.CLIP_LR * (0 - D.TARGET_QUANTILE)))
    assert row["next_clip"] == p.clip_norm
    # Flower 1.41 counts clipped updates under the same sign: its C shrinks here instead.
    from types import SimpleNamespace

    from flwr.serverapp.strategy.dp_adaptive_clipping import DifferentialPrivacyAdaptiveBase

    theirs = SimpleNamespace(clipping_norm=1.0, clip_norm_lr=D.CLIP_LR,
                             target_clipped_quantile=D.TARGET_QUANTILE)  # fmt: skip
    DifferentialPrivacyAdaptiveBase._geometric_update(theirs, 4 / 4)  # all 4 clipped
    assert theirs.clipping_norm < 1.0 < p.clip_norm


# ------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"dp": "server", "dp_clip": 1.0, "noise_multiplier": 0.0},
         "--noise-multiplier must be > 0 with --dp (got 0)"),
        ({"dp": "server", "dp_clip": 1.0, "noise_multiplier": -1.0},
         "--noise-multiplier must be > 0 with --dp (got -1)"),
        ({"dp": "server", "noise_multiplier": 1.0}, "--dp needs --dp-clip C > 0"),
        ({"dp": "server", "dp_clip": 1.0, "noise_multiplier": 1.0, "aggregate": "median"},
         "--dp with --aggregate median"),
        ({"noise_multiplier": 1.0}, "--noise-multiplier without --dp: add --dp server"),
        ({"dp": "server", "dp_clip": 1.0, "noise_multiplier": 0.5, "target_epsilon": 1.0},
         "no round count meets it; use --noise-multiplier ≥"),
        ({"dp": "server", "dp_clip": 1.0, "noise_multiplier": 1.0, "target_epsilon": 8.0},
         "σ = 1 reaches it after 2 rounds, not 15; use --rounds 2"),
        ({"dp": "server", "dp_clip": 1.0, "target_epsilon": -3.0},
         "--target-epsilon must be a finite ε > 0"),
        ({"dp": "server", "dp_clip": 1.0, "noise_multiplier": 1.0, "dp_delta": 0.5},
         "--dp-delta must be in"),
        ({"dp": "server", "dp_clip": 1.0, "noise_multiplier": 1.0, "dp_adaptive": True},
         "--dp-adaptive: σ = 1 needs the clipped-count noise σ_b > σ/2"),
        ({"dp": "both"}, "unknown --dp 'both'"),
    ],
)  # fmt: skip
def test_bad_dp_options_are_refused_in_one_line(options, message):
    with pytest.raises(ConfigError) as e:
        FedSettings(**options).validate()
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_target_epsilon_picks_sigma_and_every_method_takes_dp():
    for method in ("full", "usplit", "udec", "ulatdec"):
        s = FedSettings(method=method, clients=6, dp="client", dp_clip=1.0, target_epsilon=8.0,
                        quantize=8, server_opt="fedadam").validate()  # fmt: skip
        assert s.noise_multiplier == D.sigma_for(8.0, 15, 1e-5)
        assert D.epsilon(15, s.noise_multiplier, 1e-5) <= 8.0


def test_adaptive_count_uses_centred_bits_over_the_runs_clients():
    """b̃ = (Σ(b − ½) + N(0, σ_b²))/m + ½ with m the run's clients: adding one client moves the
    released sum by exactly ½ (the sensitivity Andrew et al.'s σ_Δ assumes), and under USPLIT,
    where each group has m/2 reporters, half of the updates within C leave C where it is."""
    rng = np.random.default_rng(3)
    g = {k: v.astype(np.float64) for k, v in _arrays(rng).items()}
    small = [{k: g[k] + 1e-3 * v for k, v in _arrays(rng).items()} for _ in range(3)]
    big = [{k: g[k] + 10 * v for k, v in _arrays(rng).items()} for _ in range(3)]

    def released(updates, clients):
        p = D.Privacy(sigma=1e-6, clip_norm=1.0, delta=1e-5, adaptive=True, sigma_b=0.7,
                      rng=np.random.default_rng(5), clients=clients)  # fmt: skip
        p.aggregate(g, updates, {"a": len(updates), "b": len(updates)})
        frac = -math.log(p.clip_norm) / D.CLIP_LR + D.TARGET_QUANTILE  # invert C's update
        return (frac - 0.5) * clients  # the released noisy Σ(b − ½)

    base = released(small[:2] + big[:2], 6)
    assert released(small[:2] + big[:2] + small[2:], 6) - base == pytest.approx(0.5)
    assert released(small[:2] + big[:2] + big[2:], 6) - base == pytest.approx(-0.5)
    # USPLIT-like: 6 clients, each group reported by 3; 3 of 6 updates within C -> b̃ = ½
    p = D.Privacy(sigma=1e-10, clip_norm=1.0, delta=1e-5, adaptive=True, sigma_b=1e-9,
                  rng=np.random.default_rng(0), clients=6)  # fmt: skip
    p.aggregate(g, small + big, {"a": 3, "b": 3})
    assert p.clip_norm == pytest.approx(1.0)


def test_an_assigned_group_nobody_reported_still_gets_noise():
    rng = np.random.default_rng(4)
    g = {k: v.astype(np.float64) for k, v in _arrays(rng).items()}
    only_a = [{"a": g["a"] + 0.01}]
    p = D.Privacy(sigma=1.0, clip_norm=1.0, delta=1e-5, rng=np.random.default_rng(0), clients=2)
    out, _ = p.aggregate(g, only_a, {"a": 1, "b": 1})
    assert not np.array_equal(out["b"], g["b"])  # noise alone: "unchanged" would tell
    out, _ = p.aggregate(g, only_a, {"a": 1, "b": 0})
    assert np.array_equal(out["b"], g["b"])  # nobody assigned: nothing released
