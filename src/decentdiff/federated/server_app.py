"""Flower ServerApp: starts :class:`.strategy.PartialFedAvg` from the initial (or last saved) model.

After every round it saves the server's model (``global/`` or ``shared/``) and appends a row to
``rounds.jsonl``, through FedAvg's per-round ``evaluate_fn`` hook, so flwr's ``Strategy.start``
loop is used as is. ``app`` serves ``flwr run`` and deployment (settings from the run config, see
:func:`.settings.settings_from_run_config`); :func:`make_server_app` serves ``decentdiff fed run``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from ..events import EventWriter
from .settings import FedSettings, settings_from_run_config
from .store import (
    append_round,
    fed_dir,
    record_settings,
    resume_point,
    round_row,
    save_server_model,
    truncate_rounds,
)
from .strategy import PartialFedAvg

RoundHook = Callable[[dict[str, Any]], None]
EvaluateFn = Callable[[int, dict[str, np.ndarray]], "dict[str, float] | None"]


def serve(
    grid: Grid,
    settings: FedSettings,
    *,
    on_round: RoundHook | None = None,
    evaluate_fn: EvaluateFn | None = None,
) -> None:
    """Run the remaining rounds of ``settings`` on ``grid``, saving after every round."""
    run_dir = Path(settings.run_dir)
    arrays, done = resume_point(run_dir, settings)
    truncate_rounds(run_dir, done)
    if done >= settings.rounds:
        return
    strategy = PartialFedAvg(settings, round_offset=done)
    clock = {"t": time.perf_counter()}
    tb: dict[str, EventWriter] = {}

    def after_round(server_round: int, record: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:  # Strategy.start calls the hook once before round 1
            return None
        rnd = server_round + done
        current = {k: a.numpy() for k, a in record.items()}
        now = time.perf_counter()
        row = round_row(strategy.rounds.get(rnd, {"round": rnd}), settings, now - clock["t"])
        clock["t"] = now
        metrics = None
        if evaluate_fn is not None and not strategy.method.personal:
            # The lead's FID hook; UDEC/ULATDEC's server model is no generator and is not evaluated.
            metrics = evaluate_fn(rnd, current)
            row["eval"] = metrics
        append_round(run_dir, row)  # the row first: a crash before the save truncates it on resume
        if settings.train.get("log") == "tensorboard":  # RUN/federated: TensorBoard event file
            if "w" not in tb:
                tb["w"] = EventWriter(fed_dir(run_dir))
            tb["w"].scalars(rnd, row, prefix="federated/")
        save_server_model(run_dir, settings, current, rnd, {"loss": row["loss"]})
        if on_round is not None:
            on_round(row)
        return MetricRecord(metrics) if metrics else None

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


app = ServerApp()


@app.main()
def main(grid: Grid, ctx: Context) -> None:
    """Entry point of ``flwr run`` and of deployment: settings from the run config."""
    settings = settings_from_run_config(dict(ctx.run_config))
    record_settings(settings.run_dir, settings)
    serve(grid, settings)
