"""Pure federated arithmetic against independent NumPy / torch oracles."""

import math
from collections import Counter

import numpy as np
import pytest
import torch

from decentdiff.federated import aggregate as A
from decentdiff.federated import parts as P
from decentdiff.models.registry import build_network, network_config


def _global(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "down.0.weight": rng.normal(size=(4, 1, 3, 3)).astype(np.float32),
        "mid.res1.conv1.bias": rng.normal(size=(6,)).astype(np.float32),
        "up.0.blocks.0.conv1.weight": rng.normal(size=(3, 5)).astype(np.float32),
        "out.2.bias": rng.normal(size=(1,)).astype(np.float32),
    }


def _perturbed(g, keys, seed):
    rng = np.random.default_rng(seed)
    return {k: (g[k] + rng.normal(size=g[k].shape)).astype(np.float32) for k in keys}


def test_aggregate_matches_numpy_weighted_average_per_part():
    g = _global()
    keys = list(g)
    # Client 0 reports everything, client 1 the encoder only, client 2 decoder + bottleneck.
    reported = [keys, ["down.0.weight"], ["mid.res1.conv1.bias", "up.0.blocks.0.conv1.weight"]]
    weights = [120.0, 30.0, 7.0]
    ups = [
        A.Update(i, w, _perturbed(g, ks, i))
        for i, (w, ks) in enumerate(zip(weights, reported, strict=True))
    ]
    new = A.aggregate(g, ups)
    for k in keys:
        who = [u for u in ups if k in u.arrays]
        want = np.average(
            np.stack([u.arrays[k] for u in who]).astype(np.float64),
            axis=0,
            weights=[u.weight for u in who],
        )
        np.testing.assert_allclose(new[k], want, rtol=1e-6, atol=1e-6)
        assert new[k].dtype == g[k].dtype and new[k].shape == g[k].shape
    # Only client 0 reported out.2.bias: the average of one is that client's value.
    np.testing.assert_array_equal(new["out.2.bias"], ups[0].arrays["out.2.bias"])


def test_unreported_keys_stay_bitwise_identical():
    g = _global()
    new = A.aggregate(g, [A.Update(0, 5.0, _perturbed(g, ["down.0.weight"], 0))])
    for k in ("mid.res1.conv1.bias", "up.0.blocks.0.conv1.weight", "out.2.bias"):
        assert new[k] is g[k]
    assert A.aggregate(g, []) == g


def _bad_updates(g, keys):
    good = _perturbed(g, keys, 1)
    k0 = keys[0]
    nan = dict(good, **{k0: np.full_like(good[k0], np.nan)})
    inf = dict(
        good,
        **{
            k0: np.where(
                np.arange(good[k0].size).reshape(good[k0].shape) == 0, np.inf, good[k0]
            ).astype(np.float32)
        },
    )
    shape = dict(good, **{k0: good[k0].reshape(-1)[:-1].copy()})
    dtype = dict(good, **{k0: good[k0].astype(np.float16)})
    extra = dict(good, **{"evil.weight": np.zeros(1, np.float32)})
    extra_same_size = {**{k: v for k, v in good.items() if k != keys[-1]}, "evil": good[keys[-1]]}
    missing = {k: v for k, v in good.items() if k != keys[-1]}
    oversized = dict(good, **{k0: np.zeros((1000, *good[k0].shape), np.float32)})
    return {
        "non-finite": nan,
        "non-finite ": inf,
        "shape": shape,
        "dtype": dtype,
        "unexpected": extra_same_size,
        "oversized": oversized,
        "missing": missing,
        "oversized ": extra,  # an extra key on top of a full update is more bytes than allowed
    }


