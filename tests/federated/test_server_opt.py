"""Server optimisers (Flower's FedAvgM, FedAdam, FedYogi, FedAdagrad on the partial average) and
the server EMA: against hand NumPy computations, with partial methods, rejected updates and resume.

The optimiser tests drive the strategy with fake Messages (as test_strategy.py does); the resume
test runs the real ServerApp loop (`server_app.serve`, Flower's `Strategy.start`) and the real
ClientApp handler in this process, on an in-process grid instead of Ray (a Ray simulation takes
~30 s to start here; the bitwise resume of the Ray path itself is tests/reliability's).
"""

import json

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from safetensors.numpy import load_file
from tests._cli import _bad
from tests.federated._flower_fakes import (  # noqa: F401 (_task_identity: autouse)
    Grid,
    _task_identity,
    serve_in_process,
)

from decentdiff import config as C
from decentdiff.errors import ConfigError
from decentdiff.federated import aggregate as A
from decentdiff.federated import parts as P
from decentdiff.federated.settings import FedSettings, build_settings, fed_base
from decentdiff.federated.store import (
    check_resumable,
    fed_dir,
    initial_arrays,
    record_settings,
    resume_point,
    resume_server_state,
    save_server_model,
)
from decentdiff.federated.strategy import make_strategy


def _settings(method="full", clients=3, **kw):
    cfg = C.resolve(base=fed_base())
    cfg.model.preset = "tiny"
    options = FedSettings(method=method, clients=clients, **{"rounds": 5, **kw}).validate()
    return build_settings(cfg, options, image_shape=(1, 8, 8), num_classes=0)


def _record(arrays):
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def _numpy(record):
    return {k: a.numpy() for k, a in record.items()}


SIZES = {1: 100, 2: 40, 3: 7}


def _local(g, keys, node, rnd, bad=False):
    """A client's deterministic 'trained' arrays: the global plus its own drift (NaN if bad)."""
    rng = np.random.default_rng([node, rnd])
    out = {
        k: (g[k] + 0.05 * node + 0.1 * rng.normal(size=g[k].shape)).astype(g[k].dtype) for k in keys
    }
    if bad:
        k0 = keys[0]
        out[k0] = np.full_like(out[k0], np.nan)
    return out


def _round(strat, flower_round, g, nodes, bad=()):
    """One round with fake replies; returns (new global or None, {node: (reported keys, local)})."""
    msgs = list(strat.configure_train(flower_round, _record(g), ConfigRecord(), Grid(nodes)))
    sent = {}
    replies = []
    for m in sorted(msgs, key=lambda m: m.metadata.dst_node_id):
        node = m.metadata.dst_node_id
        rnd = int(m.content["config"]["round"])
        groups = [x for x in str(m.content["config"]["report"]).split(",") if x]
        keys = P.keys_for(groups, list(g))
        local = _local(g, keys, node, rnd, bad=node in bad)
        sent[node] = (keys, local)
        content = RecordDict(
            {"arrays": _record(local), "metrics": MetricRecord({"num-examples": SIZES[node]})}
        )
        replies.append(Message(content, reply_to=m))
    out, _ = strat.aggregate_train(flower_round, replies)
    return (None if out is None else _numpy(out)), sent


