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
    blocks: tuple[int, ...] | int = 1  # residual blocks per level (encoder)
    up_blocks: tuple[int, ...] | int | None = None  # decoder; None = blocks + 1 (skip="block")
    time_dim: int = 128
    num_classes: int = 0  # 0 = unconditional; otherwise a null class id == num_classes is added
    mid_attention: bool = True
    heads: int = 1
    groups: int = 8
    skip: str = "block"  # block: every encoder activation is a skip; level: one per level
    residual: str = "cat"  # cat: 1x1 conv of cat(h, skip); identity: skip feeds the conv path only
    upsample: str = "conv"  # conv: nearest + 3x3; linear: 1x1 at low res + nearest
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("channels", "blocks", "up_blocks"):
            if isinstance(d[k], tuple):
                d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        d = dict(d)
        for k in ("channels", "blocks", "up_blocks"):
            if isinstance(d.get(k), list):
                d[k] = tuple(d[k])
        return cls(**d)

    def _per_level(self, v, name: str) -> tuple[int, ...]:
        if isinstance(v, int):
            return (v,) * len(self.channels)
        if len(v) != len(self.channels):
            raise ValueError(f"{name} must have one entry per level")
        return tuple(v)

    def level_blocks(self) -> tuple[int, ...]:
        return self._per_level(self.blocks, "blocks")

    def level_up_blocks(self) -> tuple[int, ...]:
        if self.up_blocks is None:
            return tuple(b + 1 for b in self.level_blocks())
        return self._per_level(self.up_blocks, "up_blocks")


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
    """GroupNorm-SiLU-conv twice, with the embedding as a per-channel scale and shift.

    A decoder block also takes the encoder's skip activation (``skip_ch`` channels): it is
    concatenated to the input of the convolution path only, so the residual stays the identity.
    """

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int, skip_ch: int = 0):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, cin + skip_ch), cin + skip_ch)
        self.conv1 = nn.Conv2d(cin + skip_ch, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(min(groups, cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv2.weight)  # each block starts as identity: stable early training
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor, emb: Tensor, skip: Tensor | None = None) -> Tensor:
        h = x if skip is None else torch.cat([x, skip], dim=1)
        h = self.conv1(F.silu(self.norm1(h)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over spatial positions (used only at the lowest resolution)."""

    def __init__(self, ch: int, groups: int, heads: int = 1):
        super().__init__()
        if ch % heads:
            raise ValueError(f"attention: {ch} channels do not split into {heads} heads")
        self.heads = heads
        self.norm = nn.GroupNorm(min(groups, ch), ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # (B, heads, HW, C/heads)
        a = F.scaled_dot_product_attention(q, k, v)
        a = a.transpose(-1, -2).reshape(b, c, h, w).contiguous(memory_format=torch.channels_last)
        return x + self.proj(a)


class MidBlock(nn.Module):
    def __init__(self, ch: int, emb_dim: int, groups: int, attention: bool, heads: int):
        super().__init__()
        self.res1 = ResBlock(ch, ch, emb_dim, groups)
        self.attn = Attention(ch, groups, heads) if attention else nn.Identity()
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
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, cin: int, cout: int, kind: str = "conv"):
        super().__init__()
        self.kind = kind
        self.conv = nn.Conv2d(cin, cout, 3 if kind == "conv" else 1, padding=int(kind == "conv"))

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        if self.kind == "conv":
            return self.conv(F.interpolate(x, size=size, mode="nearest"))
        return F.interpolate(self.conv(x), size=size, mode="nearest")


class UNet(nn.Module):
    """UNet predicting a tensor of the input's shape from (x, t, cond).

    Works for any image size (odd sizes such as 7×7 are handled by resampling to the skip's size).
    """

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.config = cfg
        self.channels_last = True
        ch, g, emb = cfg.channels, cfg.groups, cfg.time_dim
        nb, nu = cfg.level_blocks(), cfg.level_up_blocks()
        self.time_embed = TimeEmbed(emb)
        # Null class (id == num_classes) is the "unconditional" token for classifier-free guidance.
        self.class_embed = nn.Embedding(cfg.num_classes + 1, emb) if cfg.num_classes > 0 else None
        down: list[nn.Module] = [nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)]  # down.0 = stem
        skips: list[list[int]] = []  # per level: channels of the skips it leaves
        cur = ch[0]
        for i, c in enumerate(ch):
            level_skips = [cur]  # the level's input (stem or downsample output)
            blocks = []
            for _ in range(nb[i]):
                blocks.append(ResBlock(cur, c, emb, g))
                cur = c
                level_skips.append(cur)
            if cfg.skip == "level":
                level_skips = level_skips[-1:]
            skips.append(level_skips)
            last = i == len(ch) - 1
            down.append(Level(blocks, None if last else Downsample(cur, ch[i + 1])))
            if not last:
                cur = ch[i + 1]
        self._skips = [len(s) for s in skips]
        self.down = nn.ModuleList(down)
        self.mid = MidBlock(cur, emb, g, cfg.mid_attention, cfg.heads)
        up: list[nn.Module] = []
        for i, c in reversed(list(enumerate(ch))):
            blocks = []
            level_skips = list(skips[i])
            for _ in range(nu[i]):
                extra = level_skips.pop() if level_skips else 0
                if cfg.residual == "identity":
                    blocks.append(ResBlock(cur, c, emb, g, skip_ch=extra))
                else:
                    blocks.append(ResBlock(cur + extra, c, emb, g))
                cur = c
            up.append(Level(blocks, Upsample(cur, ch[i - 1], cfg.upsample) if i > 0 else None))
            if i > 0:
                cur = ch[i - 1]
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
                cond = torch.full((x.shape[0],), self.num_classes, device=x.device, dtype=torch.long)
            emb = emb + self.class_embed(cond)
        emb = F.silu(emb)
        h = self.down[0](x)
        if self.channels_last:
            h = h.contiguous(memory_format=torch.channels_last)
        level_skips: list[list[Tensor]] = []
        sizes = []
        for level in self.down[1:]:
            hs = [h]
            for block in level.blocks:
                h = block(h, emb)
                hs.append(h)
            level_skips.append(hs[-len(hs) if self.config.skip == "block" else -1 :])
            sizes.append(h.shape[-2:])
            h = level.resample(h)
        h = self.mid(h, emb)
        for level in self.up:
            hs = level_skips.pop()
            for block in level.blocks:
                if self.config.residual == "identity":
                    h = block(h, emb, hs.pop() if hs else None)
                else:
                    h = block(torch.cat([h, hs.pop()], dim=1) if hs else h, emb)
            if not isinstance(level.resample, nn.Identity):
                h = level.resample(h, sizes[len(level_skips) - 1])
        return self.out(h).contiguous()
