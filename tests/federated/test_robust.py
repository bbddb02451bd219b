"""Robust aggregation (``--aggregate``): each rule against an independent oracle, an attacker
against FedAvg and the rules, the tolerance refused before any round, and the strategy wiring.

The oracles are plain Python per coordinate (``statistics.median``, sorted lists, ``math.fsum``)
and Krum's score by brute force over every pair; Flower's own ``flwr.server.strategy.aggregate``
functions are a second implementation where their conventions match.
"""

import math
import statistics

import numpy as np
import pytest

from decentdiff.errors import ConfigError
from decentdiff.federated import aggregate as A
from decentdiff.federated import robust as R
from decentdiff.federated.settings import FedSettings


# ------------------------------------------------------------------------------ oracles
def _median_oracle(x):
    return np.array([statistics.median(list(col)) for col in x.T])


def _trimmed_oracle(x, beta):
    n = len(x)
    k = math.floor(beta * n)
    return np.array([math.fsum(sorted(col)[k : n - k]) / (n - 2 * k) for col in x.T])


def _krum_scores_oracle(x, f):
    n = len(x)
    scores = []
    for i in range(n):
        d = sorted(
            math.fsum((a - b) ** 2 for a, b in zip(x[i], x[j], strict=True))
            for j in range(n)
            if j != i
        )
        scores.append(math.fsum(d[: max(1, n - f - 2)]))
    return scores


def _multikrum_oracle(x, f, m):
    scores = _krum_scores_oracle(x, f)
    best = sorted(range(len(x)), key=lambda i: (scores[i], i))[:m]
    return np.array([math.fsum(col) / m for col in x[best].T]), best


def _bulyan_oracle(x, f):
    n = len(x)
    theta, beta = n - 2 * f, n - 4 * f
    left, picked = list(range(n)), []
    for _ in range(theta):
        scores = _krum_scores_oracle(x[left], f)
        best = left[min(range(len(left)), key=lambda i: (scores[i], i))]
        picked.append(best)
        left.remove(best)
    out = []
    for col in x[picked].T:
        med = statistics.median(list(col))
        near = sorted(col, key=lambda v: abs(v - med))[:beta]
        out.append(math.fsum(near) / beta)
    return np.array(out), picked


def _cloud(n, d=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) + rng.normal(size=d)


@pytest.mark.parametrize("n", [3, 4, 5, 8])
def test_median_and_trimmed_mean_match_per_coordinate_oracles(n):
    x = _cloud(n, seed=n)
    np.testing.assert_allclose(R.coordinate_median(x), _median_oracle(x), rtol=0, atol=1e-12)
    for beta in (0.2, 0.25, 0.4):
        if math.floor(beta * n) >= 1:
            got = R.trimmed_mean(x, beta)
            np.testing.assert_allclose(got, _trimmed_oracle(x, beta), rtol=0, atol=1e-12)


@pytest.mark.parametrize(("n", "f"), [(5, 1), (7, 2), (9, 3), (6, 1)])
def test_krum_scores_and_selection_match_a_brute_force_oracle(n, f):
    x = _cloud(n, seed=10 * n + f)
    np.testing.assert_allclose(R.krum_scores(x, f), _krum_scores_oracle(x, f), rtol=1e-12)
    for m in range(1, n - f + 1):
        got, sel = R.multikrum(x, f, m)
        want, best = _multikrum_oracle(x, f, m)
        assert sel == best
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("n", "f"), [(7, 1), (8, 1), (11, 2)])
def test_bulyan_matches_the_papers_procedure_written_out(n, f):
    x = _cloud(n, seed=n + f)
    got, picked = R.bulyan(x, f)
    want, order = _bulyan_oracle(x, f)
    assert picked == order
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_the_rules_agree_with_flowers_own_implementations():
    """Flower's aggregate functions as a second implementation (equal weights: its MultiKrum
    averages by examples; a vector split in two arrays, as a group's tensors are)."""
    agg = pytest.importorskip("flwr.server.strategy.aggregate")
    x = _cloud(7, d=30, seed=3)
    res = [([row[:12].copy(), row[12:].copy()], 1) for row in x]

    def flat(arrays):
        return np.concatenate([a.ravel() for a in arrays])

    np.testing.assert_allclose(R.coordinate_median(x), flat(agg.aggregate_median(res)))
    np.testing.assert_allclose(R.trimmed_mean(x, 0.3), flat(agg.aggregate_trimmed_avg(res, 0.3)))
    np.testing.assert_allclose(R.multikrum(x, 2, 1)[0], flat(agg.aggregate_krum(res, 2, 0)))
    np.testing.assert_allclose(R.multikrum(x, 2, 3)[0], flat(agg.aggregate_krum(res, 2, 3)))
    want = agg.aggregate_bulyan(list(res), 1, agg.aggregate_krum, to_keep=0)
    np.testing.assert_allclose(R.bulyan(x, 1)[0], flat(want))


