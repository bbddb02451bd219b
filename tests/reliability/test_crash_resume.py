"""SIGKILL at seeded moments, then resume: the final weights are bitwise those of an uninterrupted
run, and after every kill a complete, verifiable checkpoint is on disk.

Three kinds of kill point, all a real SIGKILL of the training process:

- ``replace:N`` — the process kills itself just before its N-th ``os.replace`` (between the renames
  of one checkpoint's files: the window where ``model.safetensors`` is new and ``meta.json`` old);
- ``fsync:N`` — just before its N-th ``os.fsync`` (a temporary file is half-way to disk);
- ``timed`` — killed from outside a random delay after it wrote a new checkpoint (mid-step).

The default is 3 kill points per trainer; ``DECENTDIFF_SOAK_KILLS=20`` runs a soak.
"""

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from decentdiff.cli import main

KILLS = int(os.environ.get("DECENTDIFF_SOAK_KILLS", "3"))
STEPS = 10 * (KILLS + 1)
COMMON = [
    "--set",
    "train.threads=1",
    "--set",
    "train.ckpt_every=2",
    "--set",
    "train.batch=8",
    "--set",
    "train.warmup=3",
    "-q",
]
TENSOR_FILES = ("model.safetensors", "ema.safetensors", "state.safetensors")

# Runs decentdiff's CLI, SIGKILLing itself at the N-th call of os.<fn> when DD_KILL_AT="fn:N".
WRAPPER = """
import os, runpy, signal, sys
spec = os.environ.get("DD_KILL_AT")
if spec:
    fn, n = spec.split(":")
    n, orig, calls = int(n), getattr(os, fn), [0]
    def hooked(*a, **k):
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return orig(*a, **k)
    setattr(os, fn, hooked)
sys.argv = ["decentdiff", *sys.argv[1:]]
runpy.run_module("decentdiff", run_name="__main__")
"""


