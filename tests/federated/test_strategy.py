"""The Flower strategy with mock replies (no simulation): what is sent, what is averaged."""

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from tests.federated._flower_fakes import Grid, _task_identity  # noqa: F401 (autouse)

from decentdiff import config as C
from decentdiff.federated import aggregate as A
from decentdiff.federated import parts as P
from decentdiff.federated.settings import FedSettings, build_settings, fed_base
from decentdiff.federated.store import initial_arrays
from decentdiff.federated.strategy import PartialFedAvg


def _settings(method, clients, quantize=0, min_replies=1):
    cfg = C.resolve(base=fed_base())
    cfg.model.preset = "tiny"
    options = FedSettings(
        method=method, clients=clients, rounds=3, quantize=quantize, min_replies=min_replies
    ).validate()
    return build_settings(cfg, options, image_shape=(1, 8, 8), num_classes=0)


def _record(arrays):
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def _reply(msg, arrays, n):
    content = RecordDict(
        {"arrays": _record(arrays), "metrics": MetricRecord({"num-examples": n, "loss": 0.5})}
    )
    return Message(content, reply_to=msg)


def _sorted(msgs):
    return sorted(msgs, key=lambda m: m.metadata.dst_node_id)  # FedAvg samples in random order


def _local(global_, keys, seed):
    rng = np.random.default_rng(seed)
    return {k: (global_[k] + rng.normal(size=global_[k].shape)).astype(np.float32) for k in keys}


@pytest.mark.parametrize("method", ["full", "usplit", "udec", "ulatdec"])
def test_round_sends_the_method_parts_and_averages_per_key(method):
    s = _settings(method, 5)
    g = initial_arrays(s)
    keys = list(g)
    nodes = [11, 22, 33, 44, 55]
    strat = PartialFedAvg(s, round_offset=1)  # Flower round 1 = run round 2: past the broadcast
    msgs = list(
        strat.configure_train(1, _record(g), ConfigRecord({"settings": s.to_json()}), Grid(nodes))
    )
    assign = P.assignments(method, nodes, 2, s.seed)
    down_keys = P.keys_for(P.downlink_groups(method, 2), keys)
    for m in msgs:
        node = m.metadata.dst_node_id
        assert sorted(m.content["arrays"].keys()) == sorted(down_keys)
        assert m.content["config"]["report"] == ",".join(sorted(assign[node]))
        assert m.content["config"]["round"] == 2
        assert strat.rounds[2]["clients"][node]["down"] == 4 * sum(g[k].size for k in down_keys)
    sizes = {11: 100, 22: 40, 33: 7, 44: 260, 55: 33}
    locals_ = {}
    replies = []
    for i, m in enumerate(msgs):
        node = m.metadata.dst_node_id
        rep = P.keys_for(assign[node], keys)
        locals_[node] = _local(g, rep, i)
        replies.append(_reply(m, locals_[node], sizes[node]))
    arrays, metrics = strat.aggregate_train(1, replies)
    new = {k: a.numpy() for k, a in arrays.items()}
    for k in keys:
        who = [n for n in nodes if k in locals_[n]]
        if not who:
            assert new[k].tobytes() == g[k].tobytes()
            continue
        want = np.average(
            np.stack([locals_[n][k] for n in who]).astype(np.float64),
            axis=0,
            weights=[sizes[n] for n in who],
        )
        np.testing.assert_allclose(new[k], want, rtol=1e-5, atol=1e-6)
    assert metrics["loss"] == pytest.approx(0.5)
    assert all(c["status"] == "ok" for c in strat.rounds[2]["clients"].values())


