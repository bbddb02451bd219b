"""A small convolutional UNet tuned for CPU speed, with parameter names that carry its parts.

Top-level modules are exactly the parts the federated methods exchange (PAPERS.md §3):
``time_embed``, ``class_embed`` (optional), ``down`` (its first entry is the stem conv), ``mid``,
``up`` and ``out``. Attention appears only in ``mid`` (lowest resolution), never at full resolution.

Where the compute goes (BENCHMARKS.md has the measurements): a 3×3 convolution costs the same at
every level when channels double as the resolution halves, but a parameter at 7×7 costs 16× fewer
FLOPs than one at 28×28, and convolutions with few channels run far below the CPU's peak. So the
full-resolution level is thin (the stem conv plus one decoder block), depth sits at the lowest
levels, and the wiring avoids work that does not learn much:

- one skip per level (the last activation of the encoder level), fed to the first decoder block
  of that level, where it is concatenated to the input of the convolution path only; the residual
  path stays the identity, so no 1×1 projection is needed (their backward pass is slow on CPU);
- channel changes happen in the resampling layers: a strided 3×3 conv going down, a 1×1 conv at
  the lower resolution followed by nearest upsampling going up (4× cheaper than convolving after
  upsampling);
- GroupNorm only: no statistic crosses samples, so an image's output never depends on its batch;
- activations in channels_last memory format, the fast layout for oneDNN (CPU) and cuDNN
  (tensor cores) convolutions; the weights keep the default layout, so state dicts stay contiguous.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import ConfigError

#: Names of the top-level parts, in data-flow order. ``federated/parts.py`` maps methods to these.
PARTS = ("time_embed", "class_embed", "down", "mid", "up", "out")


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of :class:`UNet`. Saved in every checkpoint's ``meta.json``.

    Per-level fields (``blocks``, ``up_blocks``) are an int for every level or one entry per level,
    from the full resolution down.
    """

    in_channels: int = 1
    out_channels: int | None = None  # defaults to in_channels
    channels: tuple[int, ...] = (32, 64, 128)  # one entry per resolution level
    blocks: tuple[int, ...] | int = (0, 1, 2)  # encoder residual blocks per level (may be 0)
    up_blocks: tuple[int, ...] | int = (1, 1, 2)  # decoder residual blocks per level (≥ 1)
    time_dim: int = 128
    num_classes: int = 0  # 0 = unconditional; otherwise a null class id == num_classes is added
    mid_attention: bool = True  # self-attention in the middle block (lowest resolution only)
    heads: int = 2
    groups: int = 8  # GroupNorm groups (fewer when a layer has fewer channels)

    def __post_init__(self) -> None:
        if not self.channels:
            raise ConfigError("UNetConfig.channels needs at least one level")
        if min(self.level_up_blocks()) < 1:
            raise ConfigError("UNetConfig.up_blocks must be ≥ 1 on every level (it takes the skip)")
        if min(self.level_blocks()) < 0:
            raise ConfigError("UNetConfig.blocks must be ≥ 0")
        if self.mid_attention and (self.heads < 1 or self.channels[-1] % self.heads):
            raise ConfigError(f"{self.channels[-1]} channels do not split into {self.heads} heads")

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def _per_level(self, v: tuple[int, ...] | int, name: str) -> tuple[int, ...]:
        if isinstance(v, int):
            return (v,) * len(self.channels)
        if len(v) != len(self.channels):
            raise ConfigError(
                f"UNetConfig.{name} must have one entry per level ({len(self.channels)})"
            )
        return tuple(v)

    def level_blocks(self) -> tuple[int, ...]:
        return self._per_level(self.blocks, "blocks")

    def level_up_blocks(self) -> tuple[int, ...]:
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


