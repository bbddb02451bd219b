"""The DiT backbone and router against re-derived formulas and diffusers' position embedding."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.nn import functional as F

from decentdiff.errors import ConfigError
from decentdiff.evaluation.flops import forward_flops
from decentdiff.models.dit import DiT, DiTBlock, DiTConfig, DiTRouter, block_flops, sincos_2d
from decentdiff.models.registry import (
    PRESETS,
    build_network,
    build_router,
    config_from_dict,
    network_config,
    preset_name,
    router_from_dict,
    router_net_config,
)
from decentdiff.models.unet import PARTS

from .test_unet import randomize

DIT_PRESETS = sorted(p for p in PRESETS if p.startswith("dit-"))


def small_dit(num_classes: int = 0, in_channels: int = 1, **kw) -> DiT:
    torch.manual_seed(0)
    cfg = DiTConfig(in_channels=in_channels, dim=32, depth=3, heads=2, patch=2, **kw)
    return randomize(DiT(DiTConfig(**{**cfg.__dict__, "num_classes": num_classes})))


@pytest.mark.parametrize("size", [28, 27, 7, 32, 2])
@pytest.mark.parametrize("num_classes", [0, 10])
def test_output_shape_any_size(size, num_classes):
    """Sides that are not multiples of the patch are padded and cropped back."""
    model = small_dit(num_classes)
    x, t = torch.randn(3, 1, size, size), torch.rand(3)
    cond = torch.tensor([0, 9, 10]) if num_classes else None
    out = model(x, t, cond)
    assert out.shape == x.shape and out.is_contiguous() and torch.isfinite(out).all()
    if num_classes:  # None means the null class
        torch.testing.assert_close(model(x, t, None), model(x, t, torch.full((3,), 10)))


def test_rgb_and_out_channels():
    model = randomize(DiT(DiTConfig(in_channels=3, out_channels=6, dim=16, depth=1, heads=2)))
    assert model(torch.randn(2, 3, 12, 10), torch.rand(2)).shape == (2, 6, 12, 10)


@pytest.mark.parametrize("preset", DIT_PRESETS)
def test_parts_are_the_unets(preset):
    """The federated methods exchange top-level parts by name: a DiT has the UNet's."""
    for num_classes in (0, 10):
        model = build_network(network_config(preset, 1, num_classes))
        assert isinstance(model, DiT)
        expected = set(PARTS) if num_classes else set(PARTS) - {"class_embed"}
        assert set(dict(model.named_children())) == expected
        for name, _ in model.named_parameters():
            assert name.split(".")[0] in PARTS, name
        cfg = model.config
        n_down, n_mid, n_up = cfg.split()
        assert (len(model.down) - 1, len(model.mid), len(model.up)) == (n_down, n_mid, n_up)
        assert n_down + n_mid + n_up == cfg.depth and n_down == n_up and n_mid in (1, 2)


def test_adaln_zero_starts_as_identity_and_zero_output():
    """adaLN-zero: every block is the identity at initialisation and the output is zero."""
    torch.manual_seed(0)
    model = DiT(DiTConfig(dim=32, depth=3, heads=2))
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    assert model(x, t).abs().max() == 0
    block = model.mid[0]
    h, c = torch.randn(2, 16, 32), torch.randn(2, 32)
    torch.testing.assert_close(block(h, c), h, rtol=0, atol=0)


def test_block_matches_the_written_out_formula():
    """One adaLN-zero block re-derived with explicit softmax attention."""
    torch.manual_seed(1)
    block = randomize(DiTBlock(dim=16, heads=4, mlp_ratio=2.0))
    x, c = torch.randn(3, 5, 16), torch.randn(3, 16)
    sh1, sc1, g1, sh2, sc2, g2 = (c @ block.ada.weight.T + block.ada.bias).chunk(6, dim=1)

    def ln(v):
        mu, var = v.mean(-1, keepdim=True), v.var(-1, unbiased=False, keepdim=True)
        return (v - mu) / torch.sqrt(var + 1e-6)

    h = ln(x) * (1 + sc1[:, None]) + sh1[:, None]
    q, k, v = (h @ block.qkv.weight.T + block.qkv.bias).chunk(3, dim=-1)
    heads = []
    for i in range(4):
        s = slice(4 * i, 4 * i + 4)
        w = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(4), dim=-1)
        heads.append(w @ v[..., s])
    a = torch.cat(heads, dim=-1) @ block.proj.weight.T + block.proj.bias
    y = x + g1[:, None] * a
    h2 = ln(y) * (1 + sc2[:, None]) + sh2[:, None]
    m = F.gelu(h2 @ block.mlp[0].weight.T + block.mlp[0].bias, approximate="tanh")
    expected = y + g2[:, None] * (m @ block.mlp[2].weight.T + block.mlp[2].bias)
    torch.testing.assert_close(block(x, c), expected, rtol=1e-5, atol=1e-5)


def test_unpatchify_is_dits_einsum():
    """The output tokens are laid out (p, p, C) per patch, as in DiT's reference unpatchify
    (einsum 'nhwpqc->nchpwq'): the model's output equals that formula on its last tokens."""
    model = small_dit(in_channels=2)
    x, t = torch.randn(2, 2, 8, 6), torch.rand(2)
    captured = {}
    model.out.register_forward_hook(lambda m, i, o: captured.setdefault("tokens", o))
    out = model(x, t)
    tok, p = captured["tokens"], 2
    ref = torch.einsum("nhwpqc->nchpwq", tok.reshape(2, 4, 3, p, p, 2)).reshape(2, 2, 8, 6)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize("grid", [2, 5, 7])
