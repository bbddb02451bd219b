"""A malicious federated update cannot change the global model: the norm guard (the NaN/Inf,
wrong-key, wrong-shape/dtype and oversized cases are in tests/federated/test_aggregate.py)."""

import math

import numpy as np
import pytest
import torch

from decentdiff.federated import aggregate as A
from decentdiff.models.registry import build_network, network_config


@pytest.fixture(scope="module")
def global_():
    torch.manual_seed(0)
    return {
        k: v.numpy().copy()
        for k, v in build_network(network_config("tiny", 1, 0)).state_dict().items()
    }


def _norm(arrays):
    return math.sqrt(sum(float(np.sum(np.square(a.astype(np.float64)))) for a in arrays.values()))


def _honest(g, seed, scale=1e-3):
    # What local training does: a small step relative to the weights.
    rng = np.random.default_rng(seed)
    return {k: (v + scale * rng.normal(size=v.shape)).astype(v.dtype) for k, v in g.items()}


def _scaled(g, factor):
    """A scaling attack: θ_global + factor·(θ_honest − θ_global), all values finite."""
    h = _honest(g, 9)
    return {k: (g[k] + factor * (h[k].astype(np.float64) - g[k])).astype(g[k].dtype) for k in g}


@pytest.mark.parametrize("factor", [1e7, 1e30])
def test_a_huge_finite_update_is_rejected_and_the_global_model_is_unchanged(global_, factor):
    g = {k: v.copy() for k, v in global_.items()}
    keys = list(g)
    evil = _scaled(g, factor)
    assert all(np.isfinite(v).all() for v in evil.values())  # passes every other check
    # Without the guard it would be accepted and would dominate the average:
    unguarded = A.decode_update(1, 10, evil, g, keys, None, max_norm_ratio=None)
    poisoned = A.aggregate(g, [A.decode_update(0, 10, _honest(g, 0), g, keys), unguarded])
    assert _norm({k: poisoned[k] - g[k] for k in g}) > 100 * _norm(g)
    # With it (the default), the reply is rejected and a round of the others is unaffected.
    with pytest.raises(A.UpdateRejected, match="huge norm"):
        A.decode_update(1, 10, evil, g, keys, None)
    accepted = []
    for cid, reply in enumerate([_honest(g, 0), evil, _honest(g, 2)]):
        try:
            accepted.append(A.decode_update(cid, 10, reply, g, keys, None))
        except A.UpdateRejected:
            pass
    assert [u.client for u in accepted] == [0, 2]
    new = A.aggregate(g, accepted)
    h0, h2 = _honest(g, 0), _honest(g, 2)
    for k in g:
        want = ((h0[k].astype(np.float64) + h2[k]) / 2).astype(g[k].dtype)
        np.testing.assert_allclose(new[k], want, rtol=0, atol=1e-6)
        assert g[k].tobytes() == global_[k].tobytes()  # the input arrays are untouched


def test_the_guard_bound_is_the_documented_one(global_):
    """||Δ|| ≤ ratio·max(||θ_global||, 1) passes, just above is rejected (independent norms)."""
    g, keys = global_, list(global_)
    delta = _honest(g, 5, scale=1.0)
    delta = {k: delta[k].astype(np.float64) - g[k] for k in g}
    limit = A.MAX_UPDATE_NORM_RATIO * max(_norm(g), 1.0)
    for frac, ok in ((0.98, True), (1.02, False)):
        c = frac * limit / _norm(delta)
        reply = {k: (g[k] + c * delta[k]).astype(np.float32) for k in keys}
        if ok:
            A.decode_update(0, 1, reply, g, keys, None)
        else:
            with pytest.raises(A.UpdateRejected, match="huge norm"):
                A.decode_update(0, 1, reply, g, keys, None)


def test_a_quantised_huge_update_is_rejected_too(global_):
    g, keys = global_, list(global_)
    enc = A.encode_update(_scaled(g, 1e7), g, keys, 8)
    with pytest.raises(A.UpdateRejected, match="huge norm"):
        A.decode_update(0, 1, enc, g, keys, 8)
    A.decode_update(0, 1, A.encode_update(_honest(g, 1), g, keys, 8), g, keys, 8)
