"""DDP inside one island: 2 gloo ranks under torchrun agree, and their checkpoint resumes exactly."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from _cli import _bad
from decentdiff.cli import main
from decentdiff.training.distributed import check_batch, dist_env

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
def run_dir(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (40, 1, 8, 8)).astype(np.uint8)
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


def _torchrun(tmp_path, *args, nproc=2):
    # Exactly the documented command: torchrun ... -m decentdiff train expert RUN --expert k
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "decentdiff",
        *map(str, args),
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def _weights(run):
    return load_file(Path(run) / "experts" / "0" / "model.safetensors")


TRAIN = ["--preset", "tiny", "-q", "--set", "train.batch=16", "--set", "train.threads=1"]


def test_two_ranks_train_resume_exactly(run_dir, tmp_path):
    twin = tmp_path / "twin"
    shutil.copytree(run_dir, twin)
    # 3 steps then 6 (resume) on 2 ranks == 6 in one go on 2 ranks.
    for steps in (3, 6):
        r = _torchrun(
            tmp_path, "train", "expert", run_dir, "--expert", "0", "--steps", steps, *TRAIN
        )
        assert r.returncode == 0, r.stderr[-2000:]
    r = _torchrun(tmp_path, "train", "expert", twin, "--expert", "0", "--steps", 6, *TRAIN)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = _weights(run_dir), _weights(twin)
    assert all(torch.equal(a[k], b[k]) for k in a)
    meta = json.loads((run_dir / "experts" / "0" / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["step"] == 6 and meta["train"]["batch"] == 8  # B/K
    # The DDP checkpoint is the ordinary layout: a single process resumes it.
    main(["train", "expert", str(run_dir), "--expert", "0", "--steps", "8", *TRAIN])
    assert json.loads((run_dir / "experts" / "0" / "meta.json").read_text())["step"] == 8


def _ddp_with_rank_weights(run_dir, tmp_path, expert, steps):
    """train_expert_ddp on 2 gloo ranks under torchrun, each rank saving its own final weights
    through a hook (tmp_path/rank<i>.safetensors); returns both."""
    script = tmp_path / "agree.py"
    script.write_text(
        "import os, sys\n"
        "from safetensors.torch import save_file\n"
        "from decentdiff import config as C\n"
        "from decentdiff.run import Run\n"
        "from decentdiff.training import distributed as D\n"
        "from decentdiff.training import loop\n"
        "orig = loop.train\n"
        "def spy(model, *a, **kw):\n"
        "    out = orig(model, *a, **kw)\n"
        "    save_file({k: v.clone() for k, v in model.state_dict().items()},\n"
        "              sys.argv[2] + f'/rank{os.environ[\"RANK\"]}.safetensors')\n"
        "    return out\n"
        "loop.train = spy\n"
        "run = Run(sys.argv[1])\n"
        f"cfg = C.resolve(None, ['model.preset=tiny', 'train.steps={steps}', 'train.batch=16',\n"
        "                       'train.threads=1'], base=run.base_config())\n"
        f"D.train_expert_ddp(run, {expert}, cfg, D.dist_env(), progress=False)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), str(run_dir), str(tmp_path)]  # fmt: skip
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")


def test_world_size_must_divide_batch(run_dir, capsys, monkeypatch):
    assert check_batch(8, 2) == 4
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert dist_env().world_size == 3
    # batch 16 / K=2 = 8 per island, not divisible by 3 ranks: one line, exit 2, before any
    # process group is created (so no rank hangs waiting for the others).
    _bad(
        capsys,
        run_dir,
        "train",
        "expert",
        run_dir,
        "--expert",
        "0",
        "--steps",
        "2",
        *TRAIN,
        match="does not divide over 3",
    )


def test_two_ranks_at_half_batch_equal_one_process_at_full_batch(run_dir, tmp_path):
    """Issue 19, item 3. The ranks agree bitwise (each saves its own weights through a hook), and
    DDP on 2 gloo ranks, each drawing B/2 with its own rank generator, equals
    one process that draws both ranks' halves itself and averages their losses (what DDP's
    all-reduce does to the gradients), through the same training loop: same weights after 5
    steps within float tolerance (the all-reduce sums in another order). The ranks' halves are
    different samples, and the weights moved."""
    from dataclasses import replace

    from decentdiff import config as C
    from decentdiff.ddm.experts import expert_job
    from decentdiff.models.registry import build_network, network_config
    from decentdiff.run import Run
    from decentdiff.training.distributed import rank_generator
    from decentdiff.training.generative import image_batches, objective_from
    from decentdiff.training.loop import train

    steps = 5
    w0, w1 = _ddp_with_rank_weights(run_dir, tmp_path, 0, steps)
    # Every rank ends with bitwise the same weights, and the checkpoint holds them.
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    ddp = _weights(run_dir)
    assert all(torch.equal(ddp[k], w0[k]) for k in ddp)

    cfg = C.resolve(None, ["model.preset=tiny", "train.batch=16", "train.threads=1",
                           f"train.steps={steps}"], base=Run(run_dir).base_config())  # fmt: skip
    job = expert_job(Run(run_dir), 0, cfg)  # the island: B/K = 8, so 4 per rank
    tcfg = job.cfg.train
    objective = objective_from(job.cfg.objective)
    torch.manual_seed(tcfg.seed)
    model = build_network(network_config("tiny", job.images.shape[1], 0))
    init = {k: v.clone() for k, v in model.state_dict().items()}
    draw = image_batches(job.images, None, tcfg.batch // 2, torch.device("cpu"), 0.0, 0)
    seen = []

    def loss_fn(m, g):
        state = g.get_state()
        losses = []
        for rank in (0, 1):
            g.set_state(state)  # every rank derives its generator from the same step generator
            gr = rank_generator(g, rank)
            x0, cond, idx = draw(gr)
            seen.append(idx.tolist())
            losses.append(objective.loss(m, x0, cond, gr))
        return (losses[0] + losses[1]) / 2

    train(model, loss_fn, tmp_path / "single", replace(tcfg, threads=1), meta={}, progress=False)
    single = model.state_dict()
    for k in ddp:
        assert torch.allclose(ddp[k], single[k], atol=1e-5, rtol=1e-4), k
    assert any(not torch.equal(init[k], single[k]) for k in init)  # the weights moved
    assert all(a != b for a, b in zip(seen[0::2], seen[1::2], strict=True))  # halves differ


def test_two_ranks_start_an_expert_from_the_monolith(run_dir, tmp_path):
    """--init monolith under torchrun: rank 0 alone writes the warm start, both ranks resume it."""
    main(["train", "monolith", str(run_dir), "--steps", "3", *TRAIN])
    r = _torchrun(
        tmp_path, "train", "expert", run_dir, "--expert", "0", "--init", "monolith",
        "--steps", 5, *TRAIN,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    ed, mono = run_dir / "experts" / "0", run_dir / "monolith"
    meta = json.loads((ed / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["step"] == 5 and meta["init"]["step"] == 3
    assert meta["train_flops"] == pytest.approx(meta["flops_per_step"] * 2)
    for name in ("model", "ema", "state"):  # .prev: the checkpoint it started from
        a, b = (
            load_file(ed / ".prev" / f"{name}.safetensors"),
            load_file(mono / f"{name}.safetensors"),
        )
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_warm_start_failing_on_rank_0_ends_every_rank_with_its_error(run_dir, tmp_path):
    """Rank 0 alone reads the monolith for a warm start; when that fails (here an altered weights
    file), every rank ends (no rank waits at the barrier: _torchrun's timeout would fail this
    test) and rank 0's one-line reason is printed; the expert gets no checkpoint."""
    main(["train", "monolith", str(run_dir), "--steps", "3", *TRAIN])
    weights = run_dir / "monolith" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    r = _torchrun(
        tmp_path, "train", "expert", run_dir, "--expert", "0", "--init", "monolith",
        "--steps", 5, *TRAIN,
    )  # fmt: skip
    assert r.returncode != 0
    assert "model.safetensors does not match the checksum in meta.json" in r.stderr
    assert not (run_dir / "experts" / "0" / "meta.json").exists()
