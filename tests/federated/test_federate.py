"""The federated Python API (`decentdiff.load(RUN).federate`, `.fed_eval`), recipes as data, and
optional server settings (None, not placeholder numbers) across fed.json and Flower's run config.

The federations here run Flower's real ServerApp loop and ClientApp handler in this process
(`_flower_fakes.InProcessGrid`) in place of the Ray simulation, which tests/federated/
test_simulation.py starts once for the suite: everything else is the code path `fed run` takes.
"""

import inspect
import json
import math
from dataclasses import asdict, replace

import pytest
import torch

pytest.importorskip("flwr")

from tests._cli import cli
from tests.federated._flower_fakes import InProcessGrid, _task_identity  # noqa: F401 (autouse)

import decentdiff
from decentdiff.config import TrainConfig
from decentdiff.errors import ConfigError
from decentdiff.federated import simulation
from decentdiff.federated.federate import option_names
from decentdiff.federated.recipes import DEFAULT_RECIPE, RECIPES, get_recipe, resolve_recipe
from decentdiff.federated.run_config import NOT_GIVEN, run_config_from, settings_from_run_config
from decentdiff.federated.settings import (
    DEFAULTS,
    PLACEHOLDERS,
    FedSettings,
    unset_from,
    unset_to,
)
from decentdiff.federated.store import check_resumable, fed_dir

SHAPE = {"image-shape": "1,8,8"}  # the server then never loads data


@pytest.fixture
def in_process(monkeypatch):
    """`run_federated`'s launcher replaced by the in-process one (same ServerApp loop and
    ClientApp handler as under Ray); records the settings it was given."""
    from decentdiff.federated.server_app import serve

    launched = []

    def launch(settings, parallel, on_round, evaluate_fn, quiet_flower):
        launched.append(settings)
        serve(InProcessGrid(settings.clients), settings, on_round=on_round, evaluate_fn=evaluate_fn)

    monkeypatch.setattr(simulation, "_simulate", launch)
    return launched


@pytest.fixture
def no_rounds(monkeypatch):
    """`run_federated` with a launcher that trains nothing: RUN and fed.json are written as for a
    real run (they are recorded before the first round)."""
    monkeypatch.setattr(simulation, "_simulate", lambda *a, **k: None)


def test_the_api_trains_scores_and_resumes_a_federation(tmp_path, in_process, capsys):
    run = decentdiff.load(tmp_path / "fed")
    tiny = dict(data="digits", preset="tiny", batch=8, local_steps=2, progress=False)
    res = run.federate(clients=2, method="udec", rounds=2, n=6, sample_steps=3, **tiny)
    assert res.rounds_done == 2 and len(in_process) == 1
    rows = [json.loads(x) for x in (fed_dir(res.path) / "rounds.jsonl").read_text().splitlines()]
    assert res.bytes_up == sum(r["up"] for r in rows) > 0
    assert res.bytes_down == sum(r["down"] for r in rows) > 0
    assert res.settings.method == "udec" and res.settings.local_steps == 2
    assert [p.name for p in res.model_dirs] == ["0", "1"]  # personal models
    assert res.metrics["models"] == ["client:0", "client:1"] and res.metrics["n"] == 6
    assert all(m["fid"] > 0 for m in res.metrics["per_model"].values())
    assert any("personal models ->" in line for line in res.summary())
    assert capsys.readouterr().err == ""  # progress=False: nothing printed
    # Resumed with more rounds: only round 3 runs; fed_eval scores the models again.
    more = run.federate(clients=2, method="udec", rounds=3, n=0, **tiny)
    assert more.rounds_done == 3 and more.metrics is None
    assert [r["round"] for r in more.rows] == [1, 2, 3]
    again = run.fed_eval(6, sample_steps=3)
    assert again["models"] == ["client:0", "client:1"] and again["steps"] == 3
    with pytest.raises(TypeError, match="unknown argument"):
        run.federate(clinets=2)