def verified_step(d: Path) -> int | None:
    """The step of the checkpoint in ``d`` if it is complete, by an independent check.

    Complete: ``meta.json`` parses, every file it lists has that sha256, every tensor of every
    file can be read with safetensors, and the state's step equals the meta's.
    """
    try:
        meta = json.loads((d / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    files = meta.get("files", {})
    if sorted(files) != sorted(TENSOR_FILES):
        return None
    for name, want in files.items():
        p = d / name
        if not p.is_file() or hashlib.sha256(p.read_bytes()).hexdigest() != want:
            return None
        with safe_open(str(p), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if name == "state.safetensors" and int(tensors["step"]) != meta["step"]:
            return None
    return int(meta["step"])


def _kill_plan(seed: int) -> list[str]:
    rng = random.Random(seed)
    kinds = ["replace", "fsync", "timed"]
    plan = []
    for i in range(KILLS):
        kind = kinds[i] if i < len(kinds) else rng.choice(kinds)
        # A checkpoint is 4 temp files + a .prev dir: ~5 renames and ~7 fsyncs each; small N
        # keeps every kill within the first checkpoints after the process starts.
        plan.append(
            {"replace": f"replace:{rng.randint(1, 9)}", "fsync": f"fsync:{rng.randint(1, 14)}"}.get(
                kind, f"timed:{rng.uniform(0.0, 0.3):.3f}"
            )
        )
    return plan


def _step_of(d: Path) -> int:
    try:
        return int(json.loads((d / "meta.json").read_text())["step"])
    except (OSError, ValueError, KeyError):
        return -1


def _killed_run(args: list[str], ckpt: Path, point: str) -> int:
    env = dict(os.environ)
    env.pop("DD_KILL_AT", None)
    if not point.startswith("timed"):
        env["DD_KILL_AT"] = point
    proc = subprocess.Popen(
        [sys.executable, "-c", WRAPPER, *map(str, args)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if point.startswith("timed"):
        start = _step_of(ckpt)
        deadline = time.monotonic() + 120
        while proc.poll() is None and _step_of(ckpt) <= start and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(float(point.split(":")[1]))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode in (0, -signal.SIGKILL), err
    return proc.returncode


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = np.zeros((64, 1, 8, 8), np.uint8)
    x[:32, :, :4] = 200
    x[32:, :, 4:] = 200
    x = np.clip(x + rng.integers(0, 40, x.shape), 0, 255).astype(np.uint8)
    data = tmp_path_factory.mktemp("data") / "two.npz"
    np.savez(data, x=x, y=np.repeat(np.arange(4), 16))
    run = tmp_path_factory.mktemp("runs") / "base"
    main(["partition", str(run), "--data", f"npz:{data}", "--parts", "2", "--by", "label"])
    # Teachers for the distillation test (the expert test retrains expert 0 from scratch).
    main(["train", "experts", str(run), "--steps", "4", "--preset", "tiny", *COMMON])
    return run


CASES = {
    "expert": (["train", "expert", "{run}", "--expert", "0", "--preset", "tiny"], "experts/0", 11),
    "router": (["train", "router", "{run}", "--preset", "tiny"], "router", 12),
    "distill": (["distill", "{run}"], "distilled", 13),
}


@pytest.mark.slow
@pytest.mark.parametrize("role", list(CASES))
def test_sigkill_then_resume_is_bitwise_identical(role, base_run, tmp_path):
    template, sub, seed = CASES[role]
    ref, crash = tmp_path / "ref", tmp_path / "crash"
    shutil.copytree(base_run, ref)
    shutil.copytree(base_run, crash)

    args = [*[x.replace("{run}", str(crash)) for x in template], "--steps", str(STEPS), *COMMON]
    shutil.rmtree(ref / sub, ignore_errors=True)  # (expert 0 of the base run: trained anew)
    shutil.rmtree(crash / sub, ignore_errors=True)
    main([str(ref) if a == str(crash) else a for a in args])  # uninterrupted, same thread count
    ckpt = crash / sub

    history, kills, torn = [], 0, 0
    for point in _kill_plan(seed):
        # Each attempt resumes from whatever the previous kill left behind.
        rc = _killed_run(args, ckpt, point)
        kills += rc == -signal.SIGKILL
        if rc == 0:
            break  # the run finished before the kill point (only possible for timed kills)
        main_step, prev_step = verified_step(ckpt), verified_step(ckpt / ".prev")
        if (ckpt / "meta.json").exists() or (ckpt / ".prev").exists():
            # Never a state without a complete checkpoint, once one was written.
            assert main_step is not None or prev_step is not None, (point, os.listdir(ckpt))
        torn += main_step is None and (ckpt / "meta.json").exists()
        best = max(s for s in (main_step, prev_step, -1) if s is not None)
        assert not history or best >= history[-1], "a kill lost a committed checkpoint"
        history.append(best)
    assert kills >= min(KILLS, 2), f"only {kills} of {KILLS} kill points were hit"

    main(args)  # resume to the end
    for name in TENSOR_FILES:
        got, want = (ckpt / name).read_bytes(), (ref / sub / name).read_bytes()
        assert got == want, f"{role}: {name} differs from the uninterrupted run"
    assert verified_step(ckpt) == STEPS
    assert not list(ckpt.glob(".*.tmp")), "temporaries of killed writers were left behind"
    print(f"{role}: {kills} kills, steps after each {history}, {torn} torn main checkpoint(s)")


@pytest.mark.slow
def test_kill_between_renames_resumes_from_the_kept_checkpoint(base_run, tmp_path, capfd):
    """The worst moment: model.safetensors renamed, meta.json not yet. The torn checkpoint is
    reported by readers with its path, .prev is intact, and training resumes from .prev."""
    run = tmp_path / "r"
    shutil.copytree(base_run, run)
    ckpt = run / "experts" / "1"
    shutil.rmtree(ckpt)
    a = ["train", "expert", str(run), "--expert", "1", "--steps", "8", *COMMON]
    # Checkpoint 1 (step 2): 4 renames. Checkpoint 2 (step 4): .prev (5th), then model (6th);
    # killing before the 7th rename leaves model new, ema/state/meta old.
    assert _killed_run(a, ckpt, "replace:7") == -signal.SIGKILL
    assert verified_step(ckpt) is None and verified_step(ckpt / ".prev") == 2
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["step"] == 2
    want = meta["files"]["model.safetensors"]
    assert hashlib.sha256((ckpt / "model.safetensors").read_bytes()).hexdigest() != want

    from decentdiff.errors import CheckpointError
    from decentdiff.training.generative import load_generative

    with pytest.raises(CheckpointError, match=r"experts/1/(model|ema)\.safetensors"):
        load_generative(ckpt, ema=False)
    capfd.readouterr()
    main(a)
    err = capfd.readouterr().err
    assert "resuming from the last good checkpoint" in err and ".prev" in err, err
    assert verified_step(ckpt) == 8
