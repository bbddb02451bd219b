"""The memorisation check against independent oracles: nearest neighbours and distances from a
brute-force NumPy distance matrix, copies planted by hand, clients' images from the clients' own
loader."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _cli import cli
from decentdiff.errors import ConfigError, DataError
from decentdiff.evaluation import memorisation as M


def brute(queries: np.ndarray, refs: np.ndarray, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """k nearest rows by a full float64 distance matrix (the oracle)."""
    q = queries.reshape(len(queries), -1).astype(np.float64)
    r = refs.reshape(len(refs), -1).astype(np.float64)
    d = np.sqrt(((q[:, None, :] - r[None, :, :]) ** 2).sum(-1))
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, idx, 1), idx


def images(n: int, seed: int, shape=(3, 6, 6)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def as_generated(x: np.ndarray) -> np.ndarray:
    """uint8 training images as a generator's output: float32 in [−1, 1]."""
    return x.astype(np.float32) / 127.5 - 1.0


@pytest.mark.parametrize("chunk", [7, 64, 4096])
def test_nearest_equals_a_brute_force_numpy_search(chunk):
    train = images(150, 0)
    gen = np.random.default_rng(1).random((23, 3, 6, 6))
    nb = M.nearest(gen, train, k=3, chunk=chunk)
    d, i = brute(gen, train / 255.0, k=3)
    np.testing.assert_array_equal(nb.index, i)
    np.testing.assert_allclose(nb.distance, d, rtol=1e-12, atol=1e-12)


def test_nearest_reads_a_memmap_through_image_rows(tmp_path):
    from decentdiff.data.cache import ImageRows

    base = np.lib.format.open_memmap(tmp_path / "x.npy", "w+", np.uint8, (90, 1, 5, 5))
    base[:] = images(90, 2, (1, 5, 5))
    base.flush()
    rows = np.random.default_rng(3).permutation(90)[:60]
    gen = np.random.default_rng(4).random((11, 1, 5, 5))
    nb = M.nearest(gen, ImageRows(np.load(tmp_path / "x.npy", mmap_mode="r"), rows), chunk=16)
    d, i = brute(gen, base[rows] / 255.0)
    np.testing.assert_array_equal(nb.index, i)
    np.testing.assert_allclose(nb.distance, d, rtol=1e-12, atol=1e-12)


def test_nearest_in_a_feature_space():
    rng = np.random.default_rng(5)
    train, gen = rng.standard_normal((70, 16)), rng.standard_normal((9, 16))
    nb = M.nearest(gen, train, chunk=10)
    d, i = brute(gen, train)
    np.testing.assert_array_equal(nb.index, i)
    np.testing.assert_allclose(nb.distance, d, rtol=1e-12)


def test_a_planted_copy_is_found_and_nothing_else():
    train = images(200, 6)
    rng = np.random.default_rng(7)
    fresh = rng.uniform(-1, 1, (30, 3, 6, 6)).astype(np.float32)  # new images
    a, b = train[40].astype(np.float32), train[41].astype(np.float32)
    blend = ((a + b) / 2)[None] / 127.5 - 1  # halfway between two: near both, a copy of neither
    noisy = np.clip(as_generated(train[[150]]) + 0.02 * rng.standard_normal((1, 3, 6, 6)), -1, 1)
    gen = np.concatenate([fresh, as_generated(train[[5, 77]]), blend, noisy]).astype(np.float32)
    res = M.check(gen, train, chunk=50)
    ratio = res["pixels"].ratio()
    # The oracle: ratios of a brute-force search.
    d, i = brute(M.to_unit(gen), train / 255.0)
    np.testing.assert_allclose(ratio, d[:, 0] / d[:, 1], rtol=1e-9, atol=1e-12)
    copies = np.flatnonzero(ratio < 1 / 3)
    assert copies.tolist() == [30, 31, 33]  # the two exact copies and the noisy one
    np.testing.assert_array_equal(res["pixels"].index[copies, 0], [5, 77, 150])
    assert res["pixels"].distance[30, 0] < 1e-6 and ratio[32] > 0.9
    assert res["summary"]["pixels"]["copies"] == pytest.approx(3 / len(gen))
    pairs = M.closest_pairs(res["pixels"], count=3)
    assert sorted((g, t) for g, t, _, _ in pairs) == [(30, 5), (31, 77), (33, 150)]


