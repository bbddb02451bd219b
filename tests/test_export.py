"""`decentdiff export RUN OUT` (issue 20, item 4): the folder holds the weights and a model card,
nothing a sampler does not need, and samples bitwise like its RUN."""

import json

import numpy as np
import pytest

import decentdiff
from _cli import cli


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("exp") / "run"
    run = decentdiff.load(path)
    run.partition(2, data="digits", by="label")
    kw = dict(preset="tiny", steps=2, progress=False, sets=["train.batch=8"])
    run.train_experts(**kw)
    run.train_router(**kw)
    run.train_monolith(flop_match=True, preset="tiny", progress=False)
    return path


def test_export_samples_bitwise_like_its_run_and_holds_only_what_sampling_needs(
    trained, tmp_path, capsys
):
    code, _, err = cli(capsys, "eval", trained, "--model", "monolith", "--n", 8, "--sample-steps", 2,
                       "--device", "cpu", "-q")  # fmt: skip
    assert code == 0, err
    out = tmp_path / "shared"
    code, stdout, err = cli(capsys, "export", trained, out, "--license", "apache-2.0")
    assert code == 0, err
    assert "4 models" in stdout  # two experts, the router, the monolith
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert not any(f.endswith("state.safetensors") or "metrics" in f for f in files)
    assert not any(f.startswith("eval/") for f in files)
    assert {"run.toml", "partition.npz", "config.json", "README.md"} <= files
    assert {"experts/0/ema.safetensors", "router/meta.json", "monolith/model.safetensors"} <= files
    # Each model samples bitwise as in the RUN, from the command line and from Python.
    for model, extra in (("ensemble", ["--routing", "top1"]), ("monolith", []), ("expert:1", [])):
        got = []
        for where in (trained, out):
            f = tmp_path / f"{where.name}-{model.replace(':', '')}.npz"
            code, _, err = cli(capsys, "sample", where, "--model", model, *extra, "--n", 5,
                               "--sample-steps", 2, "--device", "cpu", "--out", f)  # fmt: skip
            assert code == 0, err
            got.append(np.load(f)["images"])
        assert np.array_equal(got[0], got[1]), model
    py = decentdiff.load(out).sample(5, model="monolith", steps=2, device="cpu")
    cli_run = np.load(tmp_path / f"{trained.name}-monolith.npz")["images"]
    assert np.array_equal(py.images.numpy(), cli_run)
    # The model card and config.json say what the folder holds.
    config = json.loads((out / "config.json").read_text())
    toml_fp = decentdiff.load(trained).run.read_toml()["data"]["fingerprint"]
    assert config["format"] == "decentdiff-export/1" and config["data"]["fingerprint"] == toml_fp
    assert set(config["models"]) == {"expert:0", "expert:1", "router", "monolith"}
    row = [json.loads(x) for x in (trained / "metrics.jsonl").read_text().splitlines()][-1]
    assert config["models"]["monolith"]["metrics"]["fid"] == row["fid"]
    assert config["ensemble"]["experts"] == 2 and config["ensemble"]["router"]
    # run.toml keeps `auto` (each command's --objective decides); the export states it resolved.
    assert "auto" in decentdiff.load(trained).run.read_toml()["objective"].values()
    assert config["objective"]["weighting"] == "uniform" and config["objective"]["kind"] == "fm"
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: decentdiff\nlicense: apache-2.0\n")
    assert toml_fp in card and f"{row['fid']:.2f}" in card


def test_export_refuses_to_overwrite_or_to_write_into_the_run(trained, tmp_path, capsys):
    out = tmp_path / "o"
    assert cli(capsys, "export", trained, out)[0] == 0
    before = sorted(p.name for p in out.iterdir())
    code, _, err = cli(capsys, "export", trained, out)
    assert code == 2 and "not empty" in err and "--fresh" in err and err.count("\n") == 1
    assert sorted(p.name for p in out.iterdir()) == before
    assert cli(capsys, "export", trained, out, "--fresh")[0] == 0
    code, _, err = cli(capsys, "export", trained, out, "--force")  # the old spelling
    assert code == 0 and err == "decentdiff: note: --force is now --fresh\n", err
    code, _, err = cli(capsys, "export", trained, trained / "inside")
    assert code == 2 and "inside the RUN" in err
    assert not (trained / "inside").exists()
    assert not list(tmp_path.glob(".o.export-*"))  # no partial export left behind
