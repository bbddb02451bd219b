"""``decentdiff fed`` commands that need no Flower run: bytes, bad arguments, deployment wrappers."""

import json

import pytest
from tests._cli import _bad, cli

from decentdiff.cli.fed import fed_app
from decentdiff.federated import aggregate as A
from decentdiff.models.registry import build_network, network_config


@pytest.fixture(autouse=True, scope="module")
def _wired():
    """Mount ``fed`` on the main CLI as the lead will (no-op once cli.py has it)."""
    from decentdiff.cli import app

    if not any(g.name == "fed" for g in app.registered_groups):
        app.add_typer(fed_app, name="fed")
    yield


def test_fed_bytes_json_is_the_prediction_keyed_by_method(capsys):
    code, out, err = cli(
        capsys, "fed", "bytes", "--preset", "tiny", "--clients", 3, "--rounds", 4, "--json"
    )
    assert code == 0, err
    table = json.loads(out)
    assert list(table) == ["full", "usplit", "udec", "ulatdec"]
    sd = build_network(network_config("tiny", 1, 0)).state_dict()
    numel = sum(v.numel() for v in sd.values())
    assert table["full"]["up"] == table["full"]["down"] == 4 * numel * 3 * 4
    for row in table.values():
        assert set(row) == {"up", "down", "total", "ratio_to_full"}
        assert row["total"] == row["up"] + row["down"]
        assert row["ratio_to_full"] == pytest.approx(row["total"] / table["full"]["total"])
    code, out, _ = cli(
        capsys,
        "fed",
        "bytes",
        "--preset",
        "tiny",
        "--clients",
        3,
        "--rounds",
        4,
        "--quantize",
        8,
        "--json",
    )
    q = json.loads(out)
    assert all(3.5 < table[m]["up"] / q[m]["up"] <= 4 for m in table)
    code, out, _ = cli(capsys, "fed", "bytes", "--preset", "tiny")
    assert code == 0 and "udec" in out and "× full" in out


def test_documented_byte_ratios_are_what_fed_bytes_predicts(capsys):
    """docs/federated.md's "UDEC sends 0.40×, ULATDEC 0.67× and USPLIT 0.76× of FULL" (small, 5
    clients, 15 rounds) is read from the page itself and checked against `fed bytes`, so neither
    can drift."""
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "federated.md").read_text()
    m = re.search(
        r"UDEC sends (\d\.\d+)×, ULATDEC (\d\.\d+)× and USPLIT (\d\.\d+)× of FULL \(5 clients, 15",
        " ".join(page.split()),
    )
    assert m, "docs/federated.md no longer states the byte ratios this test checks"
    claimed = dict(zip(("udec", "ulatdec", "usplit"), map(float, m.groups()), strict=True))
    code, out, err = cli(capsys, "fed", "bytes", "--preset", "small", "--clients", 5,
                         "--rounds", 15, "--json")  # fmt: skip
    assert code == 0, err
    table = json.loads(out)
    for method, ratio in claimed.items():
        assert table[method]["ratio_to_full"] == pytest.approx(ratio, abs=0.005), method


