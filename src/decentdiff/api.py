"""decentdiff as a library: a RUN directory as a Python object.

    >>> import decentdiff
    >>> run = decentdiff.load("runs/demo")                    # doctest: +SKIP
    >>> out = run.sample(16, model="ensemble", routing="top1")  # doctest: +SKIP
    >>> out.images.shape, out.routing.shape                   # doctest: +SKIP
    (torch.Size([16, 1, 28, 28]), torch.Size([16, 4]))

Every method calls the same functions as the command line, with the same defaults, the same
config precedence (defaults < the RUN's run.toml < ``config`` file < ``sets`` < keyword
arguments) and the same resume behaviour; docs/api.md walks through a whole pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the heavy modules are imported when used, not when decentdiff is
    import torch

    from .config import Config
    from .ddm.cluster import Partitioned
    from .federated.federate import FedResult
    from .loading import LoadedModel
    from .run import Run


@dataclass
class Samples:
    """What :meth:`RunHandle.sample` returns."""

    images: torch.Tensor  # (N, C, H, W) float32 in [−1, 1]
    labels: torch.Tensor | None  # (N,) classes of a class-conditional model, else None
    routing: torch.Tensor | None  # (N, K) an ensemble's mean weight of each expert, else None
    solver: str  # the solver used (``auto`` resolved)
    gflops_per_image: float  # sampling FLOPs actually spent, per image
    seconds: float


def load(path: str | Path) -> RunHandle:
    """The RUN at ``path`` (created by the first training call if it does not exist yet)."""
    return RunHandle(path)


class RunHandle:
    """One RUN directory: its data, its models, and the commands that train and use them."""

    def __init__(self, path: str | Path):
        from .run import Run

        self.run: Run = Run(path)
        self.path: Path = self.run.path

    def __repr__(self) -> str:
        return f"decentdiff.load({str(self.path)!r})"

    # ------------------------------------------------------------------ configuration
    def config(
        self, config: str | Path | None = None, sets: Sequence[str] | None = None, **overrides: Any
    ) -> Config:
        """The resolved config: defaults, run.toml, ``config`` (a TOML file), ``sets``
        (``section.key=value``), then ``overrides`` (e.g. ``preset="tiny"``, ``steps=100``; the
        names of :data:`decentdiff.config.OVERRIDES`)."""
        from .config import resolve

        base = self.run.base_config() if self.run.exists() else None
        return resolve(config, list(sets or []), base=base, **overrides)

    def models(self) -> list[str]:
        """The models of this RUN that can be sampled (``ensemble``, ``monolith``, ...)."""
        from .report import available_models

        return available_models(self.run)

    # ------------------------------------------------------------------ training
    def partition(
        self,
        parts: int,
        *,
        data: str | None = None,
        by: str = "kmeans",
        features: str = "auto",
        seed: int = 0,
        fine: int | None = None,
        force: bool = False,
        config: str | Path | None = None,
        sets: Sequence[str] | None = None,
    ) -> Partitioned:
        """``decentdiff partition``: split the training images into ``parts`` clusters."""
        from .ddm.cluster import partition_run

        cfg = self.config(config, sets, data=data)
        return partition_run(
            self.run, cfg, parts, by=by, features=features, seed=seed, fine=fine, force=force
        )

    def train_experts(
        self,
        *,
        launcher: str = "local",
        jobs: int | None = None,
        batch: int | None = None,
        init: str = "random",
        fresh: bool = False,
        progress: bool = True,
        config: str | Path | None = None,
        sets: Sequence[str] | None = None,
        **overrides: Any,
    ) -> dict[int, dict[str, Any]]:
        """``decentdiff train experts [--init monolith]``: every expert on its own cluster (from
        RUN/monolith's checkpoint with ``init="monolith"``, docs/ddm.md); {k: meta.json}."""
        from .ddm.launchers import train_experts

        cfg = self.config(config, sets, **overrides)
        return train_experts(
            self.run,
            cfg,
            launcher=launcher,
            jobs=jobs,
            batch=batch,
            fresh=fresh,
            progress=progress,
            init=init,
        )

    def train_router(
        self,
        *,
        fresh: bool = False,
        progress: bool = True,
        config: str | Path | None = None,
        sets: Sequence[str] | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        """``decentdiff train router``: the router p(cluster | x_t); its meta.json."""
        from .ddm.router import train_router

        return train_router(
            self.run, self.config(config, sets, **overrides), fresh=fresh, progress=progress
        )

    def train_monolith(
        self,
        *,
        flop_match: bool = False,
        fresh: bool = False,
        progress: bool = True,
        config: str | Path | None = None,
        sets: Sequence[str] | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        """``decentdiff train monolith [--flop-match]``: the baseline on all training images."""
        from .ddm import monolith

        cfg = self.config(config, sets, **overrides)
        if flop_match:
            monolith.flop_match(self.run, cfg)
        return monolith.train_monolith(self.run, cfg, fresh=fresh, progress=progress)

    def distill(
        self,
        *,
        teacher: str = "own",
        preset: str | None = None,
        arch: str = "",
        steps: int | None = None,
        batch: int | None = None,
        fresh: bool = False,
        progress: bool = True,
        config: str | Path | None = None,
        sets: Sequence[str] | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        """``decentdiff distill``: one student from the experts; its meta.json."""
        from .ddm.distill import distill

        cfg = self.config(config, sets, **overrides)
        return distill(
            self.run,
            cfg,
            steps=steps,
            batch=batch,
            fresh=fresh,
            progress=progress,
            teacher=teacher,
            preset=preset,
            arch=arch,
        )

    # ------------------------------------------------------------------ using models
    def model(
        self,
        model: str = "monolith",
        *,
        routing: str = "auto",
        drop: Sequence[int] = (),
        ema: bool = True,
        guidance: float | None = None,
        device: str = "cpu",
        seed: int = 0,
    ) -> LoadedModel:
        """Any model of the RUN as a :class:`~decentdiff.loading.LoadedModel`: ``.velocity`` is
        the callable ``velocity(x_t, t, cond=None) -> v`` (t = 0 data, t = 1 noise), with its
        networks, objectives, image shape and classes. A single network's velocity is unguided;
        an ensemble's experts are guided inside, at ``guidance`` (None: the model's default,
        :func:`~decentdiff.loading.resolve_guidance`)."""
        import torch

        from .config import SampleConfig
        from .loading import load_model

        s = SampleConfig(ema=ema, guidance=guidance, seed=seed)
        g = torch.Generator().manual_seed(seed)
        return load_model(
            self.run, model, s, routing=routing, drop=drop, device=device, generator=g
        )

    def sample(
        self,
        n: int = 64,
        *,
        model: str | None = None,
        routing: str | None = None,
        label: int | None = None,
        guidance: float | None = None,
        steps: int | None = None,
        solver: str | None = None,
        seed: int | None = None,
        drop: Sequence[int] = (),
        device: str = "auto",
        progress: bool = False,
        config: str | Path | None = None,
        sets: Sequence[str] | None = None,
    ) -> Samples:
        """``decentdiff sample``: ``n`` images of a model (default: sample.model, else the
        ensemble of a DDM RUN or the monolith, :func:`~decentdiff.loading.default_model`),
        bitwise the ones the command line draws with the same arguments."""
        from .generate import generate
        from .loading import default_model
        from .training.loop import resolve_device

        cfg = self.config(
            config,
            sets,
            n=n,
            model_spec=model,
            routing=routing,
            guidance=guidance,
            sample_steps=steps,
            solver=solver,
            sample_seed=seed,
        )
        gen = generate(
            self.run,
            cfg.sample.model or default_model(self.run),
            cfg.sample,
            routing=cfg.sample.routing,
            drop=tuple(drop),
            label=label,
            device=resolve_device(device),
            progress=progress,
        )
        return Samples(
            images=gen.images,
            labels=gen.labels,
            routing=gen.routing,
            solver=gen.solver,
            gflops_per_image=float(gen.cost["gflops_per_image"]),
            seconds=gen.wall_s,
        )

    def evaluate(
        self,
        images: Any,
        *,
        features: str = "auto",
        seed: int = 0,
        progress: bool = False,
    ) -> dict[str, Any]:
        """FID, KID, precision, recall, ... of ``images`` ((N, C, H, W) in [−1, 1], a tensor or
        an array) against the RUN's held-out images, with the floor (training vs held-out) — the
        numbers of an ``eval`` row. Nothing is written to metrics.jsonl."""
        from .evaluation.evaluate import score_images

        return score_images(self.run, images, features=features, seed=seed, progress=progress)

    # ------------------------------------------------------------------ federated
    def federate(
        self,
        *,
        data: str | None = None,
        clients: int | None = None,
        split: str | None = None,
        method: str | None = None,
        rounds: int | None = None,
        recipe: str = "pooled",
        n: int = 500,
        parallel: int = 0,
        fresh: bool = False,
        progress: bool = True,
        config: str | Path | None = None,
        sets: Sequence[str] | None = None,
        **options: Any,
    ) -> FedResult:
        """``decentdiff fed run``: federated averaging of one UNet across ``clients`` silos with
        Flower's simulation engine (resumes unless ``fresh``), then FID on ``n`` samples per
        model (0: none). ``options``: the other run options by their FedSettings names
        (``local_steps``, ``server_opt``, ``quantize``, ...) and config overrides (``preset``,
        ``objective``, ``batch``, ...); None or absent means the recipe's or the default value.
        Returns a :class:`~decentdiff.federated.federate.FedResult`."""
        from .federated.federate import federate

        given = dict(data=data, clients=clients, split=split, method=method, rounds=rounds)
        return federate(
            self.run,
            recipe=recipe,
            n=n,
            parallel=parallel,
            fresh=fresh,
            progress=progress,
            config=config,
            sets=sets,
            **given,
            **options,
        )

    def fed_eval(
        self,
        n: int | None = None,
        *,
        features: str = "auto",
        device: str = "auto",
        memorisation: float | None = None,
        progress: bool = False,
        config: str | Path | None = None,
        sets: Sequence[str] | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        """``decentdiff fed eval``: FID of the federated global model, or of each client's own
        model (mean ± std, min, max), from ``n`` samples each (default 1000); rows go to
        RUN/metrics.jsonl. ``memorisation``: a copy threshold (``fed eval --memorisation``:
        decentdiff.evaluation.memorisation.THRESHOLD). ``overrides``: sample_steps, solver,
        guidance, sample_seed, sample_precision."""
        from .federated.federate import fed_eval

        return fed_eval(
            self.run,
            n=n,
            features=features,
            device=device,
            memorisation=memorisation,
            progress=progress,
            config=config,
            sets=sets,
            **overrides,
        )