class Oracle:
    """The four server optimisers written out by hand in float64 (Reddi et al. 2021, Alg. 2, with
    Flower's bias correction for Adam: exponent t + 1; Hsu et al. 2019 for FedAvgM)."""

    def __init__(self, opt, lr, b1, b2=0.99, tau=1e-3):
        self.opt, self.lr, self.b1, self.b2, self.tau = opt, lr, b1, b2, tau
        self.m, self.v, self.mom = {}, {}, {}

    def step(self, x, avg, t):
        """x: key -> float64 model; avg: the weighted average of the keys reported in round t."""
        out = dict(x)
        for k, a in avg.items():
            d = a - x[k]
            if self.opt == "fedavgm":
                self.mom[k] = -d if k not in self.mom else self.b1 * self.mom[k] - d
                out[k] = x[k] - self.lr * self.mom[k]
                continue
            m = self.m[k] = self.b1 * self.m.get(k, 0.0) + (1 - self.b1) * d
            v0 = self.v.get(k, np.zeros_like(d))
            if self.opt == "fedadam":
                v = self.b2 * v0 + (1 - self.b2) * d**2
                eta = self.lr * np.sqrt(1 - self.b2 ** (t + 1)) / (1 - self.b1 ** (t + 1))
            elif self.opt == "fedyogi":
                v = v0 - (1 - self.b2) * d**2 * np.sign(v0 - d**2)
                eta = self.lr
            else:  # fedadagrad
                v = v0 + d**2
                eta = self.lr
            self.v[k] = v
            out[k] = x[k] + eta * m / (np.sqrt(v) + self.tau)
        return out

    def state(self):
        if self.opt == "fedavgm":
            return {"momentum_vector": self.mom}
        return {"m_t": self.m, "v_t": self.v}


def _average(sent, good):
    """Weighted per-key average over the good clients that reported each key (float64)."""
    acc, tot = {}, {}
    for node in good:
        keys, local = sent[node]
        for k in keys:
            acc[k] = acc.get(k, 0.0) + SIZES[node] * local[k].astype(np.float64)
            tot[k] = tot.get(k, 0.0) + SIZES[node]
    return {k: acc[k] / tot[k] for k in acc}


def _check_state(strat, oracle, keys):
    state = strat.optimizer_state()
    for name, want in oracle.state().items():
        for k in keys:
            got = state[f"server_opt.{name}.{k}"]
            np.testing.assert_allclose(got, want.get(k, 0.0), rtol=1e-4, atol=1e-6, err_msg=k)


#: (optimiser, η, β1, β2, τ; None: Flower's): not the defaults, so the settings must reach
#: Flower's classes.
OPTS = [("fedadam", 0.05, 0.9, None, None), ("fedyogi", 0.05, 0.8, None, None),
        ("fedadagrad", 0.05, 0.0, None, None), ("fedavgm", 0.7, 0.9, None, None),
        ("fedadam", 0.05, 0.8, 0.999, 1e-6), ("fedyogi", 0.05, 0.9, 0.9, 1e-2),
        ("fedadagrad", 0.05, 0.0, None, 1e-4)]  # fmt: skip


@pytest.mark.parametrize(("opt", "lr", "b1", "b2", "tau"), OPTS)
def test_the_composed_step_is_flowers_optimiser_on_the_weighted_average(opt, lr, b1, b2, tau):
    s = _settings("full", 3, server_opt=opt, server_lr=lr, server_momentum=b1, server_beta2=b2,
                  server_tau=tau)  # fmt: skip
    strat = make_strategy(s)
    g = initial_arrays(s)
    keys = list(g)
    oracle = Oracle(opt, lr, b1, b2 or 0.99, tau or 1e-3)
    x = {k: v.astype(np.float64) for k, v in g.items()}
    for t in (1, 2, 3):
        new, sent = _round(strat, t, g, [1, 2, 3])
        x = oracle.step(x, _average(sent, [1, 2, 3]), t)
        assert {k: v.dtype for k, v in new.items()} == {k: v.dtype for k, v in g.items()}
        for k in keys:
            np.testing.assert_allclose(new[k], x[k], rtol=1e-5, atol=1e-5, err_msg=f"{k} round {t}")
        _check_state(strat, oracle, keys)
        g = new
    assert not np.allclose(g[keys[0]], initial_arrays(s)[keys[0]])


