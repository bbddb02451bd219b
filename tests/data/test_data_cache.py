"""Data larger than memory (issue 17, item 2): the on-disk cache of decoded images and the code
paths that read it in pieces.

Oracles: the same source decoded in memory with the cache turned off (DECENTDIFF_DATA_CACHE=0),
which is the code path every RUN used before the cache existed; plain NumPy indexing for the row
views; the in-memory PCA for the chunked one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from decentdiff.data import cache, features, sources
from decentdiff.data.cache import ImageRows, rows_of
from decentdiff.data.sources import clear_cache, load_source
from decentdiff.data.sources import images as source_images
from decentdiff.errors import DataError


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DECENTDIFF_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(cache.DATA_CACHE_ENV, raising=False)
    clear_cache()
    yield
    clear_cache()


def make_folder(root: Path, n: int = 24, *, colour: bool = True, seed: int = 0) -> Path:
    """Two class folders of PNG and JPEG images of mixed sizes (20..40 px), grey and RGB."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        cls = root / ("cat" if i % 2 else "dog")
        cls.mkdir(parents=True, exist_ok=True)
        w, h = (int(v) for v in rng.integers(20, 41, 2))
        if colour and i % 3 == 0:
            img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
        else:
            img = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")
        img.save(cls / f"{i:03d}.{'jpg' if i % 4 == 1 else 'png'}")
    return root


def in_memory(spec: str, monkeypatch, **opts):
    monkeypatch.setenv(cache.DATA_CACHE_ENV, "0")
    clear_cache()
    try:
        return load_source(spec, **opts)
    finally:
        monkeypatch.delenv(cache.DATA_CACHE_ENV)
        clear_cache()


def entries() -> list[Path]:
    root = cache.data_cache_dir()
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def count_decodes(monkeypatch) -> list[int]:
    calls = [0]
    real = source_images._decode

    def counting(*a, **k):
        calls[0] += 1
        return real(*a, **k)

    monkeypatch.setattr(source_images, "_decode", counting)
    return calls


@pytest.mark.parametrize("colour", [True, False])
def test_cache_round_trip_equals_the_in_memory_decode(tmp_path, monkeypatch, colour):
    spec = f"folder:{make_folder(tmp_path / 'imgs', colour=colour)}"
    want = in_memory(spec, monkeypatch, size=16)
    got = load_source(spec, size=16)
    assert isinstance(got.images, np.memmap) and not got.images.flags.writeable
    assert got.images.shape == want.images.shape == (24, 3 if colour else 1, 16, 16)
    assert np.array_equal(np.asarray(got.images), want.images)
    assert np.array_equal(got.labels, want.labels) and got.labels.dtype == np.int64
    assert got.class_names == want.class_names == ("cat", "dog")
    # The fingerprint is the one the in-memory code computes: existing RUNs still resume.
    assert got.fingerprint == want.fingerprint == sources.fingerprint(want.images, want.labels)
    # A later command (a fresh process: the in-process cache forgotten) reads the same entry.
    clear_cache()
    again = load_source(spec, size=16)
    assert again.fingerprint == want.fingerprint
    assert np.array_equal(np.asarray(again.images), want.images)
    assert len(entries()) == 1


def test_npz_round_trip(tmp_path, monkeypatch):
    x = np.random.default_rng(1).integers(0, 256, (50, 3, 9, 7), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(50) % 5)
    spec = f"npz:{tmp_path / 'd.npz'}"
    for opts in ({}, {"size": 6, "channels": 1}):
        want = in_memory(spec, monkeypatch, **opts)
        got = load_source(spec, **opts)
        assert isinstance(got.images, np.memmap)
        assert np.array_equal(np.asarray(got.images), want.images)
        assert np.array_equal(got.labels, want.labels)
        assert got.fingerprint == want.fingerprint


def test_a_second_read_decodes_nothing(tmp_path, monkeypatch):
    spec = f"folder:{make_folder(tmp_path / 'imgs')}"
    calls = count_decodes(monkeypatch)
    first = load_source(spec, size=16)
    assert calls[0] == 24
    (entry,) = entries()
    mtimes = {p.name: p.stat().st_mtime_ns for p in entry.iterdir()}
    clear_cache()
    second = load_source(spec, size=16)
    assert calls[0] == 24  # not one image decoded again
    assert {p.name: p.stat().st_mtime_ns for p in entry.iterdir()} == mtimes
    assert second.fingerprint == first.fingerprint


