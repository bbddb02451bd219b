"""A small convolutional UNet tuned for CPU speed, with parameter names that carry its parts.

Top-level modules are exactly the parts the federated methods exchange (PAPERS.md §3):
``time_embed``, ``class_embed`` (optional), ``down`` (its first entry is the stem conv), ``mid``,
``up`` and ``out``. Attention appears only in ``mid`` (lowest resolution), never at full resolution.
Activations use channels_last memory format, which is the fast path for CPU convolutions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F

#: Names of the top-level parts, in data-flow order. ``federated/parts.py`` maps methods to these.
PARTS = ("time_embed", "class_embed", "down", "mid", "up", "out")


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of :class:`UNet`. Saved in every checkpoint's ``meta.json``."""

    in_channels: int = 1
    out_channels: int | None = None  # defaults to in_channels
    channels: tuple[int, ...] = (32, 64, 128)  # one entry per resolution level
    blocks: tuple[int, ...] | int = 1  # residual blocks per level (encoder); decoder uses blocks+1
    time_dim: int = 128
    num_classes: int = 0  # 0 = unconditional; otherwise a null class id == num_classes is added
    mid_attention: bool = True
    groups: int = 8
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        d["blocks"] = list(self.blocks) if isinstance(self.blocks, tuple) else self.blocks
        return d

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        d = dict(d)
        d["channels"] = tuple(d["channels"])
        if isinstance(d.get("blocks"), list):
            d["blocks"] = tuple(d["blocks"])
        return cls(**d)

    def level_blocks(self) -> tuple[int, ...]:
        if isinstance(self.blocks, int):
            return (self.blocks,) * len(self.channels)
        if len(self.blocks) != len(self.channels):
            raise ValueError("blocks must have one entry per level")
        return tuple(self.blocks)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features of t ∈ [0, 1] (scaled by 1000 so that DDPM-style frequencies apply).

    Args:
        t: (B,) float times.
        dim: even feature size.
    Returns:
        (B, dim) features.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimeEmbed(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t, self.dim))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the embedding as a per-channel scale and shift."""

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(min(groups, cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv2.weight)  # each block starts as identity: stable early training
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


class Attention(nn.Module):
    """Single-head self-attention over spatial positions (used only at the lowest resolution)."""

    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(min(groups, ch), ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        a = F.scaled_dot_product_attention(q, k, v)  # (B, HW, C)
        return x + self.proj(a.transpose(-1, -2).reshape(b, c, h, w))


class MidBlock(nn.Module):
    def __init__(self, ch: int, emb_dim: int, groups: int, attention: bool):
        super().__init__()
        self.res1 = ResBlock(ch, ch, emb_dim, groups)
        self.attn = Attention(ch, groups) if attention else nn.Identity()
        self.res2 = ResBlock(ch, ch, emb_dim, groups)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return self.res2(self.attn(self.res1(x, emb)), emb)


class Level(nn.Module):
    """Residual blocks at one resolution, then an optional resample (down or up)."""

    def __init__(self, blocks: list[ResBlock], resample: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.resample = resample if resample is not None else nn.Identity()


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class UNet(nn.Module):
    """UNet predicting a tensor of the input's shape from (x, t, cond).

    Works for any image size (odd sizes such as 7×7 are handled by resampling to the skip's size).
    """

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.config = cfg
        ch, nb, g, emb = cfg.channels, cfg.level_blocks(), cfg.groups, cfg.time_dim
        self.time_embed = TimeEmbed(emb)
        # Null class (id == num_classes) is the "unconditional" token for classifier-free guidance.
        self.class_embed = nn.Embedding(cfg.num_classes + 1, emb) if cfg.num_classes > 0 else None
        down: list[nn.Module] = [nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)]  # down.0 = stem
        skips = [ch[0]]
        cur = ch[0]
        for i, c in enumerate(ch):
            blocks = []
            for _ in range(nb[i]):
                blocks.append(ResBlock(cur, c, emb, g))
                cur = c
                skips.append(cur)
            last = i == len(ch) - 1
            down.append(Level(blocks, None if last else Downsample(cur)))
            if not last:
                skips.append(cur)
        self.down = nn.ModuleList(down)
        self.mid = MidBlock(cur, emb, g, cfg.mid_attention)
        up: list[nn.Module] = []
        for i, c in reversed(list(enumerate(ch))):
            blocks = []
            for _ in range(nb[i] + 1):
                blocks.append(ResBlock(cur + skips.pop(), c, emb, g))
                cur = c
            up.append(Level(blocks, Upsample(cur) if i > 0 else None))
        self.up = nn.ModuleList(up)
        self.out = nn.Sequential(
            nn.GroupNorm(min(g, cur), cur),
            nn.SiLU(),
            nn.Conv2d(cur, cfg.out_channels or cfg.in_channels, 3, padding=1),
        )
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """Args:
            x: (B, C, H, W) noisy images.
            t: (B,) times in [0, 1] (for ε-models, the DDPM step divided by T).
            cond: (B,) long class ids, ``num_classes`` meaning "no class"; None = unconditional.
        Returns:
            (B, C_out, H, W).
        """
        emb = self.time_embed(t)
        if self.class_embed is not None:
            if cond is None:
                cond = torch.full(
                    (x.shape[0],), self.num_classes, device=x.device, dtype=torch.long
                )
            emb = emb + self.class_embed(cond)
        emb = F.silu(emb)
        h = self.down[0](x.contiguous(memory_format=torch.channels_last))
        hs = [h]
        for level in self.down[1:]:
            for block in level.blocks:
                h = block(h, emb)
                hs.append(h)
            if not isinstance(level.resample, nn.Identity):
                h = level.resample(h)
                hs.append(h)
        h = self.mid(h, emb)
        for level in self.up:
            for block in level.blocks:
                h = block(torch.cat([h, hs.pop()], dim=1), emb)
            if not isinstance(level.resample, nn.Identity):
                h = level.resample(h, hs[-1].shape[-2:])
        return self.out(h).contiguous()
