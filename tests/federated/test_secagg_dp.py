"""--secagg --dp client (fixed clipping): SecAgg+'s rounding bound re-derived from Flower's own
quantiser, the secure DP aggregate against the plain one computed in NumPy (same clipped updates,
same noise) through Flower's real workflow and client mod, and the ε per round of real rounds
(the ServerApp loop and ClientApp in this process) against the accountant at the effective σ."""

import copy
import math

import numpy as np
import pytest

pytest.importorskip("flwr")

from tests.federated._flower_fakes import InProcessGrid, _task_identity, serve_in_process  # noqa: F401
from tests.federated.test_secagg import _train_messages

from decentdiff.federated import privacy as D
from decentdiff.federated import secagg as S
from decentdiff.federated.settings import FedSettings


def _dp_settings(**kw):
    opts = dict(clients=4, secagg=True, dp="client", dp_clip=0.5, noise_multiplier=0.8)
    return FedSettings(**{**opts, **kw}).validate()


def test_valid_combination_passes_with_max_weight_one():
    s = _dp_settings()
    assert S.max_weight_of(s) == 1.0 and S.max_weight_of(FedSettings(clients=4)) == 1000.0
    assert S.max_weight_of(_dp_settings(secagg_max_weight=1)) == 1.0
    S.check_sizes(s, [5000, 80, 20])  # weights are 1 under --dp: no image count is too large
    assert S.SecAggGrid(None, s).workflow().max_weight == 1.0


def test_rounding_bound_rederived_from_flowers_quantiser():
    """One client's contribution as the server recovers it from Flower's own quantize (weight
    r = round(w/W·Q)/Q): (q·2c/Q − c)/r. It differs from the clipped update by < 2c/(Q·r) per
    coordinate, so by < ρ = √d·2c/(Q·r) in norm (the formula written out here, not taken from
    secagg.py), and the largest per-coordinate error over many coordinates is close to a step."""
    from flwr.common.secure_aggregation.quantization import quantize

    rng = np.random.default_rng(3)
    d, c, bits, C = 20_000, 8.0, 12, 0.5
    q = 2**bits
    delta = rng.normal(size=d)
    delta *= C / np.linalg.norm(delta)  # a clipped update, norm C
    for max_weight, weight in ((1.0, 1), (1000.0, 1), (600.0, 77)):
        r = round(weight / max_weight * q) / q
        rho = math.sqrt(d) * 2 * c / (q * r)
        assert S.rounding_bound(d, clip=c, bits=bits, max_weight=max_weight, weight=weight) == (
            pytest.approx(rho, rel=1e-12)
        )
        (qi,) = quantize([r * delta], c, q)
        back = (qi.astype(np.float64) * 2 * c / q - c) / r
        err = back - delta
        step = 2 * c / (q * r)
        assert np.abs(err).max() < step and np.abs(err).max() > 0.9 * step
        assert np.linalg.norm(err) < rho and np.linalg.norm(back) < C + rho
    # under --dp (W = 1): ρ = √d·2c/Q; with the default max weight it would be ~1000× larger
    one = S.rounding_bound(d, clip=c, bits=bits, max_weight=1.0)
    assert one == pytest.approx(math.sqrt(d) * 2 * c / q)
    assert S.rounding_bound(d, clip=c, bits=bits, max_weight=1000.0) > 999 * one


def test_what_a_client_masks_is_its_update_clipped_to_c():
    """The last step before masking clips, whatever the caller did: Δ = values − received over
    the floating keys, scaled to norm C jointly; integer buffers are sent as zeros."""
    received = {"down.0.weight": np.ones((3, 2), np.float32), "down.0.count": np.array([4])}
    values = {"down.0.weight": np.full((3, 2), 3.0, np.float32), "down.0.count": np.array([9])}
    got = S.dp_update(values, received, 0.5)
    assert np.linalg.norm(got["down.0.weight"]) == pytest.approx(0.5, rel=1e-12)
    assert np.allclose(got["down.0.weight"], 0.5 / math.sqrt(6)) and not got["down.0.count"].any()
    small = {"down.0.weight": received["down.0.weight"] + 0.01, "down.0.count": np.array([9])}
    assert np.allclose(S.dp_update(small, received, 0.5)["down.0.weight"], 0.01, atol=1e-7)