def test_fed_bytes_cli_prints_the_accounting_table(capsys):
    """The command shows what ``aggregate.bytes_table`` computes (that table is checked against a
    closed form in test_aggregate.py; the measured bytes of a real run in test_simulation.py)."""
    code, out, _ = cli(capsys, "fed", "bytes", "--preset", "small", "--json")
    r = {m: v["ratio_to_full"] for m, v in json.loads(out).items()}
    sd = build_network(network_config("small", 1, 0)).state_dict()
    layout = A.layout_of({k: v.numpy() for k, v in sd.items()})
    assert r == pytest.approx(
        {m: v["ratio_to_full"] for m, v in A.bytes_table(layout, 5, 15).items()}
    )
    assert r["udec"] < r["ulatdec"] < r["full"] == 1 and r["usplit"] < 1


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--method", "fedsplit"], "unknown federated method"),
        (["--split", "zipf:2"], "invalid client split"),
        (["--split", "dirichlet:0"], "ALPHA must be"),
        (["--split", "dirichlet:-1"], "ALPHA must be"),
        (["--clients", "5000"], "clients"),
        (["--clients", "0"], "--clients must be"),
        (["--quantize", "4"], "--quantize"),
        (["--split", "classes:11"], "only 10 classes"),
        (["--split", "dirichlet:alpha=-1"], "alpha must be a finite number > 0, got '-1'"),
        (["--split", "dirichlet:alpha=0.5,beta=1"], "dirichlet has no parameter 'beta'"),
        (["--split", "pathological:num_classes_per_partition=11"], "only 10 classes"),
        (["--split", "shard:shard_size=100000"], "cannot go to 5 clients"),
        (["--data", "digits", "--split", "quantity:0.01", "--clients", "40"], "no draw"),
        (["--aggregate", "krum:2"], "--aggregate krum:2 needs n > 2F + 2 = 6"),
        (["--aggregate", "bulyan:1", "--method", "udec"], "n ≥ 4F + 3 = 7 updates per group"),
        (["--aggregate", "geomed"], "unknown rule 'geomed'"),
        (["--attack", "scale:100@5"], "names client 5, but the clients are 0..4"),
    ],
)
def test_bad_arguments_fail_in_one_line_before_anything_is_written(capsys, tmp_path, args, match):
    run = tmp_path / "run"
    base = ["fed", "run", run, "--data", "digits", "--preset", "tiny", "--rounds", 1]
    _bad(capsys, None, *base, *args, match=match)
    assert not (run / "federated").exists() and not (run / "run.toml").exists()


def test_deployment_wrappers_build_flower_commands(capsys, tmp_path):
    code, out, err = cli(capsys, "fed", "superlink", "--insecure", "--port", 8123, "--dry-run")
    assert code == 0, err
    assert "flower-superlink" in out and "--insecure" in out and "--port 8123" in out
    code, out, err = cli(
        capsys,
        "fed",
        "supernode",
        "--superlink",
        "10.0.0.1:8123",
        "--data",
        "digits",
        "--partition",
        "1/3",
        "--insecure",
        "--out",
        tmp_path / "me",
        "--dry-run",
    )
    assert code == 0, err
    assert (
        "partition-id=1 num-partitions=3" in out and "data=" in out and str(tmp_path / "me") in out
    )
    _bad(
        capsys,
        None,
        "fed",
        "supernode",
        "--superlink",
        "h:1",
        "--data",
        "digits",
        "--partition",
        "3/3",
        "--insecure",
        match="--partition",
    )
    _bad(
        capsys,
        None,
        "fed",
        "supernode",
        "--superlink",
        "h:1",
        "--data",
        "digits",
        match="--root-certificates",
    )
    _bad(capsys, None, "fed", "superlink", match="--ssl-certfile")


def test_model_dir_never_offers_a_partial_method_server_model_as_a_generator(tmp_path):
    from decentdiff.errors import ConfigError, RunError
    from decentdiff.federated.settings import FedSettings
    from decentdiff.federated.store import model_dir

    with pytest.raises(RunError, match="no federated run"):
        model_dir(tmp_path, "federated")
    (tmp_path / "federated").mkdir()
    (tmp_path / "federated" / "fed.json").write_text(
        FedSettings(method="udec", clients=3).to_json()
    )
    with pytest.raises(ConfigError, match="not a usable generator"):
        model_dir(tmp_path, "federated")
    assert model_dir(tmp_path, "client:2") == tmp_path / "federated" / "clients" / "2"
    with pytest.raises(ConfigError, match=r"0\.\.2"):
        model_dir(tmp_path, "client:3")
    (tmp_path / "federated" / "fed.json").write_text(FedSettings(method="usplit").to_json())
    assert model_dir(tmp_path, "federated") == tmp_path / "federated" / "global"
    with pytest.raises(ConfigError, match="no personal models"):
        model_dir(tmp_path, "client:0")


def test_resume_refuses_a_stored_global_model_of_the_wrong_shape(tmp_path):
    import numpy as np
    import torch

    from decentdiff.errors import CheckpointError
    from decentdiff.federated.settings import FedSettings
    from decentdiff.federated.store import global_dir, initial_arrays, resume_point
    from decentdiff.training.checkpoint import save_checkpoint

    s = FedSettings(method="full", unet=network_config("tiny", 1, 0).to_dict())
    arrays = initial_arrays(s)
    good = {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}
    d = global_dir(tmp_path, s.method_spec)
    save_checkpoint(d, {"model": good}, {"round": 2})
    back, done = resume_point(tmp_path, s)
    assert done == 2 and all(np.array_equal(back[k], arrays[k]) for k in arrays)
    k0 = next(iter(good))
    save_checkpoint(d, {"model": {**good, k0: torch.zeros(3, 3)}}, {"round": 2})  # right name
    with pytest.raises(CheckpointError, match="does not fit"):
        resume_point(tmp_path, s)
    save_checkpoint(d, {"model": {**good, k0: good[k0].double()}}, {"round": 2})  # wrong dtype
    with pytest.raises(CheckpointError, match="does not fit"):
        resume_point(tmp_path, s)