def test_the_cli_and_the_api_record_the_same_fed_json(tmp_path, no_rounds, capsys):
    args = dict(clients=3, split="dirichlet:0.5", method="full", rounds=4, local_steps=3,
                server_opt="fedadam", server_beta2=0.999, quantize=8, batch=16)  # fmt: skip
    for recipe in ("pooled", "paper", "central", "fedsgd"):
        cli_run, api_run = tmp_path / f"cli-{recipe}", tmp_path / f"api-{recipe}"
        flags = [x for k, v in args.items() for x in (f"--{k.replace('_', '-')}", v)]
        code, out, err = cli(capsys, "fed", "run", cli_run, "--data", "digits", "--preset", "tiny",
                             "--recipe", recipe, "--n", 0, "--quiet", *flags)  # fmt: skip
        assert code == 0, err
        res = decentdiff.load(api_run).federate(
            data="digits", preset="tiny", recipe=recipe, n=0, progress=False, **args
        )
        assert out.splitlines() == [
            line.replace(str(api_run), str(cli_run)) for line in res.summary()
        ]
        a, b = (json.loads((fed_dir(p) / "fed.json").read_text()) for p in (cli_run, api_run))
        assert a.pop("run_dir") != b.pop("run_dir")
        assert a == b, recipe
    assert b["server_opt"] == "fedadam" and b["server_beta2"] == 0.999  # given: wins over fedsgd


def test_recipes_are_data_and_given_options_win():
    assert list(RECIPES) == ["pooled", "paper", "central", "fedsgd"]
    assert all(r.summary and "\n" not in r.summary for r in RECIPES.values())
    _, paper = resolve_recipe("paper", {})
    assert paper == {}
    r, central = resolve_recipe(" Central ", {"clients": 4})
    assert r.server_ema_auto and central == {"clients": 4, "client_state": "keep"}
    _, fedsgd = resolve_recipe("fedsgd", {"local_epochs": 2.0})
    assert "local_steps" not in fedsgd and fedsgd["server_opt"] == "fedadam"
    assert (fedsgd["server_beta2"], fedsgd["server_tau"]) == (0.999, 1e-8)
    # An optimiser without β2 / τ keeps its own defaults, not the recipe's.
    _, avg = resolve_recipe("fedsgd", {"server_opt": "fedavg"})
    assert {"server_lr", "server_beta2", "server_tau"}.isdisjoint(avg)
    with pytest.raises(ConfigError, match="needs a global model"):
        resolve_recipe("fedsgd", {"method": "ulatdec"})
    _, pooled = resolve_recipe("pooled", {"client_state": "reset"})
    assert pooled == {"client_state": "reset"}  # given: wins over the recipe's keep
    with pytest.raises(ConfigError, match="unknown --recipe 'fast'; choose one of: pooled, paper"):
        get_recipe("fast")


def test_fed_run_and_the_api_default_to_the_pooled_recipe(tmp_path, no_rounds, capsys):
    """No recipe option: flow matching, the central trainer's lr / warm-up / EMA / loss, Adam kept,
    and each client at ceil(central batch / clients); a given batch wins."""
    assert inspect.signature(decentdiff.load(tmp_path / "x").federate).parameters[
        "recipe"
    ].default == (DEFAULT_RECIPE)
    assert DEFAULT_RECIPE == "pooled"
    central = TrainConfig()
    for clients, batch in ((5, None), (3, None), (5, 16)):
        run = tmp_path / f"c{clients}-{batch}"
        extra = ["--batch", batch] if batch else []
        code, _, err = cli(capsys, "fed", "run", run, "--data", "digits", "--preset", "tiny",
                           "--clients", clients, "--rounds", 2, "--n", 0, "--quiet", *extra)  # fmt: skip
        assert code == 0, err
        s = json.loads((fed_dir(run) / "fed.json").read_text())
        want = batch or math.ceil(central.batch / clients)
        assert s["train"]["batch"] == want
        assert s["objective"]["kind"] == "fm" and s["objective"]["loss"] == "mse"
        assert (s["train"]["lr"], s["train"]["warmup"]) == (central.lr, central.warmup)
        assert s["client_state"] == "keep" and s["server_ema"] > 0


