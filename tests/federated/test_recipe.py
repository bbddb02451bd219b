"""`--recipe central`'s server EMA: the window of central training's EMA, per round."""

import math
from dataclasses import replace

import pytest
import torch

from decentdiff.config import TrainConfig
from decentdiff.errors import ConfigError
from decentdiff.federated.client import with_central_ema
from decentdiff.federated.recipes import recipe_base
from decentdiff.federated.settings import DEFAULTS, central_ema_per_round
from decentdiff.training.loop import EMA


@pytest.mark.parametrize("rounds,steps,decay", [(10, 20, 0.999), (10, 100, 0.999), (50, 20, 0.999),
                                                (3, 7, 0.9), (1, 5, 0.999)])  # fmt: skip
def test_the_per_round_decay_is_the_weight_central_trainings_ema_keeps_on_the_round_before(
    rounds, steps, decay
):
    """Oracle: the trainer's own EMA over rounds x steps steps of a one-weight model that is 1
    until the last round and 0 during it; what the EMA keeps is its weight on the round before."""
    model = torch.nn.Linear(1, 1, bias=False)
    total = rounds * steps
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = EMA(model, decay)
    for step in range(total):
        with torch.no_grad():
            model.weight.fill_(1.0 if step < total - steps else 0.0)
        ema.update(model, step)
    kept = float(ema.shadow["weight"])
    assert central_ema_per_round(rounds, steps, decay) == pytest.approx(kept, rel=1e-5)


def test_known_windows():
    # The values study 16 chose by hand (0.5, 0.4, 0.8) are near these.
    assert central_ema_per_round(10, 20, 0.999) == pytest.approx(0.397, abs=1e-3)
    assert central_ema_per_round(50, 20, 0.999) == pytest.approx(0.835, abs=1e-3)
    with pytest.raises(ConfigError, match="rounds"):
        central_ema_per_round(0, 20, 0.999)
    with pytest.raises(ConfigError, match="ema_decay"):
        central_ema_per_round(10, 20, 1.0)


def _settings(**kw):
    s = replace(DEFAULTS, **kw)
    return replace(s, train={**s.train, "batch": 64, "ema_decay": 0.999})


def test_with_central_ema_weighs_the_clients_local_steps_by_their_images():
    # Fixed local steps: the sizes do not matter.
    s = with_central_ema(_settings(rounds=10, local_steps=20), [800, 800, 800, 800, 800])
    assert s.server_ema == pytest.approx(central_ema_per_round(10, 20, 0.999))
    # From E = 1: ceil(n / 64) = 10, 10, 20 steps; by images (640·10 + 640·10 + 1280·20) / 2560
    # = 15, where the plain mean would be 13.
    s = with_central_ema(_settings(rounds=4, local_epochs=1.0), [640, 640, 1280])
    assert s.server_ema == pytest.approx(central_ema_per_round(4, 15, 0.999))
    assert s.server_ema != pytest.approx(central_ema_per_round(4, 13, 0.999))


def test_with_central_ema_leaves_a_given_ema_and_personal_methods_alone():
    given = _settings(rounds=10, local_steps=20, server_ema=0.3)
    assert with_central_ema(given, [100] * 5).server_ema == 0.3
    udec = _settings(rounds=10, local_steps=20, method="udec")
    assert with_central_ema(udec, [100] * 5).server_ema == 0.0


def test_recipe_base():
    assert recipe_base("paper")["train"]["lr"] == 1e-4
    central = recipe_base("central")["train"]
    assert (central["lr"], central["warmup"], central["ema_decay"]) == (2e-3, 100, 0.999)
    assert (
        central["batch"] == recipe_base("paper")["train"]["batch"]
    )  # the batch is not the recipe's
    with pytest.raises(ConfigError, match="--recipe"):
        recipe_base("fast")
    assert recipe_base("paper")["objective"]["loss"] == "huber"  # FedDiffuse's
    assert recipe_base("central")["objective"] == {"kind": "ddpm"}  # the central defaults
    # pooled: the central trainer's batch over the clients, rounded up; flow matching
    for clients in (1, 2, 5, 7, 128, 200):
        pooled = recipe_base("pooled", clients)
        assert pooled["train"]["batch"] == max(1, math.ceil(TrainConfig().batch / clients))
        assert pooled["train"]["lr"] == TrainConfig().lr
        assert pooled["objective"] == {"kind": "fm"}
    fedsgd = recipe_base("fedsgd")
    assert fedsgd["objective"] == {"kind": "ddpm"}
    assert (fedsgd["train"]["optimizer"], fedsgd["train"]["lr"], fedsgd["train"]["warmup"]) == (
        "sgd", 1.0, 0)  # fmt: skip


def test_run_federated_records_the_resolved_server_ema(tmp_path, monkeypatch):
    """The wiring: `server_ema_auto` reaches fed.json resolved (Flower itself not started)."""
    from decentdiff import config as C
    from decentdiff.federated import simulation
    from decentdiff.federated.store import read_settings
    from decentdiff.run import Run

    started = []
    monkeypatch.setattr(simulation, "_simulate", lambda settings, *a: started.append(settings))
    monkeypatch.setattr(simulation, "bytes_figure", lambda *a: "-")
    cfg = C.resolve(None, None, base=recipe_base("central"), data="digits", preset="tiny", batch=64)
    opts = replace(DEFAULTS, clients=3, rounds=4, local_steps=6)
    simulation.run_federated(Run(tmp_path / "r"), cfg, opts, server_ema_auto=True)
    want = central_ema_per_round(4, 6, cfg.train.ema_decay)
    assert 0.1 < want < 0.2  # early in training the EMA forgets fast: (1 + s)/(10 + s), s = 18..23
    assert read_settings(tmp_path / "r").server_ema == pytest.approx(want)
    assert started[0].server_ema == pytest.approx(want)
    # More rounds on resume keep the EMA the run started with (server_ema must not change on
    # resume; the 6-round window would be another value).
    more = replace(opts, rounds=6)
    assert central_ema_per_round(6, 6, cfg.train.ema_decay) != pytest.approx(want)
    simulation.run_federated(Run(tmp_path / "r"), cfg, more, server_ema_auto=True)
    assert started[1].server_ema == pytest.approx(want) and started[1].rounds == 6
    # A fresh start computes it anew.
    simulation.run_federated(Run(tmp_path / "r"), cfg, more, server_ema_auto=True, fresh=True)
    assert started[2].server_ema == pytest.approx(central_ema_per_round(6, 6, cfg.train.ema_decay))