def test_the_threshold_moves_the_count():
    train = images(120, 8)
    rng = np.random.default_rng(9)
    sigma = np.linspace(0.02, 0.8, 40)[:, None, None, None]  # from near copies to new images
    gen = np.clip(as_generated(train[:40]) + sigma * rng.standard_normal((40, 3, 6, 6)), -1, 1)
    res = M.check(gen, train)
    ratio = res["pixels"].ratio()
    for t in (0.2, 1 / 3, 0.6, 1.0):
        s = M.check(gen, train, threshold=t)["summary"]
        assert s["pixels"]["copies"] == pytest.approx(np.mean(ratio < t)), t
    assert 0 < np.mean(ratio < 0.2) < np.mean(ratio < 0.6)  # the test data spans the thresholds


def test_per_client_the_silo_finds_its_own_image_and_the_others_do_not():
    train = images(180, 10)
    groups = dict(zip(["client 0", "client 1", "client 2"],
                      np.array_split(np.random.default_rng(11).permutation(180), 3), strict=True))  # fmt: skip
    owned = int(groups["client 1"][4])
    fresh = np.random.default_rng(12).uniform(-1, 1, (20, 3, 6, 6)).astype(np.float32)
    gen = np.concatenate([fresh, as_generated(train[[owned]])])
    feats_t = np.random.default_rng(13).standard_normal((180, 5))
    feats_g = np.concatenate([np.random.default_rng(14).standard_normal((20, 5)), feats_t[[owned]]])
    res = M.check(gen, train, groups=groups, generated_features=feats_g, train_features=feats_t)
    s = res["summary"]["groups"]
    assert s["client 1"]["pixels"]["copies"] == pytest.approx(1 / 21)
    assert s["client 0"]["pixels"]["copies"] == s["client 2"]["pixels"]["copies"] == 0
    assert s["client 1"]["features"]["copies"] == pytest.approx(1 / 21)
    unit = M.to_unit(gen)
    for name, rows in groups.items():  # each client's neighbours: brute force over its images
        d, i = brute(unit, train[rows] / 255.0)
        nb = res["groups"][name]["pixels"]
        np.testing.assert_array_equal(nb.index, rows[i])
        np.testing.assert_allclose(nb.distance, d, rtol=1e-12, atol=1e-12)
        fd, fi = brute(feats_g, feats_t[rows])
        np.testing.assert_array_equal(res["groups"][name]["features"].index, rows[fi])
    d, i = brute(unit, train / 255.0)  # and over every training image
    np.testing.assert_array_equal(res["pixels"].index, i)
    assert res["pixels"].index[20, 0] == owned and res["summary"]["pixels"]["copies"] == 1 / 21


def test_an_image_two_clients_both_hold_is_a_copy_for_each_and_overall():
    train = images(40, 15)
    train[25] = train[2]  # client a holds it as row 2, client b as row 25
    groups = {"a": np.arange(20), "b": np.arange(20, 40)}
    res = M.check(as_generated(train[[2]]), train, groups=groups)
    s = res["summary"]
    assert s["pixels"]["copies"] == s["groups"]["a"]["pixels"]["copies"] == 1
    assert s["groups"]["b"]["pixels"]["copies"] == 1
    assert res["groups"]["b"]["pixels"].index[0, 0] == 25


def test_bad_input_is_one_clear_error():
    train = images(10, 17)
    gen = as_generated(train[:2])
    with pytest.raises(DataError, match="differ in shape"):
        M.check(gen[:, :1], train)
    with pytest.raises(DataError, match="at least 2 training images"):
        M.check(gen, train[:1])
    with pytest.raises(DataError, match="NaN"):
        M.check(np.full_like(gen, np.nan), train)
    for bad in (0.0, -1.0, 1.5):
        with pytest.raises(ConfigError, match="--copy-threshold must be in"):
            M.check(gen, train, threshold=bad)
    with pytest.raises(DataError, match="holds 1 training image"):
        M.check(gen, train, groups={"client 0": np.array([0]), "client 1": np.arange(1, 10)})
    with pytest.raises(DataError, match="overlap"):
        M.check(gen, train, groups={"a": np.arange(0, 6), "b": np.arange(4, 10)})
    with pytest.raises(DataError, match="generated features"):
        M.check(gen, train, generated_features=np.zeros((3, 4)), train_features=np.zeros((10, 4)))


