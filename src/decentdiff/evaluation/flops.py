"""FLOP accounting: counted with ``torch.utils.flop_counter``, never guessed.

Training FLOPs are measured per step by the training loop (forward + backward) and stored in each
``meta.json``. Sampling FLOPs are measured here: the FLOPs of one forward pass per sample of every
network (expert UNets, the router), times the number of samples that actually went through it —
counted by forward hooks during real sampling, so routing, guidance (a doubled batch) and
two-evaluation solvers (Heun) are all accounted for exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _cpu_attention(query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def _cpu_attention_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out, query, key, value)


def flop_counter():
    """torch's ``FlopCounterMode`` that also counts attention on the CPU.

    torch 2.13 registers FLOP formulas for the CUDA attention kernels only; on the CPU
    ``scaled_dot_product_attention`` runs ``_scaled_dot_product_flash_attention_for_cpu``, which
    the stock counter skips (a DiT's QKᵀ and AV products would be missing). The same formulas as
    torch's own for the CUDA kernels are registered for it and its backward.
    """
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    return FlopCounterMode(
        display=False,
        custom_mapping={
            aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward,
        },
    )


def forward_flops(module: nn.Module, inputs: Sequence) -> float:
    """FLOPs of ``module(*inputs)`` (no gradient)."""
    counter = flop_counter()
    with torch.no_grad(), counter:
        module(*inputs)
    return float(counter.get_total_flops())


class SampleCounter:
    """Counts the samples that pass through each network's forward (via forward pre-hooks).

    Args:
        networks: name -> module; each gets a hook until :meth:`close`.
    """

    def __init__(self, networks: dict[str, nn.Module]):
        self.samples = dict.fromkeys(networks, 0)
        self._hooks = [
            m.register_forward_pre_hook(self._hook(name)) for name, m in networks.items()
        ]
        self.networks = networks
        self._per_sample: dict[str, float] = {}

    def _hook(self, name: str):
        def hook(_module, args):
            self.samples[name] += int(args[0].shape[0])

        return hook

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def per_sample_flops(
        self, shape: tuple[int, ...], device: torch.device | str = "cpu"
    ) -> dict[str, float]:
        """Forward FLOPs per sample of each network for images of ``shape`` (C, H, W)."""
        out = {}
        for name, m in self.networks.items():
            x = torch.zeros((2, *shape), device=device)
            t = torch.full((2,), 0.5, device=device)
            saved = self.samples[name]
            out[name] = forward_flops(m, (x, t, None)) / 2
            self.samples[name] = saved  # the measurement itself is not sampling
        self._per_sample = out
        return out

    def totals(
        self, shape: tuple[int, ...], device: torch.device | str = "cpu"
    ) -> dict[str, float]:
        per = self._per_sample or self.per_sample_flops(shape, device)
        return {name: per[name] * n for name, n in self.samples.items()}


def sampling_cost(counter: SampleCounter, n_images: int, shape, device="cpu") -> dict[str, float]:
    """GFLOPs per image of a finished sampling run, and the router's share of them (of the
    networks' FLOPs: a latent model's decoder pass is added afterwards, by ``generate``)."""
    totals = counter.totals(tuple(shape), device)
    total = sum(totals.values())
    router = totals.get("router", 0.0)
    return {
        "gflops_per_image": total / max(n_images, 1) / 1e9,
        "router_share": router / total if total > 0 else 0.0,
        "network_evals_per_image": {k: v / max(n_images, 1) for k, v in counter.samples.items()},
    }