def _clip_np(delta, c):
    """An independent FlatClip: the update as one float64 vector, scaled to norm ≤ c."""
    norm = math.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in delta.values()))
    scale = min(1.0, c / norm) if norm > 0 else 1.0
    return {k: v.astype(np.float64) * scale for k, v in delta.items()}


class _DPNodes:
    """Nodes running the real ClientApp wiring (S.client_mod → secaggplus_mod) around the reply
    decentdiff's ClientApp sends under --dp client (S.fitres_content, which clips)."""

    def __init__(self, locals_, settings, drop_at_stage=None):
        from flwr.app import Context, Message, RecordDict
        from flwr.clientapp import ClientApp

        self.app = ClientApp(mods=[S.client_mod])
        self.ctx = {
            10 + i: Context(run_id=1, node_id=10 + i, node_config={}, state=RecordDict(),
                            run_config={})
            for i in range(len(locals_))
        }  # fmt: skip
        self.trained, self.stage, self.drop_at_stage = [], 0, drop_at_stage

        @self.app.train()
        def train(msg, ctx):
            i = ctx.node_id - 10
            conf, received = S.read_fitins(msg.content)
            assert float(conf["dp-clip"]) == settings.dp_clip
            self.trained.append(i)
            metrics = {"num-examples": 100 + i, "loss": 0.5, "dp-unclipped": 1.0}
            # the model as trained, unclipped: the reply itself clips (S.dp_update)
            return Message(S.fitres_content(locals_[i], metrics, settings, received), reply_to=msg)

    def get_node_ids(self):
        return list(self.ctx)

    def send_and_receive(self, messages, *, timeout=None):
        self.stage += 1
        messages = list(messages)
        if self.stage == self.drop_at_stage:  # the last node is gone from this stage on
            messages = [m for m in messages if m.metadata.dst_node_id != max(self.ctx)]
        return [self.app(copy.deepcopy(m), self.ctx[m.metadata.dst_node_id]) for m in messages]


