"""One set of defaults for a federated run, and the method resolved once."""

from dataclasses import replace
from pathlib import Path

import pytest
import tomllib
import typer

from decentdiff.cli.fed import fed_app
from decentdiff.errors import ConfigError
from decentdiff.federated.parts import METHODS
from decentdiff.federated.recipes import DEFAULT_RECIPE, RECIPES, resolve_recipe
from decentdiff.federated.run_config import RUN_CONFIG_KEYS, settings_from_run_config
from decentdiff.federated.settings import DEFAULTS, FedSettings

ROOT = Path(__file__).resolve().parents[2]

#: The options of `fed run` that are FedSettings fields (the rest are not settings of the run).
RUN_OPTIONS = (
    "method",
    "clients",
    "split",
    "rounds",
    "local_epochs",
    "local_steps",
    "prox",
    "quantize",
    "server_opt",
    "server_lr",
    "server_momentum",
    "server_beta2",
    "server_tau",
    "server_ema",
    "seed",
    "min_replies",
    "round_timeout",
    "client_state",
    "full_rounds",
    "aggregate",
    "attack",
)


def _defaults(command: str) -> dict:
    cmd = typer.main.get_command(fed_app).commands[command]
    return {p.name: p.default for p in cmd.params}


def test_the_cli_options_default_to_the_settings_defaults():
    run = _defaults("run")
    assert {k: run[k] for k in RUN_OPTIONS} == {k: getattr(DEFAULTS, k) for k in RUN_OPTIONS}
    bytes_ = _defaults("bytes")
    for k in ("clients", "rounds", "quantize", "seed"):
        assert bytes_[k] == getattr(DEFAULTS, k), k


def test_the_flower_run_config_falls_back_to_the_same_defaults_as_pyprojects():
    """An empty run config gives `fed run`'s defaults under its default recipe, and pyproject's
    [tool.flwr.app.config] declares every key the server reads (Flower refuses a `flwr run -c`
    key the app does not declare) without overriding any recipe: each key a recipe decides is
    declared at its "not given" value (it used to declare the paper's lr, batch and Adam reset,
    which then won over every recipe)."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert set(declared["config"]) == set(RUN_CONFIG_KEYS)
    assert declared["config"]["recipe"] == DEFAULT_RECIPE
    shape = {"image-shape": "1,28,28"}  # the server then never loads data
    for name in RECIPES:
        bare = settings_from_run_config({**shape, "recipe": name})
        assert settings_from_run_config({**declared["config"], **shape, "recipe": name}) == bare
    bare = settings_from_run_config(shape)
    _, options = resolve_recipe(DEFAULT_RECIPE, {})
    resolved = replace(DEFAULTS, **options).validate()  # "the optimiser's default" -> its value
    assert {k: getattr(bare, k) for k in RUN_OPTIONS} == {
        k: getattr(resolved, k) for k in RUN_OPTIONS
    }
    assert (bare.server_opt, bare.server_lr, bare.server_momentum) == ("fedavg", 1.0, 0.0)
    assert bare.train["optimizer"] == "adamw"
    sgd = settings_from_run_config({**shape, "optimizer": "sgd", "server-opt": "fedadam",
                                    "server-beta2": 0.999, "server-tau": 1e-8})  # fmt: skip
    assert (sgd.train["optimizer"], sgd.server_beta2, sgd.server_tau) == ("sgd", 0.999, 1e-8)
    with pytest.raises(ConfigError, match="run-config optimizer = 'adam': choose one of adamw"):
        settings_from_run_config({**shape, "optimizer": "adam"})
    # A robust rule from the run config, refused there too when it cannot tolerate its F.
    assert settings_from_run_config({**shape, "aggregate": "Krum:1"}).aggregate == "krum:1"
    with pytest.raises(ConfigError, match="--aggregate krum:2 needs n > 2F"):
        settings_from_run_config({**shape, "aggregate": "krum:2"})


def test_the_method_is_resolved_once_to_its_canonical_name():
    s = FedSettings(method=" UDec ").validate()
    assert s.method == "udec" and s.method_spec is METHODS["udec"]
    assert FedSettings.from_json(s.to_json()).method_spec is METHODS["udec"]
    with pytest.raises(ConfigError, match="unknown federated method 'fedx'; choose one of: full"):
        FedSettings(method="fedx").validate()
