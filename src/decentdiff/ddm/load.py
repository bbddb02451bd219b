"""Rebuild the DDM ensemble of a RUN from its directories alone, checking they belong together."""

from __future__ import annotations

import json
from collections.abc import Sequence

import torch

from ..diffusion.solvers import guided
from ..errors import RunError
from ..run import Run
from ..training.generative import load_generative
from .ensemble import EnsembleVelocity
from .experts import expert_metas
from .router import load_router, router_dir
from .routing import parse_routing
from .store import PartitionRecord, expert_dir, load_partition


def _method(run: Run) -> str | None:
    """RUN's partition method (``kmeans``, ``classes``, ...), or None without a readable one."""
    import zipfile

    import numpy as np

    from .store import partition_path

    try:
        with np.load(partition_path(run), allow_pickle=False) as z:
            return str(z["method"])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def resolve_routing(run: Run, routing: str) -> str:
    """The canonical name of a routing spec (``TOP-1 `` is not a spec; `` Top1`` -> ``top1``,
    ``nucleus:0.90`` -> ``nucleus:0.9``), which metric rows and file names use; ``auto`` -> the
    routing :data:`~decentdiff.ddm.defaults.AUTO_ROUTING` gives this RUN's kind of model
    (run.toml's ``model.class_cond``; ``mixture`` for a class-conditional model whose partition
    keeps every class in one cluster). ConfigError for a spec that does not parse."""
    from ..config import resolve
    from .defaults import auto_routing

    if routing.strip().lower() == "auto":
        routing = auto_routing(resolve(base=run.base_config()).model.class_cond, _method(run))
    return str(parse_routing(routing))


def load_ensemble(
    run: Run,
    routing: str,
    *,
    device: str | torch.device = "cpu",
    ema: bool = True,
    guidance: float = 1.0,
    generator: torch.Generator | None = None,
    drop: Sequence[int] = (),
    oracle_labels: torch.Tensor | None = None,
) -> tuple[EnsembleVelocity, list[dict], PartitionRecord, dict[str, torch.nn.Module]]:
    """The K experts of RUN mixed by its router; classifier-free guidance inside each expert.

    ``oracle_labels`` (B,): for ``oracle`` routing, the expert of each sample.

    Returns:
        (ensemble, the experts' meta.json, the partition, the networks by name — ``expert k`` and
        ``router`` — for cost accounting).
    """
    spec = parse_routing(routing)
    rec = load_partition(run)
    for k in drop:
        if not 0 <= k < rec.num_parts:
            raise RunError(f"--drop-expert {k} out of range: experts are 0..{rec.num_parts - 1}")
    if len(set(drop)) >= rec.num_parts:
        raise RunError("cannot drop every expert: keep at least one")
    metas = expert_metas(run, rec.num_parts, rec.partition_id)
    experts, networks = [], {}
    for k in range(rec.num_parts):
        if k in drop:
            experts.append(_dropped)
            continue
        v, unet, _, _ = load_generative(expert_dir(run, k), ema=ema, device=device)
        networks[f"expert {k}"] = unet
        experts.append(guided(v, guidance, unet.num_classes) if unet.num_classes > 0 else v)
    router = None
    if spec.needs_router:
        router, rmeta = load_router(router_dir(run), ema=ema, device=device)
        networks["router"] = router
        kept = [m for k, m in enumerate(metas) if k not in drop]
        fp = {json.dumps((m.get("vae") or {}).get("fingerprint")) for m in kept}
        if fp != {json.dumps((rmeta.get("vae") or {}).get("fingerprint"))}:
            raise RunError(
                f"the router in {router_dir(run)} and the experts were trained in different "
                f"spaces (--vae); retrain it with `decentdiff train router {run.path} --fresh` "
                "and the experts' --vae"
            )
        if rmeta.get("partition_id") != rec.partition_id:
            raise RunError(
                f"the router in {router_dir(run)} was trained on another partition; retrain it with "
                f"`decentdiff train router {run.path} --fresh`"
            )
    prior = None
    if spec.needs_prior:
        from ..config import resolve
        from .membership import cluster_prior

        cfg = resolve(base=run.base_config())
        ncls = max(
            (getattr(n, "num_classes", 0) for name, n in networks.items() if name != "router"),
            default=0,
        )
        prior = torch.as_tensor(cluster_prior(run, cfg, class_cond=ncls > 0, num_classes=ncls))
    ens = EnsembleVelocity(
        experts,
        router,
        spec,
        generator=generator,
        drop=tuple(drop),
        oracle_labels=oracle_labels,
        prior=prior,
    )
    return ens, metas, rec, networks


def _dropped(*_args, **_kwargs):  # never called: a dropped expert gets zero weight
    raise AssertionError("a dropped expert was evaluated")