@pytest.mark.parametrize("bits", [22, 12])
def test_secure_dp_aggregate_equals_the_plain_one_within_the_rounding(bits):
    """4 clients sampled (n_g = 4), the 4th gone before sending its masked vector (n_rep = 3):
    θ_g + (Σ clip(Δ_i) + noise)/n_g in NumPy, the same seeded noise, within the rounding."""
    rng = np.random.default_rng(0)
    shapes = {"down.0.weight": (6, 5), "mid.0.bias": (7,), "up.1.weight": (4, 4)}
    glob = {k: rng.normal(0, 0.3, s).astype(np.float32) for k, s in shapes.items()}
    glob["down.0.count"] = np.array([7], np.int64)  # an integer buffer: never released
    scales = [0.05, 0.4, 2.0, 1.0]  # update norms below and above C = 0.5
    locals_ = []
    for sc in scales:
        loc = {k: (v + rng.normal(0, sc / 7, v.shape)).astype(np.float32)
               for k, v in glob.items() if v.dtype == np.float32}  # fmt: skip
        locals_.append({**loc, "down.0.count": np.array([9], np.int64)})
    s = _dp_settings(secagg_bits=bits, secagg_threshold=3)
    nodes = _DPNodes(locals_, s, drop_at_stage=3)
    msgs = _train_messages(list(nodes.ctx), glob)
    for m in msgs:
        m.content.config_records["config"]["dp-clip"] = 0.5
    sec = S.SecAggGrid(nodes, s).send_and_receive(msgs)
    assert isinstance(sec, S.SecureRound) and sec.mean is not None
    assert sorted(nodes.trained) == [0, 1, 2] and len(sec.clients) == 3
    for res in sec.clients.values():  # weight 1; the clip bit is not sent
        assert res["num_examples"] == 1 and "dp-unclipped" not in res["metrics"]
    assigned = {k: 4 for k in sorted(glob)}  # n_g: the clients sampled
    C, sigma = 0.5, 0.8
    p = D.from_settings(s)
    p.rng = np.random.default_rng(42)
    new, row = S.private_release(p, glob, sec, assigned, s)

    floating = [k for k in sorted(glob) if glob[k].dtype == np.float32]
    d = sum(glob[k].size for k in floating)
    total = {k: np.zeros(glob[k].shape) for k in floating}
    for loc in locals_[:3]:
        clipped = _clip_np({k: loc[k].astype(np.float64) - glob[k] for k in floating}, C)
        for k in floating:
            total[k] += clipped[k]
    noise_rng = np.random.default_rng(42)
    noise = {k: noise_rng.normal(0.0, sigma * C, glob[k].shape) for k in assigned if k in total}
    step = 2 * s.secagg_clip / 2**bits
    eps32 = float(np.finfo(np.float32).eps)
    worst_rounding = 0.0
    for k in floating:
        want = glob[k].astype(np.float64) + (total[k] + noise[k]) / 4
        # 3 clients' rounding (< 1 step each) over n_g; the clients' float32 clipped models;
        # the result stored in float32
        bound = 3 * (step + 4 * eps32) / 4 + 2 * eps32 * float(np.abs(want).max())
        err = float(np.abs(new[k] - want).max())
        assert err < bound, k
        worst_rounding = max(worst_rounding, err)
        assert float(np.abs(want - glob[k] - total[k] / 4).max()) > 10 * bound  # noise is there
        assert new[k].dtype == np.float32
    if bits == 12:
        assert worst_rounding > 1e-4  # it did go through SecAgg+'s (coarse) quantisation
    assert new["down.0.count"] is glob["down.0.count"]  # kept as is, not the clients' 9

    # the plain --dp client path (privacy.py's own clip, sum, noise) on the same replies
    plain = D.from_settings(s)
    plain.rng = np.random.default_rng(42)
    sent = [D.client_clip(loc, glob, sorted(loc), C)[0] for loc in locals_[:3]]
    ref, _ = plain.aggregate(glob, sent, assigned)
    for k in floating:
        assert float(np.abs(new[k] - ref[k]).max()) < 3 * (step + 8 * eps32) / 4 + 1e-6

    rho = math.sqrt(d) * 2 * s.secagg_clip / 2**bits
    assert row["rounding"] == pytest.approx(rho, rel=1e-12) and row["coordinates"] == d
    assert row["reporting"] == 3 and row["sensitivity"] == pytest.approx(C + rho)
    eff = sigma * C / (C + rho)
    assert row["sigma_effective"] == pytest.approx(eff, rel=1e-12)
    assert row["epsilon"] == pytest.approx(D.epsilon(1, eff, 1e-5), rel=1e-9)
    assert row["epsilon"] > D.epsilon(1, sigma, 1e-5)  # the rounding costs something


class _Constant:
    """A stand-in generator: every noise coordinate is loc + scale (so the test reads the std)."""

    def normal(self, loc, scale, size=None):
        return np.full(size, loc + scale)


