"""The Flower run config of a federated run: the keys a Flower deployment's ServerApp reads
(:func:`settings_from_run_config`) and their values for given settings (:func:`run_config_from`).

A run config cannot hold None: :data:`~.settings.PLACEHOLDERS` stand for "the default" at this
boundary only (:func:`~.settings.unset_from`, :func:`~.settings.unset_to`).
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .settings import (
    DEFAULT_RUN_DIR,
    DEFAULTS,
    PLACEHOLDERS,
    FedSettings,
    build_settings,
    fed_base,
    unset_from,
    unset_to,
)

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
    "server-opt",
    "server-lr",
    "server-momentum",
    "server-beta2",
    "server-tau",
    "server-ema",
    "aggregate",
    "batch",
    "lr",
    "warmup",
    "ema-decay",
    "optimizer",
    "client-state",
    "full-rounds",
    "objective",
    "image-shape",
    "num-classes",
    "class-cond",
    "dp",
    "dp-clip",
    "noise-multiplier",
    "dp-adaptive",
    "dp-delta",
    "target-epsilon",
    "dp-count-std",
    "secagg",
    "secagg-shares",
    "secagg-threshold",
    "secagg-clip",
    "secagg-bits",
    "secagg-max-weight",
)


def settings_from_run_config(rc: dict[str, Any]) -> FedSettings:
    """Settings from a Flower run config (``[tool.flwr.app.config]`` or ``flwr run -c``).

    Keys (all optional, defaults as ``decentdiff fed run``'s): run-dir, data, preset, method,
    clients, split, rounds, local-epochs, local-steps, prox, quantize, seed, min-replies,
    round-timeout, client-state, full-rounds, server-opt, server-lr, server-momentum, server-beta2,
    server-tau (a run config cannot hold None: :data:`PLACEHOLDERS` stand for the default),
    server-ema, aggregate (fedavg or a robust rule, :mod:`.robust`), dp, dp-clip,
    noise-multiplier, dp-adaptive, dp-delta, target-epsilon, dp-count-std (:mod:`.privacy`),
    secagg, secagg-shares, secagg-threshold, secagg-clip, secagg-bits, secagg-max-weight
    (:mod:`.secagg`),
    batch, lr, warmup,
    ema-decay, optimizer (adamw | sgd: train.optimizer), objective, image-shape ("C,H,W": the server then never loads data), num-classes, class-cond.
    Writes nothing (the ServerApp records the settings in RUN).
    """
    from .. import config as C
    from ..run import load_data

    unknown = sorted(set(rc) - set(RUN_CONFIG_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown run-config key(s) {', '.join(unknown)}; valid: {', '.join(RUN_CONFIG_KEYS)}"
        )

    def get(key: str) -> Any:
        return rc.get(key, getattr(DEFAULTS, key.replace("-", "_")))

    options = FedSettings(
        method=str(get("method")),
        clients=int(get("clients")),
        split=str(get("split")),
        rounds=int(get("rounds")),
        local_epochs=float(get("local-epochs")),
        local_steps=int(get("local-steps")),
        prox=float(get("prox")),
        quantize=int(get("quantize")),
        seed=int(get("seed")),
        min_replies=int(get("min-replies")),
        round_timeout=float(get("round-timeout")),
        client_state=str(get("client-state")),
        full_rounds=int(get("full-rounds")),
        server_opt=str(get("server-opt")),
        server_lr=unset_from("server_lr", get("server-lr")),
        server_momentum=unset_from("server_momentum", get("server-momentum")),
        server_beta2=unset_from("server_beta2", get("server-beta2")),
        server_tau=unset_from("server_tau", get("server-tau")),
        server_ema=float(get("server-ema")),
        aggregate=str(get("aggregate")),
        dp=str(get("dp")),
        dp_clip=float(get("dp-clip")),
        noise_multiplier=float(get("noise-multiplier")),
        dp_adaptive=bool(get("dp-adaptive")),
        dp_delta=float(get("dp-delta")),
        target_epsilon=float(get("target-epsilon")),
        dp_count_std=float(get("dp-count-std")),
        secagg=bool(get("secagg")),
        secagg_shares=int(get("secagg-shares")),
        secagg_threshold=int(get("secagg-threshold")),
        secagg_clip=float(get("secagg-clip")),
        secagg_bits=int(get("secagg-bits")),
        secagg_max_weight=float(get("secagg-max-weight")),
    ).validate()
    cfg = C.resolve(base=fed_base())
    cfg.data.source = str(rc.get("data", cfg.data.source))
    cfg.model.preset = str(rc.get("preset", cfg.model.preset))
    cfg.model.class_cond = bool(rc.get("class-cond", False))
    cfg.objective.kind = str(rc.get("objective", cfg.objective.kind))
    cfg.train.batch = int(rc.get("batch", cfg.train.batch))
    cfg.train.lr = float(rc.get("lr", cfg.train.lr))
    cfg.train.warmup = int(rc.get("warmup", cfg.train.warmup))
    cfg.train.ema_decay = float(rc.get("ema-decay", cfg.train.ema_decay))
    cfg.train.optimizer = str(rc.get("optimizer", cfg.train.optimizer))
    if cfg.train.optimizer not in C.OPTIMIZERS:
        raise ConfigError(
            f"run-config optimizer = {cfg.train.optimizer!r}: choose one of "
            f"{', '.join(C.OPTIMIZERS)}"
        )
    shape_s = str(rc.get("image-shape", ""))
    if shape_s:
        shape = tuple(int(x) for x in shape_s.split(","))
        n_cls = int(rc.get("num-classes", 0))
    else:
        d = load_data(cfg.data)
        shape, n_cls = d.shape, d.num_classes
    return build_settings(
        cfg,
        options,
        image_shape=shape,  # type: ignore[arg-type]
        num_classes=n_cls,
        run_dir=str(Path(str(rc.get("run-dir", DEFAULT_RUN_DIR))).resolve()),
    )


def run_config_from(options: FedSettings) -> dict[str, Any]:
    """The Flower run-config entries of ``options``' run options (``flwr run -c``): what
    :func:`settings_from_run_config` reads back into the same options (None as its placeholder)."""
    # run-config keys for the run's data, network and RUN are not these fields ("objective": kind)
    names = {f.name for f in fields(FedSettings)}
    names -= {"objective", "data", "run_dir", "image_shape", "num_classes"}
    out: dict[str, Any] = {}
    for key in RUN_CONFIG_KEYS:
        name = key.replace("-", "_")
        if name in names:
            value = getattr(options, name)
            out[key] = unset_to(name, value) if name in PLACEHOLDERS else value
    return out
