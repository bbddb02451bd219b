"""The command line end to end (tiny preset), exact resume, and bad input: exit 2, one line, no harm."""

import subprocess
import sys

import numpy as np
import pytest

from _cli import _bad, cli, tree_hashes
from decentdiff.cli import main

TINY = ["--preset", "tiny", "--batch", "8", "-q"]


@pytest.fixture(scope="module")
def npz_source(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = (rng.random((64, 1, 8, 8)) * 255).astype(np.uint8)
    y = np.repeat(np.arange(4), 16)
    p = tmp_path_factory.mktemp("data") / "toy.npz"
    np.savez(p, x=x, y=y)
    return f"npz:{p}"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, npz_source):
    run = tmp_path_factory.mktemp("runs") / "r"
    main(["train", "monolith", str(run), "--data", npz_source, "--steps", "6", *TINY])
    return run


def test_help_shows_defaults(capsys):
    code, out, _ = cli(capsys, "train", "monolith", "--help")
    assert code == 0
    assert "default: 3000" in out and "--set" in out and "--config" in out


def test_exact_resume_bitwise(tmp_path, capsys):
    """10 steps then 20 == 20 in one go, bit for bit (the issue's acceptance test)."""
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["--data", "mnist5k", *TINY]
    assert cli(capsys, "train", "monolith", a, "--steps", "10", *common)[0] == 0
    assert cli(capsys, "train", "monolith", a, "--steps", "20", *common)[0] == 0
    assert cli(capsys, "train", "monolith", b, "--steps", "20", *common)[0] == 0
    for name in ("model", "ema", "state"):
        fa = (a / "monolith" / f"{name}.safetensors").read_bytes()
        fb = (b / "monolith" / f"{name}.safetensors").read_bytes()
        assert fa == fb, name
    # And it really trained: the weights moved away from the first checkpoint's.
    c = tmp_path / "c"
    cli(capsys, "train", "monolith", c, "--steps", "10", *common)
    assert (c / "monolith" / "model.safetensors").read_bytes() != (
        a / "monolith" / "model.safetensors"
    ).read_bytes()


def test_sample_writes_npz_and_png(trained_run, capsys, tmp_path):
    out = tmp_path / "s.npz"
    code, _, err = cli(
        capsys, "sample", trained_run, "--n", "5", "--sample-steps", "3", "--out", out
    )
    assert code == 0, err
    imgs = np.load(out)["images"]
    assert imgs.shape == (5, 1, 8, 8) and imgs.dtype == np.float32
    assert imgs.min() >= -1 and imgs.max() <= 1
    assert out.with_suffix(".png").stat().st_size > 0
    # Same seed -> same images; other seed -> different.
    cli(
        capsys,
        "sample",
        trained_run,
        "--n",
        "5",
        "--sample-steps",
        "3",
        "--out",
        tmp_path / "t.npz",
    )
    cli(
        capsys,
        "sample",
        trained_run,
        "--n",
        "5",
        "--sample-steps",
        "3",
        "--seed",
        "1",
        "--out",
        tmp_path / "u.npz",
    )
    assert np.array_equal(imgs, np.load(tmp_path / "t.npz")["images"])
    assert not np.array_equal(imgs, np.load(tmp_path / "u.npz")["images"])


@pytest.mark.parametrize("solver", ["heun", "ddim", "ddpm"])
def test_sample_solvers(trained_run, capsys, tmp_path, solver):
    code, _, err = cli(
        capsys,
        "sample",
        trained_run,
        "--n",
        "2",
        "--sample-steps",
        "3",
        "--solver",
        solver,
        "--out",
        tmp_path / "s.npz",
    )
    assert code == 0, err


def test_ddpm_objective_and_class_conditional_guidance(tmp_path, capsys, npz_source):
    run = tmp_path / "c"
    code, _, err = cli(
        capsys,
        "train",
        "monolith",
        run,
        "--data",
        npz_source,
        "--steps",
        "4",
        "--objective",
        "ddpm",
        "--class-cond",
        *TINY,
    )
    assert code == 0, err
    for solver in ("ddpm", "ddim", "euler"):
        code, _, err = cli(
            capsys,
            "sample",
            run,
            "--n",
            "4",
            "--sample-steps",
            "4",
            "--solver",
            solver,
            "--label",
            "2",
            "--guidance",
            "2",
            "--out",
            tmp_path / f"{solver}.npz",
        )
        assert code == 0, err
    assert (np.load(tmp_path / "ddpm.npz")["labels"] == 2).all()


def test_config_file_and_set(tmp_path, capsys, npz_source):
    cfgf = tmp_path / "c.toml"
    cfgf.write_text(
        f'[data]\nsource = "{npz_source}"\n[model]\npreset = "tiny"\n[train]\nsteps = 3\nbatch = 4\n'
    )
    run = tmp_path / "r"
    code, out, err = cli(
        capsys, "train", "monolith", run, "--config", cfgf, "--set", "train.steps=2", "-q"
    )
    assert code == 0, err
    assert "step 2/2" in out
    import json

    meta = json.loads((run / "monolith" / "meta.json").read_text())
    assert meta["train"]["batch"] == 4 and meta["step"] == 2