@pytest.mark.parametrize("opt", ["fedadam", "fedavgm"])
def test_usplit_keys_nobody_reported_keep_their_value_and_optimizer_state_bitwise(opt):
    """Round 2: node 1's update is rejected, so its USPLIT groups are reported by nobody; they
    must not move (no momentum drift) and their state must stay as round 1 left it; round 3 then
    continues them from that state (checked against the hand optimiser that skips them)."""
    s = _settings("usplit", 2, server_opt=opt, server_lr=0.05, server_momentum=0.9)
    strat = make_strategy(s)
    g = initial_arrays(s)
    keys = list(g)
    oracle = Oracle(opt, 0.05, 0.9)
    x = {k: v.astype(np.float64) for k, v in g.items()}
    states = []
    for t, bad in ((1, ()), (2, (1,)), (3, ())):
        new, sent = _round(strat, t, g, [1, 2], bad=bad)
        good = [n for n in (1, 2) if n not in bad]
        x = oracle.step(x, _average(sent, good), t)
        for k in keys:
            np.testing.assert_allclose(new[k], x[k], rtol=1e-5, atol=1e-5, err_msg=f"{k} round {t}")
        states.append(strat.optimizer_state())
        if t == 2:
            frozen = set(sent[1][0])
            assert frozen and frozen.isdisjoint(sent[2][0])
            for k in frozen:
                assert new[k].tobytes() == g[k].tobytes(), k
            for name, v in states[1].items():
                if name.split(".", 2)[2] in frozen:
                    assert v.tobytes() == states[0][name].tobytes(), name
        g = new


def test_udec_private_parts_never_move_and_only_shared_state_is_kept():
    s = _settings("udec", 2, server_opt="fedadam", server_lr=0.05)
    strat = make_strategy(s)
    g0 = g = initial_arrays(s)
    shared = set(P.keys_for({"decoder"}, list(g)))
    for t in (1, 2, 3):
        g, _ = _round(strat, t, g, [1, 2])
    for k in g:
        same = g[k].tobytes() == g0[k].tobytes()
        assert same == (k not in shared), k
    state = strat.optimizer_state()
    assert {n.split(".", 2)[2] for n in state} == shared


def test_a_rejected_update_never_reaches_the_optimizer_state():
    s = _settings("full", 2, server_opt="fedadam", server_lr=0.05)
    strat = make_strategy(s)
    g = initial_arrays(s)
    oracle = Oracle("fedadam", 0.05, 0.9)
    x = {k: v.astype(np.float64) for k, v in g.items()}
    g, sent = _round(strat, 1, g, [1, 2])
    x = oracle.step(x, _average(sent, [1, 2]), 1)
    # Round 2: node 1 sends NaN: the step (and m_t, v_t) are node 2's alone.
    g, sent = _round(strat, 2, g, [1, 2], bad=(1,))
    assert strat.rounds[2]["clients"][1]["status"] == "rejected"
    x = oracle.step(x, _average(sent, [2]), 2)
    for k in g:
        np.testing.assert_allclose(g[k], x[k], rtol=1e-5, atol=1e-5, err_msg=k)
    _check_state(strat, oracle, list(g))
    # Round 3: both bad: no round, and the optimiser's state is bitwise as it was.
    before = strat.optimizer_state()
    out, _ = _round(strat, 3, g, [1, 2], bad=(1, 2))
    assert out is None and strat.rounds[3]["complete"] is False
    after = strat.optimizer_state()
    assert before.keys() == after.keys()
    assert all(before[k].tobytes() == after[k].tobytes() for k in before)


@pytest.mark.parametrize("opt", ["fedadam", "fedyogi", "fedadagrad", "fedavgm"])
def test_a_strategy_resumed_from_its_checkpoint_continues_bitwise(tmp_path, opt):
    """3 rounds in one strategy == 2 rounds, checkpoint, a new strategy (Flower's round 1 is the
    run's round 3) restored from disk, 1 round. FedAdam's bias correction needs the run's round."""
    s = _settings("usplit", 3, server_opt=opt, server_lr=0.05)
    s.run_dir = str(tmp_path)
    g = initial_arrays(s)
    once = make_strategy(s)
    a = g
    for t in (1, 2, 3):
        a, _ = _round(once, t, a, [1, 2, 3])
    first = make_strategy(s)
    b = g
    for t in (1, 2):
        b, _ = _round(first, t, b, [1, 2, 3])
    save_server_model(tmp_path, s, b, 2, optimizer=first.optimizer_state())
    arrays, done = resume_point(tmp_path, s)
    _, _, opt_state = resume_server_state(tmp_path, s, arrays)
    assert done == 2 and opt_state.keys() == first.optimizer_state().keys()
    second = make_strategy(s, round_offset=done)
    second.load_optimizer_state(opt_state, arrays)
    b, _ = _round(second, 1, arrays, [1, 2, 3])
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)
    sa, sb = once.optimizer_state(), second.optimizer_state()
    assert sa.keys() == sb.keys() and all(sa[k].tobytes() == sb[k].tobytes() for k in sa)