def test_changing_a_file_or_an_option_is_another_entry(tmp_path, monkeypatch):
    folder = make_folder(tmp_path / "imgs")
    spec = f"folder:{folder}"
    a = load_source(spec, size=16)
    b = load_source(spec, size=20)
    c = load_source(spec, size=16, channels=1)
    assert len(entries()) == 3
    assert (a.images.shape[2], b.images.shape[2], c.images.shape[1]) == (16, 20, 1)
    assert len({a.fingerprint, b.fingerprint, c.fingerprint}) == 3
    # A file replaced: the stamp changes, so does the entry; the old one is not used.
    Image.fromarray(np.zeros((30, 30), np.uint8), "L").save(folder / "dog" / "000.png")
    clear_cache()
    d = load_source(spec, size=16)
    assert d.fingerprint != a.fingerprint
    assert d.fingerprint == in_memory(spec, monkeypatch, size=16).fingerprint


def _truncate(entry: Path) -> None:
    p = entry / "images.npy"
    os.truncate(p, p.stat().st_size - 100)


def _pad(entry: Path) -> None:
    with open(entry / "images.npy", "ab") as f:
        f.write(b"\0" * 64)


def _bad_json(entry: Path) -> None:
    (entry / "meta.json").write_text("{not json")


def _other_shape(entry: Path) -> None:
    meta = json.loads((entry / "meta.json").read_text())
    meta["shape"][0] -= 1
    (entry / "meta.json").write_text(json.dumps(meta))


def _bad_labels(entry: Path) -> None:
    np.save(entry / "labels.npy", np.zeros(3, np.int64))


def _no_meta(entry: Path) -> None:
    (entry / "meta.json").unlink()


@pytest.mark.parametrize(
    "damage", [_truncate, _pad, _bad_json, _other_shape, _bad_labels, _no_meta]
)
def test_a_damaged_entry_is_rebuilt_never_trusted(tmp_path, monkeypatch, damage):
    spec = f"folder:{make_folder(tmp_path / 'imgs')}"
    want = in_memory(spec, monkeypatch, size=16)
    load_source(spec, size=16)
    (entry,) = entries()
    damage(entry)
    calls = count_decodes(monkeypatch)
    clear_cache()
    got = load_source(spec, size=16)
    assert calls[0] == 24  # decoded again
    assert np.array_equal(np.asarray(got.images), want.images)
    assert np.array_equal(got.labels, want.labels)
    assert got.fingerprint == want.fingerprint
    assert cache.read_entry(entry, json.loads((entry / "meta.json").read_text())["want"])
    assert [p.name for p in cache.data_cache_dir().iterdir()] == [entry.name]  # nothing left over


def test_skip_bad_warning_and_skipped_files_survive_the_cache(tmp_path, capsys):
    folder = make_folder(tmp_path / "imgs")
    (folder / "dog" / "broken.png").write_bytes(b"not an image")
    spec = f"folder:{folder}"
    first = load_source(spec, size=16, skip_bad=0.1)
    err1 = capsys.readouterr().err
    clear_cache()
    second = load_source(spec, size=16, skip_bad=0.1)
    err2 = capsys.readouterr().err
    assert "1 of 25 image files are unusable" in err1
    assert err2 == err1  # said again when read from the cache
    assert second.skipped == first.skipped and len(second.skipped) == 1
    assert second.fingerprint == first.fingerprint


def test_a_failed_decode_leaves_no_entry(tmp_path):
    folder = make_folder(tmp_path / "imgs")
    (folder / "dog" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"broken\.png"):
        load_source(f"folder:{folder}", size=16)
    root = cache.data_cache_dir()
    assert not root.exists() or list(root.iterdir()) == []


def test_cache_off_and_builtins_stay_in_memory(tmp_path, monkeypatch):
    spec = f"folder:{make_folder(tmp_path / 'imgs')}"
    assert not isinstance(in_memory(spec, monkeypatch, size=16).images, np.memmap)
    assert entries() == []
    assert not isinstance(load_source("digits").images, np.memmap)  # embedded: no stamp, no entry
    assert entries() == []


