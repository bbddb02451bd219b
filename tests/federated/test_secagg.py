"""--secagg (Flower's SecAgg+): refusals before any round, the secure aggregate against the plain
weighted mean within the bound derived from SecAgg+'s quantisation (secagg.error_bound), through
Flower's real workflow and client mod in this process (no Ray), and one round of the real
ServerApp loop and ClientApp."""

import copy

import numpy as np
import pytest

pytest.importorskip("flwr")

from tests._cli import cli
from tests.federated._flower_fakes import InProcessGrid, _task_identity, serve_in_process  # noqa: F401

from decentdiff.errors import ConfigError
from decentdiff.federated import secagg as S
from decentdiff.federated.settings import FedSettings

REPORT = "bottleneck,decoder,encoder"


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"method": "usplit", "clients": 4}, "usplit"),
        ({"aggregate": "median", "clients": 5}, "--aggregate median"),
        ({"dp": "server", "dp_clip": 1.0, "noise_multiplier": 1.0}, "use --dp client"),
        (
            {"dp": "client", "dp_clip": 1.0, "noise_multiplier": 0.2, "dp_adaptive": True},
            "drop --dp-adaptive",
        ),
        ({"dp": "client", "dp_clip": 1.0, "target_epsilon": 8.0}, "give --noise-multiplier"),
        (
            {"dp": "client", "dp_clip": 1.0, "noise_multiplier": 1.0, "secagg_max_weight": 500},
            "--secagg-max-weight 500 with --dp",
        ),
        (
            {"dp": "client", "dp_clip": 1.0, "noise_multiplier": 1.0, "secagg_clip": 0.5},
            "use --secagg-clip ≥ --dp-clip",
        ),
        ({"quantize": 8}, "--quantize"),
        ({"clients": 2}, "--clients ≥ 3"),
        ({"clients": 4, "secagg_threshold": 4}, "--secagg-threshold 4 with 4 shares"),
        ({"clients": 4, "secagg_shares": 5}, "--secagg-shares 5 with 4 clients"),
        ({"clients": 5, "secagg_bits": 30}, "--secagg-bits 30"),
    ],
)
def test_refused_in_one_line(options, needle):
    opts = {"clients": 3, **options}
    with pytest.raises(ConfigError) as e:
        FedSettings(secagg=True, **opts).validate()
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_options_without_secagg_refused_and_valid_ones_pass():
    with pytest.raises(ConfigError, match="without --secagg"):
        FedSettings(clients=4, secagg_threshold=3).validate()
    s = FedSettings(clients=4, secagg=True, method="udec").validate()
    assert (S.shares_of(s), S.threshold_of(s)) == (4, 3)


def test_cli_refuses_before_any_round(capsys, tmp_path):
    run = tmp_path / "run"
    code, out, err = cli(
        capsys, "fed", "run", run, "--data", "digits", "--clients", "3", "--secagg",
        "--secagg-threshold", "3", "--rounds", "1",
    )  # fmt: skip
    assert code != 0
    assert "--secagg-threshold 3 with 3 shares" in err
    assert not (run / "federated").exists()


def test_client_weight_above_max_weight_refused():
    s = FedSettings(clients=3, secagg=True, secagg_max_weight=100).validate()
    with pytest.raises(ConfigError, match="--secagg-max-weight 120 or more"):
        S.check_sizes(s, [50, 120, 80])
    S.check_sizes(s, [50, 100, 80])


class _Nodes:
    """n nodes, each the real ClientApp wiring (S.client_mod → secaggplus_mod) around a handler
    that replies with fixed arrays in the layout decentdiff's ClientApp sends."""

    def __init__(self, thetas, weights, settings):
        from flwr.app import Context, Message, RecordDict
        from flwr.clientapp import ClientApp

        self.app = ClientApp(mods=[S.client_mod])
        self.ctx = {
            10 + i: Context(run_id=1, node_id=10 + i, node_config={}, state=RecordDict(),
                            run_config={})
            for i in range(len(thetas))
        }  # fmt: skip
        self.calls = 0

        @self.app.train()
        def train(msg, ctx):
            i = ctx.node_id - 10
            self.calls += 1
            conf, received = S.read_fitins(msg.content)
            assert conf["report"] == REPORT and set(received) == set(thetas[i])
            metrics = {"num-examples": weights[i], "loss": float(i)}
            return Message(S.fitres_content(thetas[i], metrics, settings), reply_to=msg)

    def get_node_ids(self):
        return list(self.ctx)

    def send_and_receive(self, messages, *, timeout=None):
        return [self.app(_copy(m), self.ctx[m.metadata.dst_node_id]) for m in messages]


