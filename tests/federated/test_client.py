"""A client's round without Flower: what it trains, keeps and reports."""

import math

import numpy as np
import pytest

pytest.importorskip("flwr")

from decentdiff import config as C
from decentdiff.federated import parts as P
from decentdiff.federated.client import ClientData, client_round, local_steps
from decentdiff.federated.settings import FedSettings, build_settings, fed_base
from decentdiff.federated.store import initial_arrays


def _settings(method, preset="tiny", **kw):
    cfg = C.resolve(base=fed_base())
    cfg.model.preset = preset
    cfg.train.batch = 8
    options = FedSettings(method=method, clients=2, split="iid", rounds=3, **kw).validate()
    return build_settings(cfg, options, image_shape=(1, 8, 8), num_classes=0)


def _data(n=20):
    rng = np.random.default_rng(0)
    return ClientData(rng.integers(0, 256, (n, 1, 8, 8), dtype=np.uint8), None, 0, "fp", "test", 1)


def test_local_steps_are_ceil_of_epochs_times_size_over_batch():
    s = _settings("full", local_epochs=2.5)
    assert local_steps(s, 20) == math.ceil(2.5 * 20 / 8) == 7
    s.local_steps = 3
    assert local_steps(s, 20) == 3


@pytest.mark.parametrize("preset", ["tiny", "dit-tiny"])
def test_udec_client_keeps_private_parts_and_reports_only_the_decoder(preset):
    s = _settings("udec", preset, local_steps=3)
    g = initial_arrays(s)
    keys = list(g)
    dec = P.keys_for({"decoder"}, keys)
    upd, local, metrics = client_round(s, _data(), 1, g, frozenset({"decoder"}), None)
    assert sorted(upd) == sorted(dec) and metrics["num-examples"] == 20 and metrics["steps"] == 3
    changed = [k for k in keys if not np.array_equal(local[k], g[k])]
    assert any(P.group_of(k) == "encoder" for k in changed)  # every weight trains locally
    # Round 2: only the decoder arrives; the encoder comes from the node's own state.
    received = {k: g[k] for k in dec}
    _, local2, _ = client_round(s, _data(), 2, received, frozenset({"decoder"}), local)
    enc = [k for k in keys if P.group_of(k) == "encoder"]
    assert any(not np.array_equal(local2[k], local[k]) for k in enc)
    with pytest.raises(Exception, match="no local model"):
        client_round(s, _data(), 2, received, frozenset({"decoder"}), None)


def test_prox_pulls_the_client_towards_the_global_model():
    g = initial_arrays(_settings("full"))
    dist = {}
    for mu in (0.0, 1000.0):
        s = _settings("full", local_steps=4, prox=mu)
        s.train["lr"] = 1e-2
        _, local, _ = client_round(s, _data(), 1, g, P.ALL_GROUPS, None)
        dist[mu] = sum(float(((local[k] - g[k]) ** 2).sum()) for k in g)
    assert dist[1000.0] < dist[0.0]


def test_class_conditional_client_round():
    cfg = C.resolve(base=fed_base())
    cfg.model.preset, cfg.model.class_cond, cfg.train.batch = "tiny", True, 8
    options = FedSettings(method="full", clients=2, rounds=1, local_steps=2).validate()
    s = build_settings(cfg, options, image_shape=(1, 8, 8), num_classes=10)
    assert s.num_classes == 10 and s.unet["num_classes"] == 10
    g = initial_arrays(s)
    assert any(k.startswith("class_embed.") for k in g)
    d = _data()
    d.labels, d.num_classes = np.arange(20) % 10, 10
    upd, _, m = client_round(s, d, 1, g, P.ALL_GROUPS, None)
    assert sorted(upd) == sorted(g) and np.isfinite(m["loss"])


def test_client_data_follows_the_runs_data_options():
    """A client loads the data as the RUN resolved it (data.size, data.channels), not the
    source's raw images: its shape matches the model's."""
    from decentdiff.federated.client import client_data

    cfg = C.resolve(base=fed_base(), sets=["data.source=digits", "data.size=6", "data.channels=3"])
    cfg.model.preset = "tiny"
    options = FedSettings(method="full", clients=2, split="iid", rounds=1).validate()
    s = build_settings(cfg, options, image_shape=(3, 6, 6), num_classes=10)
    d = client_data(s, 0, 2)
    assert d.images.shape[1:] == (3, 6, 6)


def test_a_fedsgd_client_moves_by_minus_lr_times_its_batch_gradient():
    """train.optimizer=sgd, one local step: the client's new model is w − lr·∇L(w) on its batch
    (re-derived with autograd from the same draw), so the server's average of the updates is the
    pooled batch's gradient step -- what --server-opt fedadam turns into central Adam."""
    import torch

    from decentdiff.federated.client import config_from, round_seed
    from decentdiff.models.registry import build_network, config_from_dict
    from decentdiff.training.generative import image_batches, objective_from
    from decentdiff.training.loop import step_generator

    s = _settings("full", local_steps=1)
    s.train.update(optimizer="sgd", lr=0.5, warmup=0, grad_clip=0.0, precision="fp32")
    rng = np.random.default_rng(1)  # off the zero-initialised output layers: every weight learns
    g = {k: (v + 0.05 * rng.standard_normal(v.shape)).astype(v.dtype)
         for k, v in initial_arrays(s).items()}  # fmt: skip
    data, rnd = _data(), 3
    _, local, _ = client_round(s, data, rnd, g, P.ALL_GROUPS, None)

    cfg = config_from(s)
    net = build_network(config_from_dict(s.unet))
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in g.items()})
    draw = image_batches(data.images, data.labels, cfg.train.batch, torch.device("cpu"),
                         cfg.train.cond_drop, s.num_classes)  # fmt: skip
    gen = step_generator(round_seed(s.seed, data.partition, rnd), rnd - 1)  # offset (rnd-1)·1
    x0, cond, _ = draw(gen)
    loss = objective_from(cfg.objective).loss(net, x0, cond, gen)
    names = [k for k, _ in net.named_parameters()]
    grads = torch.autograd.grad(loss, [p for _, p in net.named_parameters()])
    moved = 0
    for k, gr in zip(names, grads, strict=True):
        want = g[k] - 0.5 * gr.numpy()
        np.testing.assert_allclose(local[k], want, rtol=1e-4, atol=1e-6, err_msg=k)
        moved += int(0.5 * np.abs(gr.numpy()).max() > 1e-4)  # 100x the tolerance (atol 1e-6)
    assert moved == len(names)  # every weight took a real step
