"""The UNet's contract: shapes, part names, presets, config round trip, per-sample independence."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from decentdiff.errors import ConfigError
from decentdiff.models.registry import (
    PRESETS,
    build_network,
    config_from_dict,
    count_params,
    network_config,
)
from decentdiff.models.unet import PARTS, UNet, UNetConfig


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter random values of a sensible scale: zero-initialised layers (block
    outputs, the output conv) would otherwise make the model the identity and hide bugs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            for name, p in m.named_parameters(recurse=False):
                noise = torch.randn(p.shape, generator=g)
                if isinstance(m, nn.GroupNorm) and name == "weight":
                    p.copy_(1 + 0.1 * noise)
                elif p.dim() > 1:
                    p.copy_(noise / p[0].numel() ** 0.5)  # ~ unit-variance activations
                else:
                    p.copy_(0.1 * noise)
    return model


def tiny(in_channels: int = 1, num_classes: int = 0) -> UNet:
    torch.manual_seed(0)
    return randomize(build_network(network_config("tiny", in_channels, num_classes)))


@pytest.mark.parametrize("size", [8, 28, 32, 7, 12])
@pytest.mark.parametrize("num_classes", [0, 10])
def test_output_shape(size, num_classes):
    model = tiny(1, num_classes)
    x = torch.randn(3, 1, size, size)
    t = torch.rand(3)
    cond = torch.tensor([0, 9, 10]) if num_classes else None  # 10 = the null class
    out = model(x, t, cond)
    assert out.shape == x.shape and out.is_contiguous() and torch.isfinite(out).all()
    if num_classes:  # cond=None means "no class" for a class-conditional model
        torch.testing.assert_close(
            model(x, t, None), model(x, t, torch.full((3,), num_classes)), rtol=0, atol=0
        )


def test_output_channels_and_rgb():
    cfg = UNetConfig.from_dict({**network_config("tiny", 3).to_dict(), "out_channels": 6})
    model = build_network(cfg)
    assert model(torch.randn(2, 3, 32, 32), torch.rand(2)).shape == (2, 6, 32, 32)


UNET_PRESETS = sorted(p for p in PRESETS if not p.startswith("dit-"))


@pytest.mark.parametrize("preset", UNET_PRESETS)
def test_parts(preset):
    for num_classes in (0, 10):
        model = build_network(network_config(preset, 1, num_classes))
        children = dict(model.named_children())
        expected = set(PARTS) if num_classes else set(PARTS) - {"class_embed"}
        assert set(children) == expected
        assert (model.class_embed is None) == (num_classes == 0)
        assert model.num_classes == num_classes
        assert isinstance(model.down, nn.ModuleList) and isinstance(model.down[0], nn.Conv2d)
        for name, _ in model.named_parameters():
            assert name.split(".")[0] in PARTS, name


def test_every_parameter_gets_a_gradient():
    # DDP and the federated parts both assume no parameter is left out of the graph.
    model = build_network(network_config("small", 1, 10))
    out = model(torch.randn(2, 1, 28, 28), torch.rand(2), torch.tensor([1, 10]))
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_preset_sizes():
    assert count_params(build_network(network_config("tiny", 1))) < 100_000
    sizes = [count_params(build_network(network_config(p, 1))) for p in ("tiny", "small", "base")]
    assert sizes == sorted(sizes)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_config_round_trip(preset):
    cfg = network_config(preset, 3, 10)
    back = config_from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    a, b = build_network(cfg).state_dict(), build_network(back).state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}


def test_unet_config_fills_data_facts():
    cfg = network_config("small", 3, 7)
    assert (cfg.in_channels, cfg.num_classes) == (3, 7)
    assert PRESETS["small"].num_classes == 0  # the preset itself is left untouched


def test_unknown_preset():
    with pytest.raises(ConfigError) as e:
        network_config("huge", 1)
    for name in PRESETS:
        assert name in str(e.value)


@pytest.mark.parametrize(
    "bad",
    [
        {"channels": ()},
        {"up_blocks": (1, 0, 1)},
        {"blocks": (1, 1)},
        {"channels": (32, 64, 96), "heads": 5},
    ],
)
def test_invalid_config(bad):
    with pytest.raises(ConfigError):
        UNetConfig(**bad)


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_batch_independence(preset):
    # No batch statistics anywhere: sample i's output is the same alone or in a batch.
    torch.manual_seed(0)
    model = randomize(build_network(network_config(preset, 1, 10)))
    x, t = torch.randn(5, 1, 28, 28), torch.rand(5)
    cond = torch.tensor([0, 3, 10, 7, 1])
    with torch.no_grad():
        full = model(x, t, cond)
        assert full.std() > 0.05  # a meaningful comparison, not zeros against zeros
        for i in (0, 2, 4):
            alone = model(x[i : i + 1], t[i : i + 1], cond[i : i + 1])
            torch.testing.assert_close(alone, full[i : i + 1], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(
            model(x[1:4], t[1:4], cond[1:4]), full[1:4], rtol=1e-4, atol=1e-5
        )
    model.train()
    torch.testing.assert_close(model(x, t, cond), full, rtol=1e-4, atol=1e-5)  # no train mode


def test_channels_last_equivalence():
    torch.manual_seed(0)
    model = randomize(build_network(network_config("small", 3)))
    x, t = torch.randn(2, 3, 28, 28), torch.rand(2)
    with torch.no_grad():
        ref = model(x, t)
        cl = model(x.contiguous(memory_format=torch.channels_last), t)
    assert cl.is_contiguous()
    torch.testing.assert_close(cl, ref, rtol=1e-4, atol=1e-5)
    model_cl = randomize(build_network(network_config("small", 3))).to(
        memory_format=torch.channels_last
    )
    with torch.no_grad():
        torch.testing.assert_close(model_cl(x, t), ref, rtol=1e-4, atol=1e-5)


def test_zero_init_output():
    # Blocks start as the identity and the output layer at zero: an untrained model predicts 0.
    model = build_network(network_config("tiny", 1))
    assert model(torch.randn(2, 1, 8, 8), torch.rand(2)).abs().max() == 0


def test_every_preset_has_a_router_and_is_documented():
    """`--preset X` is used for the experts and the router alike, and `--help` lists it."""
    from typer.testing import CliRunner

    from decentdiff.cli import app
    from decentdiff.models.registry import build_router, router_net_config

    for name in PRESETS:
        router = build_router(router_net_config(name, 1, 4))
        assert router(torch.randn(2, 1, 28, 28), torch.rand(2)).shape == (2, 4)
    out = CliRunner().invoke(app, ["train", "monolith", "--help"], terminal_width=200).output
    for name in PRESETS:
        assert name in out