def test_server_ema_is_the_bias_corrected_average_of_the_rounds_models():
    rng = np.random.default_rng(0)
    models = [{"w": rng.normal(size=(3, 4)).astype(np.float32)} for _ in range(5)]
    beta = 0.7
    ema = {"w": np.full((3, 4), 1e6, np.float32)}  # whatever came before: weight 0 at n = 1
    for n, m in enumerate(models, 1):
        ema = A.ema_update(ema, m, beta, n)
        weights = [(1 - beta) * beta ** (n - i) for i in range(1, n + 1)]
        want = sum(w * mm["w"].astype(np.float64) for w, mm in zip(weights, models, strict=False))
        want /= 1 - beta**n
        assert ema["w"].dtype == np.float32
        np.testing.assert_allclose(ema["w"], want, rtol=1e-6, atol=1e-6)
    assert A.ema_update(ema, models[0], 0.0, 3)["w"].tobytes() == models[0]["w"].tobytes()


# ------------------------------------------------------------------------------ a real run, resumed
def _serve(run_dir, rounds, hooks=None, plain=False):
    server = {} if plain else {"server_opt": "fedadam", "server_lr": 0.01, "server_ema": 0.5}
    serve_in_process(run_dir, clients=2, method="full", rounds=rounds, local_steps=2,
                     hooks=hooks, **server)  # fmt: skip


def _checkpoint(run_dir):
    d = fed_dir(run_dir) / "global"
    return {name: load_file(d / f"{name}.safetensors") for name in ("model", "ema", "state")}


def test_a_run_stopped_after_round_2_and_resumed_equals_an_uninterrupted_one(tmp_path):
    """FedAdam + server EMA through the real ServerApp loop and ClientApp: global model, EMA and
    optimiser state bitwise equal; the EMA is the hand-computed one of the rounds' models and is
    what the per-round evaluate hook sees."""
    once, twice = tmp_path / "once", tmp_path / "twice"
    per_round, seen = [], {}

    def on_round(row):
        per_round.append(_checkpoint(once))

    def evaluate(rnd, arrays):
        seen[rnd] = arrays
        return {"x": 0.0}

    _serve(once, 3, {"on_round": on_round, "evaluate_fn": evaluate})
    _serve(twice, 2)
    meta = json.loads((fed_dir(twice) / "global" / "meta.json").read_text())
    assert meta["round"] == 2 and meta["federated"]["server_opt"] == "fedadam"
    _serve(twice, 3)
    a, b = _checkpoint(once), _checkpoint(twice)
    for name in ("model", "ema", "state"):
        assert a[name].keys() == b[name].keys(), name
        drift = [k for k in a[name] if a[name][k].tobytes() != b[name][k].tobytes()]
        assert not drift, f"resumed run drifted in {name}: {drift[:3]}"
    assert any(k.startswith("server_opt.m_t.") for k in a["state"])
    assert int(a["state"]["ema_updates"]) == 3 and int(a["state"]["step"]) == 3
    # The EMA (β = 0.5, bias-corrected) of the three rounds' global models, by hand.
    models = [c["model"] for c in per_round]
    w = np.array([0.25, 0.5, 1.0]) * 0.5 / (1 - 0.5**3)
    for k, v in a["ema"].items():
        want = sum(wi * m[k].astype(np.float64) for wi, m in zip(w, models, strict=True))
        np.testing.assert_allclose(v, want, rtol=1e-6, atol=1e-7, err_msg=k)
    assert any(a["ema"][k].tobytes() != a["model"][k].tobytes() for k in a["ema"])
    for rnd, c in enumerate(per_round, 1):
        assert all(seen[rnd][k].tobytes() == c["ema"][k].tobytes() for k in c["ema"]), rnd


