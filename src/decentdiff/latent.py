"""Latent-space models: a local diffusers ``AutoencoderKL`` (the format Stable Diffusion's VAE ships
in) between the pixels and every network of a RUN.

With ``model.vae = DIR`` (``--vae DIR``), the training images are encoded once into a cached
latent data set, experts, monolith, router and student train on latents, and samples are decoded
back to pixels before they are saved or scored. Partition features and evaluation stay in pixel
space, so clusters and FIDs mean what they mean without a VAE.

- **Encoding** is deterministic: the mean of the posterior, times ``scaling_factor`` (after
  subtracting ``shift_factor`` where the VAE has one, as SD3/Flux VAEs do). Images go in as
  [−1, 1]; grey images are repeated to three channels for a three-channel VAE, and a decoded
  image is averaged back to one channel.
- **The cache** lives in ``RUN/latents/``: one ``<key>.npy`` (float32 (N, c, h, w)) and
  ``<key>.json`` per distinct image set, the key being the SHA-256 of the images' bytes and the
  VAE's fingerprint (SHA-256 of its config and weight files). Files are written atomically; a
  cache entry whose JSON or shape does not match is recomputed, never trusted.
- **Nothing is downloaded**: ``from_pretrained(DIR, local_files_only=True)``; a directory that is
  not an AutoencoderKL is one clear error.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .errors import ConfigError

CHUNK = 64  # images per encoder / decoder call


def _fingerprint(directory: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(directory.iterdir()):
        if f.is_file() and f.suffix in (".json", ".safetensors", ".bin"):
            h.update(f.name.encode())
            with f.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]


@dataclass
class LatentCodec:
    """A VAE between pixels (uint8 or [−1, 1]) and scaled latents."""

    path: Path
    vae: nn.Module
    fingerprint: str
    scale: float
    shift: float
    factor: int  # spatial downsampling
    vae_channels: int
    latent_channels: int

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> LatentCodec:
        path = Path(directory).expanduser().resolve()
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"--vae {directory}: no config.json there; point it at a diffusers AutoencoderKL "
                "directory (the `vae` folder of a Stable Diffusion checkpoint)"
            )
        try:
            from diffusers import AutoencoderKL
        except ImportError:
            raise ConfigError(
                "--vae needs diffusers: pip install 'diffusers==0.42.1' (or the [test] extra)"
            ) from None
        cfg = json.loads((path / "config.json").read_text())
        if cfg.get("_class_name") not in (None, "AutoencoderKL"):
            raise ConfigError(
                f"--vae {directory}: it holds a {cfg.get('_class_name')}, not an AutoencoderKL"
            )
        try:
            vae = AutoencoderKL.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, TypeError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"--vae {directory}: cannot load an AutoencoderKL: {first}") from None
        vae.to(device).eval().requires_grad_(False)
        c = vae.config
        return cls(
            path=path,
            vae=vae,
            fingerprint=_fingerprint(path),
            scale=float(c.scaling_factor),
            shift=float(c.shift_factor or 0.0),
            factor=2 ** (len(c.block_out_channels) - 1),
            vae_channels=int(c.in_channels),
            latent_channels=int(c.latent_channels),
        )

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    def latent_shape(self, image_shape: tuple[int, ...]) -> tuple[int, int, int]:
        c, h, w = image_shape
        self.check(image_shape)
        return (self.latent_channels, h // self.factor, w // self.factor)

    def check(self, image_shape: tuple[int, ...]) -> None:
        c, h, w = image_shape
        if h % self.factor or w % self.factor:
            m = self.factor * max(1, -(-max(h, w) // self.factor))
            raise ConfigError(
                f"images of {h}×{w} do not divide by the VAE's downsampling {self.factor}; "
                f"resize them with --set data.size={m}"
            )
        if c not in (1, self.vae_channels):
            raise ConfigError(
                f"{c}-channel images and a {self.vae_channels}-channel VAE do not fit; "
                f"set data.channels={self.vae_channels}"
            )

    @torch.no_grad()
    def encode(self, images: np.ndarray | Tensor) -> Tensor:
        """uint8 (N, C, H, W) (or float in [−1, 1]) -> float32 scaled latents (N, c, h, w)."""
        self.check(tuple(images.shape[1:]))
        out = []
        for i in range(0, len(images), CHUNK):  # rows read a chunk at a time (memory-mapped data)
            b = images[i : i + CHUNK]
            b = b if torch.is_tensor(b) else torch.from_numpy(np.ascontiguousarray(b))
            b = b.float().div(127.5).sub(1.0) if not b.dtype.is_floating_point else b.float()
            if b.shape[1] == 1 and self.vae_channels == 3:
                b = b.repeat(1, 3, 1, 1)
            z = self.vae.encode(b.to(self.device)).latent_dist.mean
            out.append(((z - self.shift) * self.scale).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.latent_channels, 1, 1)

    @torch.no_grad()
    def decode(self, latents: Tensor, channels: int) -> Tensor:
        """Scaled latents (N, c, h, w) -> pixels in [−1, 1] with ``channels`` channels."""
        out = []
        for i in range(0, len(latents), CHUNK):
            z = latents[i : i + CHUNK].to(self.device).float() / self.scale + self.shift
            x = self.vae.decode(z).sample
            if channels == 1 and x.shape[1] == 3:
                x = x.mean(dim=1, keepdim=True)
            out.append(x.clamp(-1, 1).float().cpu())
        return torch.cat(out)

    def meta(self, image_shape: tuple[int, ...]) -> dict[str, Any]:
        """What a model's meta.json records of its VAE (and what loading checks)."""
        return {
            "path": str(self.path),
            "fingerprint": self.fingerprint,
            "scale": self.scale,
            "shift": self.shift,
            "pixel_shape": list(image_shape),
        }


