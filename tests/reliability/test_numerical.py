"""A non-finite loss stops training with one clear line and keeps the last good checkpoint."""

import math

import numpy as np
import pytest
import torch

from _cli import cli, tree_hashes
from decentdiff.errors import TrainingError
from decentdiff.training import loop
from decentdiff.training.checkpoint import load_tensors, read_meta

TINY = ["--preset", "tiny", "-q", "--set", "train.threads=1", "--set", "train.batch=8"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.default_rng(0)
    p = tmp_path_factory.mktemp("data") / "d.npz"
    np.savez(p, x=(rng.random((48, 1, 8, 8)) * 255).astype(np.uint8), y=np.repeat(np.arange(4), 12))
    return f"npz:{p}"


def _all_finite(d):
    meta = read_meta(d)
    return all(
        torch.isfinite(t).all()
        for name in ("model", "ema")
        for t in load_tensors(d, name, meta).values()
    )


def test_nan_loss_mid_run_keeps_the_last_checkpoint_and_no_nan_weights(
    tmp_path, capsys, data, monkeypatch
):
    """The loss turns NaN at step 5 of a run that checkpoints every 2 steps: training stops with
    one line naming the step; the checkpoint of step 4 (and .prev of step 2) is intact and finite."""
    run = tmp_path / "r"
    real_train = loop.train

    def nan_from_step_5(model, loss_fn, *a, **k):
        calls = {"n": 0}

        def poisoned(m, g):
            calls["n"] += 1
            out = loss_fn(m, g)
            loss, logs = out if isinstance(out, tuple) else (out, {})
            # Call 1 measures FLOPs; call s + 2 is step s (0-based): step 4 is the 5th step.
            return (loss * float("nan") if calls["n"] >= 6 else loss), logs

        return real_train(model, poisoned, *a, **k)

    monkeypatch.setattr("decentdiff.training.generative.train", nan_from_step_5)
    args = [
        "train",
        "monolith",
        run,
        "--data",
        data,
        "--steps",
        "10",
        "--set",
        "train.ckpt_every=2",
        *TINY,
    ]
    code, _, err = cli(capsys, *args)
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "loss became nan at step 4" in err and "last good checkpoint" in err, err
    d = run / "monolith"
    assert read_meta(d)["step"] == 4 and read_meta(d / ".prev")["step"] == 2
    assert _all_finite(d) and _all_finite(d / ".prev")
    monkeypatch.undo()
    # The same command, without the fault, resumes from step 4 and finishes.
    code, _, err = cli(capsys, *args)
    assert code == 0, err
    assert read_meta(d)["step"] == 10 and _all_finite(d)


def test_divergent_learning_rate_stops_with_the_checkpoint_unchanged(tmp_path, capsys, data):
    """A real divergence (lr = 1e30, no clipping): exit 2, the step-2 checkpoint byte for byte."""
    run = tmp_path / "r"
    base = ["train", "monolith", run, "--data", data, *TINY]
    assert cli(capsys, *base, "--steps", "2")[0] == 0
    good = tree_hashes(run / "monolith")
    sets = ["train.lr=1e30", "train.grad_clip=0", "train.warmup=0", "train.ckpt_every=1000"]
    code, _, err = cli(capsys, *base, "--steps", "40", *[x for s in sets for x in ("--set", s)])
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1 and "loss became" in err and "train.lr" in err, err
    assert tree_hashes(run / "monolith") == good
    assert _all_finite(run / "monolith")


def test_the_loop_checks_every_step_not_only_checkpoints(tmp_path):
    """Direct: an Inf at step 3 of a 5-step run with ckpt_every=100 stops at step 3, writes no
    checkpoint, and leaves the in-memory weights finite (the bad step is never applied)."""
    from decentdiff.config import TrainConfig

    model = torch.nn.Linear(2, 1)
    w0 = model.weight.detach().clone()
    step = {"n": -1}

    def loss_fn(m, g):
        step["n"] += 1
        y = m(torch.randn(4, 2, generator=g)).pow(2).mean()
        return y * math.inf if step["n"] == 4 else y  # n=0 is the FLOP measurement

    cfg = TrainConfig(steps=5, batch=4, ckpt_every=100, threads=1)
    with pytest.raises(TrainingError, match="at step 3"):
        loop.train(model, loss_fn, tmp_path / "ck", cfg, progress=False)
    assert not (tmp_path / "ck" / "meta.json").exists()
    assert torch.isfinite(model.weight).all() and not torch.equal(model.weight, w0)