def _copy(m):
    """What the wire does: each node gets its own message (the workflow sends one content to all
    and the mod edits what it receives)."""
    return copy.deepcopy(m)


def _train_messages(nodes, arrays, rnd=1):
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

    rec = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    return [
        Message(
            RecordDict({"arrays": rec, "config": ConfigRecord({"round": rnd, "report": REPORT})}),
            message_type=MessageType.TRAIN,
            dst_node_id=n,
        )
        for n in nodes
    ]


@pytest.mark.parametrize("bits", [22, 12])
def test_secure_mean_equals_plain_mean_within_the_quantisation_bound(bits):
    rng = np.random.default_rng(0)
    n = 4
    shapes = {"down.0.weight": (3, 5), "up.1.bias": (7,)}
    thetas = [{k: rng.normal(0, 0.5, s).astype(np.float32) for k, s in shapes.items()}
              for _ in range(n)]  # fmt: skip
    weights = [300, 120, 512, 77]
    s = FedSettings(clients=n, secagg=True, secagg_bits=bits, secagg_max_weight=600).validate()
    nodes = _Nodes(thetas, weights, s)
    grid = S.SecAggGrid(nodes, s)
    sec = grid.send_and_receive(_train_messages(nodes.get_node_ids(), thetas[0]))
    assert isinstance(sec, S.SecureRound) and nodes.calls == n
    assert sec.keys == sorted(shapes)
    assert {c["num_examples"] for c in sec.clients.values()} == set(weights)
    total = sum(weights)
    for k, got in zip(sec.keys, sec.mean, strict=True):
        plain = (
            sum(w * t[k].astype(np.float64) for w, t in zip(weights, thetas, strict=True)) / total
        )
        spread = max(float(np.abs(t[k] - plain).max()) for t in thetas)
        bound = S.error_bound(weights, spread, clip=s.secagg_clip, bits=bits,
                              max_weight=s.secagg_max_weight)  # fmt: skip
        err = float(np.abs(got - plain).max())
        assert err < bound
        assert err > 0  # it did go through SecAgg+'s quantisation
        # the mean, not one client's update, nor the unweighted mean
        assert float(np.abs(got - sum(t[k] for t in thetas) / n).max()) > bound
    # four stages each way, every node; the upload is the masked vector (8 bytes a weight)
    numel = sum(int(np.prod(v)) for v in shapes.values())
    assert all(sec.up_wire[node] > 8 * numel for node in nodes.get_node_ids())
    if bits == 12:  # coarser quantisation, larger (and still respected) error
        assert S.error_bound(weights, 1.0, clip=8, bits=12, max_weight=600) > 1e-3


def test_secure_round_halts_when_too_few_nodes_for_the_threshold():
    """A node that vanishes between the setup and key-sharing stages leaves its neighbours with
    fewer than the threshold: the workflow halts and the round returns no mean (the strategy then
    keeps the global model)."""
    rng = np.random.default_rng(1)
    thetas = [{"mid.w": rng.normal(size=4).astype(np.float32)} for _ in range(3)]
    s = FedSettings(clients=3, secagg=True, secagg_threshold=2).validate()
    nodes = _Nodes(thetas, [10, 20, 30], s)
    real = nodes.send_and_receive
    stage = {"n": 0}

    def flaky(messages, *, timeout=None):
        stage["n"] += 1
        messages = list(messages)
        if stage["n"] == 2:  # share keys: two of three nodes are gone
            messages = messages[:1]
        return real(messages, timeout=timeout)

    nodes.send_and_receive = flaky
    sec = S.SecAggGrid(nodes, s).send_and_receive(_train_messages(nodes.get_node_ids(), thetas[0]))
    assert sec.mean is None and nodes.calls == 0