def _key(images: np.ndarray, codec: LatentCodec) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([list(images.shape), str(images.dtype), codec.fingerprint]).encode())
    step = 4096  # rows hashed in blocks: the whole array is never copied (memory-mapped data)
    for i in range(0, len(images), step):
        h.update(np.ascontiguousarray(images[i : i + step]).tobytes())
    return h.hexdigest()[:24]


def cached_latents(codec: LatentCodec, images: np.ndarray, cache_dir: Path) -> np.ndarray:
    """The latents of ``images`` (uint8 (N, C, H, W)), encoded once and kept in ``cache_dir``."""
    import io
    import os
    import tempfile

    from .training.checkpoint import atomic_write_text

    key = _key(images, codec)
    npy, side = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    want = [len(images), *codec.latent_shape(tuple(images.shape[1:]))]
    if npy.is_file() and side.is_file():
        try:
            info = json.loads(side.read_text())
            raw = npy.read_bytes()
            if info.get("sha256") == hashlib.sha256(raw).hexdigest():
                z = np.load(io.BytesIO(raw))  # in memory: latents are far smaller than pixels
                if info.get("shape") == want and list(z.shape) == want and z.dtype == np.float32:
                    return z
        except (OSError, ValueError):
            pass  # damaged or torn: encode again
    z = codec.encode(images).numpy()
    buf = io.BytesIO()
    np.save(buf, z)
    raw = buf.getvalue()
    cache_dir.mkdir(parents=True, exist_ok=True)
    # A temp file of its own: concurrent writers (DDP ranks, two commands) never share one.
    fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=cache_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.replace(tmp, npy)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    info = {"shape": want, "sha256": hashlib.sha256(raw).hexdigest()}
    atomic_write_text(side, json.dumps({**info, "vae": codec.meta(images.shape[1:])}, indent=1))
    return z


def cache_dir_for(path: Path) -> Path:
    """``RUN/latents`` for a model directory inside RUN (the nearest parent with a run.toml)."""
    for p in (path, *path.parents):
        if (p / "run.toml").is_file():
            return p / "latents"
    return path.parent / "latents"


def model_inputs(
    images: np.ndarray,
    vae: str,
    cache_dir: Path,
    device: str | torch.device = "cpu",
    *,
    resumed: dict[str, Any] | None = None,
) -> tuple[np.ndarray, dict[str, Any] | None]:
    """What a network of a RUN trains on: ``images`` themselves, or with ``vae`` their latents.

    Args:
        resumed: the meta.json of the checkpoint being continued (or of the teachers), if any:
            its latent space must be this one.

    Returns:
        (uint8 images or float32 latents, the meta.json ``vae`` entry or None).
    """
    before = (resumed or {}).get("vae") or None
    if not vae:
        if before:
            raise ConfigError(
                f"this model was trained in the latent space of {before['path']}; continue it "
                f"with --vae {before['path']}, or pass --fresh"
            )
        return images, None
    codec = LatentCodec.load(vae, device)
    if resumed is not None and (before or {}).get("fingerprint") != codec.fingerprint:
        was = f"the VAE {before['fingerprint']}" if before else "pixel space"
        raise ConfigError(
            f"this model was trained in {was}, not in the latent space of {vae} "
            f"({codec.fingerprint}); restore that VAE, or pass --fresh to start over"
        )
    return cached_latents(codec, images, cache_dir), codec.meta(tuple(images.shape[1:]))


def resumed_meta(out_dir: Path, fresh: bool) -> dict[str, Any] | None:
    """The meta.json a training run in ``out_dir`` would continue (None: a fresh start)."""
    if fresh or not (out_dir / "meta.json").is_file():
        return None
    try:
        meta = json.loads((out_dir / "meta.json").read_text())
    except (OSError, ValueError):
        return None  # a damaged meta is the training loop's to report
    return meta if isinstance(meta, dict) else None


def load_decoder(
    vae_meta: dict[str, Any], device: str | torch.device = "cpu", base: Path | None = None
):
    """A decoder for samples of a model trained with ``vae_meta``; refuses a changed VAE.
    A relative path (an exported folder's) is taken from ``base``, the model's directory."""
    path = Path(vae_meta["path"])
    if not path.is_absolute() and base is not None:
        path = base / path
    codec = LatentCodec.load(path, device)
    if codec.fingerprint != vae_meta["fingerprint"]:
        raise ConfigError(
            f"the VAE at {vae_meta['path']} changed since the model was trained (fingerprint "
            f"{codec.fingerprint}, trained with {vae_meta['fingerprint']}); restore it or retrain"
        )
    channels = int(vae_meta["pixel_shape"][0])

    def decode(latents: Tensor) -> Tensor:
        return codec.decode(latents, channels)

    return decode, codec
