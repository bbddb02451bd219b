"""A federation, from Python or from ``decentdiff fed run`` / ``fed eval``: one code path.

:func:`federate` resolves the recipe (:mod:`.recipes`), the run options and the project config,
runs the remaining rounds with Flower's simulation engine (:func:`.simulation.run_federated`)
and scores the result (:func:`fed_eval`); it returns a :class:`FedResult`. The command line
parses its options, calls these functions and prints what they return; the Python API
(:meth:`decentdiff.api.RunHandle.federate`, ``.fed_eval``) calls them too.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import ConfigError
from ..run import Run
from .recipes import DEFAULT_RECIPE
from .settings import DEFAULTS, FedSettings

#: FedSettings fields that are not run options: the run, its data and its network fill them in.
NOT_OPTIONS = (
    "client_threads",
    "run_dir",
    "data",
    "model",
    "objective",
    "train",
    "unet",
    "image_shape",
    "num_classes",
)
#: Project-config overrides :func:`federate` takes by name (:data:`decentdiff.config.OVERRIDES`;
#: ``precision`` sets training's and sampling's); any other value goes through ``sets``.
CONFIG_OVERRIDES = (
    "data",
    "preset",
    "objective",
    "batch",
    "log",
    "device",
    "precision",
    "sample_steps",
    "solver",
    "guidance",
)
#: Images ``fed run`` scores per model after training unless told otherwise (0: none).
RUN_EVAL_N = 500
#: Images ``fed eval`` scores per model unless told otherwise (``eval``'s, cli.options.EVAL_N).
EVAL_N = 1000  # == cli.options.EVAL_N (tests/federated/test_federate.py)


def option_names() -> tuple[str, ...]:
    """The run options :func:`federate` takes (FedSettings fields, e.g. clients, method, rounds)."""
    return tuple(f.name for f in fields(FedSettings) if f.name not in NOT_OPTIONS)


@dataclass
class FedResult:
    """What :func:`federate` returns."""

    path: Path  # the RUN directory
    recipe: str
    settings: FedSettings  # as recorded in RUN/federated/fed.json
    config: Config  # the resolved project config
    sizes: list[int]  # training images per client
    rows: list[dict[str, Any]]  # RUN/federated/rounds.jsonl, every round so far
    model_dirs: list[Path]  # the global model, or each client's personal model
    figure: Path  # RUN/figures/fed_bytes.png
    seconds: float
    metrics: dict[str, Any] | None = None  # fed_eval's summary, when it ran (n > 0)

    @property
    def rounds_done(self) -> int:
        return max((r["round"] for r in self.rows), default=0)

    @property
    def bytes_up(self) -> int:
        return sum(r["up"] for r in self.rows)

    @property
    def bytes_down(self) -> int:
        return sum(r["down"] for r in self.rows)

    def summary(self) -> list[str]:
        """The lines ``fed run`` prints."""
        s, cfg, lines = self.settings, self.config, []
        if self.recipe != "paper":
            ema = f"server EMA {s.server_ema:.3f} per round" if s.server_ema else "no server EMA"
            lines.append(
                f"recipe {self.recipe}: {cfg.train.optimizer} lr {cfg.train.lr:g}, warm-up "
                f"{cfg.train.warmup}, client state {s.client_state}, loss {cfg.objective.loss}, "
                f"server {s.server_opt} η "
                f"{'default' if s.server_lr is None else format(s.server_lr, 'g')}, {ema}, "
                f"train.ema_decay {cfg.train.ema_decay:g}, objective {cfg.objective.kind}, "
                f"batch {cfg.train.batch} per client"
            )
        up, down, m = self.bytes_up, self.bytes_down, s.method_spec
        lines.append(f"clients: {s.clients}, sizes {self.sizes}")
        lines.append(
            f"{m.name}: {len(self.rows)} rounds, bytes up {up:,} down {down:,} total "
            f"{up + down:,} -> {self.figure}"
        )
        if m.personal:
            lines.append(
                f"personal models -> {self.path / 'federated' / 'clients'}/0..{s.clients - 1} "
                "(the server's model averages only shared parts and is not a generator)"
            )
        else:
            lines.append(f"global model -> {self.model_dirs[0]}")
        if s.dp != "off":
            from .privacy import summary_line as dp_line

            lines.append(dp_line(self.rows))
        if self.metrics is not None:
            lines += eval_lines(self.metrics, self.path)
        return lines


def round_lines(row: dict[str, Any], rounds: int) -> list[str]:
    """A rounds.jsonl row as the progress lines ``fed run`` prints (clients not averaged too)."""
    bad = [c for c in row["clients"] if c.get("status") != "ok"]
    note = f"  {len(bad)} client(s) not averaged" if bad else ""
    loss = "n/a" if row["loss"] is None else f"{row['loss']:.4f}"
    lines = [
        f"round {row['round']:>3}/{rounds}  loss {loss}  up {row['up'] / 1e6:.2f} MB  "
        f"down {row['down'] / 1e6:.2f} MB  {row['seconds']:.1f} s{note}"
    ]
    for c in bad:
        who = c.get("partition-id", f"node {c.get('node')}")
        lines.append(f"  client {who}: {c.get('status')} ({c.get('reason', '')})")
    return lines


def federate(
    run: Run | str | Path,
    *,
    recipe: str = DEFAULT_RECIPE,
    n: int = RUN_EVAL_N,
    parallel: int = 0,
    fresh: bool = False,
    progress: bool = True,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    config: str | Path | None = None,
    sets: Sequence[str] | None = None,
    flower_logs: bool = False,
    **kwargs: Any,
) -> FedResult:
    """Train one UNet by federated averaging with Flower's simulation engine (resumable), then
    score it on ``n`` samples per model (0: no scoring).

    Args:
        run: the RUN (created if missing).
        recipe: a name of :data:`.recipes.RECIPES`; options given here win over it.
        parallel: clients trained at once (0: one per CPU core).
        fresh: delete RUN/federated first.
        progress: print each round (stderr) and the scoring's progress.
        on_round: called with each rounds.jsonl row.
        flower_logs: Flower's and Ray's own log lines (the actors', the raylet's) in the
            terminal; off, they stay in Ray's session logs and rounds.jsonl keeps each client's
            status and reason.
        config, sets: a TOML file and ``section.key=value`` strings, over the recipe and the
            RUN's run.toml.
        kwargs: run options (:func:`option_names`: method, clients, split, rounds, local_steps,
            server_opt, ...) and config overrides (:data:`CONFIG_OVERRIDES`: data, preset,
            objective, batch, ...); None means not given.
    """
    from .. import config as C
    from .recipes import recipe_base, resolve_recipe
    from .simulation import run_federated

    r = run if isinstance(run, Run) else Run(run)
    names = option_names()
    unknown = sorted(set(kwargs) - set(names) - set(CONFIG_OVERRIDES))
    if unknown:
        raise TypeError(
            f"unknown argument(s) {', '.join(unknown)}; run options: {', '.join(names)}; "
            f"config: {', '.join(CONFIG_OVERRIDES)}"
        )
    given = {k: v for k, v in kwargs.items() if k in names and v is not None}
    overrides = {k: v for k, v in kwargs.items() if k in CONFIG_OVERRIDES}
    rec, options = resolve_recipe(recipe, given)  # fails here, before anything is touched
    base = recipe_base(rec.name, options.get("clients", DEFAULTS.clients))
    for sec, vals in r.base_config().items():
        base.setdefault(sec, {}).update(vals)
    overrides["sample_precision"] = overrides.get("precision")
    cfg = C.resolve(config, list(sets or []), base=base, **overrides)
    rec.check(cfg)
    if n < 0:
        raise ConfigError(f"--n must be ≥ 0, got {n}")

    def hook(row: dict[str, Any]) -> None:
        if progress:
            for line in round_lines(row, options.get("rounds", DEFAULTS.rounds)):
                print(line, file=sys.stderr, flush=True)
        if on_round is not None:
            on_round(row)

    res = run_federated(
        r,
        cfg,
        FedSettings(**options),  # validated by run_federated before RUN is touched
        parallel=parallel,
        fresh=fresh,
        on_round=hook,
        quiet_flower=not flower_logs,
        server_ema_auto=rec.server_ema_auto and "server_ema" not in given,
    )
    result = FedResult(
        path=r.path,
        recipe=rec.name,
        settings=res["settings"],
        config=cfg,
        sizes=res["sizes"],
        rows=res["rounds"],
        model_dirs=res["model_dirs"],
        figure=res["figure"],
        seconds=res["seconds"],
    )
    if n > 0:
        result.metrics = fed_eval(r, n=n, device=cfg.train.device, progress=progress, cfg=cfg)
    return result


def fed_eval(
    run: Run | str | Path,
    *,
    n: int | None = None,
    features: str = "auto",
    device: str = "auto",
    memorisation: float | None = None,
    progress: bool = True,
    config: str | Path | None = None,
    sets: Sequence[str] | None = None,
    cfg: Config | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """FID of a federated RUN's global model (FULL, USPLIT) or of each client's personal model
    (UDEC, ULATDEC: mean ± std, min, max over clients), from ``n`` samples each (default
    :data:`EVAL_N`); rows go to RUN/metrics.jsonl. ``memorisation``: a copy threshold, to check
    every model's images against each client's training images too. ``overrides``: sampling
    (sample_steps, solver, guidance, sample_seed, sample_precision); ``cfg``: a resolved config
    instead of ``config`` / ``sets`` / ``overrides``. Returns the summary."""
    from .. import config as C
    from ..training.loop import resolve_device
    from .evaluate import evaluate_federated

    r = run if isinstance(run, Run) else Run(run)
    if not (r.path / "federated").is_dir():
        raise ConfigError(
            f"{r.path} has no federated run; run `decentdiff fed run {r.path} ...` first"
        )
    if cfg is None:
        cfg = C.resolve(config, list(sets or []), base=r.base_config(), **overrides)
    n = EVAL_N if n is None else n
    if n < 1:
        raise ConfigError(f"--n must be ≥ 1, got {n}")
    cfg.sample.n = n
    return evaluate_federated(
        r,
        cfg,
        features=features,
        device=resolve_device(device),
        progress=progress,
        memorisation=memorisation,
    )


def eval_lines(summary: dict[str, Any], run: Run | str | Path) -> list[str]:
    """A :func:`fed_eval` summary as the lines ``fed eval`` prints."""
    from .evaluate import summary_line

    r = run if isinstance(run, Run) else Run(run)
    lines = [summary_line(summary) + f" -> {r.metrics_path}"]
    if summary.get("memorisation"):
        from ..evaluation.memorisation import summary_line as memorisation_line

        lines += [f"{m}: " + memorisation_line(v) for m, v in summary["memorisation"].items()]
    return lines