def test_flwr_runs_recipe_key_gives_what_fed_run_records(tmp_path, no_rounds, capsys):
    """`recipe` in Flower's run config resolves as `fed run --recipe` (the command line is the
    oracle): fed.json's run options, config and network, run_dir included. Loading the data,
    the settings carry a recipe's server EMA from the clients' split as `fed run`'s; with
    image-shape (no data on the server) and local epochs they cannot. The ServerApp itself sets
    it under local epochs from the sizes the clients report in the first round (tests below)."""
    cases = [(name, {}) for name in RECIPES]
    cases += [("pooled", {"batch": 16, "client-state": "reset"}), ("fedsgd", {"local-epochs": 2})]
    cases += [("fedsgd", {"local-steps": 0})]  # 0 is a value (local epochs), not "not given"
    for i, (name, given) in enumerate(cases):
        run = tmp_path / f"{i}-{name}"
        flags = [x for k, v in given.items() for x in (f"--{k}", v)]
        code, _, err = cli(capsys, "fed", "run", run, "--data", "digits", "--preset", "tiny",
                           "--recipe", name, "--clients", 3, "--rounds", 4, "--n", 0, "--quiet",
                           *flags)  # fmt: skip
        assert code == 0, err
        want = json.loads((fed_dir(run) / "fed.json").read_text())
        rc = {"recipe": name, "clients": 3, "rounds": 4, "data": "digits", "preset": "tiny",
              "run-dir": str(run), **given}  # fmt: skip
        assert asdict(settings_from_run_config(rc)) == want, (name, given)
        shaped = asdict(settings_from_run_config({**rc, **SHAPE}))
        if get_recipe(name).server_ema_auto and not shaped["local_steps"]:
            assert shaped.pop("server_ema") == 0 < want.pop("server_ema")
        assert shaped == want, (name, given)


def test_pyprojects_flower_app_config_gives_what_fed_run_without_options_records(
    tmp_path, no_rounds, capsys
):
    """`flwr run .` with the declared [tool.flwr.app.config] is `fed run` with no options (on
    digits with the tiny UNet in place of the declared mnist5k / small, the config's defaults)."""
    from pathlib import Path

    import tomllib

    from decentdiff.config import Config

    root = Path(__file__).resolve().parents[2]
    declared = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert (declared["data"], declared["preset"]) == (Config().data.source, Config().model.preset)
    run = tmp_path / "fed"
    code, _, err = cli(capsys, "fed", "run", run, "--data", "digits", "--preset", "tiny",
                       "--n", 0, "--quiet")  # fmt: skip
    assert code == 0, err
    want = json.loads((fed_dir(run) / "fed.json").read_text())
    rc = {**declared, "data": "digits", "preset": "tiny", "run-dir": str(run)}
    assert asdict(settings_from_run_config(rc)) == want
    shaped = asdict(settings_from_run_config({**rc, **SHAPE}))
    assert shaped.pop("server_ema") == 0 < want.pop("server_ema")  # set after round 1 (below)
    assert shaped == want


def test_a_key_given_in_the_run_config_wins_over_its_recipe():
    base = {"clients": 3, **SHAPE}
    central = TrainConfig()
    s = settings_from_run_config({**base, "batch": 16, "lr": 5e-4, "client-state": "reset",
                                  "server-ema": 0.0, "objective": "ddpm"})  # fmt: skip
    assert (s.train["batch"], s.train["lr"], s.client_state) == (16, 5e-4, "reset")
    assert (s.server_ema, s.objective["kind"]) == (0.0, "ddpm")
    # What is not given stays the (default) pooled recipe's.
    assert (s.train["warmup"], s.train["ema_decay"]) == (central.warmup, central.ema_decay)
    assert s.objective["loss"] == "mse"
    # fedsgd: local-epochs given stands for local-steps; another server optimiser keeps its own
    # defaults; a client lr is refused as under `fed run` (Recipe.check).
    f = settings_from_run_config({**base, "recipe": "fedsgd", "local-epochs": 2.0,
                                  "server-opt": "fedavgm"})  # fmt: skip
    assert (f.local_steps, f.local_epochs, f.server_opt) == (0, 2.0, "fedavgm")
    assert f.server_lr == pytest.approx(1 - 0.9)  # fedavgm's own default, not fedsgd's FedAdam η
    with pytest.raises(ConfigError, match="--recipe fedsgd: the clients send their gradient"):
        settings_from_run_config({**base, "recipe": "fedsgd", "lr": 1e-3})
    # A key at its "not given" value (pyproject.toml declares them so) leaves the recipe's.
    for name in RECIPES:
        rc = {**base, "recipe": name}
        assert settings_from_run_config({**rc, **NOT_GIVEN}) == settings_from_run_config(rc)


