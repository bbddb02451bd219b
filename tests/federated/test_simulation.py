"""One short real Flower simulation (tiny UNet, 3 clients): bytes measured == bytes predicted,
personal models kept in node state and saved as ordinary checkpoints, resume from the last round.

Flower + Ray take ~20 s to start here, so this is the one simulation of the suite.
"""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("flwr")

from tests._cli import cli
from tests.federated._flower_fakes import _task_identity, serve_in_process  # noqa: F401 (autouse)

from decentdiff.federated.store import read_rounds
from decentdiff.training.generative import load_generative


def _each_row_scores_its_own_client_against_held_out_data(run, per):
    """Federated per-client FID (issue 19, item 2): row i's generated features are those of
    client i's own model (sampled here again, independently of `fed eval`), and its FID is the
    Fréchet distance (re-derived with scipy) to the held-out part's features extracted here."""
    from dataclasses import replace

    from tests._oracles import fid_scipy

    from decentdiff.config import resolve
    from decentdiff.evaluation import features as FE
    from decentdiff.evaluation.evaluate import feature_net
    from decentdiff.generate import generate
    from decentdiff.run import Run

    r = Run(run)
    cfg = resolve(base=r.base_config())
    data = r.data(cfg, create=False)
    net, _ = feature_net(r, data, "classifier", progress=False)
    held = FE.extract(net, data.images[data.heldout_idx])["features"]
    train = FE.extract(net, data.images[data.train_idx])["features"]
    fakes = []
    for i, row in enumerate(per):
        s = replace(cfg.sample, n=row["n"], steps=row["steps"], seed=row["seed"])
        s = replace(s, solver=row["solver"])
        mine = FE.extract(net, generate(r, f"client:{i}", s, progress=False).images)["features"]
        with np.load(run / row["fake_features"]) as z:
            fake = z["features"]
        np.testing.assert_allclose(fake, mine, rtol=1e-5, atol=1e-5)
        assert row["n_real"] == len(data.heldout_idx)
        assert row["fid"] == pytest.approx(fid_scipy(held, fake), rel=1e-4)
        assert abs(fid_scipy(train, fake) - row["fid"]) > 1e-3  # the training part would differ
        fakes.append(fake)
    assert not np.allclose(fakes[0], fakes[1])  # the clients' models sample differently


