"""Flower ServerApp: starts :class:`PartialFedAvg` from the initial (or last saved) model.

After every round it saves the server's model (``global/`` or ``shared/``) and appends a row to
``rounds.jsonl``, through FedAvg's per-round ``evaluate_fn`` hook, so flwr's ``Strategy.start``
loop is used as is. ``app`` serves ``flwr run`` and deployment (settings from the run config, see
:func:`settings_from_run_config`); :func:`make_server_app` serves ``decentdiff fed run``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from . import parts as P
from .run import (
    FedSettings,
    append_round,
    build_settings,
    check_resumable,
    fed_dir,
    read_settings,
    resume_point,
    save_server_model,
    truncate_rounds,
)
from .strategy import PartialFedAvg

RoundHook = Callable[[dict[str, Any]], None]
EvaluateFn = Callable[[int, dict[str, np.ndarray]], "dict[str, float] | None"]


def round_row(info: dict[str, Any], settings: FedSettings, seconds: float) -> dict[str, Any]:
    """The rounds.jsonl row of one round (clients ordered by partition id when known)."""
    clients = sorted(
        info.get("clients", {}).values(),
        key=lambda r: (r.get("partition-id", math.inf), r.get("node", 0)),
    )
    ok = [c for c in clients if c.get("status") == "ok"]
    n = sum(c.get("num_examples", 0) for c in ok)
    loss = sum(c["loss"] * c["num_examples"] for c in ok) / n if n else None
    up = sum(c.get("up", 0) for c in clients)
    down = sum(c.get("down", 0) for c in clients)
    return {
        "round": info["round"],
        "method": settings.method,
        "quantize": settings.quantize,
        "complete": bool(info.get("complete", False)),
        "accepted": info.get("accepted", 0),
        "up": up,
        "down": down,
        "total": up + down,
        "up_wire": sum(c.get("up_wire", 0) for c in clients),
        "down_wire": sum(c.get("down_wire", 0) for c in clients),
        "loss": loss,
        "seconds": round(seconds, 3),
        "clients": clients,
    }


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
    method = P.get_method(settings.method)
    strategy = PartialFedAvg(settings, round_offset=done)
    clock = {"t": time.perf_counter()}

    def after_round(server_round: int, record: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:  # Strategy.start calls the hook once before round 1
            return None
        rnd = server_round + done
        current = {k: a.numpy() for k, a in record.items()}
        now = time.perf_counter()
        row = round_row(strategy.rounds.get(rnd, {"round": rnd}), settings, now - clock["t"])
        clock["t"] = now
        metrics = None
        if evaluate_fn is not None and not method.personal:
            # The lead's FID hook; UDEC/ULATDEC's server model is no generator and is not evaluated.
            metrics = evaluate_fn(rnd, current)
            row["eval"] = metrics
        append_round(run_dir, row)  # the row first: a crash before the save truncates it on resume
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


#: The run-config keys :func:`settings_from_run_config` reads; any other key is a typo.
RUN_CONFIG_KEYS = (
    "run-dir",
    "data",
    "preset",
    "method",
    "clients",
    "split",
    "rounds",
    "local-epochs",
    "local-steps",
    "prox",
    "quantize",
    "seed",
    "min-replies",
    "round-timeout",
    "batch",
    "lr",
    "objective",
    "image-shape",
    "num-classes",
    "class-cond",
)


def settings_from_run_config(rc: dict[str, Any]) -> FedSettings:
    """Settings from a Flower run config (``[tool.flwr.app.config]`` or ``flwr run -c``).

    Keys (all optional): run-dir, data, preset, method, clients, split, rounds, local-epochs,
    local-steps, prox, quantize, seed, min-replies, round-timeout, batch, lr, objective,
    image-shape ("C,H,W": the server then never loads data), num-classes, class-cond.
    """
    from .. import config as C
    from ..run import load_data
    from ..training.checkpoint import atomic_write_text
    from .run import FED_BASE

    unknown = sorted(set(rc) - set(RUN_CONFIG_KEYS))
    if unknown:
        from ..errors import ConfigError

        raise ConfigError(
            f"unknown run-config key(s) {', '.join(unknown)}; valid: {', '.join(RUN_CONFIG_KEYS)}"
        )

    def get(key: str, default: Any) -> Any:
        return rc.get(key, default)

    cfg = C.resolve(base=json.loads(json.dumps(FED_BASE)))
    cfg.data.source = str(get("data", cfg.data.source))
    cfg.model.preset = str(get("preset", cfg.model.preset))
    cfg.model.class_cond = bool(get("class-cond", False))
    cfg.objective.kind = str(get("objective", cfg.objective.kind))
    cfg.train.batch = int(get("batch", cfg.train.batch))
    cfg.train.lr = float(get("lr", cfg.train.lr))
    shape_s = str(get("image-shape", ""))
    if shape_s:
        shape = tuple(int(x) for x in shape_s.split(","))
        n_cls = int(get("num-classes", 0))
    else:
        d = load_data(cfg.data)
        shape, n_cls = d.shape, d.num_classes
    run_dir = Path(str(get("run-dir", "runs/fed"))).resolve()
    settings = build_settings(
        cfg,
        method=str(get("method", "full")),
        clients=int(get("clients", 2)),
        split=str(get("split", "iid")),
        rounds=int(get("rounds", 3)),
        local_epochs=float(get("local-epochs", 1.0)),
        local_steps=int(get("local-steps", 0)),
        prox=float(get("prox", 0.0)),
        quantize=int(get("quantize", 0)),
        seed=int(get("seed", 0)),
        min_replies=int(get("min-replies", 1)),
        round_timeout=float(get("round-timeout", 3600.0)),
        run_dir=str(run_dir),
        image_shape=shape,  # type: ignore[arg-type]
        num_classes=n_cls,
    )
    old = read_settings(run_dir)
    if old is not None:
        check_resumable(old, settings)
    atomic_write_text(fed_dir(run_dir) / "fed.json", settings.to_json())
    return settings


app = ServerApp()


@app.main()
def main(grid: Grid, ctx: Context) -> None:
    """Entry point of ``flwr run`` and of deployment: settings from the run config."""
    serve(grid, settings_from_run_config(dict(ctx.run_config)))
