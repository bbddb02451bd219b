"""Model size presets (DiT-style registry) for both backbones, and the one way to build a network
from its description. An unknown preset is an error listing the valid ones.

A preset's name says its architecture: ``tiny`` … ``base`` are UNets, ``dit-tiny`` … ``dit-base``
DiTs (patch 2, FLOPs per image close to the UNet of the same size; BENCHMARKS.md). ``model.arch``
(``--arch``) picks the architecture for a plain size name: ``--arch dit --preset small`` is
``dit-small``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import nn

from ..errors import ConfigError
from .dit import DiT, DiTConfig, DiTRouter, DiTRouterConfig
from .router import ROUTER_PRESETS, Router, RouterConfig
from .unet import UNet, UNetConfig

NetworkConfig = UNetConfig | DiTConfig
RouterNetConfig = RouterConfig | DiTRouterConfig

#: The architectures, by the name ``--arch`` takes.
ARCHS = ("unet", "dit")

#: name -> architecture; image channels and classes are filled in from the data.
PRESETS: dict[str, NetworkConfig] = {
    # For tests: < 100k parameters, a fraction of a second per step.
    "tiny": UNetConfig(
        channels=(16, 32), blocks=0, up_blocks=1, time_dim=32, groups=4, mid_attention=False
    ),
    # Half the channels of small, ~1/4 of its FLOPs: the demo's experts (fast on a slow CPU).
    "compact": UNetConfig(
        channels=(16, 32, 64), blocks=(0, 1, 2), up_blocks=(1, 1, 2), time_dim=64, heads=2
    ),
    # The default: tuned for quality per CPU-minute at 28×28 (see BENCHMARKS.md).
    "small": UNetConfig(channels=(32, 64, 128), blocks=(0, 1, 2), up_blocks=(1, 1, 2), heads=2),
    # More capacity for longer runs or a GPU.
    "base": UNetConfig(
        channels=(64, 128, 256),
        blocks=(1, 2, 2),
        up_blocks=(2, 2, 3),
        time_dim=256,
        groups=16,
        heads=4,
    ),
    # DiT/2 presets at about the forward FLOPs per 28×28 image of the UNet of the same size
    # (0.88-1.06×; tests/models/test_dit.py): dit-tiny also matches tiny's parameters (80k vs
    # 87k), the larger ones hold fewer parameters than their UNet (0.18M / 1.04M / 6.4M).
    "dit-tiny": DiTConfig(dim=32, depth=4, heads=4, patch=2),
    "dit-compact": DiTConfig(dim=48, depth=4, heads=4, patch=2),
    "dit-small": DiTConfig(dim=96, depth=6, heads=4, patch=2),
    "dit-base": DiTConfig(dim=208, depth=8, heads=8, patch=2),
}

#: DiT routers (CLS token, patch 4): 0.6-1.3x the forward FLOPs of the convolutional router of the
#: same size (tiny 0.99, compact 1.28, small 0.82, base 0.58), a few % of an expert's.
DIT_ROUTER_PRESETS: dict[str, DiTRouterConfig] = {
    "dit-tiny": DiTRouterConfig(dim=32, depth=2, heads=2, patch=4),
    "dit-compact": DiTRouterConfig(dim=48, depth=2, heads=2, patch=4),
    "dit-small": DiTRouterConfig(dim=64, depth=3, heads=4, patch=4),
    "dit-base": DiTRouterConfig(dim=96, depth=4, heads=4, patch=4),
}


def preset_name(preset: str, arch: str = "") -> str:
    """The registry key for ``preset`` under ``arch`` ('' = as the preset's name says)."""
    arch = (arch or "").strip().lower()
    if arch and arch not in ARCHS:
        raise ConfigError(f"unknown architecture {arch!r}; choose one of: {', '.join(ARCHS)}")
    if not arch or preset.startswith(f"{arch}-"):
        name = preset
    elif arch == "unet":
        name = preset
        if preset.startswith("dit-"):
            raise ConfigError(
                f"--arch unet contradicts --preset {preset}; drop --arch or pass "
                f"--preset {preset.removeprefix('dit-')}"
            )
    else:
        name = f"{arch}-{preset}"
    return name


def _unknown(kind: str, preset: str, names) -> ConfigError:
    return ConfigError(f"unknown {kind} preset {preset!r}; choose one of: {', '.join(names)}")


def network_config(
    preset: str, in_channels: int, num_classes: int = 0, arch: str = ""
) -> NetworkConfig:
    """The architecture of a preset for images with ``in_channels`` channels."""
    name = preset_name(preset, arch)
    if name not in PRESETS:
        raise _unknown("model", name, PRESETS)
    return replace(PRESETS[name], in_channels=in_channels, num_classes=num_classes)


def config_from_dict(d: dict[str, Any]) -> NetworkConfig:
    """A network description from meta.json (``arch`` absent: a UNet, as before DiTs existed)."""
    arch = d.get("arch", "unet")
    if arch == "dit":
        return DiTConfig.from_dict(d)
    if arch != "unet":
        raise ConfigError(f"unknown architecture {arch!r} in a model description")
    return UNetConfig.from_dict({k: v for k, v in d.items() if k != "arch"})


def arch_of(d: dict[str, Any] | NetworkConfig | RouterNetConfig) -> str:
    """'unet' or 'dit' for a description (dict from meta.json or a config)."""
    if isinstance(d, dict):
        return str(d.get("arch", "unet"))
    return "dit" if isinstance(d, DiTConfig | DiTRouterConfig) else "unet"


def build_network(cfg: NetworkConfig) -> nn.Module:
    """The network a description describes (UNet or DiT; both take (x, t, cond))."""
    return DiT(cfg) if isinstance(cfg, DiTConfig) else UNet(cfg)


def router_net_config(
    preset: str, in_channels: int, num_parts: int, num_classes: int = 0, arch: str = ""
) -> RouterNetConfig:
    """The router of a preset: convolutional (``tiny`` … ``base``) or DiT with a CLS token."""
    from .router import router_config

    name = preset_name(preset, arch)
    if name in DIT_ROUTER_PRESETS:
        return replace(
            DIT_ROUTER_PRESETS[name],
            in_channels=in_channels,
            num_parts=num_parts,
            num_classes=num_classes,
        )
    if name not in ROUTER_PRESETS:
        raise _unknown("router", name, [*ROUTER_PRESETS, *DIT_ROUTER_PRESETS])
    return router_config(name, in_channels, num_parts, num_classes)


def router_from_dict(d: dict[str, Any]) -> RouterNetConfig:
    if d.get("arch", "conv") == "dit":
        return DiTRouterConfig.from_dict(d)
    return RouterConfig.from_dict({k: v for k, v in d.items() if k != "arch"})


def build_router(cfg: RouterNetConfig) -> nn.Module:
    return DiTRouter(cfg) if isinstance(cfg, DiTRouterConfig) else Router(cfg)


def describe(meta: dict[str, Any]) -> str:
    """A short architecture label from a meta.json (its ``unet`` or ``router`` entry)."""
    if "router" in meta:
        r = meta["router"]
        if r.get("arch") == "dit":
            return f"DiT router d{r['dim']}×{r['depth']}/p{r['patch']} + CLS"
        return "conv router " + "-".join(str(c) for c in r.get("channels", ()))
    if "unet" not in meta:
        return ""
    n = meta["unet"]
    if n.get("arch") == "dit":
        return f"DiT d{n['dim']}×{n['depth']}/p{n['patch']}"
    return "UNet " + "-".join(str(c) for c in n.get("channels", ()))


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())
