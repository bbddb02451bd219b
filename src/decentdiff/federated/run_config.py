"""The Flower run config of a federated run: the keys a Flower deployment's ServerApp reads
(:func:`settings_from_run_config`) and their values for given settings (:func:`run_config_from`).

Its ``recipe`` key is ``fed run --recipe``, resolved by the same functions (:mod:`.recipes`), with
the keys given in the run config in place of ``fed run``'s given options: the same recipe gives
the same settings under ``fed run`` and ``flwr run``.

A run config cannot hold None: :data:`~.settings.PLACEHOLDERS` stand for "the default" at this
boundary only (:func:`~.settings.unset_from`, :func:`~.settings.unset_to`).
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .recipes import DEFAULT_RECIPE, get_recipe, recipe_base, resolve_recipe
from .settings import (
    DEFAULT_RUN_DIR,
    DEFAULTS,
    PLACEHOLDERS,
    FedSettings,
    build_settings,
    unset_from,
    unset_to,
)

#: The run-config keys :func:`settings_from_run_config` reads; any other key is a typo.
RUN_CONFIG_KEYS = (
    "recipe",
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


#: The FedSettings fields that are run options in a run config (the rest are the project config,
#: the RUN and the images: ``data`` and ``objective`` are other keys there).
OPTION_FIELDS = frozenset(f.name for f in fields(FedSettings)) - {
    "objective",
    "data",
    "run_dir",
    "image_shape",
    "num_classes",
}


#: The value that stands for "not given" in each run-config key a recipe decides (none a run can
#: use). Flower refuses a ``flwr run -c`` key the app does not declare, so pyproject.toml
#: declares these keys, at these values: they leave the recipe's value, as a ``fed run`` option
#: left out does. The server optimiser's settings have :data:`PLACEHOLDERS` (0 / -1) for it.
NOT_GIVEN: dict[str, Any] = {
    "objective": "",
    "batch": 0,
    "lr": 0.0,
    "warmup": -1,
    "ema-decay": -1.0,
    "optimizer": "",
    "client-state": "",
    "local-epochs": 0.0,
    "local-steps": -1,
    "server-opt": "",
    "server-ema": -1.0,
}


def given_keys(rc: dict[str, Any]) -> dict[str, Any]:
    """The keys ``rc`` gives: without those at their "not given" value (:data:`NOT_GIVEN`,
    :data:`PLACEHOLDERS`)."""
    out: dict[str, Any] = {}
    for key, value in rc.items():
        name = key.replace("-", "_")
        if key in NOT_GIVEN and value == NOT_GIVEN[key]:
            continue
        if name in PLACEHOLDERS and unset_from(name, value) is None:
            continue
        out[key] = value
    return out


def given_options(rc: dict[str, Any]) -> dict[str, Any]:
    """The run options ``rc`` gives (FedSettings fields, typed as theirs): what a recipe must not
    override, as ``fed run``'s given options."""
    given: dict[str, Any] = {}
    for key, value in given_keys(rc).items():
        name = key.replace("-", "_")
        if name in PLACEHOLDERS:
            given[name] = unset_from(name, value)
        elif name in OPTION_FIELDS:
            given[name] = type(getattr(DEFAULTS, name))(value)
    return given


def recipe_sets_server_ema(rc: dict[str, Any]) -> bool:
    """Whether the server EMA of the run ``rc`` describes is its recipe's (the recipe's
    ``server_ema_auto``, and no ``server-ema`` given), like ``fed run`` without ``--server-ema``."""
    return get_recipe(str(rc.get("recipe", DEFAULT_RECIPE))).server_ema_auto and (
        "server-ema" not in given_keys(rc)
    )


