"""The simulation driver: a whole federated run on this machine, with Flower's simulation engine.

The same ServerApp and ClientApp run under ``flwr run`` and on a real SuperLink with SuperNodes;
only this driver is simulation-specific. A run resumes from ``RUN/federated`` (see :mod:`.store`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config
from . import aggregate as A
from . import parts as P
from .client import client_shares, with_central_ema
from .settings import FedSettings, build_settings
from .store import (
    client_dir,
    fed_dir,
    global_dir,
    read_rounds,
    read_settings,
    record_settings,
    resume_point,
    truncate_rounds,
)

#: How often Ray restarts a client's worker process that died during a simulation.
ACTOR_RESTARTS = 3


def run_federated(
    run: Any,
    cfg: Config,
    options: FedSettings,
    *,
    parallel: int = 0,
    fresh: bool = False,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    evaluate_fn: Callable[[int, dict[str, np.ndarray]], dict[str, float] | None] | None = None,
    quiet_flower: bool = True,
    server_ema_auto: bool = False,
) -> dict[str, Any]:
    """Run federated training with Flower's simulation engine; resumes unless ``fresh``.

    Args:
        run: a :class:`decentdiff.run.Run` (RUN directory).
        cfg: the resolved project config (data, model, objective, train).
        options: the run options (method, clients, split, rounds, local_epochs, local_steps,
            prox, quantize, server_opt, server_lr, server_momentum, server_beta2, server_tau,
            server_ema, aggregate, attack, seed, min_replies, round_timeout), validated here
            before RUN is touched (a robust rule that cannot tolerate its F too); see
            :class:`~.settings.FedSettings`.
        parallel: clients trained at once (0: one per CPU core); each gets cores/parallel threads.
        fresh: delete RUN/federated first.
        on_round: called with each rounds.jsonl row (progress).
        evaluate_fn: hook ``(round, global arrays) -> metrics`` for FULL/USPLIT's global model
            (e.g. FID), given the server EMA's weights with ``--server-ema``; its result is
            stored in the round's row. Not called for UDEC/ULATDEC,
            whose server model is not a generator.
        server_ema_auto: for a global generator (FULL, USPLIT) whose ``server_ema`` is 0, set it
            to central training's EMA window per round (``--recipe pooled`` or ``central``), from the rounds,
            the clients' local steps averaged by their images and ``train.ema_decay``; recorded
            resolved; a resumed run keeps the value it started with.
    Returns:
        {"settings", "sizes", "rounds" (rows), "model_dirs", "figure", "seconds"}.
    """
    import shutil
    import time

    from ..errors import DataError
    from .secagg import check_sizes

    t0 = time.perf_counter()
    options.validate()  # bad options fail before RUN is touched
    if run.exists():
        d = run.data(cfg)
    else:
        from ..run import load_data

        d = load_data(cfg.data)
    settings = build_settings(
        cfg,
        options,
        image_shape=d.shape,
        num_classes=d.num_classes,
        run_dir=str(Path(run.path).resolve()),
    )
    clients = settings.clients
    n_train = len(d.train_idx)
    if clients > n_train:
        raise DataError(
            f"{clients} clients but only {n_train} training images; use at most {n_train} clients"
        )
    # Fail fast (one line) on a split that cannot be made, before starting Flower.
    shares = client_shares(settings, d.labels, d.train_idx)  # the clients' own definition
    sizes = [len(s) for s in shares]
    check_sizes(settings, sizes)  # --secagg: every client's weight within --secagg-max-weight
    if server_ema_auto:  # `--recipe pooled` or `central`: fixed when the run starts
        recorded = None if fresh else read_settings(run.path)
        if recorded is not None and recorded.server_ema > 0:  # resumed, maybe with more rounds
            settings = replace(settings, server_ema=recorded.server_ema)
        else:
            settings = with_central_ema(settings, sizes)
    if not run.exists():
        run.data(cfg)  # creates RUN/run.toml now that every check passed
    root = fed_dir(run.path)
    if fresh and root.exists():
        shutil.rmtree(root)
    record_settings(run.path, settings)
    _, done = resume_point(run.path, settings)
    truncate_rounds(run.path, done)
    if done < settings.rounds:
        _simulate(settings, parallel, on_round, evaluate_fn, quiet_flower)
    rows = read_rounds(run.path)
    fig = bytes_figure(run.path, settings)
    m = settings.method_spec
    dirs = (
        [client_dir(run.path, i) for i in range(clients)]
        if m.personal
        else [global_dir(run.path, m)]
    )
    return {
        "settings": settings,
        "sizes": sizes,
        "rounds": rows,
        "model_dirs": dirs,
        "figure": fig,
        "seconds": time.perf_counter() - t0,
    }


def _simulate(
    settings: FedSettings,
    parallel: int,
    on_round: Callable[[dict[str, Any]], None] | None,
    evaluate_fn: Callable[[int, dict[str, np.ndarray]], dict[str, float] | None] | None,
    quiet_flower: bool,
) -> None:
    """The remaining rounds of ``settings``, one simulated SuperNode per client."""
    import logging
    import os
    import warnings

    from flwr.simulation import run_simulation

    from .client_app import app as client_app
    from .server_app import make_server_app

    cpus = os.cpu_count() or 1
    par = max(1, min(parallel or cpus, settings.clients))
    threads = max(1, cpus // par)
    settings.client_threads = threads
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Ray actors start with OMP_NUM_THREADS = their CPUs; torch in each uses `threads`.
    # A client's worker process that dies (OOM killer, SIGKILL) is restarted by Ray and its
    # task re-run once: a client round is a pure function of (seed, round, client), so the
    # re-run sends the same update. Without this, Flower 1.41 keeps the dead actor in its
    # pool and every later task sent to it fails.
    backend = {
        "client_resources": {
            "num_cpus": threads,
            "num_gpus": 0.0,
            "max_restarts": ACTOR_RESTARTS,
            "max_task_retries": 1,
        },
        # log_to_driver off (quiet): the actors' and raylet's log lines stay in Ray's session
        # logs instead of the terminal, where Ray printed a "ClientAppActor.terminate failed ...
        # will be retried" warning at every clean shutdown (the actor's intentional exit, seen
        # as a failure by the retry above). What matters of a client is in rounds.jsonl and the
        # round lines: its status and reason.
        "init_args": {
            "num_cpus": par * threads,
            "include_dashboard": False,
            "log_to_driver": not quiet_flower,
        },
    }
    flwr_log = logging.getLogger("flwr")
    level = flwr_log.level
    if quiet_flower:
        flwr_log.setLevel(logging.ERROR)  # rejections and failures go to rounds.jsonl
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run_simulation(
                server_app=make_server_app(settings, on_round=on_round, evaluate_fn=evaluate_fn),
                client_app=client_app,
                num_supernodes=settings.clients,
                backend_config=backend,
            )
    finally:
        flwr_log.setLevel(level)


def bytes_figure(run_dir: str | Path, settings: FedSettings) -> Path:
    """RUN/figures/fed_bytes.png: cumulative bytes of this run (measured) and every method (predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from ..models.registry import build_network, config_from_dict

    layout = A.layout_of(
        {
            k: v.numpy()
            for k, v in build_network(config_from_dict(settings.unet)).state_dict().items()
        }
    )
    rows = read_rounds(run_dir)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, m in P.METHODS.items():
        pr = A.predict_bytes(
            layout,
            name,
            settings.clients,
            settings.rounds,
            bits=settings.bits,
            seed=settings.seed,
            full_rounds=settings.full_rounds if m.personal else 0,
        )["per_round"]
        cum = np.cumsum([0] + [r["up"] + r["down"] for r in pr]) / 1e6
        ax.plot(range(len(cum)), cum, "--", alpha=0.7, label=f"{name} (predicted)")
    if rows:
        cum = np.cumsum([0] + [r["up"] + r["down"] for r in rows]) / 1e6
        x = [0] + [r["round"] for r in rows]
        ax.plot(x, cum, "o", color="k", ms=4, label=f"{settings.method} (measured)")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    q = f", {settings.quantize}-bit updates" if settings.quantize else ""
    ax.set(
        xlabel="round",
        ylabel="cumulative MB sent (up + down)",
        title=f"{settings.clients} clients{q}",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(run_dir) / "figures" / "fed_bytes.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
