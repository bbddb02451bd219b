"""The router learns p(cluster | x_t) (issue 19, item 1): a trained router's cross-entropy against
the exact posterior of the finite data set (EmpiricalRouter), and router_accuracy by hand."""

import numpy as np
import pytest
import torch

from decentdiff.ddm.router import load_router, router_accuracy
from decentdiff.diffusion.reference import EmpiricalRouter
from decentdiff.training.generative import to_model_space

#: The trained router may be this much worse (nats) than the exact posterior at any t.
MARGIN = 0.2


def _blobs(n_per: int = 40, seed: int = 0):
    """4 clusters of 8×8 images, a bright 4×4 quadrant each, with pixel noise."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(4), n_per)
    x = np.zeros((len(y), 1, 8, 8), np.uint8)
    for i, c in enumerate(y):
        r, q = divmod(int(c), 2)
        x[i, 0, 4 * r : 4 * r + 4, 4 * q : 4 * q + 4] = 200
    x = np.clip(x.astype(int) + rng.integers(0, 50, x.shape), 0, 255).astype(np.uint8)
    return x, y


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    x, y = _blobs()
    src = tmp_path_factory.mktemp("d") / "blobs.npz"
    np.savez(src, x=x, y=y)
    run = tmp_path_factory.mktemp("r") / "run"
    from decentdiff.cli import main

    main(["partition", str(run), "--data", f"npz:{src}", "--parts", "4", "--by", "label",
          "--set", "data.heldout=0"])  # fmt: skip
    main(["train", "router", str(run), "--steps", "400", "--batch", "64", "--preset", "tiny",
          "--set", "train.warmup=20", "-q"])  # fmt: skip
    router, _ = load_router(run / "router")
    # The router's images and clusters: the RUN's training part and the partition's ids.
    from decentdiff.config import resolve
    from decentdiff.ddm.store import load_partition
    from decentdiff.run import Run

    r = Run(run)
    data = r.data(resolve(base=r.base_config()), create=False)
    return router, data.images[data.train_idx], load_partition(r).assignments


def _nll(logp: torch.Tensor, target: torch.Tensor) -> float:
    return float(-logp[torch.arange(len(target)), target].mean())


def _draws(x, y, t: float, n: int = 600, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(x), (n,), generator=g)
    x0 = to_model_space(torch.from_numpy(x))[idx].double()
    xt = (1 - t) * x0 + t * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    return xt, torch.full((n,), t, dtype=torch.float64), torch.from_numpy(y)[idx]


def test_router_cross_entropy_is_close_to_the_exact_posterior(trained):
    router, x, y = trained
    exact = EmpiricalRouter(to_model_space(torch.from_numpy(x)).double(), torch.from_numpy(y))
    prior_nll = float(np.log(4))  # 4 equal clusters
    informative = 0
    for t in (0.2, 0.5, 0.8, 0.9):
        xt, tt, target = _draws(x, y, t)
        with torch.no_grad():
            lp_router = torch.log_softmax(router(xt.float(), tt.float()).double(), 1)
        lp_exact = exact(xt, tt)
        nll_r, nll_e = _nll(lp_router, target), _nll(lp_exact, target)
        assert nll_r <= nll_e + MARGIN, (t, nll_r, nll_e)
        if nll_e < prior_nll - 0.5:  # where the posterior is informative, so is the router
            informative += 1
            assert nll_r < prior_nll - 0.3, (t, nll_r, prior_nll)
        # The check can fail: a router answering the prior is far outside the margin here.
        if t <= 0.5:
            assert prior_nll > nll_e + MARGIN
    assert informative >= 2


def test_router_accuracy_by_hand():
    """router_accuracy on a router that always answers cluster 0: in every bin, the share of
    drawn images in cluster 0 — recomputed from the documented draws (seed 10,000 + seed)."""
    x, y = _blobs(n_per=10)
    y = np.where(np.arange(len(y)) < 13, 0, y)  # cluster 0 larger: 13 of 40

    class Always0(torch.nn.Module):
        def forward(self, x, t, cond=None):
            logits = torch.zeros(x.shape[0], 4)
            logits[:, 0] = 1.0
            return logits

    acc = router_accuracy(Always0(), x, None, y, bins=5, n=300, seed=3)
    idx = torch.randint(0, len(x), (300,), generator=torch.Generator().manual_seed(10_003))
    want = float((y[idx.numpy()] == 0).mean())
    assert acc["accuracy"] == pytest.approx([want] * 5)
    assert acc["prior"] == pytest.approx(13 / 40)


def test_trained_router_is_accurate_at_low_noise(trained):
    """Well-separated clusters: near-perfect at the lowest noise, far above the prior."""
    router, x, y = trained
    acc = router_accuracy(router, x, None, y, bins=4, n=400)
    assert acc["accuracy"][0] > 0.95 and acc["accuracy"][0] > acc["prior"] + 0.5