def test_an_unknown_recipe_in_the_run_config_fails_in_one_line():
    with pytest.raises(ConfigError) as e:
        settings_from_run_config({**SHAPE, "recipe": "fast"})
    assert str(e.value) == "unknown --recipe 'fast'; choose one of: pooled, paper, central, fedsgd"


def test_flwr_run_sets_the_recipes_server_ema_after_the_first_round_and_keeps_it(tmp_path):
    """With image-shape the server never loads data, so it learns the clients' sizes from the
    first complete round's replies; the decay first weighs at the second EMA update, so the run
    is the one whose EMA was known from the start (oracle: the server loading the data). A
    resumed run with more rounds keeps it, as `fed run`'s."""
    from flwr.app import Context, RecordDict

    from decentdiff.federated import server_app
    from decentdiff.training.checkpoint import load_tensors, read_meta

    run = tmp_path / "flwr"
    rc = {"clients": 2, "rounds": 2, "data": "digits", "preset": "tiny", "local-epochs": 0.02,
          "run-dir": str(run)}  # fmt: skip
    want = settings_from_run_config(rc).server_ema  # the data loaded: from the clients' split
    assert want > 0 and settings_from_run_config({**rc, **SHAPE}).server_ema == 0

    def flwr_run(**extra):
        config = {**rc, **SHAPE, **extra}
        ctx = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=config)
        server_app.main(InProcessGrid(2), ctx)
        return json.loads((fed_dir(run) / "fed.json").read_text())

    assert flwr_run()["server_ema"] == want
    g = fed_dir(run) / "global"
    meta = read_meta(g)
    assert f"decay {want}" in meta["ema"]
    ema, model = load_tensors(g, "ema", meta), load_tensors(g, "model", meta)
    assert any(not torch.equal(ema[k], model[k]) for k in model)  # round 2 weighed round 1
    more = flwr_run(rounds=3)
    assert more["rounds"] == 3 and more["server_ema"] == want
    assert want != settings_from_run_config({**rc, "rounds": 3}).server_ema


def test_a_server_that_loads_data_still_takes_the_ema_from_the_clients_reports(
    tmp_path, monkeypatch
):
    """In a deployment the server's own copy of the data need not be split as the SuperNodes'
    data is: the server EMA comes from the sizes the clients report in the first round, not
    from the server's split (here made wrong on purpose)."""
    from dataclasses import replace

    from flwr.app import Context, RecordDict

    from decentdiff.federated import server_app

    run = tmp_path / "flwr"
    rc = {"clients": 2, "rounds": 1, "data": "digits", "preset": "tiny", "local-epochs": 0.02,
          "run-dir": str(run)}  # fmt: skip
    want = settings_from_run_config(rc).server_ema  # the clients' true split
    real = server_app.settings_from_run_config
    monkeypatch.setattr(server_app, "settings_from_run_config",
                        lambda c: replace(real(c), server_ema=want / 2))  # a server split that differs  # fmt: skip
    ctx = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=rc)
    server_app.main(InProcessGrid(2), ctx)
    assert json.loads((fed_dir(run) / "fed.json").read_text())["server_ema"] == want > 0