# ------------------------------------------------------------------------------ an attacker
KEYS = {"down.0.weight": (4, 3), "mid.0.bias": (6,), "up.0.weight": (5, 2), "out.bias": (3,)}
GROUPS = {"encoder": ["down.0.weight"], "bottleneck": ["mid.0.bias"],
          "decoder": ["up.0.weight", "out.bias"]}  # fmt: skip


def _honest(n, seed=0, spread=0.1):
    """A global model and n honest clients' values: a shared step plus a little client noise."""
    rng = np.random.default_rng(seed)
    g = {k: rng.normal(size=s).astype(np.float32) for k, s in KEYS.items()}
    step = {k: rng.normal(size=s) for k, s in KEYS.items()}

    def client():
        return {
            k: (g[k] + step[k] + spread * rng.normal(size=s)).astype(np.float32)
            for k, s in KEYS.items()
        }

    clients = [client() for _ in range(n)]
    return g, clients


def _flat_delta(arrays, g):
    return np.concatenate([(arrays[k].astype(np.float64) - g[k]).ravel() for k in KEYS])


ATTACKS = ["scale:100@0", "signflip:4@0", "noise:3@0"]
RULES = ["median", "trimmed-mean:0.2", "krum:1", "multikrum:1,3", "bulyan:1"]


@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("rule", RULES)
def test_one_attacker_moves_fedavg_far_and_a_robust_rule_little(rule, attack):
    """n − 1 honest clients and one that sends a corrupted update. The robust rule's aggregate is
    its oracle's on the same updates (per group) and stays inside the honest updates' spread
    around their mean; FedAvg's lands outside it."""
    r = R.parse_rule(rule)
    n = 7 if r.kind == "bulyan" else 5
    g, honest = _honest(n - 1, seed=n)
    atk = R.parse_attack(attack)
    rng = np.random.default_rng(1)
    bad = atk.corrupt(honest[0], g, list(KEYS), rng)
    sent = [bad, *honest]
    updates = [A.Update(c, 10.0, u) for c, u in enumerate(sent)]
    honest_mean = np.mean([_flat_delta(h, g) for h in honest], axis=0)
    radius = max(np.linalg.norm(_flat_delta(h, g) - honest_mean) for h in honest)

    fedavg, info = R.aggregate_updates(R.parse_rule("fedavg"), g, updates)
    assert info == {}
    robust, info = R.aggregate_updates(r, g, updates)
    assert set(info) == set(GROUPS) and all(v["applied"] and v["n"] == n for v in info.values())
    far = np.linalg.norm(_flat_delta(fedavg, g) - honest_mean)
    near = np.linalg.norm(_flat_delta(robust, g) - honest_mean)
    assert near < radius < far, (near, radius, far)
    # The aggregate is the rule's oracle per group, on the updates in the canonical order.
    ordered = A.canonical_order(updates)
    for group, keys in GROUPS.items():
        x = np.stack([np.concatenate([(u.arrays[k].astype(np.float64) - g[k]).ravel()
                                      for k in keys]) for u in ordered])  # fmt: skip
        if r.kind == "median":
            want = _median_oracle(x)
        elif r.kind == "trimmed-mean":
            want = _trimmed_oracle(x, r.beta)
        elif r.kind in ("krum", "multikrum"):
            want, best = _multikrum_oracle(x, r.f, r.m)
            assert info[group]["picked"] == [ordered[i].client for i in best]
            assert 0 not in info[group]["picked"]  # the attacker (client 0) is never picked
        else:
            want, picked = _bulyan_oracle(x, r.f)
            assert info[group]["picked"] == [ordered[i].client for i in picked]
        got = np.concatenate([(robust[k].astype(np.float64) - g[k]).ravel() for k in keys])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)  # float32 storage
    assert all(robust[k].dtype == g[k].dtype and robust[k].shape == g[k].shape for k in KEYS)


def test_the_attacks_send_what_they_say_and_only_the_named_clients_attack():
    g, (local,) = _honest(1)
    rng = np.random.default_rng(0)
    keys = ["mid.0.bias", "out.bias"]
    delta = {k: local[k].astype(np.float64) - g[k] for k in keys}
    for spec, want in [("scale:100@2", 100), ("signflip@2", -1), ("signflip:3@2", -3)]:
        out = R.parse_attack(spec).corrupt(local, g, keys, rng)
        assert set(out) == set(keys)
        for k in keys:
            np.testing.assert_allclose(out[k] - g[k], want * delta[k], rtol=1e-5, atol=1e-5)
    noise = R.parse_attack("noise:2@0").corrupt(local, g, ["down.0.weight"], rng)
    d = noise["down.0.weight"].astype(np.float64) - g["down.0.weight"]
    assert not np.allclose(d, local["down.0.weight"] - g["down.0.weight"])
    assert 1.0 < d.std() < 3.0  # σ = 2 on 12 draws
    a = R.parse_attack(" Scale:100@3,1 ")
    assert str(a) == "scale:100@1,3" and a.clients == {1, 3}
    assert R.parse_attack("") is None


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("krum", "krum takes 1 parameter"),
        ("krum:0", "F and M must be ≥ 1"),
        ("trimmed-mean:0.5", r"B must be in \(0, 0.5\)"),
        ("multikrum:1", "multikrum takes 2 parameter"),
        ("mean", "unknown rule 'mean'"),
    ],
)
def test_a_bad_rule_spec_fails_in_one_line_listing_the_valid_forms(spec, match):
    with pytest.raises(ConfigError, match=match) as e:
        R.parse_rule(spec)
    assert "valid forms: fedavg, median" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("spec", ["scale@1", "scale:100", "noise:-1@0", "drop:1@0", "scale:2@x"])
