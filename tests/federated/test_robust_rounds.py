"""Robust aggregation inside the Flower strategy and the real ServerApp loop: what is combined
per group, a server optimiser on top, a group it cannot combine, and an attacked federation."""

import statistics

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import ConfigRecord
from tests.federated._flower_fakes import Grid, _task_identity, serve_in_process  # noqa: F401
from tests.federated.test_strategy import _record, _reply, _sorted

from decentdiff import config as C
from decentdiff.federated import parts as P
from decentdiff.federated.settings import FedSettings, build_settings, fed_base
from decentdiff.federated.store import initial_arrays, read_rounds
from decentdiff.federated.strategy import make_strategy


def _settings(method, clients, **options):
    cfg = C.resolve(base=fed_base())
    cfg.model.preset = "tiny"
    options = FedSettings(method=method, clients=clients, rounds=3, **options).validate()
    return build_settings(cfg, options, image_shape=(1, 8, 8), num_classes=0)


def _local(g, keys, seed, step=0.01):
    """A client's values: the global model plus a small step of its own (honest training moves
    a model by a small fraction of its norm, so 100× stays under the server's norm guard)."""
    rng = np.random.default_rng(seed)
    return {k: (g[k] + step * rng.normal(size=g[k].shape)).astype(np.float32) for k in keys}


def _median(arrays):
    """Coordinate-wise median by statistics.median (float64), the oracle."""
    stack = np.stack([a.astype(np.float64).ravel() for a in arrays])
    return np.array([statistics.median(col) for col in stack.T]).reshape(arrays[0].shape)


def _round(s, g, nodes, sent, sizes=None):
    """One strategy round past the broadcast: (new arrays, the round's info, assignments)."""
    strat = make_strategy(s, round_offset=1)
    msgs = _sorted(strat.configure_train(1, _record(g), ConfigRecord(), Grid(nodes)))
    assign = P.assignments(s.method, nodes, 2, s.seed)
    replies = []
    for i, m in enumerate(msgs):
        node = m.metadata.dst_node_id
        if node not in sent:
            continue  # a client that never replied
        keys = P.keys_for(assign[node], list(g))
        replies.append(_reply(m, sent[node](keys, i), (sizes or {}).get(node, 10)))
    out, _ = strat.aggregate_train(1, replies)
    return {k: a.numpy() for k, a in out.items()}, strat.rounds[2], assign


def test_the_median_replaces_the_average_and_fedavgm_steps_along_it():
    """Five clients, one sending 100× its update and claiming 1,000× the examples: the new
    model is θ + η·(median − θ) per coordinate (FedAvgM, β = 0), the attacker has no pull."""
    s = _settings("full", 5, aggregate="median", server_opt="fedavgm", server_lr=0.5,
                  server_momentum=0.0)  # fmt: skip
    g = initial_arrays(s)
    nodes = [1, 2, 3, 4, 5]
    honest = {n: _local(g, list(g), n) for n in nodes}

    def send(node):
        if node != 3:
            return lambda keys, i: {k: honest[node][k] for k in keys}
        return lambda keys, i: {k: (g[k] + 100 * (honest[3][k] - g[k])).astype(np.float32)
                                for k in keys}  # fmt: skip

    new, info, _ = _round(s, g, nodes, {n: send(n) for n in nodes}, sizes={3: 10_000})
    sent = {n: send(n)(list(g), 0) for n in nodes}
    for k in g:
        want = g[k] + 0.5 * (_median([sent[n][k] for n in nodes]) - g[k])
        np.testing.assert_allclose(new[k], want, rtol=1e-5, atol=1e-5)
    assert info["aggregate"]["rule"] == "median"
    assert {grp: r["n"] for grp, r in info["aggregate"]["groups"].items()} == dict.fromkeys(
        P.GROUPS, 5
    )


def test_usplit_combines_each_group_over_its_reporters_and_skips_a_group_it_cannot():
    """USPLIT, 6 clients, median: each group has 3 reporters in a full round. A client that does
    not reply leaves one group 2 reporters: that group keeps its value bitwise (and FedAvgM's
    state for it), while the others are medians over their own reporters."""
    s = _settings("usplit", 6, aggregate="median", server_opt="fedavgm", server_lr=1.0,
                  server_momentum=0.5)  # fmt: skip
    g = initial_arrays(s)
    nodes = [1, 2, 3, 4, 5, 6]
    local = {n: _local(g, list(g), n) for n in nodes}

    def send(node):
        return lambda keys, i: {k: local[node][k] for k in keys}

    sent = {n: send(n) for n in nodes}
    assign = P.assignments("usplit", nodes, 2, s.seed)
    silent = nodes[0]
    del sent[silent]
    new, info, _ = _round(s, g, nodes, sent)
    groups = info["aggregate"]["groups"]
    for grp in P.GROUPS:
        who = [n for n in nodes if grp in assign[n] and n != silent]
        assert groups[grp]["n"] == len(who)
        for k in P.keys_for({grp}, list(g)):
            if len(who) < 3:
                assert not groups[grp]["applied"] and new[k].tobytes() == g[k].tobytes()
            else:
                want = _median([local[n][k] for n in who])  # β·0 momentum on the first step
                np.testing.assert_allclose(new[k], want, rtol=1e-5, atol=1e-5)
    assert any(not r["applied"] for r in groups.values())  # the silent client's group


def test_an_attacked_federation_through_the_server_loop_never_picks_the_attacker(tmp_path):
    """The real ServerApp loop and ClientApp handler, 5 clients, client 3 sending 100× its
    update every round: Krum picks, in every round and group, an honest client (recorded in
    rounds.jsonl); the model ends near the honest federation's, FedAvg's far from it."""
    # Two local steps: the UNet's output layer starts at zero, so after one step every client's
    # encoder and bottleneck update is exactly zero (the attacker's ×100 too), Krum's scores tie
    # there and its pick is whichever update sorts first by content, the attacker included.
    common = dict(method="full", rounds=2, local_steps=2, batch=8)
    runs = {}
    for name, extra in {
        "honest": {},
        "fedavg": {"attack": "scale:100@3"},
        "krum": {"attack": "scale:100@3", "aggregate": "krum:1"},
    }.items():
        serve_in_process(tmp_path / name, clients=5, **common, **extra)
        runs[name] = read_rounds(tmp_path / name)
    for row in runs["krum"]:
        assert row["aggregate"]["rule"] == "krum:1" and row["accepted"] == 5
        for grp in P.GROUPS:
            r = row["aggregate"]["groups"][grp]
            assert r["applied"] and r["n"] == 5 and len(r["picked"]) == 1
            assert r["picked"][0] in {0, 1, 2, 4}
    assert "aggregate" not in runs["fedavg"][0]
    assert all(row["accepted"] == 5 for row in runs["fedavg"])  # the norm guard let it through

    def model(name):
        from safetensors.numpy import load_file

        return load_file(str(tmp_path / name / "federated" / "global" / "model.safetensors"))

    def dist(a, b):
        return np.sqrt(sum(np.sum((a[k].astype(np.float64) - b[k]) ** 2) for k in a))

    honest, fedavg, krum = model("honest"), model("fedavg"), model("krum")
    assert dist(krum, honest) < dist(fedavg, honest) / 10
