"""Generate images from any model of a RUN (:mod:`decentdiff.loading`), with routing weights for
attribution and the sampling FLOPs actually spent. Used by ``sample``, ``eval`` and ``compare``
alike."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .config import SampleConfig
from .errors import ConfigError
from .loading import ModelSpec
from .run import Run


@dataclass
class Generated:
    images: Tensor  # (N, C, H, W) float32 in [−1, 1]
    labels: Tensor | None  # (N,) class ids for class-conditional models
    routing: Tensor | None  # (N, K) mean router weight of each expert over the trajectory
    cost: dict[str, Any] = field(default_factory=dict)  # gflops_per_image, router_share, ...
    train_flops: float = 0.0  # total training FLOPs of everything this model needed
    wall_s: float = 0.0
    solver: str = ""  # the solver used (``auto`` resolved)
    precision: str = "fp32"  # of the network calls (``auto`` resolved)


def generate(
    run: Run,
    model: str | ModelSpec,
    s: SampleConfig,
    *,
    routing: str | None = None,
    drop: Sequence[int] = (),
    label: int | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> Generated:
    """Draw ``s.n`` images from ``model`` of RUN with solver ``s.solver`` in ``s.steps`` steps
    (``auto``: the one that suits the model's objective, :func:`~decentdiff.loading.resolve_solver`);
    an ensemble's ``routing`` defaults to ``s.routing``. The network calls run in
    ``s.precision`` (``auto``: by device and network size, :mod:`decentdiff.precision`); the
    solver's state stays fp32."""
    from tqdm.auto import tqdm

    from .diffusion.solvers import guided, sample, sampling_grid
    from .evaluation.flops import SampleCounter, sampling_cost
    from .loading import load_model, parse_model, resolve_guidance, resolve_solver
    from .precision import autocast_velocity, resolve_precision

    if s.n < 1:
        raise ConfigError(f"--n must be ≥ 1, got {s.n}")
    spec = parse_model(model)  # validated once; the functions below take the parsed spec
    solver = resolve_solver(run, spec, s.solver, drop)
    s = replace(s, guidance=resolve_guidance(run, spec, s.guidance, drop))
    if s.batch < 1:
        raise ConfigError(f"sample.batch must be ≥ 1, got {s.batch}")
    g = torch.Generator().manual_seed(s.seed)
    routing = s.routing if routing is None else routing
    m = load_model(run, spec, s, routing=routing, drop=drop, device=device, generator=g)
    _check_fits(s.n, m.output_shape)
    ncls = m.num_classes
    if ncls > 0:
        if label is not None and not 0 <= label < ncls:
            raise ConfigError(f"--label {label} out of range: the model has classes 0..{ncls - 1}")
        cond = torch.full((s.n,), label) if label is not None else torch.arange(s.n) % ncls
    else:
        if label is not None:
            raise ConfigError("--label needs a class-conditional model (train with --class-cond)")
        cond = None
    grid_t = sampling_grid(m.objectives, solver, s.steps)
    counter = SampleCounter(m.networks)
    chunks, routes = [], []
    try:
        # auto decides by the largest network's forward FLOPs per image (measured once here,
        # reused for the cost below).
        per_image = counter.per_sample_flops(m.image_shape, device)
        precision = resolve_precision(s.precision, device, max(per_image.values(), default=0.0))
        velocity = autocast_velocity(m.velocity, precision, device)  # before guidance: fp32 mix
        if ncls > 0 and not m.guided_inside:
            velocity = guided(velocity, s.guidance, ncls)
        t0 = time.perf_counter()
        for i in tqdm(
            range(0, s.n, s.batch),
            desc=f"sample {spec}",
            leave=False,
            disable=not progress or s.n <= s.batch,
        ):
            b = min(s.batch, s.n - i)
            m.start_batch(i, b)
            x = sample(
                velocity,
                (b, *m.image_shape),
                steps=s.steps,
                solver=solver,
                generator=g,
                cond=None if cond is None else cond[i : i + b],
                device=device,
                grid=grid_t,
            ).cpu()
            chunks.append(x if m.decode is None else m.decode(x))  # latents -> pixels
            weights = m.batch_routing()
            if weights is not None:
                routes.append(weights)
        wall = time.perf_counter() - t0
        cost = sampling_cost(counter, s.n, m.image_shape, device)
        if m.decode is not None:  # a latent model's samples pass the VAE's decoder once each
            vae = decode_flops(m.decode, m.image_shape) / 1e9
            cost["vae_decode_gflops_per_image"] = vae
            cost["gflops_per_image"] += vae
    finally:
        counter.close()
    return Generated(
        images=torch.cat(chunks).clamp(-1, 1).float(),
        labels=cond,
        routing=torch.cat(routes) if routes else None,
        cost=cost,
        train_flops=m.train_flops,
        wall_s=wall,
        solver=solver,
        precision=precision,
    )


def decode_flops(decode: Callable[[Tensor], Tensor], latent_shape: Sequence[int]) -> float:
    """FLOPs of decoding one latent of ``latent_shape`` to pixels (the VAE's decoder), counted."""
    from .evaluation.flops import flop_counter

    counter = flop_counter()
    with torch.no_grad(), counter:
        decode(torch.zeros(1, *latent_shape))
    return float(counter.get_total_flops())


def _available_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (Linux), None elsewhere."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _check_fits(n: int, shape: tuple[int, ...]) -> None:
    """Refuse an ``n`` whose images (float32, kept in memory to be saved and scored) cannot fit."""
    need = n * int(np.prod(shape)) * 4
    avail = _available_bytes()
    if avail is not None and need > avail // 2:
        most = max(1, (avail // 2) // (int(np.prod(shape)) * 4))
        raise ConfigError(
            f"--n {n} would hold {need / 2**30:.1f} GiB of {'×'.join(map(str, shape))} images in "
            f"memory, more than half of the {avail / 2**30:.1f} GiB available; use --n {most} or "
            "fewer (or several runs with different --seed)"
        )


def save_samples(out: Path, gen: Generated) -> Path:
    """Write ``out`` (.npz: images, labels, routing) atomically and a PNG grid beside it."""
    from .training.checkpoint import atomic_write_bytes
    from .training.generative import to_uint8
    from .viz import save_grid

    arrays: dict[str, np.ndarray] = {"images": gen.images.numpy()}
    if gen.labels is not None:
        arrays["labels"] = gen.labels.numpy()
    if gen.routing is not None:
        arrays["routing"] = gen.routing.numpy()
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(out, buf.getvalue())
    return save_grid(to_uint8(gen.images[:256]), out.with_suffix(".png"))