def test_position_embedding_is_diffusers(grid):
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    ref = torch.as_tensor(get_2d_sincos_pos_embed(16, (grid, grid), base_size=grid)).float()
    torch.testing.assert_close(sincos_2d(grid, grid, 16), ref, rtol=0, atol=1e-6)


def test_samples_are_independent_of_their_batch():
    model = small_dit(10)
    x, t, c = torch.randn(4, 1, 10, 10), torch.rand(4), torch.tensor([1, 2, 10, 3])
    whole = model(x, t, c)
    for i in range(4):
        torch.testing.assert_close(
            model(x[i : i + 1], t[i : i + 1], c[i : i + 1]), whole[i : i + 1], atol=1e-5, rtol=0
        )


def test_every_parameter_gets_a_gradient():
    model = build_network(network_config("dit-tiny", 1, 10))
    model(
        torch.randn(2, 1, 28, 28), torch.rand(2), torch.tensor([1, 10])
    ).square().mean().backward()
    # adaLN-zero: at initialisation only the zero-initialised output layer gets a gradient that is
    # non-zero, but every parameter must be in the graph (DDP, the federated parts).
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


@pytest.mark.parametrize("preset", DIT_PRESETS)
def test_flops_counted_match_the_formula(preset):
    """The FLOP counter (which the training loop and the reports use) sees the attention: its
    count is within 5% of the written-out matrix products of the blocks, patchify and output."""
    cfg = network_config(preset, 1)
    model = build_network(cfg)
    n = (28 // cfg.patch) ** 2
    counted = forward_flops(model, (torch.randn(2, 1, 28, 28), torch.rand(2))) / 2
    d, p = cfg.dim, cfg.patch
    formula = cfg.depth * block_flops(n, d, cfg.mlp_ratio)
    formula += 2.0 * n * d * p * p  # patchify
    formula += 2.0 * n * d * p * p + 2.0 * d * 2 * d  # output projection and its adaLN
    formula += 2.0 * 2 * d * d  # the time MLP
    assert counted == pytest.approx(formula, rel=0.05)


def test_presets_are_flop_matched_to_the_unets():
    """Each dit-X preset costs about the FLOPs per image of the UNet X (BENCHMARKS.md)."""
    x, t = torch.randn(1, 1, 28, 28), torch.rand(1)
    for size in ("tiny", "compact", "small", "base"):
        unet = forward_flops(build_network(network_config(size, 1)), (x, t))
        dit = forward_flops(build_network(network_config(f"dit-{size}", 1)), (x, t))
        assert 0.85 < dit / unet < 1.1, (size, dit / unet)


def test_config_round_trip_keeps_the_arch():
    cfg = network_config("dit-small", 3, 10)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["arch"] == "dit" and config_from_dict(d) == cfg
    assert "arch" not in network_config("small", 1).to_dict()  # a UNet's meta.json is unchanged
    assert config_from_dict(network_config("small", 1).to_dict()) == network_config("small", 1)
    with pytest.raises(ConfigError, match="architecture"):
        config_from_dict({**d, "arch": "mamba"})


def test_arch_and_preset_names():
    assert preset_name("small", "dit") == "dit-small"
    assert preset_name("dit-small", "dit") == "dit-small"
    assert preset_name("dit-small", "") == "dit-small"
    assert preset_name("small", "unet") == "small"
    with pytest.raises(ConfigError, match="contradicts"):
        preset_name("dit-small", "unet")
    with pytest.raises(ConfigError, match="unknown architecture"):
        preset_name("small", "mlp")
    with pytest.raises(ConfigError, match="dit-tiny"):
        network_config("dit-huge", 1)


def test_dit_config_validation():
    with pytest.raises(ConfigError, match="heads"):
        DiTConfig(dim=30, heads=4)
    with pytest.raises(ConfigError, match="multiple of 4"):
        DiTConfig(dim=6, heads=2)


def test_router_is_a_cls_classifier():
    """The DiT router: (B, K) logits read from the CLS token; the patch tokens reach it only
    through attention, and it conditions on t and the class."""
    cfg = router_net_config("dit-tiny", 1, 5, num_classes=10)
    assert router_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    torch.manual_seed(0)
    router = randomize(build_router(cfg))
    assert isinstance(router, DiTRouter)
    x, t = torch.randn(4, 1, 28, 28), torch.rand(4)
    logits = router(x, t, torch.tensor([0, 1, 2, 10]))
    assert logits.shape == (4, 5) and torch.isfinite(logits).all()
    assert not torch.allclose(router(x, t), router(x, torch.rand(4)))  # depends on t
    assert not torch.allclose(router(x, t), router(torch.randn_like(x), t))  # and on x
    # The logits are the head of the CLS token's (position 0) final state, and the sequence is
    # [CLS, 49 patches of 4×4].
    captured = {}
    router.blocks[-1].register_forward_hook(lambda m, i, o: captured.setdefault("h", o))
    logits = router(x, t)
    h = captured["h"]
    assert h.shape == (4, 1 + 49, cfg.dim)
    torch.testing.assert_close(logits, router.head(router.norm(h[:, 0])), rtol=0, atol=0)


def test_router_presets_are_small():
    """A router costs a small share of an expert's forward, as in the paper (DiT-B/2 for XL/2)."""
    x, t = torch.randn(1, 1, 28, 28), torch.rand(1)
    for size in ("tiny", "compact", "small", "base"):
        expert = forward_flops(build_network(network_config(f"dit-{size}", 1)), (x, t))
        router = forward_flops(build_router(router_net_config(f"dit-{size}", 1, 8)), (x, t))
        assert router < 0.25 * expert, size
    conv = router_net_config("compact", 1, 4)
    assert not isinstance(build_router(conv), DiTRouter)
    assert isinstance(build_router(router_net_config("compact", 1, 4, arch="dit")), DiTRouter)
