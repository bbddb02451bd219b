"""Flower ServerApp: starts the run's strategy (:func:`.strategy.make_strategy`: the partial
average, with ``--server-opt``'s Flower optimiser on top) from the initial (or last saved) model.

After every round it updates the server EMA (``--server-ema``), saves the server's model
(``global/`` or ``shared/``; the EMA in the ``ema`` slot, the optimiser state and the EMA's count
in ``state``, one atomic checkpoint) and appends a row to ``rounds.jsonl``, through FedAvg's
per-round ``evaluate_fn`` hook, so flwr's ``Strategy.start`` loop is used as is. A resumed run
restores all of it and continues bitwise as an uninterrupted one. ``app`` serves ``flwr run`` and deployment (settings from the run config, see
:func:`.run_config.settings_from_run_config`, its ``recipe`` included); :func:`make_server_app`
serves ``decentdiff fed run``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from ..events import EventWriter
from . import aggregate as A
from .client import with_central_ema
from .run_config import recipe_sets_server_ema, settings_from_run_config
from .settings import FedSettings
from .store import (
    append_round,
    fed_dir,
    read_rounds,
    read_settings,
    record_server_ema,
    record_settings,
    resume_point,
    resume_server_state,
    round_row,
    save_server_model,
    truncate_rounds,
)
from .strategy import make_strategy

RoundHook = Callable[[dict[str, Any]], None]
EvaluateFn = Callable[[int, dict[str, np.ndarray]], "dict[str, float] | None"]


def serve(
    grid: Grid,
    settings: FedSettings,
    *,
    on_round: RoundHook | None = None,
    evaluate_fn: EvaluateFn | None = None,
    server_ema_auto: bool = False,
) -> None:
    """Run the remaining rounds of ``settings`` on ``grid``, saving after every round.

    Args:
        on_round: called with each rounds.jsonl row, after the round is saved.
        evaluate_fn: ``(round, arrays) -> metrics`` after each round, for FULL/USPLIT only; it is
            given the server EMA's weights with ``--server-ema`` (what ``sample``/``eval`` load by
            default), else the global model. Its result goes to the round's row.
        server_ema_auto: the recipe's server EMA, which ``settings`` (``server_ema`` 0) leaves
            to the clients' sizes (``flwr run`` and deployments with local epochs): set from the
            sizes the first complete round's clients report (:func:`_recipe_ema`), unless a
            complete round was recorded without it (a resumed run keeps its EMA).
    """
    run_dir = Path(settings.run_dir)
    arrays, done = resume_point(run_dir, settings)
    truncate_rounds(run_dir, done)
    if done >= settings.rounds:
        return
    pending = (
        server_ema_auto
        and settings.server_ema == 0
        and not settings.method_spec.personal
        and not any(row.get("complete") for row in read_rounds(run_dir))
    )
    ema0, ema_updates, opt_state = resume_server_state(run_dir, settings, arrays)
    strategy = make_strategy(settings, round_offset=done)
    strategy.load_optimizer_state(opt_state, arrays)
    clock = {"t": time.perf_counter()}
    tb: dict[str, EventWriter] = {}
    ema: dict[str, Any] = {"arrays": ema0, "n": ema_updates, "pending": pending}

    def after_round(server_round: int, record: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:  # Strategy.start calls the hook once before round 1
            return None
        rnd = server_round + done
        current = {k: a.numpy() for k, a in record.items()}
        info = strategy.rounds.get(rnd, {"round": rnd})
        if ema["pending"] and info.get("complete"):
            ema["pending"] = False
            _recipe_ema(run_dir, settings, info)
        if settings.server_ema > 0 and info.get("complete"):
            # Only a round that made a new global model moves the EMA (and counts for its
            # bias correction); see aggregate.ema_decay.
            ema["n"] += 1
            prev = ema["arrays"] if ema["arrays"] is not None else current
            ema["arrays"] = A.ema_update(prev, current, settings.server_ema, ema["n"])
        served = ema["arrays"] if ema["arrays"] is not None else current
        now = time.perf_counter()
        row = round_row(info, settings, now - clock["t"])
        clock["t"] = now
        metrics = None
        if evaluate_fn is not None and not strategy.method.personal:
            # The lead's FID hook; UDEC/ULATDEC's server model is no generator and is not evaluated.
            metrics = evaluate_fn(rnd, served)
            row["eval"] = metrics
        append_round(run_dir, row)  # the row first: a crash before the save truncates it on resume
        if settings.train.get("log") == "tensorboard":  # RUN/federated: TensorBoard event file
            if "w" not in tb:
                tb["w"] = EventWriter(fed_dir(run_dir))
            tb["w"].scalars(rnd, row, prefix="federated/")
        save_server_model(
            run_dir,
            settings,
            current,
            rnd,
            {"loss": row["loss"]},
            ema=ema["arrays"],
            ema_updates=ema["n"],
            optimizer=strategy.optimizer_state(),
        )
        if on_round is not None:
            on_round(row)
        return MetricRecord(metrics) if metrics else None

    if settings.secagg:  # train rounds through Flower's SecAgg+ workflow (secagg.py)
        from .secagg import SecAggGrid

        grid = SecAggGrid(grid, settings)  # type: ignore[assignment]
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()}),
        num_rounds=settings.rounds - done,
        timeout=settings.round_timeout,
        train_config=ConfigRecord({"settings": settings.to_json(), "num-rounds": settings.rounds}),
        evaluate_fn=after_round,
    )


def make_server_app(
    settings: FedSettings,
    *,
    on_round: RoundHook | None = None,
    evaluate_fn: EvaluateFn | None = None,
) -> ServerApp:
    """A ServerApp bound to ``settings`` (for ``run_simulation``)."""
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, ctx: Context) -> None:
        serve(grid, settings, on_round=on_round, evaluate_fn=evaluate_fn)

    return server_app


def _recipe_ema(run_dir: Path, settings: FedSettings, info: dict[str, Any]) -> None:
    """Set ``settings.server_ema`` (in place: the strategy shares it) to the recipe's, from the
    sizes the round's valid clients reported (``num_examples``, FedAvg's weights), and record it
    in fed.json before the round is saved. Exact for the whole run: the first server EMA is that
    round's model whatever the decay (:func:`.aggregate.ema_decay`), so the decay first weighs at
    the next complete round. (With clients missing from that round, their sizes are not in it.)"""
    sizes = [
        int(c.get("num_examples", 0)) for c in info["clients"].values() if c.get("status") == "ok"
    ]
    settings.server_ema = with_central_ema(settings, sizes).server_ema
    if settings.server_ema > 0:
        record_server_ema(run_dir, settings)


app = ServerApp()


@app.main()
def main(grid: Grid, ctx: Context) -> None:
    """Entry point of ``flwr run`` and of deployment: settings from the run config.

    A recipe's server EMA (:func:`.run_config.recipe_sets_server_ema`) is the one the run
    recorded when it started, if any (as ``fed run``'s: adding rounds later keeps it); else, with
    ``local-steps``, the settings'; else it is set after the first complete round from the sizes
    the clients report (never from the server's own split of the data, which in a deployment
    need not be the clients')."""
    rc = dict(ctx.run_config)
    settings = settings_from_run_config(rc)
    auto = recipe_sets_server_ema(rc)
    recorded = read_settings(settings.run_dir) if auto else None
    if recorded is not None and recorded.server_ema > 0:  # resumed, maybe with more rounds
        settings = replace(settings, server_ema=recorded.server_ema)
    elif auto and not settings.local_steps:
        # The clients' sizes decide it: in a deployment each SuperNode holds its own data, which
        # the server's split of its own copy need not match; they report it in the first round.
        settings = replace(settings, server_ema=0.0)
    record_settings(settings.run_dir, settings)
    serve(grid, settings, server_ema_auto=auto)
