"""One registry of the models a RUN can hold, and one way to load any of them for sampling.

``--model`` specs: ``monolith``, ``distilled``, ``expert:K``, ``ensemble`` (the K experts mixed by
a routing), and of a federated RUN ``federated`` (the global model) or ``client:I`` (a personal
model). :func:`parse_model` validates a spec once; :func:`load_model` returns a
:class:`LoadedModel` — the velocity callable, its networks (for FLOP counting), objectives,
image shape, classes and training FLOPs — with per-batch hooks, so a sampler never needs to
know what it samples. An ensemble's routing is resolved (``auto``) and canonicalised here, once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .config import SampleConfig
from .errors import ConfigError, RunError
from .run import Run

#: Model kinds with an index (``expert:K``, ``client:I``) and without.
INDEXED = ("expert", "client")
PLAIN = ("ensemble", "monolith", "distilled", "federated", "global")

#: The command that trains a model that is missing, for the error message.
_HINTS = {
    "monolith": "decentdiff train monolith {run}",
    "distilled": "decentdiff distill {run}",
    "expert": "decentdiff train expert {run} --expert {index}",
}


@dataclass(frozen=True)
class ModelSpec:
    """A parsed ``--model``: its kind and, for ``expert:K`` / ``client:I``, the index."""

    kind: str
    index: int | None = None

    def __str__(self) -> str:
        return self.kind if self.index is None else f"{self.kind}:{self.index}"


def parse_model(spec: str | ModelSpec) -> ModelSpec:
    """Validate a ``--model`` spec (ConfigError, one line, listing the choices)."""
    if isinstance(spec, ModelSpec):
        return spec
    kind, sep, rest = str(spec).partition(":")
    if kind in PLAIN and not sep:
        return ModelSpec(kind)
    if kind in INDEXED and sep:
        letter = "K" if kind == "expert" else "I"
        try:
            return ModelSpec(kind, int(rest))
        except ValueError:
            raise ConfigError(
                f"--model {spec!r}: expected {kind}:{letter} with an integer {letter}"
            ) from None
    raise ConfigError(
        f"unknown --model {spec!r}; choose one of: ensemble, monolith, distilled, expert:K, "
        "federated, client:I"
    )


def default_model(run: Run) -> str:
    """The model ``sample`` draws from without ``--model`` (or sample.model): the ensemble of a
    DDM RUN (one with a partition) unless it has a monolith and no experts, else the monolith."""
    from .ddm.store import partition_path

    monolith_only = (run.model_dir("monolith") / "meta.json").is_file() and not (
        run.path / "experts"
    ).is_dir()
    return "ensemble" if partition_path(run).is_file() and not monolith_only else "monolith"


def sample_name(model: str, routing: str | None) -> str:
    """File stem of a model's samples and cached features: ``monolith``, ``ensemble-topk2``,
    ``ensemble-schedule0.5-top1`` (``routing``: an ensemble's canonical routing, else None)."""
    return model if routing is None else f"{model}-{routing.replace(':', '').replace(',', '-')}"


def samples_path(run: Run, model: str, routing: str | None) -> Path:
    """Where ``sample``/``eval``/``compare`` keep a model's samples: RUN/samples/<name>.npz."""
    return run.path / "samples" / f"{sample_name(model, routing)}.npz"


def _run_dir(run: Run, m: ModelSpec) -> Path:
    return run.model_dir(m.kind)


def _expert_dir(run: Run, m: ModelSpec) -> Path:
    from .ddm.store import check_expert_index, expert_dir, load_partition

    check_expert_index(load_partition(run), m.index)
    return expert_dir(run, m.index)


def _federated_dir(run: Run, m: ModelSpec) -> Path:
    from .federated.store import model_dir as federated_model_dir

    return federated_model_dir(run.path, str(m))


#: Where each kind of single-network model lives in a RUN.
MODEL_DIRS: dict[str, Callable[[Run, ModelSpec], Path]] = {
    "monolith": _run_dir,
    "distilled": _run_dir,
    "expert": _expert_dir,
    "federated": _federated_dir,
    "global": _federated_dir,
    "client": _federated_dir,
}


def model_dir(run: Run, spec: str | ModelSpec) -> Path:
    """The checkpoint directory of a single-network model (not ``ensemble``)."""
    m = parse_model(spec)
    if m.kind not in MODEL_DIRS:
        raise ConfigError(f"--model {m} is not one network; it has no directory of its own")
    return MODEL_DIRS[m.kind](run, m)


def _metas(run: Run, model: str | ModelSpec, drop: Sequence[int] = ()) -> list[dict]:
    """meta.json of the network(s) behind ``model`` (an ensemble's kept experts); models not
    trained yet are skipped (loading them fails later with the command to run)."""
    if parse_model(model).kind == "ensemble":
        from .ddm.store import expert_dir, load_partition

        n = load_partition(run).num_parts
        dirs = [expert_dir(run, k) for k in range(n) if k not in drop]
    else:
        dirs = [model_dir(run, model)]
    metas = []
    for d in dirs:
        try:
            metas.append(json.loads((d / "meta.json").read_text()))
        except (OSError, ValueError):
            continue
    return [m for m in metas if isinstance(m, dict)]


def objective_kinds(run: Run, model: str | ModelSpec, drop: Sequence[int] = ()) -> list[str]:
    """Objective kinds (``fm``, ``ddpm``) of the network(s) behind ``model``, from meta.json."""
    kinds = []
    for meta in _metas(run, model, drop):
        try:
            kinds.append(str(meta["objective"]["kind"]))
        except (KeyError, TypeError):
            continue
    return kinds


def resolve_guidance(
    run: Run, model: str | ModelSpec, guidance: float | None, drop: Sequence[int] = ()
) -> float:
    """``None`` (no --guidance, sample.guidance unset) -> the model's default: for a
    class-conditional model :func:`~decentdiff.config.class_cond_guidance` of its images'
    channels (the pixels' for a latent model), else 1 (no guidance). A given scale is kept."""
    from .config import class_cond_guidance

    if guidance is not None:
        return float(guidance)
    for meta in _metas(run, model, drop):
        if (meta.get("model") or {}).get("class_cond"):
            shape = _pixel_shape(meta) or tuple(meta.get("image_shape") or (3,))
            return class_cond_guidance(int(shape[0]))
    return 1.0


def resolve_solver(run: Run, model: str | ModelSpec, solver: str, drop: Sequence[int] = ()) -> str:
    """``auto`` -> the solver that suits the model's objective(s) (:data:`AUTO_SOLVER`); an
    ensemble with any ε-expert among those kept counts as ε. Other names are returned as they are."""
    from .diffusion.solvers import AUTO_SOLVER, get_solver

    if solver != "auto":
        get_solver(solver)  # unknown names fail here, with the choices
        return solver
    kinds = objective_kinds(run, model, drop)
    # The most fragile objective decides: an ε-expert needs the ancestral sampler (docs/models.md).
    for kind in ("ddpm", "vpred"):
        if kind in kinds:
            return AUTO_SOLVER[kind]
    return AUTO_SOLVER["fm"]


@dataclass
class LoadedModel:
    """A model of a RUN, ready to sample."""

    spec: ModelSpec
    velocity: Callable[..., Tensor]  # velocity(x_t, t, cond) -> v; guidance not yet applied
    networks: dict[str, nn.Module]  # every network a forward pass may run (FLOP counting)
    objectives: list[Any]  # of the networks behind the velocity (solver grid, auto solver)
    image_shape: tuple[int, ...]
    num_classes: int  # 0: unconditional
    train_flops: float  # everything this model needed to be trained
    routing: str | None = None  # an ensemble's canonical routing
    guided_inside: bool = False  # True: classifier-free guidance is applied inside (experts)
    #: latent models (``--vae``): latents (N, c, h, w) -> pixels in [−1, 1]; None: pixel models
    decode: Callable[[Tensor], Tensor] | None = None
    pixel_shape: tuple[int, ...] | None = None  # the decoded images' shape (latent models)

    @property
    def output_shape(self) -> tuple[int, ...]:
        """The shape of one saved sample: the decoded image's for a latent model."""
        return self.pixel_shape or self.image_shape

    def start_batch(self, start: int, size: int) -> None:
        """Called before samples ``start .. start + size`` are drawn."""

    def batch_routing(self) -> Tensor | None:
        """(size, K) mean routing weight of each expert over the batch's trajectories, or None."""
        return None


@dataclass
class LoadedEnsemble(LoadedModel):
    ensemble: Any = None  # EnsembleVelocity
    oracle: Tensor | None = None  # (N,) the expert of each sample, for ``oracle`` routing
    device: Any = "cpu"

    def start_batch(self, start: int, size: int) -> None:
        self.ensemble.reset_trace()
        if self.oracle is not None:
            self.ensemble.oracle_labels = self.oracle[start : start + size].to(self.device)

    def batch_routing(self) -> Tensor | None:
        return self.ensemble.mean_weights().float().cpu()


def load_model(
    run: Run,
    model: str | ModelSpec,
    s: SampleConfig,
    *,
    routing: str = "auto",
    drop: Sequence[int] = (),
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> LoadedModel:
    """Load ``model`` of RUN for sampling ``s.n`` images (EMA weights if ``s.ema``).

    Args:
        routing: an ensemble's routing (``auto`` resolves by the RUN).
        drop: experts left out of an ensemble.
        generator: the sampling generator (stochastic routings and the oracle's draws use it).
    """
    m = parse_model(model)
    s = replace(s, guidance=resolve_guidance(run, m, s.guidance, drop))
    if m.kind == "ensemble":
        return _load_ensemble(run, s, routing, drop, device, generator)
    if drop:
        raise ConfigError("--drop-expert applies to --model ensemble only")
    from .ddm.warm import total_train_flops
    from .training.generative import load_generative

    hint = _HINTS.get(m.kind, "").format(run=run.path, index=m.index)
    velocity, unet, meta, objective = load_generative(
        model_dir(run, m), ema=s.ema, device=device, make_hint=hint
    )
    return LoadedModel(
        spec=m,
        velocity=velocity,
        networks={"model": unet},
        objectives=[objective],
        image_shape=tuple(meta["image_shape"]),
        num_classes=unet.num_classes,
        train_flops=total_train_flops([meta]),  # with the warm-up it started from, if any
        decode=_decoder([meta], device, model_dir(run, m)),
        pixel_shape=_pixel_shape(meta),
    )


def _pixel_shape(meta: dict) -> tuple[int, ...] | None:
    vae = meta.get("vae")
    return tuple(vae["pixel_shape"]) if vae else None


def _decoder(metas: Sequence[dict], device, base: Path) -> Callable[[Tensor], Tensor] | None:
    """The VAE decoder of latent models (all of ``metas`` in one latent space), else None;
    a relative VAE path (an exported folder's) is taken from ``base``."""
    vaes = {json.dumps(m.get("vae", {}).get("fingerprint")) for m in metas}
    if len(vaes) > 1:
        raise RunError(
            "these models were trained in different latent spaces (--vae); they cannot be mixed"
        )
    if not metas or not metas[0].get("vae"):
        return None
    from .latent import load_decoder

    return load_decoder(metas[0]["vae"], device, base)[0]


def _load_ensemble(
    run: Run,
    s: SampleConfig,
    routing: str,
    drop: Sequence[int],
    device: torch.device | str,
    generator: torch.Generator | None,
) -> LoadedEnsemble:
    from .config import ObjectiveConfig
    from .ddm.load import load_ensemble, resolve_routing
    from .ddm.router import router_dir
    from .ddm.routing import parse_routing
    from .ddm.warm import total_train_flops
    from .training.checkpoint import read_meta
    from .training.generative import objective_from

    routing = resolve_routing(run, routing)
    oracle = None
    if parse_routing(routing).kind == "oracle":
        oracle = _oracle_draws(run, s.n, drop, generator)
    ens, metas, rec, networks = load_ensemble(
        run,
        routing,
        device=device,
        ema=s.ema,
        guidance=s.guidance,
        generator=generator,
        drop=tuple(drop),
        oracle_labels=None if oracle is None else oracle[: s.batch].to(device),
    )
    kept = [k for k in range(rec.num_parts) if k not in drop]
    # The experts' own FLOPs, plus a shared warm-up (--init monolith) once, not once per expert.
    train_flops = total_train_flops(metas)
    if "router" in networks:
        train_flops += read_meta(router_dir(run)).get("train_flops", 0.0)
    return LoadedEnsemble(
        spec=ModelSpec("ensemble"),
        velocity=ens,
        networks=networks,
        objectives=[objective_from(ObjectiveConfig.from_meta(metas[k]["objective"])) for k in kept],
        image_shape=tuple(metas[kept[0]]["image_shape"]),
        num_classes=networks[f"expert {kept[0]}"].num_classes,
        train_flops=float(train_flops),
        routing=routing,
        guided_inside=True,
        decode=_decoder([metas[k] for k in kept], device, run.path / "experts" / str(kept[0])),
        pixel_shape=_pixel_shape(metas[kept[0]]),
        ensemble=ens,
        oracle=oracle,
        device=device,
    )


def _oracle_draws(
    run: Run, n: int, drop: Sequence[int], generator: torch.Generator | None
) -> Tensor | None:
    """The paper's oracle: each sample is generated by the expert of "its" cluster, drawn from
    the cluster sizes (the members' prior, as ``mixture`` draws unconditionally) among the
    experts kept."""
    from .config import resolve
    from .ddm.membership import cluster_prior

    prior = cluster_prior(run, resolve(base=run.base_config()), class_cond=False)
    sizes = torch.as_tensor(prior, dtype=torch.float64)
    for k in drop:
        if 0 <= k < len(sizes):
            sizes[k] = 0
    if sizes.sum() <= 0:
        return None
    return torch.multinomial(sizes / sizes.sum(), n, replacement=True, generator=generator)