@pytest.mark.slow
def test_udec_quantised_simulation_bytes_personal_models_and_resume(capsys, tmp_path):
    run = tmp_path / "run"
    common = ["--data", "digits", "--preset", "tiny", "--clients", 3, "--split", "dirichlet:1"]
    common += ["--method", "udec", "--quantize", 8, "--local-steps", 2, "--batch", 16]
    common += ["--client-state", "keep"]  # Adam carried across rounds in Flower's node state
    common += ["--recipe", "paper"]  # the config serve_in_process resumes with (fed_base)
    code, out, err = cli(capsys, "fed", "run", run, *common, "--rounds", 2, "--n", 0,
                         "--log", "tensorboard")  # fmt: skip
    assert code == 0, err
    assert not (run / "metrics.jsonl").exists()  # --n 0: no evaluation
    assert "round   2/2" in err and "personal models" in out
    assert "terminate failed" not in err and "(raylet)" not in err  # a clean shutdown is quiet
    rows = read_rounds(run)
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["complete"] and r["accepted"] == 3 for r in rows)
    # --log tensorboard: one event per round in RUN/federated, read back by TensorBoard itself.
    tb = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    ea = tb.EventAccumulator(str(run / "federated"))
    ea.Reload()
    logged = [(e.step, e.value) for e in ea.Scalars("federated/up")]
    assert logged == [(r["round"], float(r["up"])) for r in rows]
    assert all(c["status"] == "ok" for r in rows for c in r["clients"])
    # Round 2's private parts came from Flower's per-node state (1), not from disk (2).
    assert [c["private-from"] for c in rows[1]["clients"]] == [1, 1, 1]
    code, out, _ = cli(
        capsys,
        "fed",
        "bytes",
        "--preset",
        "tiny",
        "--clients",
        3,
        "--rounds",
        2,
        "--quantize",
        8,
        "--json",
    )
    want = json.loads(out)["udec"]
    assert sum(r["up"] for r in rows) == want["up"]
    assert sum(r["down"] for r in rows) == want["down"]
    # Round 1 broadcasts the whole model; round 2 only the decoder.
    assert rows[0]["down"] > rows[1]["down"] and rows[0]["up"] == rows[1]["up"]
    assert (run / "figures" / "fed_bytes.png").stat().st_size > 0
    # The server keeps only shared parts; each client's own model is an ordinary generator.
    shared = json.loads((run / "federated" / "shared" / "meta.json").read_text())
    assert shared["kind"] == "federated-shared" and "unet" not in shared
    after_two = _models(run)
    models = []
    for i in range(3):
        velocity, unet, meta, _ = load_generative(run / "federated" / "clients" / str(i))
        assert meta["round"] == 2 and meta["federated"]["method"] == "udec"
        x = torch.randn(2, 1, 8, 8)
        assert torch.isfinite(velocity(x, torch.full((2,), 0.5))).all()
        models.append({k: v.clone() for k, v in unet.state_dict().items()})
    enc = [k for k in models[0] if k.startswith("down.")]
    assert not torch.equal(models[0][enc[0]], models[1][enc[0]])  # private parts differ
    # Resume: round 3 continues from round 2 with clients that hold nothing in memory (they
    # reload their private parts from disk), in-process: the same ServerApp loop and ClientApp
    # handler as Ray's, without a second ~25 s Ray start-up.
    serve_in_process(run, clients=3, method="udec", quantize=8, local_steps=2, batch=16,
                     split="dirichlet:1", rounds=3, client_state="keep")  # fmt: skip
    code, out, err = cli(capsys, "fed", "eval", run, "--n", 12)
    assert code == 0, err
    # ... then every client's personal model is scored, and the summary is their spread.
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    per = [e for e in evals if e["kind"] == "eval"]
    assert [e["model"] for e in per] == ["client:0", "client:1", "client:2"]
    assert all(e["n"] == 12 and np.isfinite(e["fid"]) for e in per)
    summary = [e for e in evals if e["kind"] == "fed_eval"][-1]
    fids = np.array([e["fid"] for e in per])
    assert summary["fid"]["mean"] == pytest.approx(fids.mean())
    assert summary["fid"]["std"] == pytest.approx(fids.std())
    assert (summary["fid"]["min"], summary["fid"]["max"]) == (fids.min(), fids.max())
    assert "per-client FID" in out
    _each_row_scores_its_own_client_against_held_out_data(run, per)
    code, out, err = cli(
        capsys,
        "sample",
        run,
        "--model",
        "client:1",
        "--n",
        4,
        "--sample-steps",
        2,
        "--out",
        tmp_path / "c1.npz",
    )
    assert code == 0, err
    assert np.load(tmp_path / "c1.npz")["images"].shape == (4, 1, 8, 8)
    code, _, err = cli(capsys, "sample", run, "--model", "federated", "--out", tmp_path / "g.npz")
    assert code == 2 and "not a usable generator" in err
    rows = read_rounds(run)
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert rows[2]["down"] == rows[1]["down"] and rows[2]["complete"]
    assert [c["private-from"] for c in rows[2]["clients"]] == [2, 2, 2]  # a new process: disk
    meta = json.loads((run / "federated" / "clients" / "0" / "meta.json").read_text())
    assert meta["round"] == 3 and meta["step"] == 6
    # --client-state keep: each client's Adam ran on over all 3 rounds (2 steps each), across
    # Ray's node state (rounds 1-2) and the resume from disk (round 3).
    from decentdiff.federated.client import load_carry

    for i in range(3):
        c = load_carry(run / "federated" / "clients" / str(i), 3)
        assert c.offset == 6 and int(c.optimizer["opt.0.step"]) == 6
    # A different experiment in the same RUN is refused in one line.
    code, _, err = cli(capsys, "fed", "run", run, *common[:-6], "--method", "full", "--rounds", 3)
    assert code == 2 and "different federated run" in err
    assert np.isfinite(rows[-1]["loss"])
    # Stopped after round 2 and resumed, the federation ends bitwise where an uninterrupted one
    # of 3 rounds ends: the server's shared parts and every client's personal model (its private
    # parts back from disk). Each client's round is a pure function of (seed, round, client).
    # The uninterrupted one runs in-process (the same ServerApp loop and ClientApp handler; the
    # transport changes no bit, and a third Ray start-up costs ~30 s).
    once = tmp_path / "once"
    serve_in_process(once, clients=3, method="udec", quantize=8, local_steps=2, batch=16,
                     split="dirichlet:1", rounds=3, client_state="keep")  # fmt: skip
    a, b = _models(once), _models(run)
    assert a.keys() == b.keys() and len(a) == 4
    for name in a:
        assert a[name].keys() == b[name].keys()
        drift = [k for k in a[name] if not torch.equal(a[name][k], b[name][k])]
        assert not drift, f"resumed federation drifted in {name}: {drift[:3]}"
        # round 3 really trained every model
        assert any(not torch.equal(after_two[name][k], b[name][k]) for k in b[name]), name


def _models(run):
    """Every checkpointed model of a federated run: global or shared, and each client's own."""
    fed = run / "federated"
    files = sorted(fed.glob("global/model.safetensors")) + sorted(
        fed.glob("shared/model.safetensors")
    )
    files += sorted(fed.glob("clients/*/model.safetensors"))
    return {str(f.relative_to(fed)): load_file(f) for f in files}
