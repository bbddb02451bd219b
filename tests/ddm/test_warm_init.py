"""Experts from a shared warm-up (``train experts --init monolith``): each expert starts from the
monolith's checkpoint at step W (weights, EMA, optimizer, step), trains its own S − W steps on its
own shard only, and the warm-up's FLOPs are counted once."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import decentdiff
from _cli import _bad, cli, tree_hashes
from decentdiff import config as C
from decentdiff.cli import main
from decentdiff.ddm.experts import expert_job, train_expert
from decentdiff.ddm.launchers import expert_command
from decentdiff.ddm.store import load_partition
from decentdiff.ddm.warm import total_train_flops
from decentdiff.loading import load_model
from decentdiff.run import Run

TINY = ["--preset", "tiny", "-q"]
B = ["--set", "train.batch=8"]
W, S = 3, 5  # the shared warm-up's steps, the experts' total


@pytest.fixture(scope="module")
def warm_base(tmp_path_factory):
    """A 2-part RUN (by label) of two visually distinct families, and its monolith at step W."""
    rng = np.random.default_rng(0)
    x = np.zeros((80, 1, 8, 8), np.uint8)
    x[:40, :, :4] = 200
    x[40:, :, 4:] = 200
    x = np.clip(x + rng.integers(0, 40, x.shape), 0, 255).astype(np.uint8)
    root = tmp_path_factory.mktemp("warm")
    np.savez(root / "two.npz", x=x, y=np.repeat(np.arange(4), 20))
    run = root / "run"
    main(
        [
            "partition",
            str(run),
            "--data",
            f"npz:{root / 'two.npz'}",
            "--parts",
            "2",
            "--by",
            "label",
        ]
    )
    main(["train", "monolith", str(run), "--steps", str(W), *B, *TINY])
    return run


@pytest.fixture
def run(warm_base, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(warm_base, dst)
    return dst


def _cfg(run, steps, *sets):
    return C.resolve(
        sets=["model.preset=tiny", f"train.steps={steps}", "train.batch=8", *sets],
        base=Run(run).base_config(),
    )


def _tensors(d, name):
    return load_file(str(d / f"{name}.safetensors"))


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _meta(d):
    return json.loads((d / "meta.json").read_text())


def test_expert_starts_as_the_monolith_and_continues_its_schedule(run):
    r, mono = Run(run), run / "monolith"
    mono_meta, mono_hashes = _meta(mono), tree_hashes(mono)
    assert mono_meta["step"] == W
    cfg = _cfg(run, S, "train.ckpt_every=1", "train.log_every=1")
    ed = run / "experts" / "0"

    # Before its first own step: the monolith's weights, EMA, optimizer state and step, exactly.
    job = expert_job(r, 0, cfg)
    start = job.start(r, 0, "monolith", fresh=False)
    assert start.record == {"from": "monolith", "step": W, "train_flops": mono_meta["train_flops"]}
    for name in ("model", "ema", "state"):
        assert _same(_tensors(ed, name), _tensors(mono, name)), name
    state = _tensors(ed, "state")
    assert int(state["step"]) == W and any(k.endswith(".exp_avg_sq") for k in state)
    first = _meta(ed)
    assert first["step"] == W and first["init"] == start.record
    assert first["shard_size"] == int((load_partition(r).assignments == 0).sum())
    assert first["train"]["batch"] == 4 and "flops_per_step" not in first  # its own, measured

    # The normal resume path continues it to S: W + 2 steps of its own.
    meta = train_expert(r, 0, cfg, progress=False, init="monolith")
    assert meta["step"] == S and meta["init"] == start.record
    model = _tensors(ed, "model")
    assert not _same(model, _tensors(mono, "model"))
    # Adam's own step count went on from the monolith's: its moments were carried over.
    for key, value in _tensors(ed, "state").items():
        if key.startswith("opt.") and key.endswith(".step"):
            assert int(value) == int(_tensors(mono, "state")[key]) + (S - W) == S
    # The learning rate continued the monolith's warm-up: lr·(s + 1)/warmup at step s ≥ W.
    rows = [json.loads(line) for line in (ed / "metrics.jsonl").read_text().splitlines()]
    lr, warmup = cfg.train.lr, cfg.train.warmup
    assert warmup > S and [row["step"] for row in rows] == [W + 1, S]
    assert [row["lr"] for row in rows] == pytest.approx([lr * (s + 1) / warmup for s in (W, S - 1)])
    # The EMA went on from the monolith's EMA, with the decay of step W (.prev: step W + 1).
    d = min(cfg.train.ema_decay, (1 + W) / (10 + W))
    prev_model, prev_ema, mono_ema = (
        _tensors(ed / ".prev", "model"),
        _tensors(ed / ".prev", "ema"),
        _tensors(mono, "ema"),
    )
    assert _meta(ed / ".prev")["step"] == W + 1
    for k, v in prev_ema.items():
        if v.dtype.is_floating_point:
            assert torch.allclose(v, d * mono_ema[k] + (1 - d) * prev_model[k], atol=1e-6), k
    # Its own FLOPs only; the monolith's files are untouched.
    assert meta["train_flops"] == pytest.approx(meta["flops_per_step"] * (S - W))
    assert tree_hashes(mono) == mono_hashes


def test_warm_expert_draws_only_its_shard_and_reads_the_monolith_once(run, tmp_path):
    """Other shards' rows set to NaN change nothing; the expert writes only experts/0/; once
    started it needs the monolith no more."""
    twin = tmp_path / "twin"
    shutil.copytree(run, twin)
    cfg = _cfg(run, S)
    before = tree_hashes(run)
    train_expert(Run(run), 0, cfg, progress=False, init="monolith")
    after = tree_hashes(run)
    changed = {k for k in after if before.get(k) != after[k]}
    assert changed and all(k.startswith("experts/0/") for k in changed)

    r2 = Run(twin)
    data = r2.data(cfg, create=False)
    rec = load_partition(r2, data)
    poisoned = data.images[data.train_idx].astype(np.float32) / 127.5 - 1
    poisoned[rec.assignments != 0] = np.nan
    train_expert(r2, 0, cfg, progress=False, init="monolith", train_images=poisoned)
    for f in ("model", "ema", "state"):
        a = (run / "experts" / "0" / f"{f}.safetensors").read_bytes()
        b = (twin / "experts" / "0" / f"{f}.safetensors").read_bytes()
        assert a == b, f

    # Isolation after the start: without RUN/monolith the expert still continues.
    shutil.rmtree(run / "monolith")
    meta = train_expert(Run(run), 0, _cfg(run, S + 1), progress=False, init="monolith")
    assert meta["step"] == S + 1 and meta["init"]["step"] == W


def test_ensemble_counts_the_warm_up_once_and_equals_the_flop_matched_monolith(run, capsys):
    w_meta = _meta(run / "monolith")
    per_image = w_meta["flops_per_step"] / w_meta["train"]["batch"]  # the code's own measure
    assert w_meta["train_flops"] == pytest.approx(per_image * 8 * W, rel=1e-6)

    metas = decentdiff.load(run).train_experts(
        init="monolith", steps=S, preset="tiny", sets=["train.batch=8"], progress=False
    )
    for m in metas.values():  # batch B/K = 4, S − W steps of its own
        assert m["init"] == {"from": "monolith", "step": W, "train_flops": w_meta["train_flops"]}
        assert m["train_flops"] == pytest.approx(per_image * 4 * (S - W), rel=1e-6)

    s = C.SampleConfig(n=2, steps=2)
    ens = load_model(Run(run), "ensemble", s, routing="mixture")  # no router: experts only
    warm_up = per_image * 8 * W
    own = sum(m["train_flops"] for m in metas.values())
    assert ens.train_flops == pytest.approx(warm_up + own, rel=1e-6)  # once, not K times
    assert ens.train_flops == pytest.approx(per_image * 8 * S, rel=1e-6)  # W·B + K·(S−W)·B/K
    one = load_model(Run(run), "expert:1", s)
    assert one.train_flops == pytest.approx(warm_up + per_image * 4 * (S - W), rel=1e-6)

    # The FLOP-matched monolith: batch 4 + 4 = 8 to step S (it continues the warm-up's own run).
    code, out, err = cli(capsys, "train", "monolith", run, "--flop-match", *TINY)
    assert code == 0, err
    assert f"batch 8, {S} steps" in out
    flop_matched = _meta(run / "monolith")
    assert flop_matched["train"]["batch"] == 8 and flop_matched["step"] == S
    assert flop_matched["train_flops"] == pytest.approx(ens.train_flops, rel=1e-6)
    # Training the monolith on changed no expert's record.
    assert [_meta(run / "experts" / str(k)) for k in (0, 1)] == list(metas.values())


def test_flop_match_refuses_experts_whose_batches_do_not_add_up_to_the_warm_up(run, capsys):
    """Experts from a warm-up at batch 8 trained at an explicit batch 3 each (3 + 3 = 6): the
    monolith would go on at batch 6 and the two totals differ, so --flop-match refuses."""
    code, _, err = cli(capsys, "train", "experts", run, "--init", "monolith", "--steps", S,
                       "--batch", 3, *TINY)  # fmt: skip
    assert code == 0, err
    before = tree_hashes(run / "monolith")
    code, _, err = cli(capsys, "train", "monolith", run, "--flop-match", *TINY)
    assert code != 0 and "started from the monolith at batch 8" in err and "sum to 6" in err
    assert tree_hashes(run / "monolith") == before  # nothing trained


def test_distinct_warm_ups_are_each_counted_once():
    rec = {"from": "monolith", "step": 3, "train_flops": 30.0}
    later = {"from": "monolith", "step": 4, "train_flops": 40.0}
    same = [{"train_flops": 1.0, "init": dict(rec)}, {"train_flops": 2.0, "init": dict(rec)}]
    assert total_train_flops(same) == 1.0 + 2.0 + 30.0
    assert total_train_flops([same[0], {"train_flops": 2.0, "init": later}]) == 3.0 + 30 + 40
    # A random start, and a distilled student's ``init`` name, add nothing.
    assert total_train_flops([{"train_flops": 5.0}, {"train_flops": 1.0, "init": "soup"}]) == 6.0


def test_train_experts_init_monolith_on_the_command_line(run, capsys):
    mono = run / "monolith"
    mono_hashes = tree_hashes(mono)
    code, out, err = cli(
        capsys, "train", "experts", run, "--init", "monolith", "--steps", S, *B, *TINY
    )
    assert code == 0, err
    for k in (0, 1):
        assert f"expert {k}: step {S}, from the monolith's step {W}," in out
        ed = run / "experts" / str(k)
        assert _meta(ed)["step"] == S and _meta(ed)["init"]["step"] == W
        # The checkpoint it started from (kept in .prev by its one own checkpoint): the monolith's.
        assert _meta(ed / ".prev")["step"] == W
        for name in ("model", "ema", "state"):
            assert _same(_tensors(ed / ".prev", name), _tensors(mono, name))
    assert tree_hashes(mono) == mono_hashes
    # Resumed with the same init, an expert goes on to a later step from its own checkpoint.
    code, out, err = cli(
        capsys, "train", "expert", run, "--expert", "0", "--init", "monolith", "--steps", S + 1,
        *B, *TINY,
    )  # fmt: skip
    assert code == 0, err
    assert f"expert 0: step {S + 1}, from the monolith's step {W}, batch 4" in out
    # The process and Ray launchers pass it on to each island's command.
    cmd = expert_command(
        Run(run), 1, run / "c.toml", batch=None, fresh=True, threads=1, init="monolith"
    )
    assert cmd[cmd.index("--init") + 1] == "monolith" and "--fresh" in cmd
    assert "--init" not in expert_command(
        Run(run), 1, run / "c.toml", batch=None, fresh=False, threads=1
    )


def test_warm_start_refusals_are_one_line_and_train_nothing(run, tmp_path, capsys):
    exp = ["train", "experts", run, "--init", "monolith", "--steps", S, *B]
    _bad(capsys, run, *exp, "--init", "bogus", *TINY, match="choose one of: random, monolith")
    _bad(capsys, run, "train", "expert", run, "-k", "0", "--init", "x", match="random, monolith")
    _bad(capsys, run, *exp[:5], "--steps", W, *B, *TINY, match=f"pass --steps > {W}")
    _bad(capsys, run, *exp, "--preset", "compact", "-q", match="model.preset=tiny")
    _bad(capsys, run, *exp, *TINY, "--objective", "ddpm", match="objective.kind=fm")
    _bad(capsys, run, *exp, *TINY, "--set", "model.class_cond=true", match="class_cond=false")

    # No monolith yet: say how to make the shared warm-up.
    bare = tmp_path / "bare"
    shutil.copytree(run, bare)
    shutil.rmtree(bare / "monolith")
    _bad(capsys, bare, "train", "experts", bare, "--init", "monolith", *TINY,
         match=f"decentdiff train monolith {bare} --steps W")  # fmt: skip

    # An expert started at random is not continued from the monolith, nor the reverse.
    twin = tmp_path / "twin"  # where the experts start from the monolith with no --fresh needed
    shutil.copytree(run, twin)
    assert cli(capsys, *exp[:2], twin, *exp[3:], *TINY)[0] == 0
    assert cli(capsys, "train", "expert", run, "-k", "1", "--steps", S, *B, *TINY)[0] == 0
    _bad(capsys, run, *exp, *TINY, match="--fresh")  # refused before expert 0 trains
    assert not (run / "experts" / "0").exists()
    # --fresh: the random checkpoint is removed before the warm one is written, so the resume
    # path can never fall back to it (no .prev until the expert's own first checkpoint).
    r, e1 = Run(run), run / "experts" / "1"
    expert_job(r, 1, _cfg(run, S)).start(r, 1, "monolith", fresh=True)
    assert not (e1 / ".prev").exists() and _meta(e1)["step"] == W
    assert _same(_tensors(e1, "model"), _tensors(run / "monolith", "model"))
    code, _, err = cli(capsys, *exp[:3], "--init", "monolith", "--fresh", "--steps", S, *B, *TINY)
    assert code == 0, err
    for k in (0, 1):
        ed = run / "experts" / str(k)
        assert _meta(ed)["init"]["step"] == W
        assert _same(_tensors(ed / ".prev", "model"), _tensors(run / "monolith", "model"))
        # --fresh over a random start trains exactly what a first warm start trains.
        assert _same(_tensors(ed, "model"), _tensors(twin / "experts" / str(k), "model"))
    _bad(capsys, run, "train", "expert", run, "-k", "1", "--steps", S + 1, *B, *TINY,
         match="--init monolith to continue it, or --fresh")  # fmt: skip
