"""A UNet expert and a DiT expert in one ensemble, routed by a DiT router with a CLS token."""

import json

import numpy as np
import pytest
import torch

from _cli import cli
from decentdiff.cli import main
from decentdiff.ddm.load import load_ensemble
from decentdiff.ddm.router import load_router
from decentdiff.models.dit import DiT, DiTRouter
from decentdiff.models.unet import UNet
from decentdiff.run import Run
from decentdiff.training.generative import load_generative


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = np.zeros((80, 1, 8, 8), np.uint8)
    x[:40, :, :4] = 200
    x[40:, :, 4:] = 200
    x = np.clip(x + rng.integers(0, 40, x.shape), 0, 255).astype(np.uint8)
    p = tmp_path_factory.mktemp("data") / "two.npz"
    np.savez(p, x=x, y=np.repeat(np.arange(2), 40))
    run = tmp_path_factory.mktemp("runs") / "mixed"
    main(["partition", str(run), "--data", f"npz:{p}", "--parts", "2", "--by", "label"])
    common = ["--steps", "6", "--set", "train.batch=8", "-q"]
    # Two islands, two architectures: expert 0 a UNet, expert 1 a DiT (--arch with a plain size).
    main(["train", "expert", str(run), "-k", "0", "--preset", "tiny", *common])
    main(["train", "expert", str(run), "-k", "1", "--arch", "dit", "--preset", "tiny", *common])
    main(
        ["train", "router", str(run), "--preset", "dit-tiny", "--steps", "6", "--batch", "8", "-q"]
    )
    return run


def test_each_island_kept_its_architecture(mixed_run):
    metas = [json.loads((mixed_run / "experts" / str(k) / "meta.json").read_text()) for k in (0, 1)]
    assert "arch" not in metas[0]["unet"]  # a UNet's description is as before DiTs existed
    assert metas[1]["unet"]["arch"] == "dit" and metas[1]["unet"]["patch"] == 2
    assert isinstance(load_generative(mixed_run / "experts" / "0")[1], UNet)
    assert isinstance(load_generative(mixed_run / "experts" / "1")[1], DiT)
    router, rmeta = load_router(mixed_run / "router")
    assert isinstance(router, DiTRouter) and rmeta["router"]["arch"] == "dit"
    # Both trained: the DiT's adaLN-zero output layer has moved off zero.
    dit = load_generative(mixed_run / "experts" / "1", ema=False)[1]
    assert dit.out.linear.weight.abs().max() > 0


def test_full_routing_is_the_router_weighted_sum_of_both_architectures(mixed_run):
    """Oracle: each expert and the router loaded on their own, mixed by hand."""
    ens, _, _, networks = load_ensemble(Run(mixed_run), "full")
    assert isinstance(networks["expert 0"], UNet) and isinstance(networks["expert 1"], DiT)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(5, 1, 8, 8, generator=g), torch.rand(5, generator=g)
    v0 = load_generative(mixed_run / "experts" / "0")[0](x, t)
    v1 = load_generative(mixed_run / "experts" / "1")[0](x, t)
    router, _ = load_router(mixed_run / "router")
    with torch.no_grad():
        w = torch.softmax(router(x, t), dim=1)
        expected = w[:, :1, None, None] * v0 + w[:, 1:, None, None] * v1
        torch.testing.assert_close(ens.weights(x, t).float(), w, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ens(x, t), expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(v0, v1, atol=1e-3)  # two different networks, not one twice


def test_mixed_ensemble_samples_and_reports(mixed_run, capsys):
    out = mixed_run / "s.npz"
    code, _, err = cli(
        capsys, "sample", mixed_run, "--model", "ensemble", "--routing", "top1", "--n", "6",
        "--sample-steps", "3", "--out", out,
    )  # fmt: skip
    assert code == 0, err
    with np.load(out) as z:
        im = z["images"]
        assert im.shape == (6, 1, 8, 8) and np.isfinite(im).all() and np.abs(im).max() <= 1
    code, _, err = cli(capsys, "report", mixed_run)
    assert code == 0, err
    md = (mixed_run / "report.md").read_text()
    rows = {ln.split("|")[1].strip(): ln for ln in md.splitlines() if ln.startswith("| experts/")}
    assert "UNet 16-32" in rows["experts/0"] and "DiT d32×4/p2" in rows["experts/1"]
    assert "DiT router d32×2/p4 + CLS" in md


def test_distilling_mixed_experts_needs_a_student_preset(mixed_run, capsys):
    code, _, err = cli(capsys, "distill", mixed_run, "--steps", "1", "-q")
    assert code == 2 and "--preset" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(capsys, "distill", mixed_run, "--steps", "2", "--arch", "dit",
                       "--preset", "tiny", "-q")  # fmt: skip
    assert code == 0, err
    meta = json.loads((mixed_run / "distilled" / "meta.json").read_text())
    assert meta["unet"]["arch"] == "dit" and meta["unet"]["dim"] == 32