def test_every_recipe_has_a_line_in_fed_run_help(capsys):
    code, out, _ = cli(capsys, "fed", "run", "--help")
    assert code == 0
    flat = " ".join(out.split())
    for r in RECIPES.values():
        assert f"{r.name}: {r.summary.split()[0]}" in flat
    assert "docs/reproduction.md" in flat


def test_settings_with_unset_server_options_round_trip_through_fed_json():
    s = FedSettings(server_opt="fedavgm", server_momentum=0.5)
    assert (s.server_lr, s.server_beta2, s.server_tau) == (None, None, None)
    back = FedSettings.from_json(s.to_json())
    assert json.loads(s.to_json())["server_lr"] is None
    assert back == replace(s).resolve_server_opt()  # read back resolved, never a placeholder
    assert (back.server_lr, back.server_momentum, back.server_beta2) == (0.5, 0.5, None)
    v = FedSettings(server_opt="fedadam").validate()
    assert FedSettings.from_json(v.to_json()) == v


def test_an_old_fed_json_with_placeholder_numbers_reads_as_unset():
    """fed.json written when 0 / -1 meant "the optimiser's default" resumes as today's None."""
    for opt in ("fedavg", "fedadam", "fedavgm", "fedadagrad"):
        today = FedSettings(server_opt=opt).validate()
        old = json.loads(today.to_json())
        old.update(server_lr=0.0, server_momentum=-1.0, server_beta2=0.0, server_tau=0.0)
        read = FedSettings.from_json(json.dumps(old))
        assert read == today, opt
        check_resumable(read, today)
    # A real value is kept: FedAvg's resolved momentum 0 is not a placeholder.
    old = json.loads(FedSettings(server_opt="fedavgm", server_momentum=0.0).to_json())
    assert FedSettings.from_json(json.dumps(old)).server_momentum == 0.0


def test_flowers_run_config_translates_unset_both_ways():
    for name, placeholder in PLACEHOLDERS.items():
        assert unset_from(name, placeholder) is None and unset_to(name, None) == placeholder
        assert unset_from(name, unset_to(name, 0.5)) == 0.5
    # The placeholders read as "not given": under the paper recipe (which sets no run option),
    # every default declared is the default left out.
    bare = settings_from_run_config({**SHAPE, "recipe": "paper"})
    declared = settings_from_run_config({**SHAPE, "recipe": "paper", **run_config_from(DEFAULTS)})
    assert declared == bare
    assert run_config_from(DEFAULTS)["server-momentum"] == -1.0
    # Settings -> run config -> settings: the same run options.
    opts = FedSettings(clients=6, method="usplit", rounds=7, server_opt="fedadam",
                       server_tau=1e-8, aggregate="median")  # fmt: skip
    rc = run_config_from(opts)
    assert rc["server-lr"] == 0.0 and rc["server-tau"] == 1e-8
    got = settings_from_run_config({**SHAPE, **rc})
    names = [k for k in option_names() if k != "attack"]  # attack: not a run-config key
    want = replace(opts).validate()
    assert {k: getattr(got, k) for k in names} == {k: getattr(want, k) for k in names}


def test_fed_eval_scores_as_many_images_as_eval_by_default():
    from decentdiff.cli import options
    from decentdiff.federated import federate

    assert federate.EVAL_N == options.EVAL_N


def test_flower_logs_reach_the_launcher_only_when_asked(tmp_path, monkeypatch, capsys):
    """`fed run --flower-logs` turns Ray's log forwarding on; by default it stays off (a clean
    shutdown prints nothing)."""
    seen = []
    monkeypatch.setattr(simulation, "_simulate", lambda *a: seen.append(a[-1]))
    for i, extra in enumerate(([], ["--flower-logs"])):
        code, _, err = cli(capsys, "fed", "run", tmp_path / str(i), "--data", "digits",
                           "--preset", "tiny", "--clients", 2, "--rounds", 1, "--n", 0, "--quiet",
                           *extra)  # fmt: skip
        assert code == 0, err
    assert seen == [True, False]  # quiet_flower