def test_real_rounds_report_epsilon_at_the_effective_sigma_and_resume(tmp_path, monkeypatch):
    """The real ServerApp loop and ClientApp (with its SecAgg+ mod): round 1's global model is
    θ_g + (Σ clip(Δ_i) + σ·C)/n_g (the noise replaced by its std), and rounds.jsonl's ε per
    round is the accountant's at σ·C/(C + √d·2c/Q), d counted from the saved model; resumed."""
    from safetensors.numpy import load_file

    from decentdiff.federated import client_app as CA
    from decentdiff.federated.store import global_dir, read_rounds

    seen = []
    turn = CA.client_turn

    def recording(settings, data, round_, received, *a, **k):
        out = turn(settings, data, round_, received, *a, **k)
        seen.append((round_, received, out[0]))
        return out

    made = D.from_settings

    def constant_noise(settings):
        p = made(settings)
        p.rng = _Constant()
        return p

    monkeypatch.setattr(CA, "client_turn", recording)
    monkeypatch.setattr(D, "from_settings", constant_noise)
    monkeypatch.setattr(
        InProcessGrid, "send_and_receive",
        lambda self, messages, timeout=None: [CA.app(copy.deepcopy(m), self.ctx[m.metadata.dst_node_id])
                                              for m in messages],
    )  # fmt: skip
    C, sigma = 0.05, 1.5
    common = dict(clients=3, method="full", local_steps=1, secagg=True, dp="client", dp_clip=C,
                  noise_multiplier=sigma)  # fmt: skip
    s = serve_in_process(tmp_path / "run", rounds=1, **common)
    model = {}
    for f in global_dir(tmp_path / "run", s.method_spec).rglob("*.safetensors"):
        model.update(load_file(f))
    assert len(seen) == 3 and all(r == 1 for r, _, _ in seen)
    received = seen[0][1]
    floating = [k for k in seen[0][2] if np.issubdtype(received[k].dtype, np.floating)]
    d = sum(received[k].size for k in floating)
    total = {k: np.zeros(received[k].shape) for k in floating}
    for _, rec, upd in seen:
        clipped = _clip_np({k: upd[k].astype(np.float64) - rec[k] for k in floating}, C)
        for k in floating:
            total[k] += clipped[k]
    step = 2 * s.secagg_clip / 2**s.secagg_bits
    eps32 = float(np.finfo(np.float32).eps)
    checked = 0
    for k in floating:
        if k not in model:
            continue
        want = received[k].astype(np.float64) + (total[k] + sigma * C) / 3
        bound = step + 4 * eps32 * (float(np.abs(want).max()) + 1)
        assert float(np.abs(model[k] - want).max()) < bound, k
        checked += 1
    assert checked == len(floating)

    eff = sigma * C / (C + math.sqrt(d) * 2 * s.secagg_clip / 2**s.secagg_bits)
    serve_in_process(tmp_path / "run", rounds=2, **common)  # resumed: the count goes on
    rows = read_rounds(tmp_path / "run")
    assert [r["dp"]["releases"] for r in rows] == [1, 2]
    for r in rows:
        assert r["complete"] and r["accepted"] == 3
        assert all(c["status"] == "ok" and c["num_examples"] > 1 for c in r["clients"])
        dp = r["dp"]
        assert dp["coordinates"] == d and dp["sigma_effective"] == pytest.approx(eff, rel=1e-12)
        assert dp["epsilon"] == pytest.approx(D.epsilon(dp["releases"], eff, 1e-5), rel=1e-9)
        assert dp["epsilon_rdp"] == pytest.approx(
            D.rdp_epsilon(dp["releases"], eff, 1e-5)[0], rel=1e-9
        )
    assert D.final(rows)["sigma_accounted"] == pytest.approx(eff, rel=1e-12)
    assert "accounted at" in D.summary_line(rows)


def test_cli_refuses_server_side_dp_with_secagg_before_any_round(capsys, tmp_path):
    from tests._cli import cli

    run = tmp_path / "run"
    code, _, err = cli(
        capsys, "fed", "run", run, "--data", "digits", "--clients", "3", "--secagg",
        "--dp", "server", "--dp-clip", "0.1", "--noise-multiplier", "1", "--rounds", "1",
    )  # fmt: skip
    assert code != 0 and "--secagg with --dp server" in err and "use --dp client" in err
    assert not (run / "federated").exists()


def _gdp_delta(eps, mu):
    """δ(ε) of μ-GDP written out here (Balle & Wang 2018, Theorem 8), not privacy.py's."""
    phi = lambda x: 0.5 * math.erfc(-x / math.sqrt(2))  # noqa: E731
    return phi(-eps / mu + mu / 2) - math.exp(eps) * phi(-eps / mu - mu / 2)


