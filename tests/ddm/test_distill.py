"""Distillation of the ensemble into one student, and heterogeneous (ε + flow) experts."""

import json
import shutil

import numpy as np
import pytest
import torch

from _cli import _bad, cli
from decentdiff import config as C
from decentdiff.cli import main
from decentdiff.ddm.distill import distill
from decentdiff.ddm.store import expert_dir, load_partition
from decentdiff.diffusion.paths import DDPM, FlowMatching
from decentdiff.run import Run
from decentdiff.training.generative import load_generative, to_model_space

TINY = ["--preset", "tiny", "-q"]


def _two_families(path, n=80):
    # Two visually distinct families (bright top half / bright bottom half), two labels each.
    rng = np.random.default_rng(0)
    x = np.zeros((n, 1, 8, 8), np.uint8)
    x[: n // 2, :, :4] = 200
    x[n // 2 :, :, 4:] = 200
    x = np.clip(x + rng.integers(0, 40, x.shape), 0, 255).astype(np.uint8)
    np.savez(path, x=x, y=np.repeat(np.arange(4), n // 4))
    return f"npz:{path}"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    src = _two_families(tmp_path_factory.mktemp("data") / "two.npz")
    run = tmp_path_factory.mktemp("runs") / "ddm"
    main(["partition", str(run), "--data", src, "--parts", "2", "--by", "label"])
    sets = ["--set", "train.batch=16", "--set", "train.warmup=5", "--set", "train.lr=3e-3"]
    main(["train", "experts", str(run), "--steps", "40", *sets, *TINY])
    return run


def _cfg(run):
    return C.resolve(
        None, ["model.preset=tiny", "train.warmup=5", "train.lr=3e-3"], base=Run(run).base_config()
    )


def _student_teacher_gap(run, k, n=64):
    """Mean squared difference of student and expert k velocities on cluster k's noisy data."""
    r = Run(run)
    data = r.data(_cfg(run), create=False)
    rec = load_partition(r, data)
    x0 = to_model_space(data.images[data.train_idx][rec.parts()[k]])
    g = torch.Generator().manual_seed(123)
    idx = torch.randint(0, len(x0), (n,), generator=g)
    x0 = x0[idx]
    t = torch.rand(n, generator=g) * 0.8 + 0.1
    eps = torch.randn(x0.shape, generator=g)
    x_t = FlowMatching().noisy(x0, t, eps)
    teacher, *_ = load_generative(expert_dir(r, k))
    student, *_ = load_generative(r.model_dir("distilled"), ema=False)
    with torch.no_grad():
        return float((student(x_t, t) - teacher(x_t, t)).pow(2).mean()), float(
            teacher(x_t, t).pow(2).mean()
        )


def test_distill_loss_falls_and_student_approaches_teachers(run_dir):
    cfg = _cfg(run_dir)
    cfg.train.batch = 32  # student batch B/4 = 8
    cfg.train.log_every = 5
    meta0 = distill(Run(run_dir), cfg, steps=1, progress=False, fresh=True)
    gap_before = [_student_teacher_gap(run_dir, k)[0] for k in (0, 1)]
    meta = distill(Run(run_dir), cfg, steps=60, progress=False)
    assert meta["step"] == 60 and meta["train"]["batch"] == 8
    rows = [
        json.loads(x) for x in (run_dir / "distilled" / "metrics.jsonl").read_text().splitlines()
    ]
    losses = [r["loss"] for r in rows]
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3])
    for k in (0, 1):
        gap, scale = _student_teacher_gap(run_dir, k)
        # Closer to its teacher than at the start, and much closer than the teacher's own size.
        assert gap < 0.5 * gap_before[k] and gap < 0.3 * scale
    # The layout of a generative checkpoint, with the teachers' forward FLOPs in the cost.
    assert meta["kind"] == "generative" and meta["objective"]["kind"] == "fm"
    assert meta["distilled_from"] == load_partition(Run(run_dir)).partition_id
    assert meta["flops_per_step"] > meta["teacher_flops_per_step"] > 0
    # Student fwd+bwd ≈ 3× a forward of the same UNet; the teachers add one more forward.
    ratio = meta["flops_per_step"] / meta["teacher_flops_per_step"]
    assert 3.0 < ratio < 5.0
    assert meta["train_flops"] == pytest.approx(meta["flops_per_step"] * 60)
    assert meta0["step"] == 1


def test_teachers_give_the_ensemble_or_own_expert_velocity(run_dir, tmp_path, capsys):
    """--teacher full: the target is the router-weighted velocity, exactly the ensemble built by
    load_ensemble; own: each example's cluster expert. Also the measured teachers' FLOPs: full
    runs both experts and the router per example, own one expert."""
    import shutil

    from decentdiff.ddm.distill import _routed_teacher, make_teacher
    from decentdiff.ddm.load import load_ensemble

    run = tmp_path / "routed"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("distilled"))
    assert cli(capsys, "train", "router", run, "--steps", "5", "--batch", "16", *TINY)[0] == 0
    for bad, why in (("mixture", "same velocity"), ("sample:2", "same velocity"),
                     ("owm", "unknown --teacher 'owm'")):  # fmt: skip
        code, _, err = cli(capsys, "distill", run, "--teacher", bad, "--steps", "2", "-q")
        assert code == 2 and why in err and "own" in err and not (run / "distilled").exists()
    experts = [load_generative(expert_dir(Run(run), k))[0] for k in (0, 1)]
    g = torch.Generator().manual_seed(5)
    x_t = torch.randn(16, 1, 8, 8, generator=g)
    t = torch.rand(16, generator=g)
    who = torch.tensor([0, 1] * 8)
    ens, *_ = load_ensemble(Run(run), "full")
    with torch.no_grad():
        full = make_teacher(experts, _routed_teacher(Run(run), "full", torch.device("cpu")))
        assert torch.allclose(full(x_t, t, None, who), ens(x_t, t), atol=1e-6)
        own = make_teacher(experts)(x_t, t, None, who)
        for k in (0, 1):
            assert torch.allclose(own[who == k], experts[k](x_t[who == k], t[who == k]))
        assert not torch.allclose(own, ens(x_t, t), atol=1e-4)  # the two targets differ
    cfg = _cfg(run)
    cfg.train.batch = 32
    m_own = distill(Run(run), cfg, steps=1, progress=False, fresh=True)
    m_full = distill(Run(run), cfg, steps=2, progress=False, fresh=True, teacher="full")
    assert m_full["teacher"] == "full" and m_own["teacher"] == "own" and m_full["step"] == 2
    assert m_full["teacher_flops_per_step"] > 2 * m_own["teacher_flops_per_step"]
    # Resuming a student with another teacher would mix two trainings: refused in one line.
    code, _, err = cli(capsys, "distill", run, "--teacher", "own", "--steps", "3", "-q")
    assert code == 2 and "--teacher full" in err and "--fresh" in err


def test_distilled_model_samples_through_cli(run_dir, capsys, tmp_path):
    if not (run_dir / "distilled" / "meta.json").is_file():
        distill(Run(run_dir), _cfg(run_dir), steps=2, progress=False)
    out = tmp_path / "d.npz"
    code, _, err = cli(
        capsys,
        "sample",
        run_dir,
        "--model",
        "distilled",
        "--n",
        "4",
        "--sample-steps",
        "3",
        "--out",
        out,
    )
    assert code == 0, err
    with np.load(out) as z:
        assert z["images"].shape == (4, 1, 8, 8) and np.isfinite(z["images"]).all()


def test_drop_expert_renormalises_over_the_rest(tmp_path, run_dir, capsys):
    from decentdiff.ddm.load import load_ensemble

    main(["train", "router", str(run_dir), "--steps", "4", "--batch", "8", *TINY])
    ens, *_ = load_ensemble(Run(run_dir), "full", drop=(1,))
    full, *_ = load_ensemble(Run(run_dir), "full")
    x = torch.randn(5, 1, 8, 8)
    t = torch.full((5,), 0.6)
    with torch.no_grad():
        v = ens(x, t)
        v0, *_ = load_generative(expert_dir(Run(run_dir), 0))
        # Router weights renormalised over {0}: the ensemble is expert 0 alone.
        torch.testing.assert_close(v, v0(x, t), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(full(x, t), v)
    _bad(
        capsys,
        run_dir,
        "sample",
        run_dir,
        "--model",
        "ensemble",
        "--drop-expert",
        "0",
        "--drop-expert",
        "1",
        "--n",
        "2",
        "--sample-steps",
        "2",
        "--out",
        tmp_path / "x.npz",
        match="every expert",
    )


@pytest.mark.slow
def test_ddpm_and_flow_experts_agree_after_conversion(tmp_path):
    """A DDPM ε-expert and a flow expert of the same shard, both converted to velocity, agree."""
    src = _two_families(tmp_path / "one.npz")
    run = tmp_path / "het"
    main(["partition", str(run), "--data", src, "--parts", "2", "--by", "label"])
    sets = [
        "--set",
        "train.batch=32",
        "--set",
        "train.warmup=10",
        "--set",
        "train.lr=3e-3",
        "--set",
        "objective.time_dist=uniform",
        "--set",
        "train.ema_decay=0.9",
    ]
    main(["train", "expert", str(run), "--expert", "0", "--steps", "200", *sets, *TINY])
    ddpm_dir = tmp_path / "ddpm_run"
    main(["partition", str(ddpm_dir), "--data", src, "--parts", "2", "--by", "label"])
    main(
        [
            "train",
            "expert",
            str(ddpm_dir),
            "--expert",
            "0",
            "--steps",
            "200",
            "--objective",
            "ddpm",
            *sets,
            *TINY,
        ]
    )
    fm, *_ = load_generative(expert_dir(Run(run), 0))
    eps_v, _, meta, obj = load_generative(expert_dir(Run(ddpm_dir), 0))
    assert isinstance(obj, DDPM) and meta["objective"]["kind"] == "ddpm"
    r = Run(run)
    data = r.data(C.resolve(None, None, base=r.base_config()), create=False)
    x0 = to_model_space(data.images[data.train_idx][load_partition(r).parts()[0]])
    g = torch.Generator().manual_seed(7)
    x0 = x0[torch.randint(0, len(x0), (128,), generator=g)]
    t = 0.2 + 0.6 * torch.rand(128, generator=g)  # mid times: both models saw plenty of them
    eps = torch.randn(x0.shape, generator=g)
    x_t = FlowMatching().noisy(x0, t, eps)
    with torch.no_grad():
        a, b = fm(x_t, t), eps_v(x_t, t)
    true = eps - x0
    err_between = float((a - b).pow(2).mean())
    # The two converted models are as close to each other as each is to the sample's target
    # ε − x0 (whose E[·|x_t] both estimate), and far closer than to a random unrelated velocity.
    err_fm = float((a - true).pow(2).mean())
    assert err_between < err_fm
    assert err_between < 0.2 * float(true.pow(2).mean())


def test_a_student_of_another_size_with_preset(tmp_path, run_dir, capsys):
    """`distill --preset` sets the student's size (the experts are `tiny`); resuming with another
    size is refused in one line, and --fresh starts the other one."""
    run = tmp_path / "copy"
    shutil.copytree(run_dir, run)
    shutil.rmtree(run / "distilled", ignore_errors=True)
    args = ["distill", run, "--steps", 2, "-q", "--set", "train.batch=8"]
    code, _, err = cli(capsys, *args, "--preset", "compact")
    assert code == 0, err
    student = json.loads((run / "distilled" / "meta.json").read_text())
    expert = json.loads((run / "experts" / "0" / "meta.json").read_text())
    assert student["params"] > expert["params"]  # compact > tiny
    code, _, err = cli(capsys, *args)  # no --preset: the experts' size, not the checkpoint's
    assert code == 2 and "another size" in err and err.count("\n") == 1
    code, _, err = cli(capsys, *args, "--preset", "compact", "--steps", 3)
    assert code == 0, err  # the same size resumes
    code, _, err = cli(capsys, *args, "--fresh")
    assert code == 0, err
    assert json.loads((run / "distilled" / "meta.json").read_text())["params"] == expert["params"]
    code, _, err = cli(capsys, *args, "--preset", "huge")
    assert code == 2 and "unknown model preset" in err


def test_student_init_from_the_experts(tmp_path, run_dir, capsys):
    """`distill --init`: expert:K starts the student at expert K's EMA weights (with lr 0 it
    stays there: read back from the files); soup is the shard-size-weighted mean of the experts'
    EMA weights, re-computed here in NumPy from the safetensors files; a different --init on
    resume, an unknown one, a missing expert and a student of another size are one-line errors."""
    from safetensors.numpy import load_file

    run = tmp_path / "copy"
    shutil.copytree(run_dir, run)
    shutil.rmtree(run / "distilled", ignore_errors=True)
    # lr 1e-30 (0 is refused): Adam moves a weight by ~1e-30, far below any weight's resolution
    args = ["distill", run, "--steps", 2, "-q", "--set", "train.batch=8", "--set", "train.lr=1e-30"]
    code, _, err = cli(capsys, *args, "--init", "expert:1")
    assert code == 0, err
    want = load_file(str(run / "experts" / "1" / "ema.safetensors"))
    got = load_file(str(run / "distilled" / "model.safetensors"))
    assert want.keys() == got.keys()
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-20, err_msg=name)
    assert json.loads((run / "distilled" / "meta.json").read_text())["init"] == "expert:1"
    code, _, err = cli(capsys, *args, "--steps", 3)  # resume with another start: refused
    assert code == 2 and "--init expert:1" in err and err.count("\n") == 1
    code, _, err = cli(capsys, *args, "--init", "soup", "--fresh")
    assert code == 0, err
    sizes = [json.loads((run / "experts" / str(k) / "meta.json").read_text())["shard_size"]
             for k in (0, 1)]  # fmt: skip
    experts = [load_file(str(run / "experts" / str(k) / "ema.safetensors")) for k in (0, 1)]
    got = load_file(str(run / "distilled" / "model.safetensors"))
    w = np.array(sizes, np.float64) / sum(sizes)
    assert experts[0].keys() == got.keys()
    differs = 0
    for name, a in experts[0].items():
        if not np.issubdtype(a.dtype, np.floating):
            continue
        soup = w[0] * a.astype(np.float64) + w[1] * experts[1][name].astype(np.float64)
        np.testing.assert_allclose(got[name], soup, rtol=1e-5, atol=1e-7, err_msg=name)
        differs += not np.allclose(a, experts[1][name])
    assert differs > 0  # the experts differ, so the mean is not one of them
    for bad, words in (("expert:x", "unknown --init"), ("expert:7", "experts 0..1"),
                       ("best", "unknown --init")):  # fmt: skip
        code, _, err = cli(capsys, *args, "--init", bad, "--fresh")
        assert code == 2 and words in err and err.count("\n") == 1, err
    code, _, err = cli(capsys, *args, "--init", "soup", "--fresh", "--preset", "compact")
    assert code == 2 and "student's architecture is not every expert's" in err, err
    assert err.count("\n") == 1
    # expert:01 is expert:1: recorded normalised, so it resumes as expert:1 does
    code, _, err = cli(capsys, *args, "--init", "expert:01", "--fresh")
    assert code == 0, err
    assert json.loads((run / "distilled" / "meta.json").read_text())["init"] == "expert:1"
    code, _, err = cli(capsys, *args, "--init", "expert:1", "--steps", 3)
    assert code == 0, err
    # An ε-expert is not a velocity network: it cannot start the flow-matching student.
    meta = json.loads((run / "experts" / "0" / "meta.json").read_text())
    meta["objective"]["kind"] = "ddpm"
    (run / "experts" / "0" / "meta.json").write_text(json.dumps(meta))
    for init in ("expert:0", "soup"):
        code, _, err = cli(capsys, *args, "--init", init, "--fresh")
        assert code == 2 and "flow-matching network" in err and err.count("\n") == 1, err


def test_soup_weights_by_shard_size():
    """The soup weighs each expert by its shard size (1:3 here), integer buffers are copied."""
    from decentdiff.ddm.distill import initial_weights

    nets = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = torch.nn.BatchNorm1d(3)
        net.weight.data.normal_(), net.bias.data.normal_()
        net.num_batches_tracked += seed + 5
        nets.append(net)
    got = initial_weights(
        "soup", nets, [{"shard_size": 1}, {"shard_size": 3}], torch.nn.BatchNorm1d(3)
    )
    for name in ("weight", "bias"):
        a, b = (getattr(n, name).detach().double().numpy() for n in nets)
        np.testing.assert_allclose(got[name].numpy(), 0.25 * a + 0.75 * b, rtol=1e-6)
    assert got["num_batches_tracked"].item() == 5  # the first expert's, not averaged
