"""A federated run's settings: one typed record, one set of defaults, validated once.

The defaults are :class:`FedSettings`' own field defaults (:data:`DEFAULTS`): ``decentdiff fed run``
and ``fed bytes`` take their option defaults from it, and :func:`.run_config.settings_from_run_config` falls
back to it where the run config's recipe sets nothing (``[tool.flwr.app.config]`` in pyproject.toml
declares every key without overriding a recipe; a test checks it against ``fed run``).

Two constructors, one per entry point, each validating once:

- ``decentdiff fed run``: the options as a :class:`FedSettings`, ``.validate()``-d before RUN is
  touched, then :func:`build_settings` adds the project config and the images' shape;
- ``flwr run`` and deployment: :func:`.run_config.settings_from_run_config` from Flower's run config.

The settings travel to every client as one JSON string in the round's ConfigRecord, so a SuperNode
needs nothing but its own data. After validation ``method`` is the method's canonical name and
:attr:`FedSettings.method_spec` is the one way to its :class:`~decentdiff.federated.parts.Method`.

Module-level imports stay light (``decentdiff --help`` imports this module for the defaults).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from ..config import Config
from ..errors import ConfigError

if TYPE_CHECKING:
    from .parts import Method

#: Paper defaults (de Goede et al., arXiv 2406.12575): DDPM ε with Huber loss, linear β, T = 1000,
#: Adam lr 1e-4 re-created every round, batch 128, no warm-up, no EMA. One departure: the
#: ε-network has the project's skip connection (``objective.eps_param=skip``, docs/models.md: better
#: ancestrally and by Euler); ``--set objective.eps_param=direct`` is the paper's plain network.
#: The paper's integer steps and unweighted loss are kept (``objective.step_dist=uniform``,
#: ``objective.weighting=uniform``), not ``--objective ddpm``'s central default
#: (flow matching's noise levels and weighting; docs/models.md), which is measured centrally only and, with the
#: Huber loss, is no longer the flow-matching loss. (A warm-up, when set, runs
#: on a client's sequential step across rounds; ``train.ema_decay > 0`` gives UDEC/ULATDEC's
#: personal models an EMA across rounds; the global model's EMA is the server's.)
FED_BASE: dict[str, dict[str, Any]] = {
    "objective": {
        "kind": "ddpm",
        "loss": "huber",
        "schedule": "linear",
        "timesteps": 1000,
        "weighting": "uniform",
        "step_dist": "uniform",
    },
    "train": {"lr": 1e-4, "warmup": 0, "batch": 128, "ema_decay": 0.0, "weight_decay": 0.0},
}

#: Keys that must not change when a federated run is resumed.
IDENTITY = (
    "method",
    "clients",
    "split",
    "seed",
    "prox",
    "quantize",
    "client_state",
    "full_rounds",
    "server_opt",
    "server_lr",
    "server_momentum",
    "server_beta2",
    "server_tau",
    "server_ema",
    "aggregate",
    "attack",
    "unet",
    "objective",
    "data",
    "dp",
    "dp_clip",
    "noise_multiplier",
    "dp_adaptive",
    "dp_delta",
    "dp_count_std",
    "secagg",  # what the server may see of each update: fixed for the whole run
)

#: What a client keeps from one round to the next: ``reset`` re-creates Adam every round (the
#: paper's protocol); ``keep`` carries Adam's moments and step over (kept by the node, and in
#: ``RUN/federated/clients/<i>/carry`` so a resumed run continues exactly).
CLIENT_STATES = ("reset", "keep")
#: Server optimisers (``--server-opt``): Flower's own strategies applied to the validated average.
#: name -> (default η, default momentum β1); fedavgm's default η is 1 − β (see :meth:`resolve`).
#: fedavg and fedadagrad take no momentum (Flower's FedAdagrad fixes β1 = 0).
SERVER_OPTS: dict[str, tuple[float, float]] = {
    "fedavg": (1.0, 0.0),
    "fedavgm": (0.1, 0.9),
    "fedadam": (1e-3, 0.9),
    "fedyogi": (1e-3, 0.9),
    "fedadagrad": (1e-3, 0.0),
}
#: The adaptive optimisers' second-moment decay β2 and adaptivity τ (Adam's ε) by default:
#: Flower's (None: the optimiser has no β2). Only they take ``--server-beta2`` / ``--server-tau``.
ADAPTIVE: dict[str, tuple[float | None, float]] = {
    "fedadam": (0.99, 1e-3),
    "fedyogi": (0.99, 1e-3),
    "fedadagrad": (None, 1e-3),
}
#: Flower's run config cannot hold None, and a fed.json written before these settings were
#: optional has numbers for "the default": those numbers, read as None (:func:`unset_from`) and
#: written for None (:func:`unset_to`) there, and only there.
PLACEHOLDERS: dict[str, float] = {
    "server_lr": 0.0,
    "server_momentum": -1.0,
    "server_beta2": 0.0,
    "server_tau": 0.0,
}


def unset_from(name: str, value: Any) -> float | None:
    """A run-config or old fed.json value of the optional setting ``name``: None for its
    placeholder (:data:`PLACEHOLDERS`), else the number."""
    return None if value is None or float(value) == PLACEHOLDERS[name] else float(value)


def unset_to(name: str, value: float | None) -> float:
    """The run-config value of the optional setting ``name``: its placeholder for None."""
    return PLACEHOLDERS[name] if value is None else float(value)


@dataclass
class FedSettings:
    """Everything a federated run needs besides the data itself (field order = fed.json's)."""

    method: str = "full"
    clients: int = 5
    split: str = "iid"
    rounds: int = 15
    local_epochs: float = 1.0  # E: each client takes ceil(E · n_i / batch) steps per round
    local_steps: int = 0  # > 0 overrides E (tests, quick looks)
    prox: float = 0.0  # FedProx μ (0 = plain FedAvg)
    quantize: int = 0  # 0 = full precision; 8 = 8-bit updates
    # --- server optimiser and server EMA (docs/federated.md); `validate` resolves the defaults
    server_opt: str = "fedavg"  # fedavg | fedavgm | fedadam | fedyogi | fedadagrad (SERVER_OPTS)
    server_lr: float | None = None  # η; None = the optimiser's default
    server_momentum: float | None = None  # FedAvgM momentum / FedOpt β1; None = the default
    server_beta2: float | None = None  # FedAdam / FedYogi β2; None = Flower's 0.99 (ADAPTIVE)
    server_tau: float | None = None  # FedAdam / FedYogi / FedAdagrad τ (Adam's ε); None = 1e-3
    server_ema: float = 0.0  # decay per round of the server's EMA of the global model (0 = off)
    # --- robust aggregation (robust.py): the rule in place of the weighted average, and a fault
    # injection for studies (clients that send a corrupted update)
    aggregate: str = (
        "fedavg"  # fedavg | median | trimmed-mean:B | krum:F | multikrum:F,M | bulyan:F
    )
    attack: str = ""  # "" = none; scale:K@C | signflip[:K]@C | noise:SIGMA@C
    # ---
    seed: int = 0
    min_replies: int = 1  # a round completes when at least this many valid updates arrived
    round_timeout: float = 3600.0  # seconds the server waits for a round's replies
    min_client_size: int = 2
    client_threads: int = 0  # torch threads per client (0: torch's default); a node may override
    client_state: str = "reset"  # reset: new Adam every round (paper); keep: Adam carried over
    full_rounds: int = 0  # UDEC/ULATDEC: rounds 1..N exchange the whole model (FULL) first
    run_dir: str = ""  # simulation: clients save personal models under RUN/federated/clients/<i>
    data: dict[str, Any] = field(default_factory=dict)  # DataConfig as a dict
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig as a dict
    objective: dict[str, Any] = field(default_factory=dict)  # ObjectiveConfig as a dict
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig as a dict
    unet: dict[str, Any] = field(default_factory=dict)  # the network's to_dict() (UNet or DiT)
    image_shape: list[int] = field(default_factory=list)
    num_classes: int = 0  # classes the UNet is conditioned on (0 = unconditional)
    # --- client-level differential privacy (privacy.py; docs/federated.md)
    dp: str = "off"  # off | server | client: where each update is clipped first
    dp_clip: float = 0.0  # C, the clipping norm (the initial one with dp_adaptive)
    noise_multiplier: float = 0.0  # σ; 0 = picked from target_epsilon
    dp_adaptive: bool = False  # adaptive clipping (Andrew et al. 2021)
    dp_delta: float = 1e-5  # the δ that ε is reported at
    target_epsilon: float = 0.0  # 0 = none; else σ is picked (or checked) for the rounds
    dp_count_std: float = 0.0  # adaptive clipping's count noise σ_b; 0 = clients/20
    # --secagg (secagg.py): Flower's SecAgg+ for the weighted average (FULL, UDEC, ULATDEC)
    secagg: bool = False
    secagg_shares: int = 0  # shares of each client's secret; 0 = every client
    secagg_threshold: int = 0  # shares needed to reconstruct; 0 = a majority of the shares
    secagg_clip: float = 8.0  # c: each weighted value r·θ is clipped to [-c, c] (Flower's)
    secagg_bits: int = 22  # Q = 2^bits quantisation levels over [-c, c] (Flower's 2^22)
    secagg_max_weight: float = 1000.0  # W: a client's weight n_i / W must be ≤ 1 (Flower's)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FedSettings:
        raw = json.loads(text)
        names = {f.name for f in fields(cls)}
        kept = {k: v for k, v in raw.items() if k in names}
        for k in PLACEHOLDERS.keys() & kept.keys():  # written before they were optional
            kept[k] = unset_from(k, kept[k])
        return cls(**kept).resolve_server_opt()

    @property
    def bits(self) -> int | None:
        return self.quantize or None

    @property
    def method_spec(self) -> Method:
        """The run's :class:`~decentdiff.federated.parts.Method`: what travels each way."""
        from .parts import get_method

        return get_method(self.method)

    def resolve_server_opt(self) -> FedSettings:
        """Replace "the optimiser's default" (None) by its value where the optimiser has one.

        Defaults (:data:`SERVER_OPTS`): fedavg η = 1, no momentum; fedavgm β = 0.9 and η = 1 − β
        (Hsu et al.'s effective learning rate η/(1 − β) = 1: once the momentum has built up, a
        steady pseudo-gradient moves the model as far as FedAvg would); fedadam and fedyogi
        η = 1e-3, β1 = 0.9; fedadagrad η = 1e-3 (no momentum in Flower's FedAdagrad). β2 = 0.99
        and τ = 1e-3 are Flower's; the others keep β2 and τ None (they have neither). The adaptive optimisers move a weight by up to about η per
        round; a client's round of Adam moves it by at most lr × local steps (1e-4 × 7 for the
        paper's E = 1 on mnist5k with 5 clients), so η = 1e-3 starts at FedAvg's scale (Flower's own defaults, 1e-1 / 1e-2 / 1e-1, are for
        SGD-trained classifiers). An unknown name is left for :meth:`validate`. Returns self.
        """
        opt = str(self.server_opt).strip().lower()
        if opt in SERVER_OPTS:
            self.server_opt = opt
            lr, mom = SERVER_OPTS[opt]
            if self.server_momentum is None:
                self.server_momentum = mom
            if self.server_lr is None:
                self.server_lr = 1.0 - self.server_momentum if opt == "fedavgm" else lr
            if opt in ADAPTIVE:
                beta2, tau = ADAPTIVE[opt]
                if self.server_beta2 is None:
                    self.server_beta2 = beta2
                if self.server_tau is None:
                    self.server_tau = tau
        return self

    def validate(self) -> FedSettings:
        """Check the run options; raise ConfigError (one line) on a bad value; returns self.

        Also makes ``method`` the method's canonical name and resolves the server optimiser's
        defaults (:meth:`resolve_server_opt`).
        """
        from ..data.client_split import parse_client_split
        from .aggregate import QUANTIZE_BITS
        from .parts import get_method

        self.method = get_method(self.method).name
        parse_client_split(self.split)
        checks = [
            (self.clients >= 1, f"--clients must be ≥ 1, got {self.clients}"),
            (self.rounds >= 1, f"--rounds must be ≥ 1, got {self.rounds}"),
            (
                self.local_epochs > 0,
                f"--local-epochs must be > 0, got {self.local_epochs}",
            ),
            (self.local_steps >= 0, f"--local-steps must be ≥ 0, got {self.local_steps}"),
            (self.prox >= 0, f"--prox μ must be ≥ 0, got {self.prox}"),
            (
                self.quantize in (0, *QUANTIZE_BITS),
                f"--quantize must be 0 (off) or 8, got {self.quantize}",
            ),
            (
                1 <= self.min_replies <= self.clients,
                f"--min-replies must be in 1..{self.clients}, got {self.min_replies}",
            ),
            (self.round_timeout > 0, f"--round-timeout must be > 0, got {self.round_timeout}"),
            (
                0 <= self.full_rounds <= self.rounds,
                f"--full-rounds must be in 0..--rounds ({self.rounds}), got {self.full_rounds}",
            ),
            (
                self.full_rounds == 0 or get_method(self.method).personal,
                f"--full-rounds is for udec and ulatdec (FULL rounds before their own); "
                f"{self.method} exchanges its groups every round: drop --full-rounds",
            ),
            (
                self.full_rounds == 0 or str(self.server_opt).strip().lower() == "fedavg",
                "--full-rounds with a --server-opt other than fedavg is not supported yet "
                "(its state of the private parts would not resume exactly); drop one of them",
            ),
            (
                self.client_state in CLIENT_STATES,
                f"--client-state must be one of {', '.join(CLIENT_STATES)}, "
                f"got {self.client_state!r}",
            ),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        self._validate_server_opt()
        self._validate_aggregate()
        from .privacy import validate as validate_dp

        validate_dp(self)
        from .secagg import validate as validate_secagg

        validate_secagg(self)
        return self

    def reporters_per_group(self) -> int:
        """The fewest clients that report a group in a round when all reply: every client,
        except under USPLIT, whose pairs split the groups (⌊clients/2⌋; parts.assignments)."""
        return self.clients // 2 if self.method_spec.split else self.clients

    def _validate_aggregate(self) -> None:
        """Canonical ``aggregate`` / ``attack`` specs; a robust rule that cannot tolerate its
        attackers with this many reporters per group is refused here, before any round."""
        from .robust import parse_attack, parse_rule

        rule = parse_rule(self.aggregate)
        self.aggregate = str(rule)
        n = self.reporters_per_group()
        who = f"{self.clients} clients report each group"
        if self.method_spec.split:
            who = f"usplit's {self.clients} clients report each group {n} at a time"
        rule.require(n, who, 2 if self.method_spec.split else 1)
        attack = parse_attack(self.attack)
        self.attack = str(attack) if attack else ""
        if attack and max(attack.clients) >= self.clients:
            raise ConfigError(
                f"--attack {self.attack} names client {max(attack.clients)}, but the clients "
                f"are 0..{self.clients - 1}; name one of them"
            )

    def _validate_server_opt(self) -> None:
        given_lr, given_mom = self.server_lr, self.server_momentum
        opt = self.server_opt
        if str(opt).strip().lower() not in SERVER_OPTS:
            raise ConfigError(
                f"unknown --server-opt {opt!r}; choose one of: {', '.join(SERVER_OPTS)}"
            )
        self.resolve_server_opt()
        opt, lr, mom, ema = self.server_opt, self.server_lr, self.server_momentum, self.server_ema
        beta2, tau = self.server_beta2, self.server_tau
        assert lr is not None and mom is not None  # resolved above
        checks = [
            (
                math.isfinite(lr) and lr > 0,
                f"--server-lr must be > 0 (omit it for the optimiser's default), got {given_lr}",
            ),
            (
                opt != "fedavg" or lr == 1.0,
                f"--server-opt fedavg is the plain average (η = 1), got --server-lr {given_lr}; "
                "use --server-opt fedavgm for a server learning rate",
            ),
            (
                math.isfinite(mom) and 0 <= mom < 1,
                f"--server-momentum must be in [0, 1) (omit it for the optimiser's default), "
                f"got {given_mom}",
            ),
            (
                opt not in ("fedavg", "fedadagrad") or mom == 0,
                f"--server-opt {opt} takes no momentum, got --server-momentum {given_mom}; "
                "use fedavgm, fedadam or fedyogi",
            ),
            (
                math.isfinite(ema) and 0 <= ema < 1,
                f"--server-ema must be in [0, 1) (0 = off), got {ema}",
            ),
            (
                ADAPTIVE.get(opt, (None,))[0] is not None or beta2 is None,
                f"--server-opt {opt} takes no β2, got --server-beta2 {beta2}; "
                "use fedadam or fedyogi",
            ),
            (
                beta2 is None or (math.isfinite(beta2) and 0 < beta2 < 1),
                f"--server-beta2 must be in (0, 1) (omit it for Flower's 0.99), got {beta2}",
            ),
            (
                opt in ADAPTIVE or tau is None,
                f"--server-opt {opt} takes no τ, got --server-tau {tau}; "
                "use fedadam, fedyogi or fedadagrad",
            ),
            (
                tau is None or (math.isfinite(tau) and tau > 0),
                f"--server-tau must be > 0 (omit it for Flower's 1e-3), got {tau}",
            ),
            (
                ema == 0 or not self.method_spec.personal,
                f"--server-ema needs a global generator (full, usplit); {self.method}'s server "
                "model holds only shared parts, its generators are the clients' own models",
            ),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)


#: The one set of defaults (clients, rounds, local epochs, ...): the CLI options, the Flower run
#: config and every function below take theirs from here.
DEFAULTS = FedSettings()

#: Where ``flwr run`` keeps its RUN without a ``run-dir`` key (relative to the server's directory).
DEFAULT_RUN_DIR = "runs/fed"


def central_ema_per_round(rounds: int, local_steps: int, decay: float) -> float:
    """The server EMA decay per round that keeps central training's window.

    Central training (``training.loop.EMA``) updates its EMA at step s with decay
    min(decay, (1 + s)/(10 + s)); over ``rounds × local_steps`` steps, the weight it leaves on the
    model as it was before the last ``local_steps`` of them is the product of those decays: the
    weight a per-round server EMA must keep on the round before. (At decay 0.999: 10 rounds × 20 steps
    0.40; 10 × 100 and 50 × 20, both 1,000 steps, 0.39 and 0.83.)
    """
    if rounds < 1 or local_steps < 1:
        raise ConfigError(f"rounds and local steps must be ≥ 1, got {rounds} and {local_steps}")
    if not 0 <= decay < 1:
        raise ConfigError(f"train.ema_decay must be in [0, 1), got {decay}")
    total = rounds * local_steps
    w = 1.0
    for step in range(total - local_steps, total):
        w *= min(decay, (1 + step) / (10 + step))
    return w


def fed_base() -> dict[str, dict[str, Any]]:
    """A fresh copy of :data:`FED_BASE`, to merge a RUN's or the user's config into."""
    return json.loads(json.dumps(FED_BASE))


def config_from(settings: FedSettings) -> Config:
    """The project Config (data, model, objective, train) recorded in ``settings``."""
    from ..config import DataConfig, ModelConfig, ObjectiveConfig, TrainConfig

    return Config(
        data=DataConfig(**settings.data),
        model=ModelConfig(**settings.model),
        objective=ObjectiveConfig.from_meta(settings.objective),
        train=TrainConfig(**settings.train),
    )


def build_settings(
    cfg: Config,
    options: FedSettings,
    *,
    image_shape: tuple[int, int, int],
    num_classes: int,
    run_dir: str = "",
) -> FedSettings:
    """The run's settings: ``options`` (validated by the caller) plus the project config.

    Args:
        cfg: the resolved project config (data, model, objective, train); checked here.
        options: the run options (method, clients, rounds, ...), already ``.validate()``-d.
        image_shape: (C, H, W) of the images.
        num_classes: classes of the data source (used when ``cfg.model.class_cond``).
        run_dir: the RUN directory (absolute), where clients of a simulation save their models.

    With ``--secagg --dp client``, :func:`.secagg.check_rounding` then refuses (or warns about)
    SecAgg+'s rounding ρ against ``--dp-clip`` for this model, before any round.
    """
    from ..models.registry import network_config
    from ..training.loop import validate

    n_cls = num_classes if cfg.model.class_cond else 0
    if cfg.model.class_cond and num_classes == 0:
        raise ConfigError("model.class_cond = true needs a labelled data source")
    if cfg.model.vae:
        raise ConfigError(
            "federated training in a VAE's latent space (model.vae) is not supported yet; "
            "set model.vae='' (pixel space)"
        )
    settings = replace(
        options,
        run_dir=run_dir,
        data=asdict(cfg.data),
        model=asdict(cfg.model),
        objective=asdict(cfg.objective.resolved()),
        train=asdict(cfg.train),
        unet=network_config(cfg.model.preset, image_shape[0], n_cls, cfg.model.arch).to_dict(),
        image_shape=list(image_shape),
        num_classes=n_cls,
    )
    validate(cfg.train)
    from .secagg import check_rounding

    check_rounding(settings)  # --secagg --dp client: SecAgg+'s rounding against C, for this model
    return settings