def test_bad_updates_are_rejected_with_a_reason_and_never_averaged():
    g = _global()
    before = {k: v.copy() for k, v in g.items()}
    keys = list(g)
    for reason, arrays in _bad_updates(g, keys).items():
        with pytest.raises(A.UpdateRejected, match=reason.strip()):
            A.decode_update(3, 10, arrays, g, keys, None)
    for w in (0, -1, float("nan"), "x"):
        with pytest.raises(A.UpdateRejected, match="num-examples"):
            A.decode_update(3, w, _perturbed(g, keys, 0), g, keys, None)
    ok = A.decode_update(3, 10, _perturbed(g, keys, 0), g, keys, None)
    assert set(ok.arrays) == set(keys)
    for k in g:
        assert np.array_equal(g[k], before[k]) and g[k].tobytes() == before[k].tobytes()


def test_quantised_nan_parameters_are_rejected():
    g = _global()
    keys = list(g)
    enc = A.encode_update(_perturbed(g, keys, 0), g, keys, 8)
    A.decode_update(0, 1, enc, g, keys, 8)  # valid
    bad = dict(enc, **{keys[0] + A.QPARAMS: np.array([np.nan, 1.0], np.float32)})
    with pytest.raises(A.UpdateRejected, match="non-finite"):
        A.decode_update(0, 1, bad, g, keys, 8)
    wrong = dict(enc, **{keys[0]: enc[keys[0]].astype(np.int8)})
    with pytest.raises(A.UpdateRejected, match="dtype"):
        A.decode_update(0, 1, wrong, g, keys, 8)


@pytest.mark.parametrize("scale", [1e-6, 1e-2, 3.0])
def test_quantisation_error_is_at_most_half_a_step(scale):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(64, 33)) * scale).astype(np.float32)
    codes, lo, step = A.quantize(x, 8)
    assert codes.dtype == np.uint8 and codes.shape == x.shape
    assert math.isclose(step, (float(x.max()) - float(x.min())) / 255, rel_tol=1e-12)
    err = np.abs(A.dequantize(codes, lo, step) - x.astype(np.float64))
    assert err.max() <= step / 2 * (1 + 1e-9) + 1e-12
    assert codes.min() == 0 and codes.max() == 255  # the full range is used
    c, lo, step = A.quantize(np.full((3,), 2.5, np.float32))
    assert step == 0 and np.all(A.dequantize(c, lo, step) == 2.5)


def test_quantised_update_round_trip_and_four_times_fewer_bytes():
    sd = build_network(network_config("tiny", 1, 0)).state_dict()
    g = {k: v.numpy() for k, v in sd.items()}
    keys = list(g)
    local = {
        k: v + 0.01 * np.random.default_rng(1).normal(size=v.shape).astype(np.float32)
        for k, v in g.items()
    }
    enc = A.encode_update(local, g, keys, 8)
    dec = A.decode_update(0, 1, enc, g, keys, 8).arrays
    for k in keys:
        delta = local[k].astype(np.float64) - g[k]
        step = (delta.max() - delta.min()) / 255
        assert np.abs(dec[k].astype(np.float64) - local[k]).max() <= step / 2 + 1e-6
    full = A.payload_bytes(A.layout_of({k: local[k] for k in keys}))
    q = A.payload_bytes(A.layout_of(enc))
    assert q == sum(v.size for v in g.values()) + 8 * len(keys)  # 1 byte each + (offset, step)
    assert 3.5 < full / q <= 4.0


def test_fedprox_gradient_is_mu_times_the_difference():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    anchor = {
        k: (v.detach() + torch.randn_like(v))
        for k, v in model.state_dict().items()
        if k.startswith("0.")
    }
    mu = 0.37
    pen = A.prox_penalty(model.named_parameters(), anchor, mu)
    pen.backward()
    for name, p in model.named_parameters():
        if name in anchor:
            torch.testing.assert_close(p.grad, mu * (p.detach() - anchor[name]))
        else:
            assert p.grad is None  # a private part is not pulled anywhere
    want = (
        0.5
        * mu
        * sum(
            float(((p.detach() - anchor[n]) ** 2).sum())
            for n, p in model.named_parameters()
            if n in anchor
        )
    )
    assert math.isclose(float(pen.detach()), want, rel_tol=1e-5)