# ------------------------------------------------------------------------------ settings
def test_defaults_resolve_per_optimizer():
    def resolved(**kw):
        s = FedSettings(**kw).validate()
        return s.server_opt, s.server_lr, s.server_momentum

    assert resolved() == ("fedavg", 1.0, 0.0)
    assert resolved(server_opt=" FedAdam ") == ("fedadam", 1e-3, 0.9)
    assert resolved(server_opt="fedyogi", server_momentum=0.5) == ("fedyogi", 1e-3, 0.5)
    assert resolved(server_opt="fedadagrad") == ("fedadagrad", 1e-3, 0.0)
    assert resolved(server_opt="fedavgm") == ("fedavgm", pytest.approx(0.1), 0.9)
    assert resolved(server_opt="fedavgm", server_momentum=0.5) == ("fedavgm", 0.5, 0.5)
    assert resolved(server_opt="fedavgm", server_lr=2.0) == ("fedavgm", 2.0, 0.9)

    def adaptive(**kw):
        s = FedSettings(**kw).validate()
        return s.server_beta2, s.server_tau

    assert adaptive() == (None, None)  # the plain average has neither
    assert adaptive(server_opt="fedadam") == (0.99, 1e-3)  # Flower's
    assert adaptive(server_opt="fedyogi", server_beta2=0.999, server_tau=1e-8) == (0.999, 1e-8)
    assert adaptive(server_opt="fedadagrad") == (None, 1e-3)  # Flower's FedAdagrad has no β2


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"server_opt": "adam"}, "unknown --server-opt 'adam'; choose one of: fedavg, fedavgm"),
        ({"server_opt": "fedadam", "server_lr": -0.1}, "--server-lr must be > 0"),
        ({"server_lr": 0.5}, "--server-opt fedavg is the plain average (η = 1)"),
        ({"server_opt": "fedadam", "server_momentum": 1.0}, "--server-momentum must be in [0, 1)"),
        ({"server_opt": "fedadagrad", "server_momentum": 0.5}, "fedadagrad takes no momentum"),
        ({"server_momentum": 0.9}, "fedavg takes no momentum"),
        ({"server_ema": 1.0}, "--server-ema must be in [0, 1)"),
        ({"server_ema": -0.1}, "--server-ema must be in [0, 1)"),
        ({"method": "udec", "server_ema": 0.9}, "--server-ema needs a global generator"),
        ({"server_tau": 1e-8}, "--server-opt fedavg takes no τ"),
        ({"server_opt": "fedavgm", "server_beta2": 0.9}, "--server-opt fedavgm takes no β2"),
        ({"server_opt": "fedadagrad", "server_beta2": 0.9}, "fedadagrad takes no β2"),
        ({"server_opt": "fedadam", "server_beta2": 1.0}, "--server-beta2 must be in (0, 1)"),
        ({"server_opt": "fedadam", "server_tau": -1e-3}, "--server-tau must be > 0"),
        # 0 used to stand for "the default"; now a value, and not a valid one
        ({"server_opt": "fedadam", "server_tau": 0.0}, "--server-tau must be > 0"),
        ({"server_opt": "fedadam", "server_beta2": 0.0}, "--server-beta2 must be in (0, 1)"),
        ({"server_opt": "fedadam", "server_lr": 0.0}, "--server-lr must be > 0"),
    ],
)
def test_bad_server_options_fail_in_one_line(kw, match):
    with pytest.raises(ConfigError) as e:
        FedSettings(**kw).validate()
    assert match in str(e.value) and "\n" not in str(e.value)