def test_a_copy_of_a_duplicated_training_image_is_a_copy():
    """Duplicated training images are the ones most often memorised (Carlini et al. 2023): the
    second neighbour is the nearest *other* image, as a brute-force search over the distinct
    training images finds it."""
    train = images(50, 18)
    train[[7, 30, 41]] = train[3]  # the data holds this image four times
    rng = np.random.default_rng(19)
    gen = np.concatenate([as_generated(train[[3]]), rng.uniform(-1, 1, (6, 3, 6, 6))])
    res = M.check(gen, train)
    distinct = np.unique(train.reshape(50, -1), axis=0).reshape(-1, 3, 6, 6)
    d, _ = brute(M.to_unit(gen), distinct / 255.0)
    np.testing.assert_allclose(res["pixels"].ratio(), d[:, 0] / d[:, 1], rtol=1e-9, atol=1e-9)
    assert res["pixels"].index[0, 0] == 3  # the first of the four
    assert res["summary"]["pixels"]["copies"] == pytest.approx(1 / 7)
    plain = M.nearest(M.to_unit(gen), train)  # without `distinct`: its own second neighbour
    assert plain.distance[0, 1] < 1e-6


def test_the_client_shares_are_the_images_each_client_trains_on():
    """The per-client check's groups are the rows client_data hands each client."""
    from decentdiff import config as C
    from decentdiff.federated.client import client_data, client_shares
    from decentdiff.federated.settings import FedSettings, build_settings, fed_base
    from decentdiff.run import load_data

    cfg = C.resolve(base=fed_base(), sets=["data.source=digits", "data.size=8"])
    cfg.model.preset = "tiny"
    options = FedSettings(method="full", clients=3, split="dirichlet:0.5", rounds=1).validate()
    s = build_settings(cfg, options, image_shape=(1, 8, 8), num_classes=10)
    d = load_data(cfg.data)
    shares = client_shares(s, d.labels, d.train_idx)
    assert sorted(np.concatenate(shares).tolist()) == list(range(len(d.train_idx)))
    for i, share in enumerate(shares):
        mine = client_data(s, i, 3).images
        np.testing.assert_array_equal(np.asarray(mine), d.images[d.train_idx[share]])


# --- wired into `decentdiff eval` and the report -----------------------------------------------


@pytest.fixture()
def tiny_run(tmp_path, capsys):
    rng = np.random.default_rng(0)
    src = tmp_path / "d.npz"
    np.savez(src, x=rng.integers(0, 256, (48, 1, 8, 8), dtype=np.uint8),
             y=np.repeat(np.arange(2), 24))  # fmt: skip
    run = tmp_path / "r"
    code, _, err = cli(capsys, "train", "monolith", run, "--data", f"npz:{src}", "--steps", 2,
                       "--preset", "tiny", "--batch", 8, "-q")  # fmt: skip
    assert code == 0, err
    return run


def test_eval_memorisation_finds_a_copy_planted_in_the_samples(tiny_run, capsys, monkeypatch):
    """The generator's first two images are replaced by training images: eval --memorisation
    names exactly those training rows, in the row, the .npz and the report."""
    import torch

    import decentdiff.generate as G
    from decentdiff.config import resolve
    from decentdiff.run import Run

    r = Run(tiny_run)
    data = r.data(resolve(base=r.base_config()), create=False)
    planted = [int(data.train_idx[3]), int(data.train_idx[11])]
    real_generate = G.generate

    def planting(*args, **kwargs):
        out = real_generate(*args, **kwargs)
        out.images[:2] = torch.from_numpy(as_generated(data.images[planted]))
        return out

    monkeypatch.setattr(G, "generate", planting)
    code, out, err = cli(capsys, "eval", tiny_run, "--model", "monolith", "--n", 6, "--sample-steps",
                         2, "--device", "cpu", "-q", "--memorisation")  # fmt: skip
    assert code == 0, err
    assert "are copies of a training image" in out
    row = json.loads((tiny_run / "metrics.jsonl").read_text().splitlines()[-1])
    m = row["memorisation"]
    assert m["threshold"] == pytest.approx(1 / 3) and m["n"] == 6
    assert m["n_train"] == len(data.train_idx)
    assert {p["train_row"] for p in m["closest"][:2]} == set(planted)
    assert {p["sample"] for p in m["closest"][:2]} == {0, 1}
    assert m["pixels"]["copies"] >= 2 / 6
    with np.load(tiny_run / m["file"]) as z:
        assert z["pixel_index"][:2, 0].tolist() == planted
        assert z["pixel_distance"].shape == z["feature_distance"].shape == (6, 2)
        # The stored distances: a brute-force search over the training images.
        gen = np.load(tiny_run / row["samples"])["images"]
        bd, bi = brute(M.to_unit(gen), data.images[data.train_idx] / 255.0)
        np.testing.assert_array_equal(z["pixel_index"], data.train_idx[bi])
        np.testing.assert_allclose(z["pixel_distance"], bd, rtol=1e-9, atol=1e-9)
    assert (tiny_run / m["figure"]).is_file()
    code, _, err = cli(capsys, "report", tiny_run)
    assert code == 0, err
    report = (tiny_run / "report.md").read_text()
    assert "## Memorisation" in report and m["figure"] in report


