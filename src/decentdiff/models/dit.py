"""A Diffusion Transformer (DiT, Peebles & Xie 2023) with the UNet's part names, and a DiT router.

The DDM paper trains DiT-XL/2 experts and a DiT-B/2 router with a CLS token; this module is the
same design at MNIST scale:

- **patchify**: a ``patch``×``patch`` convolution with stride ``patch`` to ``dim`` channels, plus a
  fixed 2-D sine-cosine position embedding (no parameters, so any image size works; an image
  whose sides are not multiples of ``patch`` is zero-padded and the output cropped back);
- **adaLN-zero blocks**: LayerNorm without affine parameters, modulated by a shift, scale and gate
  regressed from the conditioning embedding (time + class), gates initialised to zero so every
  block starts as the identity; multi-head self-attention (``scaled_dot_product_attention``) and
  a GELU MLP;
- **final layer**: adaLN (shift, scale), a linear map to ``patch²·C`` values per token, zero
  initialised, then unpatchify.

Federated methods exchange named parts (``models.unet.PARTS``); the DiT keeps the same top-level
names with this mapping (docs/architecture.md):

=============  ==============================================================================
part           DiT modules
=============  ==============================================================================
``time_embed``  the sinusoidal time features' MLP (the UNet's ``TimeEmbed``)
``class_embed`` the class table (null id == ``num_classes``), if class-conditional
``down``        the patch embedding (``down.0``) and the first ``(depth - 1) // 2`` blocks
``mid``         the middle block(s): one for an odd depth, two for an even depth
``up``          the last ``(depth - 1) // 2`` blocks
``out``         the final adaLN layer and the linear unpatchify projection
=============  ==============================================================================

so FedDiffuse's encoder / bottleneck / decoder groups are the first blocks / the middle / the last
blocks and the output layer.

:class:`DiTRouter` is the paper's router: a learned CLS token prepended to the patch tokens, the
same adaLN-zero blocks conditioned on t (and the class), and a linear head on the CLS token's
final state.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import ConfigError
from .unet import TimeEmbed


@dataclass(frozen=True)
class DiTConfig:
    """Architecture of :class:`DiT`. Saved in every checkpoint's ``meta.json`` (with ``arch``)."""

    in_channels: int = 1
    out_channels: int | None = None  # defaults to in_channels
    dim: int = 128  # token width
    depth: int = 6  # transformer blocks
    heads: int = 4
    patch: int = 2
    mlp_ratio: float = 4.0
    num_classes: int = 0  # 0 = unconditional; otherwise a null class id == num_classes is added

    arch = "dit"  # a class attribute, not a field: written by to_dict, checked by from_dict

    def __post_init__(self) -> None:
        if self.depth < 1 or self.dim < 1 or self.patch < 1 or self.heads < 1:
            raise ConfigError("DiTConfig: depth, dim, patch and heads must be ≥ 1")
        if self.dim % self.heads:
            raise ConfigError(f"DiTConfig: dim {self.dim} does not split into {self.heads} heads")
        if self.dim % 4:
            raise ConfigError("DiTConfig: dim must be a multiple of 4 (2-D sine-cosine positions)")

    def to_dict(self) -> dict:
        return {"arch": self.arch, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> DiTConfig:
        d = dict(d)
        if d.pop("arch", cls.arch) != cls.arch:
            raise ConfigError(f"not a DiT configuration: {d}")
        return cls(**d)

    def split(self) -> tuple[int, int, int]:
        """Blocks in (down, mid, up): the middle one or two blocks form ``mid``."""
        side = (self.depth - 1) // 2
        return side, self.depth - 2 * side, side


@dataclass(frozen=True)
class DiTRouterConfig:
    """Architecture of :class:`DiTRouter` (a DiT encoder with a CLS token and a linear head)."""

    in_channels: int = 1
    num_parts: int = 4
    dim: int = 64
    depth: int = 2
    heads: int = 2
    patch: int = 4
    mlp_ratio: float = 2.0
    num_classes: int = 0

    arch = "dit"

    def __post_init__(self) -> None:
        DiTConfig(1, None, self.dim, self.depth, self.heads, self.patch)  # the same checks

    def to_dict(self) -> dict:
        return {"arch": self.arch, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> DiTRouterConfig:
        d = dict(d)
        if d.pop("arch", cls.arch) != cls.arch:
            raise ConfigError(f"not a DiT router configuration: {d}")
        return cls(**d)


def sincos_2d(h: int, w: int, dim: int, device: torch.device | None = None) -> Tensor:
    """Fixed 2-D sine-cosine position embedding (MAE / DiT): (h·w, dim), rows in raster order.

    Half the features encode the column, then half the row (MAE's order), each as sin and cos
    of the position at ``dim / 4`` geometric frequencies from 1 to 1/10000.
    """
    quarter = dim // 4
    omega = 1.0 / 10000.0 ** (torch.arange(quarter, dtype=torch.float32, device=device) / quarter)
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32, device=device),
        torch.arange(w, dtype=torch.float32, device=device),
        indexing="ij",
    )
    out = []
    for pos in (xs.reshape(-1), ys.reshape(-1)):
        a = pos[:, None] * omega[None]
        out += [torch.sin(a), torch.cos(a)]
    return torch.cat(out, dim=1)


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> (B, N, dim) tokens plus position embedding; pads to a multiple of patch."""

    def __init__(self, in_channels: int, dim: int, patch: int):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self._pos: dict[tuple[int, int, str], Tensor] = {}

    def grid(self, h: int, w: int) -> tuple[int, int]:
        return -(-h // self.patch), -(-w // self.patch)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        gh, gw = self.grid(h, w)
        pad_h, pad_w = gh * self.patch - h, gw * self.patch - w
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        tokens = self.proj(x).flatten(2).transpose(1, 2)  # (B, N, dim)
        key = (gh, gw, str(x.device))
        if key not in self._pos:
            self._pos[key] = sincos_2d(gh, gw, tokens.shape[-1], x.device)
        return tokens + self._pos[key].to(tokens.dtype)


class DiTBlock(nn.Module):
    """adaLN-zero transformer block: x + gate·Attn(mod(LN(x))), x + gate·MLP(mod(LN(x)))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim)
        )
        self.ada = nn.Linear(dim, 6 * dim)
        nn.init.zeros_(self.ada.weight)  # adaLN-zero: every block starts as the identity
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        b, n, d = x.shape
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(c).chunk(6, dim=1)
        h = _modulate(self.norm1(x), sh1, sc1)
        q, k, v = self.qkv(h).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + g1[:, None] * self.proj(a)
        h = _modulate(self.norm2(x), sh2, sc2)
        return x + g2[:, None] * self.mlp(h)