def test_a_resumed_run_must_keep_its_server_optimizer_and_ema(tmp_path):
    s = _settings("full", 2, server_opt="fedadam")
    s.run_dir = str(tmp_path)
    record_settings(tmp_path, s)
    for kw, what in (
        ({"server_opt": "fedyogi"}, "server_opt"),
        ({"server_opt": "fedadam", "server_lr": 0.01}, "server_lr"),
        ({"server_opt": "fedadam", "server_ema": 0.9}, "server_ema"),
        ({"server_opt": "fedadam", "server_tau": 1e-8}, "server_tau"),
        ({"server_opt": "fedadam", "server_beta2": 0.999}, "server_beta2"),
    ):
        with pytest.raises(ConfigError, match=f"differs in {what}"):
            record_settings(tmp_path, _settings("full", 2, **kw))
    record_settings(tmp_path, _settings("full", 2, server_opt="fedadam", rounds=9))  # more rounds
    # A fed.json written before these options existed resumes as the plain average.
    old = json.loads((fed_dir(tmp_path) / "fed.json").read_text())
    for k in ("server_opt", "server_lr", "server_momentum", "server_beta2", "server_tau",
              "server_ema"):  # fmt: skip
        del old[k]
    check_resumable(FedSettings.from_json(json.dumps(old)), _settings("full", 2))
    # A FedAdam run recorded before --server-beta2 / --server-tau existed ran on Flower's values,
    # and resumes as such (and only as such).
    old = json.loads((fed_dir(tmp_path) / "fed.json").read_text())
    del old["server_beta2"], old["server_tau"]
    check_resumable(
        FedSettings.from_json(json.dumps(old)), _settings("full", 2, server_opt="fedadam")
    )
    with pytest.raises(ConfigError, match="differs in server_tau"):
        check_resumable(FedSettings.from_json(json.dumps(old)),
                        _settings("full", 2, server_opt="fedadam", server_tau=1e-8))  # fmt: skip
    # ... and the clients' optimizer is part of the run too (not only of one client's round).
    sgd = _settings("full", 2, server_opt="fedadam")
    sgd.train["optimizer"] = "sgd"
    with pytest.raises(ConfigError, match=r"differs in train\.optimizer"):
        check_resumable(FedSettings.from_json(json.dumps(old)), sgd)


def test_the_adaptive_defaults_are_flowers_own():
    """No `--server-beta2` / `--server-tau` promises Flower's defaults: pinned to its signatures."""
    import inspect

    from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedYogi

    from decentdiff.federated.settings import ADAPTIVE

    for name, cls in (("fedadam", FedAdam), ("fedyogi", FedYogi), ("fedadagrad", FedAdagrad)):
        params = inspect.signature(cls).parameters
        beta2, tau = ADAPTIVE[name]
        assert params["tau"].default == tau, name
        if beta2 is not None:
            assert params["beta_2"].default == beta2, name
        else:
            assert "beta_2" not in params, name


def test_the_cli_refuses_bad_server_options_before_touching_run(capsys, tmp_path):
    from decentdiff.cli import app
    from decentdiff.cli.fed import fed_app

    if not any(g.name == "fed" for g in app.registered_groups):
        app.add_typer(fed_app, name="fed")
    run = tmp_path / "run"
    _bad(capsys, None, "fed", "run", run, "--server-opt", "sgd", match="unknown --server-opt")
    _bad(capsys, None, "fed", "run", run, "--server-opt", "fedadam", "--server-lr", -1,
         match="--server-lr must be > 0")  # fmt: skip
    assert not run.exists()


def test_plain_fedavg_full_stopped_and_resumed_equals_an_uninterrupted_one(tmp_path):
    """FULL with plain FedAvg (the default server), full precision: the global model of 2 rounds
    resumed to 3 is bitwise that of 3 in one go, and round 3 changed it (in-process; the Ray
    simulation's resume is tested with UDEC in tests/federated/test_simulation.py)."""
    once, twice = tmp_path / "once", tmp_path / "twice"
    _serve(once, 3, plain=True)
    _serve(twice, 2, plain=True)
    after_two = load_file(fed_dir(twice) / "global" / "model.safetensors")
    _serve(twice, 3, plain=True)
    a = load_file(fed_dir(once) / "global" / "model.safetensors")
    b = load_file(fed_dir(twice) / "global" / "model.safetensors")
    assert a.keys() == b.keys()
    assert [k for k in a if a[k].tobytes() != b[k].tobytes()] == []
    assert any(after_two[k].tobytes() != b[k].tobytes() for k in b)
