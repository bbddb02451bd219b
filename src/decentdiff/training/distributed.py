"""Data parallelism *inside* one compute island, when launched by torchrun.

``torchrun --standalone --nproc_per_node=2 -m decentdiff train expert RUN --expert k`` starts W
processes with RANK / WORLD_SIZE / LOCAL_RANK in their environment. Each rank builds the same model
(same seed), draws its own B/W of the step's batch B from a generator seeded by (seed, step, rank) —
so a resumed run is still bitwise identical to an uninterrupted one at the same W — and
DistributedDataParallel averages the gradients, which keeps the ranks' weights identical.

The one training loop (``training/loop.py``) is used unchanged: it is given the *unwrapped* model
(so checkpoints keep their parameter names), while the loss goes through the DDP wrapper (so
backward all-reduces). Only rank 0 writes ``out_dir``: the other ranks train against a private
scratch copy of it, taken before the first step, so they resume from the same checkpoint.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..config import Config
from ..errors import ConfigError


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in a torchrun job."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_env() -> DistEnv | None:
    """The torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK), or None when not under torchrun."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    try:
        env = DistEnv(
            int(os.environ["RANK"]),
            int(os.environ["WORLD_SIZE"]),
            int(os.environ.get("LOCAL_RANK", os.environ["RANK"])),
        )
    except ValueError:
        raise ConfigError(
            "RANK / WORLD_SIZE / LOCAL_RANK must be integers (set by torchrun)"
        ) from None
    return env if env.world_size > 1 else None


def check_batch(batch: int, world_size: int) -> int:
    """The per-rank batch B/W; a one-line ConfigError if W does not divide B."""
    if batch % world_size != 0:
        raise ConfigError(
            f"batch {batch} does not divide over {world_size} torchrun processes; pass a --batch "
            f"that is a multiple of {world_size} or change --nproc_per_node"
        )
    return batch // world_size