def test_eval_refuses_a_bad_copy_threshold_before_sampling(tiny_run, capsys):
    before = (
        (tiny_run / "metrics.jsonl").read_text() if (tiny_run / "metrics.jsonl").exists() else ""
    )
    code, _, err = cli(capsys, "eval", tiny_run, "--model", "monolith", "--n", 4,
                       "--copy-threshold", 2, "-q")  # fmt: skip
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("decentdiff: error: --copy-threshold must be in")
    after = (
        (tiny_run / "metrics.jsonl").read_text() if (tiny_run / "metrics.jsonl").exists() else ""
    )
    assert after == before


def test_in_a_federated_run_each_client_checks_its_own_images(tiny_run, capsys, monkeypatch):
    """A run that records a federated split: eval --memorisation repeats the check within each
    client's images (the rows client_data gives that client); a copy of one client's image is a
    copy for that client only."""
    import torch

    import decentdiff.generate as G
    from decentdiff.config import resolve
    from decentdiff.federated.client import client_data
    from decentdiff.federated.settings import FedSettings, build_settings
    from decentdiff.federated.store import record_settings
    from decentdiff.run import Run

    r = Run(tiny_run)
    cfg = resolve(base=r.base_config())
    data = r.data(cfg, create=False)
    options = FedSettings(method="full", clients=2, split="iid", rounds=1).validate()
    s = build_settings(cfg, options, image_shape=data.shape, num_classes=data.num_classes)
    record_settings(tiny_run, s)
    mine = [np.asarray(client_data(s, i, 2).images) for i in range(2)]
    planted = mine[1][3]  # client 1's image
    real_generate = G.generate

    def planting(*args, **kwargs):
        out = real_generate(*args, **kwargs)
        out.images[0] = torch.from_numpy(as_generated(planted[None]))[0]
        return out

    monkeypatch.setattr(G, "generate", planting)
    code, out, err = cli(capsys, "eval", tiny_run, "--model", "monolith", "--n", 5, "--sample-steps",
                         2, "--device", "cpu", "-q", "--copy-threshold", 0.2)  # fmt: skip
    assert code == 0, err
    assert "per client at most" in out
    m = json.loads((tiny_run / "metrics.jsonl").read_text().splitlines()[-1])["memorisation"]
    assert m["threshold"] == 0.2 and set(m["groups"]) == {"client 0", "client 1"}
    assert [m["groups"][f"client {i}"]["n_train"] for i in range(2)] == [len(x) for x in mine]
    assert m["groups"]["client 1"]["pixels"]["copies"] >= 1 / 5
    assert m["closest"][0]["sample"] == 0 and m["closest"][0]["client"] == 1
    gen = M.to_unit(np.load(tiny_run / "samples" / "monolith.npz")["images"])
    with np.load(tiny_run / m["file"]) as z:
        ratios = []
        for i in range(2):  # each client's neighbours: a brute-force search over its own images
            d, _ = brute(gen, mine[i] / 255.0)
            np.testing.assert_allclose(z[f"client{i}_pixel_distance"], d, rtol=1e-9, atol=1e-9)
            ratios.append(d[:, 0] / d[:, 1])
            want = ratios[i] < 0.2
            assert m["groups"][f"client {i}"]["pixels"]["copies"] == pytest.approx(want.mean())
    assert ratios[1][0] < 1e-6 and ratios[0][0] > 0.2  # client 0 does not hold the planted image
    code, _, err = cli(capsys, "report", tiny_run)
    assert code == 0, err
    assert "| monolith | client 1 |" in (tiny_run / "report.md").read_text()