@pytest.mark.slow
def test_fed_run_secagg_dp_client_through_rays_simulation_engine(capsys, tmp_path):
    """``fed run --secagg --dp client`` end to end through Flower's real simulation engine (Ray
    actors, SecAgg+'s four stages as real messages), 2 rounds of 3 clients. Against values
    computed here: ρ = √d·2c/2^bits from the saved model's floating parameters and the default
    c, bits; σ_eff = σ·C/(C + ρ); ε after t releases is where the composed mechanism's δ(ε),
    μ = √t/σ_eff, meets --dp-delta; and the model moved by the noise σ·C/n_g per coordinate
    per round (the clipped updates are ≤ C in norm, negligible beside it). Resume is covered
    in-process above; another Ray start here would cost ~25 s. ~30 s here (2 busy cores)."""
    from safetensors.numpy import load_file
    from tests._cli import cli

    from decentdiff.federated.store import initial_arrays, read_rounds, read_settings

    run = tmp_path / "run"
    C, sigma, delta = 0.1, 1.0, 1e-5
    code, out, err = cli(
        capsys, "fed", "run", run, "--data", "digits", "--preset", "tiny", "--clients", 3,
        "--rounds", 2, "--local-steps", 2, "--batch", 16, "--n", 0, "--secagg",
        "--dp", "client", "--dp-clip", C, "--noise-multiplier", sigma,
    )  # fmt: skip
    assert code == 0, err
    assert "round   2/2" in err and "terminate failed" not in err
    model = load_file(run / "federated" / "global" / "model.safetensors")
    start = initial_arrays(read_settings(run))
    floating = [k for k, v in model.items() if np.issubdtype(v.dtype, np.floating)]
    assert sorted(model) == sorted(start) and floating == list(model)
    d = sum(model[k].size for k in floating)
    rho = math.sqrt(d) * 2 * 8.0 / 2**22  # --secagg-clip 8, --secagg-bits 22 (the defaults)
    eff = sigma * C / (C + rho)
    rows = read_rounds(run)
    assert [r["round"] for r in rows] == [1, 2]
    for t, r in enumerate(rows, 1):
        assert r["complete"] and r["accepted"] == 3
        assert r["secagg"]["failures"] == [] and r["up"] > 0 and r["down"] > 0
        dp = r["dp"]
        assert (dp["releases"], dp["reporting"], dp["coordinates"]) == (t, 3, d)
        assert dp["rounding"] == pytest.approx(rho, rel=1e-12)
        assert dp["sigma_effective"] == pytest.approx(eff, rel=1e-12)
        assert dp["epsilon"] == pytest.approx(D.epsilon(t, eff, delta), rel=1e-9)
        mu = math.sqrt(t) / eff
        assert _gdp_delta(dp["epsilon"], mu) == pytest.approx(delta, rel=1e-6)
        assert _gdp_delta(dp["epsilon"] * 0.99, mu) > delta  # the least such ε
    moved = np.concatenate([(model[k].astype(np.float64) - start[k]).ravel() for k in floating])
    want = math.sqrt(len(rows)) * sigma * C / 3  # two rounds' noise, each σ·C/n_g, n_g = 3
    assert abs(moved.mean()) < 0.05 * want
    assert moved.std() == pytest.approx(want, rel=0.03)
    assert "(ε = " in out and "after 2 rounds" in out


def test_rounds_of_different_rounding_compose_as_one_gaussian_mechanism_and_resume_so():
    """Two releases with different SecAgg+ rounding (UDEC's full rounds or a resume with other
    --secagg-bits change d and so ρ): the ε after both is that of μ-GDP with μ² = Σ σ_t^−2,
    σ_t = σ·C/(C + ρ_t), checked by δ(ε) of the Gaussian mechanism written out here; resuming
    from the rows gives the same ε."""
    from decentdiff.federated.privacy import Privacy

    sigma, c, delta = 1.1, 0.1, 1e-5
    p = Privacy(sigma=sigma, clip_norm=c, delta=delta, mode="client",
                rng=np.random.default_rng(0))  # fmt: skip
    glob = {"w": np.zeros(5, np.float32)}
    rows = []
    for rho in (0.001, 0.02):
        _, row = p.release(glob, {"w": np.ones(5)}, {"w": 3}, rho)
        rows.append({"complete": True, "dp": row})
    mu = math.sqrt(sum((sigma * c / (c + rho)) ** -2 for rho in (0.001, 0.02)))
    eps = rows[-1]["dp"]["epsilon"]

    def phi(x):
        return 0.5 * math.erfc(-x / math.sqrt(2))

    def delta_at(e):  # Balle & Wang 2018: the Gaussian mechanism of sensitivity/σ = μ
        return phi(-e / mu + mu / 2) - math.exp(e) * phi(-e / mu - mu / 2)

    assert abs(delta_at(eps) - delta) < 1e-3 * delta and delta_at(0.99 * eps) > delta
    # not the last round's multiplier alone, nor σ for both
    assert rows[0]["dp"]["sigma_effective"] != rows[1]["dp"]["sigma_effective"]
    resumed = Privacy(sigma=sigma, clip_norm=c, delta=delta, mode="client").resume(rows)
    assert resumed.releases == 2 and resumed.spent()["epsilon"] == pytest.approx(eps, rel=1e-12)