def init(env: DistEnv, device: torch.device) -> None:
    """Join the process group: gloo on CPU, nccl on CUDA (MASTER_ADDR/PORT come from torchrun)."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size)


def rank_generator(g: torch.Generator, rank: int) -> torch.Generator:
    """A generator for this rank's share of a step, a pure function of (step generator, rank)."""
    base = int(torch.randint(0, 2**62, (1,), generator=g))
    state = np.random.SeedSequence([base, rank]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _scratch_copy(out_dir: Path) -> Path:
    scratch = Path(tempfile.mkdtemp(prefix="decentdiff-rank-"))
    if out_dir.is_dir():
        for p in out_dir.iterdir():
            if p.is_file() and p.suffix in (".json", ".safetensors"):
                shutil.copy2(p, scratch / p.name)
    return scratch


def train_generative_ddp(
    out_dir: Path,
    images: np.ndarray,
    labels: np.ndarray | None,
    num_classes: int,
    cfg: Config,
    env: DistEnv,
    *,
    role: str,
    meta: dict[str, Any] | None = None,
    metrics_path: Path | None = None,
    fresh: bool = False,
    progress: bool = True,
    flops_from: int = 0,
    before: Callable[[], object] | None = None,
) -> dict[str, Any]:
    """:func:`decentdiff.training.generative.train_generative` on W ranks (global batch ``train.batch``).

    The checkpoint is the single-process layout (same meta keys, ``train.batch`` = the global B,
    ``flops_per_step`` of the global batch) plus ``world_size``; any later run, distributed or not,
    resumes it. ``before``: run by rank 0 alone, once the ranks have joined and before any of them
    reads ``out_dir`` (an expert's warm start writes its first checkpoint there).
    """
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from ..models.registry import build_network, network_config
    from .generative import image_batches, objective_from
    from .loop import measure_flops, resolve_device, train, validate

    validate(cfg.train)
    local_batch = check_batch(cfg.train.batch, env.world_size)
    if len(images) == 0:
        raise ConfigError(f"{role}: no training images")
    device = resolve_device(cfg.train.device)
    if device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
    init(env, device)
    if before is not None:
        if env.is_main:
            before()
        dist.barrier()
    if cfg.train.threads == 0:
        # W ranks share the machine's cores; oversubscribing them slows every rank down.
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // per_node))
    n_cls = num_classes if cfg.model.class_cond else 0
    from ..latent import cache_dir_for, model_inputs, resumed_meta
    from .generative import check_resumed_objective

    check_resumed_objective(resumed_meta(out_dir, fresh), cfg.objective, out_dir)

    # Rank 0 encodes into the cache first; the other ranks wait for it, then read the cache.
    if cfg.model.vae and not env.is_main:
        dist.barrier()
    images, vae_meta = model_inputs(
        images,
        cfg.model.vae,
        cache_dir_for(out_dir),
        device,
        resumed=resumed_meta(out_dir, fresh),
    )
    if cfg.model.vae and env.is_main:
        dist.barrier()
    ucfg = network_config(cfg.model.preset, images.shape[1], n_cls, cfg.model.arch)
    objective = objective_from(cfg.objective)
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    model = build_network(ucfg).to(device)
    ddp = DDP(model, device_ids=[env.local_rank] if device.type == "cuda" else None)
    draw = image_batches(images, labels, local_batch, device, cfg.train.cond_drop, n_cls)

    def local_loss(m: nn.Module, g: torch.Generator) -> Tensor:
        gr = rank_generator(g, env.rank)
        x0, cond, _ = draw(gr)
        return objective.loss(m, x0, cond, gr)

    def loss_fn(_m: nn.Module, g: torch.Generator) -> Tensor:
        # Through the wrapper: backward all-reduces (averages) the gradients across ranks.
        return local_loss(ddp, g)

    # FLOPs of the global batch: one rank's share, measured without communication, times W.
    flops = measure_flops(model, local_loss) * env.world_size
    full_meta = {
        **(meta or {}),
        "kind": "generative",
        "unet": ucfg.to_dict(),
        "objective": asdict(cfg.objective.resolved()),
        "model": asdict(cfg.model),
        "image_shape": list(images.shape[1:]),
        "num_images": len(images),
        **({"vae": vae_meta} if vae_meta else {}),
        "world_size": env.world_size,
    }
    target = out_dir if env.is_main else _scratch_copy(out_dir)
    dist.barrier()  # nobody writes out_dir before every rank has read its checkpoint
    try:
        result = train(
            model,
            loss_fn,
            target,
            cfg.train,
            meta=full_meta,
            metrics_path=metrics_path if env.is_main else None,
            role=role if env.is_main else f"{role} (rank {env.rank})",
            fresh=fresh,
            progress=progress and env.is_main,
            flops_per_step=flops,
            flops_from=flops_from,
        )
        dist.barrier()
    finally:
        if not env.is_main:
            shutil.rmtree(target, ignore_errors=True)
    return result


def run_island(
    fn: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any
) -> dict[str, Any]:  # pragma: no cover - thin
    """Call ``fn`` and leave the process group cleanly (so torchrun sees every rank exit 0)."""
    import torch.distributed as dist

    try:
        return fn(*args, **kwargs)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def train_expert_ddp(
    run: Any,
    k: int,
    cfg: Config,
    env: DistEnv,
    *,
    batch: int | None = None,
    fresh: bool = False,
    progress: bool = True,
    init: str = "random",
) -> dict[str, Any]:
    """Expert k of RUN on W ranks: the island's batch (B/K by default) is split over the ranks.
    ``init="monolith"``: every rank checks the warm start; rank 0 alone writes its checkpoint."""
    from ..ddm.experts import expert_job
    from ..ddm.warm import seed_expert

    job = expert_job(run, k, cfg, batch=batch)
    check_batch(job.cfg.train.batch, env.world_size)  # before any process group: one clean line
    start = job.start(run, k, init, fresh=fresh, write=False)
    seed = (run, job.out_dir, start, job.meta, job.cfg, f"expert {k}")
    before = functools.partial(seed_expert, *seed) if start.seed else None
    return run_island(
        train_generative_ddp,
        job.out_dir,
        job.images,
        job.labels,
        job.data.num_classes,
        job.cfg,
        env,
        role=f"expert {k}",
        meta=job.meta,
        metrics_path=job.out_dir / "metrics.jsonl",
        fresh=fresh and not start.record,
        progress=progress,
        flops_from=start.flops_from,
        before=before,
    )
