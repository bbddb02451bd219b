"""Model size presets (DiT-style registry). An unknown preset is an error listing the valid ones."""

from __future__ import annotations

from dataclasses import replace

from ..errors import ConfigError
from .unet import UNet, UNetConfig

#: name -> architecture; image channels and classes are filled in from the data.
PRESETS: dict[str, UNetConfig] = {
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
}


def unet_config(preset: str, in_channels: int, num_classes: int = 0) -> UNetConfig:
    """The architecture of a preset for images with ``in_channels`` channels."""
    if preset not in PRESETS:
        raise ConfigError(
            f"unknown model preset {preset!r}; choose one of: {', '.join(sorted(PRESETS))}"
        )
    return replace(PRESETS[preset], in_channels=in_channels, num_classes=num_classes)


def build_unet(cfg: UNetConfig) -> UNet:
    return UNet(cfg)


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())