def settings_from_run_config(rc: dict[str, Any]) -> FedSettings:
    """Settings from a Flower run config (``[tool.flwr.app.config]`` or ``flwr run -c``), resolved
    as ``decentdiff fed run`` resolves its options.

    ``recipe`` (default :data:`~.recipes.DEFAULT_RECIPE`) is a ``fed run --recipe``, resolved by
    the same functions (:func:`~.recipes.resolve_recipe`, :func:`~.recipes.recipe_base`,
    ``Recipe.check``): the config base it starts from (lr, warm-up, EMA decay, objective, loss,
    each client's batch) and the run options it sets. Every other key given wins over it, as a
    ``fed run`` option does; a key left out, or at its "not given" value (:data:`NOT_GIVEN`,
    :data:`PLACEHOLDERS`: a run config cannot hold None), is the recipe's, else ``fed run``'s
    default. An unknown recipe fails in one line (:func:`~.recipes.get_recipe`).

    Run options: method, clients, split, rounds, local-epochs, local-steps, prox, quantize, seed,
    min-replies, round-timeout, client-state, full-rounds, server-opt, server-lr,
    server-momentum, server-beta2, server-tau, server-ema, aggregate (fedavg or a robust rule,
    :mod:`.robust`), dp, dp-clip, noise-multiplier, dp-adaptive, dp-delta, target-epsilon,
    dp-count-std (:mod:`.privacy`), secagg, secagg-shares, secagg-threshold, secagg-clip,
    secagg-bits, secagg-max-weight (:mod:`.secagg`). Config: data, preset, class-cond,
    objective (the kind), batch, lr, warmup, ema-decay, optimizer (adamw | sgd:
    train.optimizer). Images: image-shape ("C,H,W": the server then never loads data; "": it
    does), num-classes. And run-dir (default :data:`DEFAULT_RUN_DIR`).

    A recipe's server EMA (``server_ema_auto``, no ``server-ema`` given) is set here when the
    clients' local steps are known: from the clients' split of the data, exactly as ``fed run``
    sets it, or from ``local-steps``. With ``image-shape`` and local epochs it stays 0 here and
    the ServerApp sets it from the first complete round's clients (:func:`.server_app.serve`).
    Writes nothing (the ServerApp records the settings in RUN).
    """
    from .. import config as C
    from ..run import load_data
    from .client import client_shares, with_central_ema

    unknown = sorted(set(rc) - set(RUN_CONFIG_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown run-config key(s) {', '.join(unknown)}; valid: {', '.join(RUN_CONFIG_KEYS)}"
        )
    rc = given_keys(rc)
    rec, resolved = resolve_recipe(str(rc.get("recipe", DEFAULT_RECIPE)), given_options(rc))
    options = FedSettings(**resolved).validate()
    cfg = C.resolve(base=recipe_base(rec.name, options.clients))
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
    rec.check(cfg)
    shape_s = str(rc.get("image-shape", ""))
    d = None
    if shape_s:
        shape = tuple(int(x) for x in shape_s.split(","))
        n_cls = int(rc.get("num-classes", 0))
    else:
        d = load_data(cfg.data)
        shape, n_cls = d.shape, d.num_classes
    settings = build_settings(
        cfg,
        options,
        image_shape=shape,  # type: ignore[arg-type]
        num_classes=n_cls,
        run_dir=str(Path(str(rc.get("run-dir", DEFAULT_RUN_DIR))).resolve()),
    )
    if rec.server_ema_auto and "server-ema" not in rc:  # recipe_sets_server_ema
        sizes: list[int] = []  # unknown: the ServerApp sets it after the first complete round
        if d is not None:  # the clients' shards, by their own definition (as fed run)
            sizes = [len(s) for s in client_shares(settings, d.labels, d.train_idx)]
        elif settings.local_steps > 0:  # every client takes local-steps steps, whatever its size
            sizes = [1] * settings.clients
        settings = with_central_ema(settings, sizes)
    return settings


def run_config_from(options: FedSettings) -> dict[str, Any]:
    """The Flower run-config entries of ``options``' run options (``flwr run -c``): what
    :func:`settings_from_run_config` reads back into the same options (None as its placeholder)."""
    # run-config keys for the run's data, network and RUN are not these fields ("objective": kind)
    out: dict[str, Any] = {}
    for key in RUN_CONFIG_KEYS:
        name = key.replace("-", "_")
        if name in OPTION_FIELDS:
            value = getattr(options, name)
            out[key] = unset_to(name, value) if name in PLACEHOLDERS else value
    return out