class FinalLayer(nn.Module):
    def __init__(self, dim: int, patch: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Linear(dim, 2 * dim)
        self.linear = nn.Linear(dim, patch * patch * out_channels)
        for m in (self.ada, self.linear):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.ada(c).chunk(2, dim=1)
        return self.linear(_modulate(self.norm(x), shift, scale))


def _conditioning(
    time_embed: nn.Module, class_embed: nn.Embedding | None, num_classes: int, t: Tensor, cond
) -> Tensor:
    emb = time_embed(t)
    if class_embed is not None:
        if cond is None:
            cond = torch.full((t.shape[0],), num_classes, device=t.device, dtype=torch.long)
        emb = emb + class_embed(cond)
    return F.silu(emb)


class DiT(nn.Module):
    """DiT predicting a tensor of the input's shape from (x, t, cond): the UNet's interface."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.config = cfg
        d = cfg.dim
        n_down, n_mid, n_up = cfg.split()
        self.time_embed = TimeEmbed(d)
        self.class_embed = nn.Embedding(cfg.num_classes + 1, d) if cfg.num_classes > 0 else None

        def blocks(n: int) -> list[nn.Module]:
            return [DiTBlock(d, cfg.heads, cfg.mlp_ratio) for _ in range(n)]

        self.down = nn.ModuleList([PatchEmbed(cfg.in_channels, d, cfg.patch), *blocks(n_down)])
        self.mid = nn.ModuleList(blocks(n_mid))
        self.up = nn.ModuleList(blocks(n_up))
        self.out = FinalLayer(d, cfg.patch, cfg.out_channels or cfg.in_channels)
        # DiT's initialisation: Xavier-uniform linear layers (the zero inits above are kept).
        for m in self.modules():
            if isinstance(m, nn.Linear) and m.weight.abs().sum() > 0:
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """Args: x (B, C, H, W), t (B,) in [0, 1], cond (B,) long or None. Returns (B, C, H, W)."""
        h_img, w_img = x.shape[-2:]
        c = _conditioning(self.time_embed, self.class_embed, self.num_classes, t, cond)
        embed = self.down[0]
        gh, gw = embed.grid(h_img, w_img)
        h = embed(x)
        for block in (*self.down[1:], *self.mid, *self.up):
            h = block(h, c)
        h = self.out(h, c)  # (B, N, p·p·C)
        p, b = self.config.patch, x.shape[0]
        out_ch = h.shape[-1] // (p * p)
        h = h.reshape(b, gh, gw, p, p, out_ch).permute(0, 5, 1, 3, 2, 4)
        h = h.reshape(b, out_ch, gh * p, gw * p)
        return h[..., :h_img, :w_img].contiguous()


class DiTRouter(nn.Module):
    """The DDM paper's router: DiT blocks over [CLS, patches], a linear head on the CLS token."""

    def __init__(self, cfg: DiTRouterConfig):
        super().__init__()
        self.config = cfg
        d = cfg.dim
        self.time_embed = TimeEmbed(d)
        self.class_embed = nn.Embedding(cfg.num_classes + 1, d) if cfg.num_classes > 0 else None
        self.embed = PatchEmbed(cfg.in_channels, d, cfg.patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        nn.init.normal_(self.cls, std=0.02)
        self.blocks = nn.ModuleList(
            [DiTBlock(d, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth)]
        )
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.head = nn.Linear(d, cfg.num_parts)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """Args: x (B, C, H, W), t (B,), cond (B,) long or None. Returns (B, K) logits."""
        c = _conditioning(self.time_embed, self.class_embed, self.config.num_classes, t, cond)
        tokens = self.embed(x)
        h = torch.cat([self.cls.expand(x.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)
        for block in self.blocks:
            h = block(h, c)
        return self.head(self.norm(h[:, 0]))


def attention_flops(tokens: int, dim: int) -> float:
    """Forward FLOPs of one block's attention products (QKᵀ and AV): 2·2·N²·d."""
    return 4.0 * tokens * tokens * dim


def block_flops(tokens: int, dim: int, mlp_ratio: float) -> float:
    """Forward FLOPs of one DiT block's matrix products (qkv, proj, MLP, attention), per image."""
    linear = 2.0 * tokens * dim * (3 * dim + dim + 2 * int(dim * mlp_ratio))
    return linear + attention_flops(tokens, dim) + 2.0 * dim * 6 * dim


__all__ = [
    "DiT",
    "DiTBlock",
    "DiTConfig",
    "DiTRouter",
    "DiTRouterConfig",
    "attention_flops",
    "block_flops",
    "sincos_2d",
]