def test_end_to_end_subprocess(tmp_path, npz_source):
    """The installed entry point as a user runs it (no in-process state)."""
    run = tmp_path / "r"
    exe = [sys.executable, "-m", "decentdiff"]
    r = subprocess.run(
        [*exe, "train", "monolith", str(run), "--data", npz_source, "--steps", "2", *TINY],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        [*exe, "sample", str(run), "--n", "2", "--sample-steps", "2", "--out", str(run / "s.npz")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        [*exe, "train", "monolith", str(run), "--steps", "-1"], capture_output=True, text=True
    )
    assert (
        r.returncode == 2
        and r.stderr.startswith("decentdiff: error:")
        and "Traceback" not in r.stderr
    )


def test_bad_inputs(tmp_path, capsys, trained_run, npz_source):
    run = trained_run
    _bad(
        capsys,
        None,
        "train",
        "monolith",
        tmp_path / "x",
        "--data",
        "npz:/nonexistent/file.npz",
        match="nonexistent",
    )
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 this is not a zip")
    _bad(
        capsys,
        None,
        "train",
        "monolith",
        tmp_path / "y",
        "--data",
        f"npz:{corrupt}",
        match="corrupt.npz",
    )
    _bad(capsys, None, "data", "show", "nosuchsource", match="mnist5k")
    # A RUN made from other data.
    _bad(
        capsys,
        run,
        "train",
        "monolith",
        run,
        "--data",
        "digits",
        "--steps",
        "8",
        *TINY,
        match="fingerprint",
    )
    # A checkpoint whose shapes do not match the preset.
    _bad(
        capsys,
        run,
        "train",
        "monolith",
        run,
        "--preset",
        "small",
        "--steps",
        "8",
        "-q",
        match="preset",
    )
    # Bad config values and overrides.
    _bad(capsys, run, "train", "monolith", run, "--steps", "0", match="steps")
    _bad(capsys, run, "train", "monolith", run, "--set", "train.nosuch=1", match="valid keys")
    _bad(capsys, run, "train", "monolith", run, "--set", "train.batch=abc", match="expected int")
    _bad(capsys, run, "train", "monolith", run, "--set", "oops", match="section.key=value")
    _bad(
        capsys,
        run,
        "train",
        "monolith",
        run,
        "--config",
        tmp_path / "missing.toml",
        match="not found",
    )
    _bad(capsys, run, "sample", run, "--out", tmp_path / "x.png", match=".npz")
    _bad(capsys, run, "sample", run, "--n", "0", "--out", tmp_path / "x.npz", match="--n")
    _bad(capsys, run, "sample", run, "--solver", "rk4", "--out", tmp_path / "x.npz", match="euler")
    _bad(
        capsys,
        run,
        "sample",
        run,
        "--model",
        "nosuch",
        "--out",
        tmp_path / "x.npz",
        match="monolith",
    )
    _bad(
        capsys,
        run,
        "sample",
        run,
        "--model",
        "distilled",
        "--out",
        tmp_path / "x.npz",
        match="no checkpoint",
    )
    _bad(capsys, None, "sample", tmp_path / "empty", "--out", tmp_path / "x.npz", match="run.toml")


def test_mixed_size_folder_is_one_line(tmp_path, capsys):
    from PIL import Image

    for cls, size in (("a", 8), ("b", 9)):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        Image.new("L", (size, size)).save(tmp_path / "imgs" / cls / "x.png")
    _bad(capsys, None, "data", "show", f"folder:{tmp_path / 'imgs'}", match="x.png")


def test_truncated_checkpoint_is_reported_not_used(tmp_path, capsys, npz_source):
    run = tmp_path / "r"
    cli(capsys, "train", "monolith", run, "--data", npz_source, "--steps", "2", *TINY)
    f = run / "monolith" / "ema.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    _bad(capsys, run, "sample", run, "--out", tmp_path / "s.npz", match="ema.safetensors")
    assert not (tmp_path / "s.npz").exists()


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, capsys, npz_source):
    run = tmp_path / "r"
    args = ["train", "monolith", run, "--data", npz_source, *TINY]
    assert cli(capsys, *args, "--steps", "2")[0] == 0
    good = tree_hashes(run / "monolith")
    code, _, err = cli(
        capsys,
        *args,
        "--steps",
        "60",
        "--set",
        "train.lr=1e12",
        "--set",
        "train.grad_clip=0",
        "--set",
        "train.warmup=0",
        "--set",
        "train.ckpt_every=1000",
    )
    assert code == 2 and "loss became" in err and "Traceback" not in err
    assert tree_hashes(run / "monolith") == good