def test_the_packages_flower_app_declaration_is_valid(tmp_path):
    """`flwr run .` reads [tool.flwr.app] of pyproject.toml: its components must be the apps and
    every config key one the server understands, giving the settings it declares (lr and
    objective: its recipe's, pooled)."""
    import importlib
    from pathlib import Path

    import tomllib
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

    from decentdiff.errors import ConfigError
    from decentdiff.federated.run_config import settings_from_run_config

    root = Path(__file__).resolve().parents[2]
    app = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    kinds = {"serverapp": ServerApp, "clientapp": ClientApp}
    for name, ref in app["components"].items():
        module, attr = ref.split(":")
        assert isinstance(getattr(importlib.import_module(module), attr), kinds[name])
    rc = {**app["config"], "run-dir": str(tmp_path / "run"), "image-shape": "1,28,28"}
    s = settings_from_run_config(rc)
    assert (s.method, s.clients, s.split, s.rounds) == (
        rc["method"],
        rc["clients"],
        rc["split"],
        rc["rounds"],
    )
    from decentdiff.config import TrainConfig

    assert s.data["source"] == rc["data"]
    # pooled: the central trainer's lr, flow matching, 128 / clients rounded up per client
    assert (s.train["lr"], s.objective["kind"]) == (TrainConfig().lr, "fm")
    assert s.train["batch"] == -(-TrainConfig().batch // rc["clients"])
    with pytest.raises(ConfigError, match="unknown run-config key"):
        settings_from_run_config({**rc, "rouns": 3})


def test_a_fed_json_without_newer_objective_fields_still_resumes():
    """fed.json written before `objective.weighting` existed (trained with the uniform weighting)
    is the same experiment as today's settings with weighting=uniform (review finding: it used to
    read as a different run), and not one with the velocity weighting."""
    from dataclasses import asdict, replace

    from decentdiff.config import ObjectiveConfig
    from decentdiff.errors import ConfigError
    from decentdiff.federated.settings import FedSettings
    from decentdiff.federated.store import check_resumable

    obj = ObjectiveConfig(kind="ddpm", loss="huber", weighting="uniform", step_dist="uniform")
    new = FedSettings(objective=asdict(obj))
    old_obj = {k: v for k, v in new.objective.items() if k != "weighting"}
    check_resumable(replace(new, objective=old_obj), new)  # no error
    other = replace(new, objective={**new.objective, "weighting": "velocity:100"})
    with pytest.raises(ConfigError, match="objective"):
        check_resumable(replace(new, objective=old_obj), other)


def test_a_fed_json_without_eps_param_is_a_direct_eps_federation():
    """fed.json written before `objective.eps_param` existed trained direct ε-networks: it resumes
    with eps_param=direct and refuses skip (whatever today's default), naming the objective."""
    from dataclasses import asdict, replace

    from decentdiff.config import ObjectiveConfig
    from decentdiff.errors import ConfigError
    from decentdiff.federated.settings import FedSettings
    from decentdiff.federated.store import check_resumable

    direct = FedSettings(objective=asdict(ObjectiveConfig(kind="ddpm", eps_param="direct")))
    old = replace(direct, objective={k: v for k, v in direct.objective.items() if k != "eps_param"})
    check_resumable(old, direct)  # no error
    skip = replace(direct, objective={**direct.objective, "eps_param": "skip"})
    with pytest.raises(ConfigError, match="objective"):
        check_resumable(old, skip)


def test_fed_run_hands_every_option_to_the_federation(capsys, tmp_path, monkeypatch):
    """`fed run`'s flags reach the federation's settings and config unchanged (their effects are
    tested on settings built directly and in the Ray / in-process federations; this is the
    wiring between, e.g. --full-rounds and --client-state, which no federation test passes)."""
    from decentdiff.federated.parts import get_method

    _, seen = _fed_run_seen(capsys, tmp_path, monkeypatch, "--clients", 4, "--split",
                            "dirichlet:0.3", "--method", "ulatdec", "--rounds", 6, "--local-steps",
                            3, "--prox", 0.01, "--quantize", 8, "--seed", 7, "--min-replies", 3,
                            "--client-state", "keep", "--full-rounds", 2, "--batch", 16,
                            "--objective", "vpred", "--aggregate", "median", "--attack",
                            "noise:0.5@2")  # fmt: skip
    o, cfg = seen["options"], seen["cfg"]
    want = dict(clients=4, split="dirichlet:0.3", method=get_method("ulatdec").name, rounds=6,
                local_steps=3, prox=0.01, quantize=8, seed=7, min_replies=3, client_state="keep",
                full_rounds=2, aggregate="median", attack="noise:0.5@2")  # fmt: skip
    assert {k: getattr(o, k) for k in want} == want
    assert (cfg.data.source, cfg.model.preset, cfg.train.batch) == ("digits", "tiny", 16)
    # The default recipe (pooled) starts from the central trainer's objective; --objective
    # replaces the kind, so the loss, weighting and noise levels are central training's for it.
    from decentdiff.config import ObjectiveConfig

    central = ObjectiveConfig(kind="vpred").resolved()
    got = cfg.objective.resolved()
    assert (got.kind, got.loss, got.weighting, got.step_dist) == (
        "vpred",
        central.loss,
        central.weighting,
        central.step_dist,
    )
    assert central.loss == "mse"  # not the paper's Huber


def test_fed_run_with_the_paper_recipe_keeps_feddiffuses_objective(capsys, tmp_path, monkeypatch):
    _, seen = _fed_run_seen(capsys, tmp_path, monkeypatch, "--recipe", "paper", "--objective",
                            "vpred")  # fmt: skip
    cfg = seen["cfg"]
    # The paper's protocol is the base (Huber, Ho et al.'s steps); --objective replaces the kind.
    assert (cfg.objective.kind, cfg.objective.loss) == ("vpred", "huber")
    assert (cfg.objective.weighting, cfg.objective.step_dist) == ("uniform", "uniform")


def _fed_run_seen(capsys, tmp_path, monkeypatch, *args):
    """`fed run` with the federation replaced by a recorder: (exit code, stdout, what it got)."""
    from decentdiff.federated import simulation

    seen = {}

    def fake(run, cfg, options, **kw):
        seen.update(options=options, cfg=cfg, kw=kw)
        s = options.validate()
        return {"rounds": [], "settings": s, "sizes": [], "figure": "-", "model_dirs": ["-"],
                "seconds": 0.0}  # fmt: skip

    monkeypatch.setattr(simulation, "run_federated", fake)
    code, out, err = cli(capsys, "fed", "run", tmp_path / "r", "--data", "digits", "--preset",
                         "tiny", "--n", 0, "--quiet", *args)  # fmt: skip
    assert code == 0, err
    return out, seen


def test_recipe_central_sets_the_central_trainers_recipe_unless_an_option_is_given(
    capsys, tmp_path, monkeypatch
):
    from decentdiff.config import TrainConfig

    _, paper = _fed_run_seen(capsys, tmp_path, monkeypatch, "--recipe", "paper")
    assert paper["options"].client_state == "reset" and not paper["kw"]["server_ema_auto"]
    assert paper["cfg"].train.lr == 1e-4 and paper["cfg"].train.ema_decay == 0.0

    out, central = _fed_run_seen(capsys, tmp_path, monkeypatch, "--recipe", "central")
    t, want = central["cfg"].train, TrainConfig()
    assert (t.lr, t.warmup, t.ema_decay) == (want.lr, want.warmup, want.ema_decay)
    assert central["options"].client_state == "keep" and central["kw"]["server_ema_auto"]
    assert "recipe central: adamw lr 0.002, warm-up 100, client state keep, loss mse" in out
    # the central objective, not the paper's Huber loss and integer steps
    o = central["cfg"].objective
    assert (o.kind, o.loss, o.weighting, o.step_dist) == ("ddpm", "mse", "auto", "auto")
    # Given explicitly, an option or a --set wins over the recipe.
    _, given = _fed_run_seen(capsys, tmp_path, monkeypatch, "--recipe", "central",
                             "--client-state", "reset", "--server-ema", 0.3,
                             "--set", "train.lr=0.001")  # fmt: skip
    assert given["options"].client_state == "reset" and given["options"].server_ema == 0.3
    assert not given["kw"]["server_ema_auto"] and given["cfg"].train.lr == 1e-3
    assert given["cfg"].train.warmup == want.warmup


def test_recipe_fedsgd_is_one_sgd_step_per_round_and_flowers_fedadam_with_adamws_settings(
    capsys, tmp_path, monkeypatch
):
    from decentdiff.config import TrainConfig

    out, seen = _fed_run_seen(capsys, tmp_path, monkeypatch, "--recipe", "FedSGD", "--objective",
                              "fm")  # fmt: skip
    o, t = seen["options"].validate(), seen["cfg"].train
    assert (t.optimizer, t.lr, t.warmup) == ("sgd", 1.0, 0)
    assert o.local_steps == 1 and seen["kw"]["server_ema_auto"]
    assert (o.server_opt, o.server_lr, o.server_momentum) == ("fedadam", TrainConfig().lr, 0.9)
    assert (o.server_beta2, o.server_tau) == (0.999, 1e-8)
    assert seen["cfg"].objective.loss == "mse"
    assert "recipe fedsgd: sgd lr 1, warm-up 0" in out and "server fedadam η 0.002" in out
    # Explicit options win; another server optimiser keeps its own defaults (FedAvg takes no β2).
    _, other = _fed_run_seen(capsys, tmp_path, monkeypatch, "--recipe", "fedsgd", "--server-opt",
                             "fedavg", "--local-steps", 3)  # fmt: skip
    o = other["options"].validate()
    assert (o.server_opt, o.server_lr, o.server_beta2, o.server_tau) == ("fedavg", 1.0, None, None)
    assert o.local_steps == 3 and other["cfg"].train.optimizer == "sgd"
    _, mine = _fed_run_seen(capsys, tmp_path, monkeypatch, "--recipe", "fedsgd", "--server-lr",
                            0.01, "--server-beta2", 0.99, "--server-tau", 1e-6, "-E", 2)  # fmt: skip
    o = mine["options"].validate()
    assert (o.server_lr, o.server_beta2, o.server_tau) == (0.01, 0.99, 1e-6)
    assert (o.local_steps, o.local_epochs) == (0, 2.0)  # --local-epochs given: not 1 step
    _, ada = _fed_run_seen(capsys, tmp_path, monkeypatch, "--recipe", "fedsgd", "--server-opt",
                           "fedadagrad")  # fmt: skip
    o = ada["options"].validate()
    assert (o.server_lr, o.server_beta2, o.server_tau) == (TrainConfig().lr, None, 1e-8)


def test_recipe_fedsgd_refuses_personal_methods_and_a_client_lr(capsys, tmp_path):
    run = tmp_path / "r"
    base = ["fed", "run", run, "--data", "digits", "--preset", "tiny", "--recipe", "fedsgd"]
    _bad(capsys, None, *base, "--method", "udec", match="--recipe fedsgd needs a global model")
    _bad(capsys, None, *base, "--set", "train.lr=0.001", match="the learning rate is --server-lr")
    _bad(capsys, None, *base, "--set", "train.warmup=10", match="no warm-up")
    assert not run.exists()


def test_a_config_files_train_lr_wins_over_the_recipe(capsys, tmp_path, monkeypatch):
    toml = tmp_path / "c.toml"
    toml.write_text("[train]\nlr = 0.0005\n")
    _, seen = _fed_run_seen(capsys, tmp_path, monkeypatch, "--recipe", "central", "--config", toml)
    assert seen["cfg"].train.lr == 5e-4 and seen["cfg"].train.warmup == 100


def test_an_unknown_recipe_fails_in_one_line_and_case_does_not_matter(
    capsys, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("x")  # _bad checks the RUN's files are untouched
    _bad(capsys, run, "fed", "run", run, "--data", "digits", "--recipe", "fast", match="--recipe")
    _, seen = _fed_run_seen(capsys, tmp_path, monkeypatch, "--recipe", " Central ")
    assert seen["options"].client_state == "keep" and seen["kw"]["server_ema_auto"]