def test_a_lost_rename_race_uses_the_winners_entry(tmp_path):
    want = {"format": cache.FORMAT, "spec": "x", "options": [0, 0, 0.0], "stamp": "s"}
    directory = cache.entry_dir(want)
    x = np.arange(2 * 1 * 3 * 3, dtype=np.uint8).reshape(2, 1, 3, 3)
    extra = {"class_names": None, "skipped": [], "warning": ""}
    t1, t2 = cache.new_temp(directory), cache.new_temp(directory)
    e1 = cache.write_entry(t1, directory, want, x.shape, [x], None, extra)
    inode = (directory / "images.npy").stat().st_ino
    e2 = cache.write_entry(t2, directory, want, x.shape, [x[:1], x[1:]], None, extra)
    assert (directory / "images.npy").stat().st_ino == inode  # the first entry was kept
    assert e1["fingerprint"] == e2["fingerprint"] == sources.fingerprint(x, None)
    assert sorted(p.name for p in directory.parent.iterdir()) == [directory.name]


_READER = textwrap.dedent(
    """
    import sys, time
    from decentdiff.data.sources import load_source
    while time.time() < float(sys.argv[2]):
        time.sleep(0.001)
    ds = load_source(sys.argv[1], size=16)
    print(ds.fingerprint, int(ds.images.sum()))
    """
)


def test_concurrent_processes_do_not_corrupt_the_cache(tmp_path, monkeypatch):
    import time

    spec = f"folder:{make_folder(tmp_path / 'imgs', n=200)}"
    want = in_memory(spec, monkeypatch, size=16)
    start = str(time.time() + 2.0)  # both begin decoding at the same moment
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _READER, spec, start],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert out.split() == [want.fingerprint, str(int(want.images.sum()))]
    (entry,) = entries()
    assert [p.name for p in cache.data_cache_dir().iterdir()] == [entry.name]  # no temp left
    clear_cache()
    assert np.array_equal(np.asarray(load_source(spec, size=16).images), want.images)


# --------------------------------------------------------------------------------------------------
# Reading in pieces
# --------------------------------------------------------------------------------------------------


def test_image_rows_gather_like_numpy(tmp_path):
    x = np.random.default_rng(2).integers(0, 256, (40, 1, 4, 4), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    index = np.random.default_rng(3).permutation(40)[:25]
    rows = rows_of(mm, index)
    assert isinstance(rows, ImageRows) and rows.shape == (25, 1, 4, 4) and len(rows) == 25
    sub = np.array([3, 0, 24, 3])
    assert np.array_equal(rows[sub], x[index][sub])
    assert np.array_equal(rows[5:9], x[index][5:9])
    assert np.array_equal(rows[7], x[index][7])
    assert np.array_equal(np.asarray(rows_of(rows, sub)), x[index][sub])
    assert np.array_equal(np.concatenate(list(rows.chunks(6))), x[index])
    assert np.array_equal(rows_of(x, index), x[index])  # in memory: the plain copy, as before


def test_the_batch_drawer_gives_the_same_batches_over_a_memmap(tmp_path):
    from decentdiff.training.generative import image_batches

    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (60, 3, 5, 5), dtype=np.uint8)
    y = rng.integers(0, 3, 60)
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    idx = rng.permutation(60)[:40]

    def batches(images, labels):
        draw = image_batches(images, labels, 8, torch.device("cpu"), 0.2, 3)
        g = torch.Generator().manual_seed(0)
        return [draw(g) for _ in range(5)]

    want = batches(x[idx], y[idx])  # the in-memory copy every command used before
    for images in (rows_of(mm, idx), ImageRows(np.asarray(x), idx)):
        got = batches(images, y[idx])
        for (a0, ac, ai), (b0, bc, bi) in zip(want, got, strict=True):
            assert torch.equal(a0, b0) and torch.equal(ac, bc) and torch.equal(ai, bi)
    whole = batches(mm, y)  # a memmap itself
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches(x, y), whole, strict=True))