def test_a_bad_attack_spec_fails_in_one_line(spec):
    with pytest.raises(ConfigError, match="invalid --attack") as e:
        R.parse_attack(spec)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------ tolerance
def test_each_rules_tolerance_is_its_papers_condition():
    for n in range(1, 20):
        for f in range(1, 5):
            assert R.Rule("krum", f=f).tolerates(n) == (n > 2 * f + 2)
            assert R.Rule("bulyan", f=f).tolerates(n) == (n >= 4 * f + 3)
            for m in range(1, 6):
                ok = n > 2 * f + 2 and m <= n - f
                assert R.Rule("multikrum", f=f, m=m).tolerates(n) == ok
        for beta in (0.1, 0.2, 0.25, 0.49):
            k = math.floor(beta * n)
            assert R.Rule("trimmed-mean", beta=beta).tolerates(n) == (1 <= k and 2 * k < n)
        assert R.Rule("median").tolerates(n) == (n >= 3)
    for spec in ("median", "trimmed-mean:0.1", "krum:2", "multikrum:1,4", "bulyan:2"):
        r = R.parse_rule(spec)
        assert r.tolerates(r.min_n()) and not r.tolerates(r.min_n() - 1), spec


@pytest.mark.parametrize(
    ("method", "clients", "rule", "words"),
    [
        ("full", 5, "krum:2", ["krum:2", "n > 2F + 2 = 6", "n = 5", "at least 7 clients", "F < 2"]),
        ("udec", 5, "bulyan:1", ["bulyan:1", "n ≥ 4F + 3 = 7", "n = 5", "at least 7"]),
        ("full", 5, "trimmed-mean:0.1", ["trimmed-mean:0.1", "n = 5", "B ≥ 1/n = 0.2"]),
        ("usplit", 5, "median", ["median", "usplit", "2 at a time", "n = 2", "at least 6 "]),
        ("full", 5, "multikrum:1,5", ["multikrum:1,5", "M = 5 ≤ n − F", "n = 5"]),
    ],
)
def test_more_attackers_than_a_rule_tolerates_is_refused_in_one_line(method, clients, rule, words):
    with pytest.raises(ConfigError) as e:
        FedSettings(method=method, clients=clients, aggregate=rule).validate()
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_tolerated_rules_validate_to_their_canonical_spec():
    assert FedSettings(clients=5, aggregate=" KRUM:1 ").validate().aggregate == "krum:1"
    assert FedSettings(clients=7, method="ulatdec", aggregate="bulyan:1").validate().aggregate
    assert FedSettings(clients=6, method="usplit", aggregate="median").validate()
    s = FedSettings(clients=5, aggregate="trimmed-mean:0.20", attack="signflip@4").validate()
    assert (s.aggregate, s.attack) == ("trimmed-mean:0.2", "signflip:1@4")
    assert FedSettings.from_json(s.to_json()).aggregate == "trimmed-mean:0.2"
    with pytest.raises(ConfigError, match=r"names client 5, but the clients are 0\.\.4"):
        FedSettings(clients=5, attack="scale:10@5").validate()


def test_a_group_with_fewer_updates_than_the_rule_tolerates_keeps_its_value():
    """A round where clients dropped out: the rule is not applied to a group it cannot combine;
    the group stays bitwise as it was and the report says so."""
    g, honest = _honest(4)
    updates = [A.Update(c, 1.0, u) for c, u in enumerate(honest)]
    new, info = R.aggregate_updates(R.parse_rule("krum:1"), g, updates)  # 4 < 2F + 3
    assert all(not v["applied"] and v["n"] == 4 for v in info.values())
    assert all(new[k].tobytes() == g[k].tobytes() for k in KEYS)


def test_a_run_resumes_only_with_its_rule_and_an_older_fed_json_is_fedavg():
    import json
    from dataclasses import asdict, replace

    from decentdiff.federated.store import check_resumable

    s = FedSettings(clients=5, aggregate="median").validate()
    check_resumable(s, replace(s))  # the same rule: fine
    with pytest.raises(ConfigError, match="differs in aggregate"):
        check_resumable(s, replace(s, aggregate="krum:1"))
    with pytest.raises(ConfigError, match="differs in attack"):
        check_resumable(s, replace(s, attack="scale:100@1"))
    old = {k: v for k, v in asdict(FedSettings()).items() if k not in ("aggregate", "attack")}
    back = FedSettings.from_json(json.dumps(old))
    assert (back.aggregate, back.attack) == ("fedavg", "")