def test_one_real_round_matches_plain_fedavg_of_the_same_updates(tmp_path, monkeypatch):
    """The real ServerApp loop (serve) and ClientApp (with its SecAgg+ mod) in this process: the
    new global model is the plain weighted mean of the clients' actual updates, within the bound."""
    from safetensors.numpy import load_file

    from decentdiff.federated import client_app as CA
    from decentdiff.federated.store import global_dir, read_rounds

    sent = []
    turn = CA.client_turn

    def recording(*a, **k):
        out = turn(*a, **k)
        sent.append((out[0], out[2]["num-examples"]))
        return out

    monkeypatch.setattr(CA, "client_turn", recording)
    monkeypatch.setattr(
        InProcessGrid, "send_and_receive",
        lambda self, messages, timeout=None: [CA.app(_copy(m), self.ctx[m.metadata.dst_node_id])
                                              for m in messages],
    )  # fmt: skip
    s = serve_in_process(tmp_path / "run", clients=3, method="full", rounds=1, local_steps=1,
                         secagg=True)  # fmt: skip
    (row,) = read_rounds(tmp_path / "run")
    assert row["complete"] and row["accepted"] == 3 and row["secagg"]["threshold"] == 2
    assert all(c["status"] == "ok" and c["up_wire"] > 0 for c in row["clients"])
    assert len(sent) == 3
    weights = [w for _, w in sent]
    files = list(global_dir(tmp_path / "run", s.method_spec).rglob("*.safetensors"))
    model = {}
    for f in files:
        model.update(load_file(f))
    checked = 0
    for k in sent[0][0]:
        if k not in model:
            continue
        plain = sum(w * u[k].astype(np.float64) for u, w in sent) / sum(weights)
        spread = max(float(np.abs(u[k] - plain).max()) for u, _ in sent)
        bound = S.error_bound(weights, spread, clip=s.secagg_clip, bits=s.secagg_bits,
                              max_weight=s.secagg_max_weight)  # fmt: skip
        bound += 4 * np.finfo(np.float32).eps * float(np.abs(plain).max())  # float32 storage
        assert float(np.abs(model[k] - plain).max()) < bound, k
        checked += 1
    assert checked == len(sent[0][0])


def test_a_secure_run_repeats_bit_for_bit_whatever_numpys_global_state(tmp_path, monkeypatch):
    """Flower's stochastic rounding draws from NumPy's global generator; the client seeds it per
    (seed, round, client), so two runs of the same settings give the same global model exactly,
    even when something else consumed that generator in between."""
    from safetensors.numpy import load_file

    from decentdiff.federated import client_app as CA
    from decentdiff.federated.store import global_dir

    monkeypatch.setattr(
        InProcessGrid, "send_and_receive",
        lambda self, messages, timeout=None: [CA.app(_copy(m), self.ctx[m.metadata.dst_node_id])
                                              for m in messages],
    )  # fmt: skip
    models = []
    for i, entropy in enumerate((1, 2)):
        np.random.seed(entropy)  # noqa: NPY002 (another state of the global generator)
        run = tmp_path / f"run{i}"
        s = serve_in_process(run, clients=3, method="full", rounds=1, local_steps=1, secagg=True)
        model = {}
        for f in global_dir(run, s.method_spec).rglob("*.safetensors"):
            model.update(load_file(f))
        models.append(model)
    assert models[0].keys() == models[1].keys() and models[0]
    assert all(np.array_equal(models[0][k], models[1][k]) for k in models[0])


def test_secure_aggregation_cannot_be_switched_on_or_off_when_a_run_resumes():
    from dataclasses import replace

    from decentdiff.federated.settings import FedSettings
    from decentdiff.federated.store import check_resumable

    plain = FedSettings(clients=3)
    check_resumable(plain, replace(plain, rounds=plain.rounds + 5))  # more rounds: fine
    with pytest.raises(ConfigError) as e:
        check_resumable(plain, replace(plain, secagg=True))
    assert "secagg" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "option", ["secagg_clip", "secagg_bits", "secagg_max_weight", "secagg_shares"]
)
def test_every_secagg_option_without_secagg_is_refused(option):
    from dataclasses import replace

    from decentdiff.federated import secagg
    from decentdiff.federated.settings import DEFAULTS, FedSettings

    s = replace(FedSettings(clients=5), **{option: getattr(DEFAULTS, option) + 3})
    with pytest.raises(ConfigError) as e:
        secagg.validate(s)
    assert "without --secagg" in str(e.value) and option.replace("_", "-") in str(e.value)


def test_fed_settings_defaults_are_secaggs():
    from decentdiff.federated import secagg
    from decentdiff.federated.settings import DEFAULTS

    assert {k: getattr(DEFAULTS, k) for k in secagg.DEFAULTS} == secagg.DEFAULTS
