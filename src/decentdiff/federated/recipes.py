"""``fed run --recipe``: named starting points of a federation, as data.

A recipe is a :class:`Recipe`: the project config it starts from (under the user's ``--config``,
``--set`` and options) and the run options it sets unless they are given. :func:`resolve_recipe`
applies one to the options a caller gave; it is the only place recipes are interpreted (the
command line and :meth:`decentdiff.api.RunHandle.federate` both call it through
:func:`decentdiff.federated.federate.federate`, and ``flwr run`` through
:func:`decentdiff.federated.run_config.settings_from_run_config`, the run config's ``recipe``
key). The evidence for each recipe is in
docs/federated.md ("Recipes") and docs/reproduction.md.

Module-level imports stay light (``decentdiff --help`` lists the recipes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import Config, ObjectiveConfig, TrainConfig
from ..errors import ConfigError
from .settings import ADAPTIVE, DEFAULTS, fed_base


@dataclass(frozen=True)
class Recipe:
    """One ``--recipe``: what it changes, as data."""

    name: str
    summary: str  # one line, for --help
    #: start from the central trainer's lr, warm-up, EMA decay and objective (TrainConfig's and
    #: ObjectiveConfig's defaults) instead of FED_BASE's paper protocol
    central: bool = False
    #: config values on top of that base (``{"train": {...}}``)
    config: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: run options set unless given (FedSettings fields). Server-optimiser values apply only
    #: when the chosen ``server_opt`` takes them (:func:`takes`).
    options: dict[str, Any] = field(default_factory=dict)
    #: an option counts as given when any of these is given instead (local steps <- epochs)
    alternatives: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: FULL / USPLIT: a server EMA per round keeping central training's window, unless given
    server_ema_auto: bool = False
    #: the clients send their gradient (one SGD step at lr 1): a global model only, and no
    #: client lr or warm-up in the resolved config (:meth:`check`)
    gradient_clients: bool = False
    #: each client's batch is the central trainer's batch over the clients (rounded up), unless
    #: a batch is given: the clients' pooled batch and a local epoch's sequential steps are then
    #: central training's (:func:`pooled_batch`)
    pooled_batch: bool = False

    def check(self, cfg: Config) -> None:
        """Refuse a resolved config the recipe cannot run (one line)."""
        if self.gradient_clients and (cfg.train.lr != 1.0 or cfg.train.warmup != 0):
            raise ConfigError(
                f"--recipe {self.name}: the clients send their gradient (train.lr 1, no warm-up; "
                f"got lr {cfg.train.lr:g}, warm-up {cfg.train.warmup}); the learning rate is "
                "--server-lr, FedAdam's η -- drop the train.lr / train.warmup setting"
            )


#: Every recipe, by name. Measured: docs/reproduction.md.
RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            "pooled",
            "the central recipe with flow matching, each client at the central batch over the "
            "clients: the pooled batch and sequential steps of central training.",
            central=True,
            config={"objective": {"kind": ObjectiveConfig().kind}},
            options={"client_state": "keep"},
            server_ema_auto=True,
            pooled_batch=True,
        ),
        Recipe(
            "paper",
            "FedDiffuse's protocol: lr 1e-4, Huber loss, no warm-up, a new Adam every round, no EMA.",
        ),
        Recipe(
            "central",
            "the central trainer's lr, warm-up, EMA decay and loss; Adam kept between rounds; "
            "FULL/USPLIT: a server EMA keeping central training's window.",
            central=True,
            options={"client_state": "keep"},
            server_ema_auto=True,
        ),
        Recipe(
            "fedsgd",
            "FULL/USPLIT: one SGD step per client per round (its gradient) and FedAdam on the "
            "server with the central lr and AdamW's β2 and ε.",
            central=True,
            config={"train": {"optimizer": "sgd", "lr": 1.0, "warmup": 0}},
            options={
                "local_steps": 1,
                "server_opt": "fedadam",
                "server_lr": TrainConfig().lr,
                "server_beta2": 0.999,
                "server_tau": 1e-8,
            },
            alternatives={"local_steps": ("local_epochs",)},
            server_ema_auto=True,
            gradient_clients=True,
        ),
    )
}
DEFAULT_RECIPE = "pooled"


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name`` (case and spaces ignored); ConfigError naming the others."""
    key = str(name).strip().lower()
    if key not in RECIPES:
        raise ConfigError(f"unknown --recipe {name!r}; choose one of: {', '.join(RECIPES)}")
    return RECIPES[key]


def takes(server_opt: str, option: str) -> bool:
    """Whether the server optimiser ``server_opt`` has the setting ``option`` (server_lr,
    server_beta2, server_tau: only the adaptive ones take a recipe's value)."""
    opt = str(server_opt).strip().lower()
    if option in ("server_lr", "server_tau"):
        return opt in ADAPTIVE
    if option == "server_beta2":
        return ADAPTIVE.get(opt, (None,))[0] is not None
    return True


def pooled_batch(clients: int) -> int:
    """Each client's batch under ``--recipe pooled``: the central trainer's batch over the
    clients, rounded up (128 over 5 clients: 26)."""
    return -(-TrainConfig().batch // max(1, int(clients)))


def recipe_base(recipe: str, clients: int = DEFAULTS.clients) -> dict[str, dict[str, Any]]:
    """The config a federation of ``clients`` starts from under ``recipe`` (the RUN's config, the
    user's config, --set and options go on top)."""
    r = get_recipe(recipe)
    base = fed_base()
    if r.central:
        central = TrainConfig()
        # the central trainer's objective for the kind (mse; --objective ddpm: the central noise
        # levels and weighting), not the paper's Huber loss and integer steps
        base["objective"] = {"kind": base["objective"]["kind"]}
        base["train"].update(lr=central.lr, warmup=central.warmup, ema_decay=central.ema_decay)
    for section, values in r.config.items():
        base.setdefault(section, {}).update(values)
    if r.pooled_batch:
        base["train"]["batch"] = pooled_batch(clients)
    return base


def resolve_recipe(recipe: str, given: dict[str, Any]) -> tuple[Recipe, dict[str, Any]]:
    """(the recipe, the run options): ``given`` (FedSettings fields the caller set) plus the
    recipe's options where neither they nor an alternative were given. An unknown recipe, or
    one that cannot run the given method, fails here, before anything is touched."""
    r = get_recipe(recipe)
    method = given.get("method", DEFAULTS.method)
    if r.gradient_clients:
        from .parts import get_method

        if get_method(method).personal:
            raise ConfigError(
                f"--recipe {r.name} needs a global model (full, usplit); {method}'s private "
                "parts would train by the clients' SGD step alone -- use --recipe central"
            )
    options = dict(given)
    for name, value in r.options.items():
        if name in given or any(a in given for a in r.alternatives.get(name, ())):
            continue
        opt = options.get("server_opt", DEFAULTS.server_opt)
        if name.startswith("server_") and name != "server_opt" and not takes(opt, name):
            continue  # another optimiser than the recipe's keeps its own defaults
        options[name] = value
    return r, options