def low_rank_images(n: int, seed: int = 5) -> np.ndarray:
    """Images whose pixel covariance has four clearly separated directions."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(3 * 8 * 8, 4)))[0].T  # (4, 192) orthonormal
    coef = rng.normal(size=(n, 4)) * np.array([900.0, 500.0, 250.0, 120.0])
    x = 128 + coef @ basis + rng.normal(size=(n, 192)) * 2
    return np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(n, 3, 8, 8)


def test_chunked_pca_equals_the_in_memory_pca_when_fitted_on_everything(monkeypatch):
    x = low_rank_images(900)
    want = features.featurize(x, "pca", dim=6, seed=0)
    monkeypatch.setattr(features, "PCA_IN_MEMORY_BYTES", 0)  # force the chunked path
    monkeypatch.setattr(features, "PCA_FIT_BYTES", 10**12)  # ... with a sample of every image
    monkeypatch.setattr(features, "PCA_CHUNK_ROWS", 128)
    got = features.featurize(x, "pca", dim=6, seed=0)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4)


def test_chunked_pca_from_a_sample_is_close(monkeypatch):
    x = low_rank_images(2000)
    want = features.featurize(x, "pca", dim=4, seed=0)
    monkeypatch.setattr(features, "PCA_IN_MEMORY_BYTES", 0)
    monkeypatch.setattr(features, "PCA_FIT_BYTES", 300 * 192 * 4)  # fit on 300 of 2000 images
    monkeypatch.setattr(features, "PCA_CHUNK_ROWS", 256)
    got = features.featurize(x, "pca", dim=4, seed=0)
    assert not np.allclose(got, want, atol=1e-3)  # fitted on the sample: not the full fit...
    for j in range(4):  # ... but each component points the same way, up to sign
        corr = abs(np.corrcoef(got[:, j], want[:, j])[0, 1])
        assert corr > 0.99, (j, corr)


def test_partition_features_over_rows_of_a_memmap_equal_the_in_memory_ones(tmp_path):
    x = low_rank_images(500)
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    idx = np.random.default_rng(6).permutation(500)[:400]
    want = features.featurize(x[idx], "pca", dim=8, seed=1)
    got = features.featurize(rows_of(mm, idx), "pca", dim=8, seed=1)
    assert np.array_equal(got, want)  # below the threshold: the same in-memory PCA, bit for bit


def test_classifier_digest_and_training_are_the_same_over_rows(tmp_path):
    from decentdiff.evaluation.classifier import train_classifier
    from decentdiff.evaluation.feature_cache import digest

    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, (300, 1, 8, 8), dtype=np.uint8)
    y = rng.integers(0, 2, 300)
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    idx = rng.permutation(300)[:200]
    rows = rows_of(mm, idx)
    assert digest(rows, y[idx]) == digest(x[idx], y[idx])
    torch.set_num_threads(1)
    a = train_classifier(x[idx], y[idx], seed=0, epochs=1)
    b = train_classifier(rows, y[idx], seed=0, epochs=1)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb), ka


def test_a_federated_client_reads_its_rows_from_the_cache_not_a_copy(tmp_path, monkeypatch):
    """Issue 17: a client of a cached source holds lazy rows of the memmap (its share is never
    copied into memory), and trains bitwise as the in-memory client of the same source does."""
    pytest.importorskip("flwr")
    from decentdiff import config as C
    from decentdiff.federated import client as FC
    from decentdiff.federated import parts as P
    from decentdiff.federated.settings import FedSettings, build_settings, fed_base
    from decentdiff.federated.store import initial_arrays

    x = np.random.default_rng(2).integers(0, 256, (60, 1, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(60) % 3)
    cfg = C.resolve(base=fed_base())
    cfg.data.source, cfg.model.preset, cfg.train.batch = f"npz:{tmp_path / 'd.npz'}", "tiny", 8
    options = FedSettings(method="full", clients=2, rounds=1, local_steps=2).validate()
    s = build_settings(cfg, options, image_shape=(1, 8, 8), num_classes=0)
    got = {}
    for mode in ("cache", "memory"):
        if mode == "memory":
            monkeypatch.setenv(cache.DATA_CACHE_ENV, "0")
        clear_cache()
        FC._load.cache_clear()
        d = FC.client_data(s, 1, 2)
        upd, _, _ = FC.client_round(s, d, 1, initial_arrays(s), P.ALL_GROUPS, None)
        got[mode] = (d, upd)
    lazy, eager = got["cache"][0], got["memory"][0]
    assert isinstance(lazy.images, ImageRows) and isinstance(lazy.images.base, np.memmap)
    assert type(eager.images) is np.ndarray
    assert np.array_equal(np.asarray(lazy.images), eager.images)
    assert all(np.array_equal(got["cache"][1][k], got["memory"][1][k]) for k in got["memory"][1])
    FC._load.cache_clear()
