"""Across islands: experts as parallel processes or Ray tasks; a killed island is finished by a
relaunch that touches no other expert's files."""

import json
import os
import shutil
import signal
import threading
import time

import numpy as np
import pytest
import torch

from _cli import _bad, tree_hashes
from decentdiff import config as C
from decentdiff.cli import main
from decentdiff.ddm import launchers
from decentdiff.errors import TrainingError
from decentdiff.run import Run

TINY = ["--preset", "tiny", "-q"]


@pytest.fixture
def run_dir(tmp_path):
    rng = np.random.default_rng(0)
    x = np.clip(rng.integers(0, 255, (40, 1, 8, 8)), 0, 255).astype(np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.repeat(np.arange(2), 20))
    run = tmp_path / "run"
    main(
        [
            "partition",
            str(run),
            "--data",
            f"npz:{tmp_path / 'd.npz'}",
            "--parts",
            "2",
            "--by",
            "label",
        ]
    )
    return run


def _cfg(run, steps, ckpt_every=1000):
    sets = [
        "model.preset=tiny",
        f"train.steps={steps}",
        "train.batch=8",
        f"train.ckpt_every={ckpt_every}",
    ]
    return C.resolve(None, sets, base=Run(run).base_config())


def _step(run, k):
    p = run / "experts" / str(k) / "meta.json"
    return json.loads(p.read_text())["step"] if p.is_file() else 0


@pytest.mark.slow
def test_process_launcher_killed_island_is_finished_by_relaunch(run_dir, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    twin = tmp_path / "twin"  # the same RUN, trained without interruption: the oracle
    shutil.copytree(run_dir, twin)
    orig = launchers._run_processes

    def run_and_kill(*a, **kw):
        # SIGKILL island 0 (no clean-up of any kind) once it has written a checkpoint: waits for
        # that evidence however slow the machine is (no fixed deadline that could fire early).
        def on_start(k, proc):
            def killer():
                deadline = time.time() + 600
                while _step(run_dir, 0) < 5 and proc.poll() is None and time.time() < deadline:
                    time.sleep(0.01)
                if proc.poll() is None:  # never signal a PID that may have been reused
                    os.kill(proc.pid, signal.SIGKILL)

            threading.Thread(target=killer, daemon=True).start()

        orig(*a, on_start=on_start, **kw)

    monkeypatch.setattr(launchers, "_run_processes", run_and_kill)
    with pytest.raises(TrainingError, match="expert 0 failed"):
        launchers.train_experts(
            Run(run_dir), _cfg(run_dir, 5000, ckpt_every=5), launcher="process", jobs=2, experts=[0]
        )
    monkeypatch.setattr(launchers, "_run_processes", orig)
    killed_at = _step(run_dir, 0)
    assert 5 <= killed_at < 5000
    # However late the kill landed on a loaded machine, the relaunch has steps left to train.
    total = max(40, killed_at + 20)
    launchers.train_experts(
        Run(run_dir), _cfg(run_dir, total), launcher="process", jobs=2, experts=[1]
    )
    done1 = tree_hashes(run_dir / "experts" / "1")
    # Relaunch all islands: 0 resumes from its checkpoint, 1 (already done) is not touched.
    metas = launchers.train_experts(Run(run_dir), _cfg(run_dir, total), launcher="process", jobs=2)
    assert metas[0]["step"] == total and metas[1]["step"] == total
    assert tree_hashes(run_dir / "experts" / "1") == done1
    # The killed-and-relaunched expert equals one trained in one go with the same thread count
    # (jobs=2 above gave each island 1 thread): bitwise, as resume is exact.
    launchers.train_experts(
        Run(twin), _cfg(twin, total), launcher="process", jobs=1, threads=1, experts=[0]
    )
    a = load_file(run_dir / "experts" / "0" / "model.safetensors")
    b = load_file(twin / "experts" / "0" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_launcher_is_one_line(run_dir, capsys):
    _bad(capsys, run_dir, "train", "experts", run_dir, "--launcher", "slurm", *TINY, match="slurm")
    _bad(
        capsys,
        run_dir,
        "train",
        "experts",
        run_dir,
        "--launcher",
        "process",
        "--threads",
        "0",
        *TINY,
        match="--threads must be ≥ 1",
    )


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("DECENTDIFF_SKIP_RAY") == "1", reason="ray disabled")
def test_ray_launcher_trains_every_expert(run_dir):
    pytest.importorskip("ray")
    cfg = _cfg(run_dir, steps=3)
    metas = launchers.train_experts(Run(run_dir), cfg, launcher="ray", jobs=2, max_retries=1)
    assert {k: m["step"] for k, m in metas.items()} == {0: 3, 1: 3}