def test_wire_bytes_equal_flowers_own_count():
    from flwr.app import Array, ArrayRecord

    g = _global()
    enc = A.encode_update(_perturbed(g, list(g), 0), g, list(g), 8)
    for arrays in (g, enc):
        rec = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})
        assert A.wire_bytes(A.layout_of(arrays)) == rec.count_bytes()


def _closed_form(numel, method, k, r, seed):
    """Bytes re-derived from parameter counts alone (float32: 4 bytes each)."""
    total = sum(numel.values())
    size = P.group_sizes(numel)
    full_down = 4 * total * k  # the initial broadcast, to everyone
    if method == "full":
        return 2 * r * full_down
    if method in ("udec", "ulatdec"):
        shared = size["decoder"] + (size["bottleneck"] if method == "ulatdec" else 0)
        return full_down + 4 * shared * k * (r - 1) + 4 * shared * k * r
    up = 0
    for rnd in range(1, r + 1):
        # Pairs report the whole model between them; the odd client the bottleneck plus one part,
        # recognisable as the group reported once more than the number of pairs.
        up += 4 * total * (k // 2)
        if k % 2:
            count = Counter(
                g for gs in P.assignments("usplit", range(k), rnd, seed).values() for g in gs
            )
            other = "encoder" if count["encoder"] > k // 2 else "decoder"
            up += 4 * (size["bottleneck"] + size[other])
    return r * full_down + up


def test_fed_bytes_ratios_at_the_small_preset_follow_from_parameter_counts():
    sd = build_network(network_config("small", 1, 0)).state_dict()
    numel = {k: v.numel() for k, v in sd.items()}
    layout = A.layout_of({k: v.numpy() for k, v in sd.items()})
    table = A.bytes_table(layout, 5, 15)
    full = _closed_form(numel, "full", 5, 15, 0)
    for m in P.METHODS:
        assert table[m]["total"] == _closed_form(numel, m, 5, 15, 0), m
        assert table[m]["ratio_to_full"] == pytest.approx(table[m]["total"] / full)
    r = {m: table[m]["ratio_to_full"] for m in P.METHODS}
    assert r["udec"] < r["ulatdec"] < 1 and r["usplit"] < 1
    q = A.bytes_table(layout, 5, 15, bits=8)
    for m in P.METHODS:
        assert q[m]["down"] == table[m]["down"]  # only updates (uplink) are quantised
        assert 3.9 < table[m]["up"] / q[m]["up"] <= 4.0


def test_aggregate_does_not_depend_on_the_order_replies_arrive_in():
    """Replies arrive in whatever order clients finish; the average must be bitwise the same."""
    import itertools

    rng = np.random.default_rng(7)
    n = 20_000
    glob = {"w": np.zeros(n, np.float32)}
    # two large updates that cancel and small ones: float sums of these depend on their order
    big = rng.uniform(1e8, 1e9, n).astype(np.float32)
    values = [big, -big] + [rng.standard_normal(n).astype(np.float32) for _ in range(3)]
    updates = [A.Update(i, 10.0, {"w": v}) for i, v in enumerate(values)]

    def naive(ups):  # the same weighted mean, summed in the order given (float64, then float32)
        total = math.fsum(u.weight for u in ups)
        acc = np.zeros(n, np.float64)
        for u in ups:
            acc += (u.weight / total) * u.arrays["w"].astype(np.float64)
        return acc.astype(np.float32)

    orders = list(itertools.permutations(range(len(updates))))[::7]
    results = [A.aggregate(glob, [updates[i] for i in order])["w"] for order in orders]
    assert all(np.array_equal(results[0], r) for r in results[1:])
    # the data are such that summation order matters: the check above can fail
    naive_results = [naive([updates[i] for i in order]) for order in orders]
    assert any(not np.array_equal(naive_results[0], r) for r in naive_results[1:])
    # and it is the weighted mean (NumPy oracle: the big pair cancels exactly when summed first)
    oracle = sum(v.astype(np.float64) for v in values[2:]) / len(values)
    np.testing.assert_allclose(results[0], oracle, atol=1e-5)
