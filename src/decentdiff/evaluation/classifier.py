"""The offline feature classifier: its network, its training recipe and its feature extraction.

Standard FID needs Inception-v3 weights, which cannot be downloaded here. The offline default is
therefore a small CNN classifier trained on the *training part* of the real data (the classifier-
feature FID used for MNIST-scale studies): its penultimate activations are the features, its softmax
the class probabilities for the class-histogram metrics. This module owns :class:`FeatureNet`,
:func:`train_classifier`, :func:`extract_features` and :func:`accuracy`, and the checks of the
images and labels it is trained on; caching per data set is :mod:`.feature_cache`, the public entry
point :mod:`.features`.
"""

from __future__ import annotations

import math
import numbers
import sys
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from decentdiff.errors import ConfigError, DataError
from decentdiff.evaluation.images import image_batches

__all__ = [
    "DEFAULT_EPOCHS",
    "MAX_STEPS",
    "RECIPE_FORMAT",
    "FeatureNet",
    "accuracy",
    "extract_features",
    "train_classifier",
]

#: Epochs of the default classifier (mnist5k, 4,000 training images: ≥ 97 % held-out accuracy).
DEFAULT_EPOCHS = 8
#: At most this many optimizer steps, whatever the epochs: 8 epochs of mnist5k are 256 steps, of
#: 100,000 images 6,250 (20-40 minutes on two CPU cores, BENCHMARKS.md). 2,000 steps at batch 128
#: are 256,000 images seen, so a set of up to 32,000 training images trains exactly as before.
MAX_STEPS = 2000
_BATCH = 128
_LR = 3e-3
_WEIGHT_DECAY = 1e-4
#: Stored as "format" in a cached classifier's meta.json. Bump it when the architecture or the
#: training recipe changes: old caches are then retrained.
RECIPE_FORMAT = 1

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
        image_size: (H, W) the network is trained for; :func:`extract_features` refuses other sizes.
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
        """Same as :func:`extract_features` (features and class probabilities)."""
        return extract_features(self, images, batch=batch)


def check_images(images: Any, who: str) -> np.ndarray:
    """images as uint8 (N, C, H, W), C in {1, 3}, H, W ≥ 8; DataError (naming ``who``) otherwise."""
    from decentdiff.data.cache import ImageRows

    x = images if isinstance(images, ImageRows) else np.asarray(images)  # rows stay lazy
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


def check_labels(labels: Any, n: int, who: str, min_count: int = 2) -> np.ndarray:
    """labels as int64 (n,), n ≥ min_count; ConfigError when None (unlabelled), else DataError."""
    if labels is None:
        raise ConfigError(
            f"{who}: the classifier features need a labelled data source (this one has no "
            "labels); use a labelled source or --eval-features inception"
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


def check_epochs(epochs: Any) -> int:
    """epochs as an int ≥ 1; ConfigError otherwise."""
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


def fresh_net(config: dict[str, Any], seed: int) -> FeatureNet:
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


def default_config(images: np.ndarray, num_classes: int) -> dict[str, Any]:
    """The FeatureNet constructor arguments for images (N, C, H, W) and num_classes classes."""
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
    max_steps: int = MAX_STEPS,
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
        max_steps: at most this many steps (the learning-rate schedule spans them); large sets
            then see fewer than ``epochs`` passes.

    Returns:
        The trained network, in eval mode.

    Raises:
        ConfigError: labels is None (unlabelled source), epochs < 1 or num_classes too small.
        DataError: images or labels of the wrong type or shape.
    """
    x = check_images(images, "feature classifier")
    y = check_labels(labels, x.shape[0], "feature classifier")
    epochs = check_epochs(epochs)
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
    net = fresh_net(default_config(x, k), seed)
    n = x.shape[0]
    # 128 per batch on large sets; smaller batches on small sets so that an epoch has ≥ ~32 steps.
    batch = min(n, _BATCH, max(16, n // 32))
    steps_per_epoch = n // batch  # drop the ragged last batch: BatchNorm dislikes tiny batches
    if isinstance(max_steps, bool) or not isinstance(max_steps, numbers.Integral) or max_steps < 1:
        raise ConfigError(
            f"feature classifier: max_steps must be an integer ≥ 1, got {max_steps!r}"
        )
    total = min(steps_per_epoch * epochs, int(max_steps))
    warmup = max(1, total // 10)
    max_shift = max(1, round(min(x.shape[2], x.shape[3]) / 14))
    opt = torch.optim.AdamW(net.parameters(), lr=_LR, weight_decay=_WEIGHT_DECAY)
    gen = torch.Generator().manual_seed(int(seed))
    if isinstance(x, np.ndarray) and not isinstance(x, np.memmap):
        xs = torch.tensor(x)  # uint8 copy (the source's arrays may be read-only); floats per batch

        def rows(idx: Tensor) -> Tensor:
            return xs[idx]

    else:  # a memmap or its rows (data larger than memory): read each batch's rows only

        def rows(idx: Tensor) -> Tensor:
            return torch.from_numpy(np.asarray(x[idx.numpy()]))

    ys = torch.from_numpy(y)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="feature classifier", unit="step", file=sys.stderr)
    # channels_last runs ~15 % faster on CPU; the trained net is handed back in the default layout.
    net.to(memory_format=torch.channels_last).train()
    step = 0
    for _ in range(epochs):
        if step >= total:
            break
        perm = torch.randperm(n, generator=gen)
        for i in range(min(steps_per_epoch, total - step)):
            idx = perm[i * batch : (i + 1) * batch]
            xb = _random_shift(_to_float(rows(idx)), max_shift, gen)
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


@torch.no_grad()
def extract_features(
    net: FeatureNet, images: np.ndarray | Tensor, batch: int = 500
) -> dict[str, Any]:
    """Features and class probabilities of images under the feature classifier.

    :func:`decentdiff.evaluation.features.extract` calls this for a :class:`FeatureNet`.

    Args:
        net: a :class:`FeatureNet` (e.g. from
            :func:`~decentdiff.evaluation.features.get_feature_net`).
        images: uint8 (N, C, H, W) (numpy or torch), or float (N, C, H, W) in [-1, 1].
        batch: images per forward pass.

    Returns:
        ``{"features": float64 (N, D), "probs": float64 (N, K)}``.

    Raises:
        DataError: images of the wrong shape/dtype, non-finite, or not the size/channels the
            classifier was trained on.
    """
    shape, batches = image_batches(images, batch, "feature extraction")
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
    y = check_labels(labels, len(images), "accuracy", min_count=1)
    probs = extract_features(net, images)["probs"]
    return float(np.mean(probs.argmax(axis=1) == y))