def _bad_variants(g, keys):
    good = _local(g, keys, 9)
    k0 = next(k for k in keys if g[k].ndim == 4)
    inf = good[k0].copy()
    inf.flat[0] = np.inf
    return {
        "non-finite": dict(good, **{k0: np.full_like(good[k0], np.nan)}),
        "non-finite ": dict(good, **{k0: inf}),
        "shape": dict(good, **{k0: good[k0].reshape(good[k0].shape[0], -1)[:, :-1].copy()}),
        "dtype": dict(good, **{k0: good[k0].astype(np.float16)}),
        "oversized": dict(good, **{"extra.weight": np.zeros(3, np.float32)}),
        "oversized ": dict(good, **{k0: np.zeros((50, *good[k0].shape), np.float32)}),
        "missing": {k: v for k, v in good.items() if k != k0},
    }


def test_bad_updates_are_rejected_logged_and_leave_the_global_bitwise_unchanged():
    s = _settings("full", 2, min_replies=1)
    g = initial_arrays(s)
    keys = list(g)
    for reason, arrays in _bad_variants(g, keys).items():
        strat = PartialFedAvg(s)
        msgs = _sorted(strat.configure_train(1, _record(g), ConfigRecord(), Grid([1, 2])))
        crashed = Message(Error(code=0, reason="client crashed"), reply_to=msgs[1])
        out, _ = strat.aggregate_train(1, [_reply(msgs[0], arrays, 10), crashed])
        assert out is None, reason  # nothing valid: the round does not change the global
        rows = strat.rounds[1]["clients"]
        assert rows[1]["status"] == "rejected" and reason.strip() in rows[1]["reason"], rows[1]
        assert rows[2]["status"] == "failed" and "crashed" in rows[2]["reason"]
        assert strat.rounds[1]["complete"] is False
        # With a good second client, the bad one is left out of the average entirely.
        strat = PartialFedAvg(s)
        msgs = _sorted(strat.configure_train(1, _record(g), ConfigRecord(), Grid([1, 2])))
        good = _local(g, keys, 3)
        out, _ = strat.aggregate_train(1, [_reply(msgs[0], arrays, 1000), _reply(msgs[1], good, 5)])
        new = {k: a.numpy() for k, a in out.items()}
        for k in keys:
            assert new[k].tobytes() == good[k].tobytes()


def test_quantised_replies_decode_to_the_same_average_within_half_a_step():
    s = _settings("udec", 2, quantize=8)
    g = initial_arrays(s)
    keys = list(g)
    strat = PartialFedAvg(s)
    msgs = _sorted(strat.configure_train(1, _record(g), ConfigRecord(), Grid([1, 2])))
    dec = P.keys_for({"decoder"}, keys)
    local = [_local(g, dec, 1), _local(g, dec, 2)]
    replies = [
        _reply(m, A.encode_update(loc, g, dec, 8), 10) for m, loc in zip(msgs, local, strict=True)
    ]
    out, _ = strat.aggregate_train(1, replies)
    new = {k: a.numpy() for k, a in out.items()}
    for k in dec:
        steps = [np.ptp(loc[k].astype(np.float64) - g[k]) / 255 for loc in local]
        assert np.abs(new[k] - (local[0][k] + local[1][k]) / 2).max() <= max(steps) / 2 + 1e-5
    for k in set(keys) - set(dec):
        assert new[k].tobytes() == g[k].tobytes()
    row = strat.rounds[1]["clients"][1]
    assert row["up"] == sum(g[k].size + 8 for k in dec)


def test_a_silent_client_is_logged_and_the_round_completes_with_the_others():
    s = _settings("full", 3, min_replies=2)
    g = initial_arrays(s)
    strat = PartialFedAvg(s)
    msgs = _sorted(strat.configure_train(1, _record(g), ConfigRecord(), Grid([1, 2, 3])))
    replies = [_reply(m, _local(g, list(g), i), 10) for i, m in enumerate(msgs[:2])]
    out, _ = strat.aggregate_train(1, replies)  # node 3 timed out: no reply at all
    assert out is not None and strat.rounds[1]["complete"]
    assert strat.rounds[1]["clients"][3]["status"] == "no reply"
    assert strat.rounds[1]["clients"][3]["down"] > 0  # it was still sent the model
    out, _ = PartialFedAvg(s).aggregate_train(1, replies[:1])
    assert out is None  # below --min-replies: the global stays as it was