def _norm(ch: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, ch), ch)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the embedding as a per-channel scale and shift.

    A decoder block also receives the encoder's skip activation (``skip_ch`` channels): it joins the
    input of the convolution path only, so the residual path stays the identity.
    """

    def __init__(self, ch: int, emb_dim: int, groups: int, skip_ch: int = 0):
        super().__init__()
        self.norm1 = _norm(ch + skip_ch, groups)
        self.conv1 = nn.Conv2d(ch + skip_ch, ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * ch)
        self.norm2 = _norm(ch, groups)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)
        nn.init.zeros_(
            self.conv2.weight
        )  # each block starts as the identity: stable early training
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor, emb: Tensor, skip: Tensor | None = None) -> Tensor:
        h = x if skip is None else torch.cat([x, skip], dim=1)
        h = self.conv1(F.silu(self.norm1(h)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return x + self.conv2(F.silu(h))


class Attention(nn.Module):
    """Multi-head self-attention over spatial positions (used only at the lowest resolution)."""

    def __init__(self, ch: int, groups: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = _norm(ch, groups)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (B, heads, HW, C/heads)
        a = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(a.contiguous(memory_format=torch.channels_last))


class MidBlock(nn.Module):
    def __init__(self, ch: int, emb_dim: int, groups: int, attention: bool, heads: int):
        super().__init__()
        self.res1 = ResBlock(ch, emb_dim, groups)
        self.attn = Attention(ch, groups, heads) if attention else nn.Identity()
        self.res2 = ResBlock(ch, emb_dim, groups)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return self.res2(self.attn(self.res1(x, emb)), emb)


class Downsample(nn.Module):
    """Strided 3×3 convolution to the next level's channels."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """1×1 convolution to the next level's channels at the low resolution, then nearest upsampling
    to the skip's size (so odd sizes such as 7×7 → 14×14 → 28×28 or 4×4 → 7×7 work)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return F.interpolate(self.conv(x), size=size, mode="nearest")


class Level(nn.Module):
    """Residual blocks at one resolution, then an optional resample (down or up)."""

    def __init__(self, blocks: list[ResBlock], resample: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.resample = resample


class UNet(nn.Module):
    """UNet predicting a tensor of the input's shape from (x, t, cond).

    Works for any image size, including odd ones (7×7, 28×28 with three levels).
    """

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.config = cfg
        ch, g, emb = cfg.channels, cfg.groups, cfg.time_dim
        nb, nu = cfg.level_blocks(), cfg.level_up_blocks()
        last = len(ch) - 1
        self.time_embed = TimeEmbed(emb)
        # Null class (id == num_classes) is the "unconditional" token for classifier-free guidance.
        self.class_embed = nn.Embedding(cfg.num_classes + 1, emb) if cfg.num_classes > 0 else None
        down: list[nn.Module] = [nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)]  # down.0 = stem
        for i, c in enumerate(ch):
            blocks = [ResBlock(c, emb, g) for _ in range(nb[i])]
            down.append(Level(blocks, Downsample(c, ch[i + 1]) if i < last else None))
        self.down = nn.ModuleList(down)
        self.mid = MidBlock(ch[-1], emb, g, cfg.mid_attention, cfg.heads)
        up: list[nn.Module] = []
        for i in reversed(range(len(ch))):
            blocks = [ResBlock(ch[i], emb, g, skip_ch=ch[i] if j == 0 else 0) for j in range(nu[i])]
            up.append(Level(blocks, Upsample(ch[i], ch[i - 1]) if i > 0 else None))
        self.up = nn.ModuleList(up)
        self.out = nn.Sequential(
            _norm(ch[0], g),
            nn.SiLU(),
            nn.Conv2d(ch[0], cfg.out_channels or cfg.in_channels, 3, padding=1),
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
            (B, C_out, H, W), contiguous.
        """
        emb = self.time_embed(t)
        if self.class_embed is not None:
            if cond is None:
                cond = torch.full(
                    (x.shape[0],), self.num_classes, device=x.device, dtype=torch.long
                )
            emb = emb + self.class_embed(cond)
        emb = F.silu(emb)
        # A 1-channel input is both layouts at once: convert after the stem, where it is not.
        h = self.down[0](x).contiguous(memory_format=torch.channels_last)
        skips: list[Tensor] = []
        for level in self.down[1:]:
            for block in level.blocks:
                h = block(h, emb)
            skips.append(h)
            if level.resample is not None:
                h = level.resample(h)
        h = self.mid(h, emb)
        for level in self.up:
            skip = skips.pop()
            for j, block in enumerate(level.blocks):
                h = block(h, emb, skip if j == 0 else None)
            if level.resample is not None:
                h = level.resample(h, skips[-1].shape[-2:])
        return self.out(h).contiguous()
