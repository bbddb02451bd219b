"""Numeric precision of the network calls: ``fp32``, ``bf16`` (``torch.autocast``) or ``auto``.

bf16 is autocast around the forward passes only (and the loss, in training): master weights,
optimizer state, EMA, checkpoints and the sampler's state x stay fp32. ``auto`` picks bf16 where
it was measured to win (BENCHMARKS.md, "bf16 vs fp32"): on a device with fast bf16 matrix units
(a CPU with AMX tiles, a CUDA GPU that supports bf16) and for a network of at least
:data:`BF16_MIN_FORWARD_FLOPS` per image. Below that size the casts cost more than bf16 saves
(``tiny`` and ``compact`` trained and sampled slower in bf16 on the AMX CPU of the benchmark);
a CPU with avx512_bf16 but no AMX ran the ``small`` UNet at 0.8× in bf16 (BENCHMARKS.md,
tuning notes). Apple MPS: fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import Tensor

from .config import PRECISIONS
from .errors import ConfigError

#: ``auto``: bf16 for networks whose forward pass costs at least this per image. Between
#: ``compact`` (0.08 GFLOP, slower in bf16) and ``small`` (0.33 GFLOP, faster) at 28×28.
BF16_MIN_FORWARD_FLOPS = 0.16e9


def fast_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` has bf16 matrix units that beat fp32: CUDA with bf16 support, a CPU
    with AMX tiles. MPS and everything else: False."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if dev.type == "cpu":
        amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
        return bool(amx is not None and amx())
    return False


def resolve_precision(spec: str, device: torch.device | str, forward_flops: float) -> str:
    """``fp32`` or ``bf16`` for a network of ``forward_flops`` per image on ``device``.

    Args:
        spec: ``auto``, ``fp32`` or ``bf16`` (train.precision, sample.precision).
        forward_flops: FLOPs of one forward pass per image of the (largest) network.
    """
    if spec not in PRECISIONS:
        raise ConfigError(f"precision {spec!r}: choose one of {', '.join(PRECISIONS)}")
    dev = torch.device(device)
    if spec == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"precision bf16: {dev} does not support bf16; use --precision fp32")
    if spec != "auto":
        return spec
    return "bf16" if fast_bf16(dev) and forward_flops >= BF16_MIN_FORWARD_FLOPS else "fp32"


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to bf16 on ``device``'s type for ``bf16``; nothing for ``fp32``."""
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def autocast_velocity(
    velocity: Callable[..., Tensor], precision: str, device: torch.device | str
) -> Callable[..., Tensor]:
    """``velocity`` with its network calls in ``precision``; the output in x's dtype (fp32), so
    the solver's arithmetic and state stay fp32."""
    if precision != "bf16":
        return velocity

    def v(x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        with autocast(precision, device):
            out = velocity(x, t, cond)
        return out.to(x.dtype)

    return v
