"""The DDM router: a small time-conditioned classifier (x_t, t[, class]) -> K logits.

The paper uses a DiT-B/2 (~18% of an expert); at our scale a small conv net with FiLM time
conditioning serves (PAPERS.md §1 "Any small time-conditioned classifier serves at our scale").
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import ConfigError


@dataclass(frozen=True)
class RouterConfig:
    in_channels: int = 1
    num_parts: int = 4
    channels: tuple[int, ...] = (32, 64, 128)
    time_dim: int = 64
    num_classes: int = 0  # > 0: class-conditional router (null class id == num_classes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RouterConfig:
        return cls(**{**d, "channels": tuple(d["channels"])})


ROUTER_PRESETS: dict[str, tuple[int, ...]] = {
    # About 1/20 of an expert's forward FLOPs at each size (the paper's router: ~4% of training).
    "tiny": (8, 16),
    "compact": (8, 16, 32),
    "small": (16, 32, 64),
    "base": (32, 64, 128),
}


def router_config(
    preset: str, in_channels: int, num_parts: int, num_classes: int = 0
) -> RouterConfig:
    if preset not in ROUTER_PRESETS:
        raise ConfigError(
            f"unknown router preset {preset!r}; choose one of: {', '.join(ROUTER_PRESETS)}"
        )
    ch = ROUTER_PRESETS[preset]
    return RouterConfig(
        in_channels, num_parts, ch, time_dim=max(32, ch[0] * 2), num_classes=num_classes
    )


def _features(t: Tensor, dim: int) -> Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        self.norm = nn.GroupNorm(min(8, cout), cout)
        self.film = nn.Linear(emb, 2 * cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        h = self.norm(self.conv(x))
        scale, shift = self.film(e)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(h * (1 + scale) + shift)
        return h + F.silu(self.conv2(h))


class Router(nn.Module):
    """Predicts which of K data clusters a noisy image x_t came from."""

    def __init__(self, cfg: RouterConfig):
        super().__init__()
        self.config = cfg
        e = cfg.time_dim
        self.time_embed = nn.Sequential(nn.Linear(e, e), nn.SiLU(), nn.Linear(e, e))
        self.class_embed = nn.Embedding(cfg.num_classes + 1, e) if cfg.num_classes > 0 else None
        blocks, cin = [], cfg.in_channels
        for i, c in enumerate(cfg.channels):
            blocks.append(_Block(cin, c, e, stride=1 if i == 0 else 2))
            cin = c
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(cin, cfg.num_parts)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """Args: x (B, C, H, W), t (B,), cond (B,) long or None. Returns (B, K) logits."""
        e = self.time_embed(_features(t, self.config.time_dim))
        if self.class_embed is not None:
            if cond is None:
                cond = torch.full(
                    (x.shape[0],), self.config.num_classes, device=x.device, dtype=torch.long
                )
            e = e + self.class_embed(cond)
        e = F.silu(e)
        h = x.contiguous(memory_format=torch.channels_last)
        for b in self.blocks:
            h = b(h, e)
        return self.head(h.mean(dim=(2, 3)))
