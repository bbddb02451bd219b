"""eval / compare / report on a tiny DDM run: rows, measured sampling FLOPs, the report's files."""

import json
import re

import numpy as np
import pytest
import torch

from _cli import cli
from _oracles import fid_scipy
from decentdiff.cli import main
from decentdiff.ddm.load import load_ensemble
from decentdiff.evaluation.flops import forward_flops
from decentdiff.run import Run

TINY = ["--preset", "tiny", "-q"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    rng = np.random.default_rng(1)
    # Four classes of 8×8 blobs at different positions, so a classifier can learn them quickly.
    x = np.zeros((160, 1, 8, 8), np.uint8)
    y = np.repeat(np.arange(4), 40)
    for i, c in enumerate(y):
        r, q = divmod(int(c), 2)
        x[i, 0, 4 * r : 4 * r + 4, 4 * q : 4 * q + 4] = 220
    x = np.clip(x.astype(int) + rng.integers(0, 30, x.shape), 0, 255).astype(np.uint8)
    src = tmp_path_factory.mktemp("d") / "blobs.npz"
    np.savez(src, x=x, y=y)
    run = tmp_path_factory.mktemp("r") / "run"
    main(["partition", str(run), "--data", f"npz:{src}", "--parts", "2", "--by", "label"])
    main(["train", "experts", str(run), "--steps", "3", "--set", "train.batch=8", *TINY])
    main(["train", "router", str(run), "--steps", "3", "--batch", "8", *TINY])
    main(["train", "monolith", str(run), "--flop-match", *TINY])
    return run


def rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_eval_row_and_measured_flops(run, capsys):
    steps = 4
    for routing in ("top1", "full"):
        code, out, err = cli(
            capsys, "eval", run, "--routing", routing, "--n", "20", "--sample-steps", steps, "-q"
        )
        assert code == 0, err
    r_top1, r_full = rows(run)[-2:]
    for r in (r_top1, r_full):
        for key in (
            "fid",
            "kid_mean",
            "precision",
            "recall",
            "floor",
            "train_flops",
            "sample_gflops_per_image",
        ):
            assert key in r
        assert r["n"] == 20 and np.isfinite(r["fid"])
    # Independent FLOP oracle: forward FLOPs of each network on one image, times evaluations.
    ens, _, _, nets = load_ensemble(Run(run), "top1")
    x, t = torch.zeros(1, 1, 8, 8), torch.full((1,), 0.5)
    f_exp = forward_flops(nets["expert 0"], (x, t, None))
    f_router = forward_flops(nets["router"], (x, t, None))
    assert r_top1["sample_gflops_per_image"] * 1e9 == pytest.approx(
        steps * (f_exp + f_router), rel=1e-6
    )
    assert r_full["sample_gflops_per_image"] * 1e9 == pytest.approx(
        steps * (2 * f_exp + f_router), rel=1e-6
    )
    assert r_top1["router_share"] == pytest.approx(f_router / (f_exp + f_router), rel=1e-6)
    # Training FLOPs of the ensemble: both experts + the router, from their meta.json.
    metas = [
        json.loads((run / d / "meta.json").read_text())
        for d in ("experts/0", "experts/1", "router")
    ]
    assert r_top1["train_flops"] == pytest.approx(sum(m["train_flops"] for m in metas))

    # mixture: one expert per step and no router, neither to sample nor to train; schedule:0.5:
    # the router only at the steps with t < 0.5 (Euler on 4 steps evaluates t = 1, .75, .5, .25).
    for routing in ("mixture", "schedule:0.5,top1"):
        code, _, err = cli(
            capsys, "eval", run, "--routing", routing, "--n", "20", "--sample-steps", steps, "-q"
        )
        assert code == 0, err
    r_mix, r_sched = rows(run)[-2:]
    assert r_mix["sample_gflops_per_image"] * 1e9 == pytest.approx(steps * f_exp, rel=1e-6)
    assert r_mix["router_share"] == 0
    assert r_mix["train_flops"] == pytest.approx(sum(m["train_flops"] for m in metas[:2]))
    assert r_sched["sample_gflops_per_image"] * 1e9 == pytest.approx(
        steps * f_exp + 1 * f_router, rel=1e-6
    )
    assert r_mix["fake_features"] and (run / r_mix["fake_features"]).is_file()
    assert sum(r_mix["class_hist"]) == 20


def test_compare_reuses_rows_and_writes_table(run, capsys):
    args = ["compare", run, "--n", "20", "--sample-steps", "4", "--routing", "top1,full", "-q"]
    code, out, err = cli(capsys, *args)
    assert code == 0, err
    n_rows = len(rows(run))
    code, out2, _ = cli(capsys, *args)
    assert len(rows(run)) == n_rows  # nothing recomputed
    table = (run / "compare.md").read_text()
    assert "| ensemble | top1 |" in table and "| monolith |" in table and "floor" in table
    # The table's numbers are the eval rows' (units: GFLOPs per image, TFLOPs of training).
    for model, routing in (("ensemble", "top1"), ("monolith", None)):
        row = [
            x for x in rows(run)
            if x["model"] == model and x.get("routing") == routing and x["n"] == 20
            and x["steps"] == 4 and x["solver"] == "euler"
        ][-1]  # fmt: skip
        line = next(
            x for x in table.splitlines() if x.startswith(f"| {model} | {routing or '–'} |")
        )
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[2] == row["solver"] == "euler"
        assert float(cells[3]) == row["guidance"] == 1.0  # an unconditional model's
        assert float(cells[4]) == pytest.approx(row["sample_gflops_per_image"], abs=0.006)
        assert float(cells[5]) == pytest.approx(row["train_flops"] / 1e12, abs=0.006)
        assert float(cells[6]) == pytest.approx(row["fid"], abs=0.006)
    assert (run / "figures" / "fid_vs_flops.png").stat().st_size > 0


def test_report_references_existing_files(run, capsys):
    cli(capsys, "eval", run, "--routing", "top1", "--n", "20", "--sample-steps", "4", "-q")
    code, _, err = cli(capsys, "report", run)
    assert code == 0, err
    md = (run / "report.md").read_text()
    for section in (
        "## Summary",
        "## Data and partition",
        "## Training",
        "## Router",
        "## Comparison",
        "## Samples",
        "## Attribution",
        "## Reproduce",
    ):
        assert section in md, section
    for target in re.findall(r"\]\(([^)]+\.png)\)", md):
        assert (run / target).is_file(), target
    assert "decentdiff train experts" in md  # the reproduce section lists the real commands
    # The Training table's numbers and unit against meta.json (TFLOPs = train_flops / 1e12).
    assert "train TFLOPs" in md and "PFLOPs" not in md
    meta = json.loads((run / "monolith" / "meta.json").read_text())
    line = next(x for x in md.splitlines() if x.startswith("| monolith |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1] == "UNet " + "-".join(str(c) for c in meta["unet"]["channels"])
    assert cells[2] == f"{meta['params']:,}" and int(cells[3]) == meta["step"]
    assert meta["train_flops"] > 0
    assert float(cells[5]) == pytest.approx(meta["train_flops"] / 1e12, rel=5e-3)


def test_demo_runs_the_whole_pipeline_and_records_its_timing(tmp_path, capsys):
    # The tiny demo on the blobs: every stage runs, the report exists, demo.json has the stages.
    rng = np.random.default_rng(2)
    x = np.zeros((120, 1, 8, 8), np.uint8)
    y = np.repeat(np.arange(2), 60)
    x[y == 0, 0, :4] = 220
    x[y == 1, 0, 4:] = 220
    x = np.clip(x.astype(int) + rng.integers(0, 30, x.shape), 0, 255).astype(np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    run = tmp_path / "demo"
    args = ["demo", run, "--data", f"npz:{tmp_path / 'd.npz'}", "--parts", 2, "--preset", "tiny"]
    args += ["--steps", 2, "--router-steps", 2, "--batch", 8, "--n", 8, "--sample-steps", 2, "-q"]
    code, out, err = cli(capsys, *args)
    assert code == 0, err
    timing = json.loads((run / "demo.json").read_text())
    assert set(timing["stages_s"]) == {
        "partition",
        "experts",
        "router",
        "monolith",
        "compare",
        "diagnose",
        "report",
    }
    assert 0 < sum(timing["stages_s"].values()) <= timing["wall_s"]
    got = {(r["model"], r.get("routing")) for r in rows(run) if r.get("kind") == "eval"}
    assert got >= {
        ("ensemble", "mixture"),
        ("ensemble", "top1"),
        ("ensemble", "topk:2"),
        ("monolith", None),
    }
    assert "default routing `auto` = `top1`" in out  # the demo is class-conditional
    diag = json.loads((run / "diagnostics.json").read_text())
    assert len(diag["calibration"]["accuracy"]) == 10 and diag["usage"][0]["routing"] == "top1"
    report = (run / "report.md").read_text()
    assert (
        "## Routing diagnostics" in report and (run / "figures" / "class_histogram.png").is_file()
    )
    assert all(r["guidance"] == 2.0 for r in rows(run) if r.get("kind") == "eval")
    assert (run / "report.md").is_file() and "demo done in" in out


def test_solver_auto_follows_the_objectives(run, tmp_path, capsys):
    """--solver auto (the default): euler for flow models; ancestral ddpm as soon as any network
    behind the model is an ε-model (issue 15). The row records the solver that actually ran, and
    the ε-ensemble really sampled with it: same seed, same images as an explicit --solver ddpm."""
    import shutil

    from decentdiff.config import resolve
    from decentdiff.loading import resolve_solver

    mixed = tmp_path / "mixed"
    shutil.copytree(run, mixed)
    assert resolve_solver(Run(mixed), "ensemble", "auto") == "euler"
    assert resolve_solver(Run(mixed), "monolith", "auto") == "euler"
    shutil.rmtree(mixed / "experts" / "0")  # retrained below as an ε-expert
    code, _, err = cli(capsys, "train", "expert", mixed, "--expert", "0", "--objective", "ddpm",
                       "--steps", "3", "--set", "train.batch=8", *TINY)  # fmt: skip
    assert code == 0, err
    assert resolve_solver(Run(mixed), "ensemble", "auto") == "ddpm"
    assert resolve_solver(Run(mixed), "expert:0", "auto") == "ddpm"
    assert resolve_solver(Run(mixed), "expert:1", "auto") == "euler"
    assert resolve_solver(Run(mixed), "ensemble", "heun") == "heun"  # explicit wins
    base = ["eval", mixed, "--routing", "top1", "--n", "20", "--sample-steps", "4", "-q"]
    assert cli(capsys, *base)[0] == 0
    assert cli(capsys, *base, "--solver", "ddpm")[0] == 0
    assert cli(capsys, *base, "--solver", "euler")[0] == 0
    auto, ddpm, euler = rows(mixed)[-3:]
    assert auto["solver"] == ddpm["solver"] == "ddpm" and euler["solver"] == "euler"
    assert auto["fid"] == ddpm["fid"] and auto["fid"] != euler["fid"]

    # compare resolves the solver per model too: both rows above are reused, nothing recomputed.
    def ensemble_rows():
        return [x for x in rows(mixed) if x["model"] == "ensemble"]

    n_rows = len(ensemble_rows())
    for solver in ("euler", "auto"):
        code, _, err = cli(capsys, "compare", mixed, "--routing", "top1", "--n", "20",
                           "--sample-steps", "4", "--solver", solver, "-q")  # fmt: skip
        assert code == 0, err
    assert len(ensemble_rows()) == n_rows
    cfg = resolve(base=Run(mixed).base_config())
    assert cfg.sample.solver == "auto"
    code, _, err = cli(capsys, *base, "--solver", "rk4")
    assert code != 0 and "auto, euler" in err


def test_flops_of_heun_and_guidance_and_guidance_changes_samples(run, tmp_path, capsys):
    """Measured sampling FLOPs against forward FLOPs × evaluations: Heun evaluates twice per step
    except the last (to t = 0, Euler): 2·steps − 1; classifier-free guidance doubles the batch.
    And guidance changes a class-conditional monolith's samples (same seed)."""
    steps = 4
    code, _, err = cli(capsys, "eval", run, "--model", "monolith", "--solver", "heun",
                       "--n", "20", "--sample-steps", steps, "-q")  # fmt: skip
    assert code == 0, err
    heun = rows(run)[-1]
    mono = load_generative_unet(run / "monolith")
    x, t = torch.zeros(1, 1, 8, 8), torch.full((1,), 0.5)
    f = forward_flops(mono, (x, t))
    assert heun["solver"] == "heun"
    assert heun["sample_gflops_per_image"] * 1e9 == pytest.approx((2 * steps - 1) * f, rel=1e-6)

    src = next(p for p in (run / "commands.txt").read_text().split() if p.startswith("npz:"))
    cc = tmp_path / "cc"
    assert cli(capsys, "train", "monolith", cc, "--data", src, "--class-cond", "--steps", "3",
               "--batch", "8", *TINY)[0] == 0  # fmt: skip
    outs = {}
    for w in (1.0, 3.0):
        out = tmp_path / f"g{w}.npz"
        code, _, err = cli(capsys, "sample", cc, "--model", "monolith", "--n", "8", "--sample-steps",
                           steps, "--guidance", w, "--out", out)  # fmt: skip
        assert code == 0, err
        with np.load(out) as z:
            outs[w] = z["images"]
    assert not np.allclose(outs[1.0], outs[3.0])
    for w in (1.0, 3.0):
        code, _, err = cli(capsys, "eval", cc, "--model", "monolith", "--n", "20", "--sample-steps",
                           steps, "--set", f"sample.guidance={w}", "-q")  # fmt: skip
        assert code == 0, err
    plain, guided = rows(cc)[-2:]
    unet = load_generative_unet(cc / "monolith")
    c = torch.zeros(1, dtype=torch.long)
    fc = forward_flops(unet, (x, t, c))
    assert plain["sample_gflops_per_image"] * 1e9 == pytest.approx(steps * fc, rel=1e-6)
    assert guided["sample_gflops_per_image"] * 1e9 == pytest.approx(2 * steps * fc, rel=1e-6)


def load_generative_unet(directory):
    from decentdiff.training.generative import load_generative

    return load_generative(directory)[1]


def test_eval_compares_with_the_held_out_part(run, capsys, monkeypatch):
    """What eval compares with (issue 19, item 2): the reference is the held-out part (features
    extracted here independently), the FID of the row is recomputed from those and the saved
    generated features, the floor is training-part vs held-out, and the feature classifier is
    trained on no held-out image."""
    from decentdiff.config import resolve
    from decentdiff.evaluation import features as FE
    from decentdiff.evaluation.evaluate import feature_net

    seen = {}
    real_get = FE.get_feature_net

    def spy(images, *a, **kw):
        seen["train"] = np.asarray(images)
        return real_get(images, *a, **kw)

    monkeypatch.setattr(FE, "get_feature_net", spy)
    r = Run(run)
    cfg = resolve(base=r.base_config())
    data = r.data(cfg, create=False)
    net, _ = feature_net(r, data, "classifier", progress=False)
    held_images = data.images[data.heldout_idx]
    train_set = {im.tobytes() for im in seen["train"]}
    assert len(held_images) >= 20 and not any(im.tobytes() in train_set for im in held_images)
    assert len(seen["train"]) == len(data.train_idx)

    code, _, err = cli(capsys, "eval", run, "--model", "monolith", "--n", "30", "--sample-steps", "3",
                       "-q")  # fmt: skip
    assert code == 0, err
    row = rows(run)[-1]
    held = FE.extract(net, held_images)["features"]
    with np.load(run / row["fake_features"]) as z:
        fake = z["features"]
    assert row["n_real"] == len(held_images)
    assert row["fid"] == pytest.approx(fid_scipy(held, fake), rel=1e-4)
    # Had the reference been the training part, the FID would differ.
    train_feats = FE.extract(net, data.images[data.train_idx])["features"]
    assert abs(fid_scipy(train_feats, fake) - row["fid"]) > 1e-3
    # The floor: an equal-size slice of the training part against the held-out part.
    rng = np.random.default_rng(0)
    tr = rng.permutation(data.train_idx)[: len(data.heldout_idx)]
    floor = fid_scipy(held, FE.extract(net, data.images[tr])["features"])
    assert row["floor"]["fid"] == pytest.approx(floor, rel=1e-4)


def test_model_and_routing_come_from_the_config_too(run, tmp_path, capsys):
    """`--set sample.model=…` / `sample.routing=…` (and a --config [sample] table) select the same
    model as --model / --routing, sampled bitwise alike; an explicit option wins over --set; the
    routing is recorded under its canonical name."""
    a, b, c = (tmp_path / f"{x}.npz" for x in "abc")
    common = ["--n", "4", "--sample-steps", "2"]
    assert cli(capsys, "sample", run, "--model", "expert:1", *common, "--out", a)[0] == 0
    cfg = tmp_path / "s.toml"
    cfg.write_text('[sample]\nmodel = "expert:1"\n')
    assert cli(capsys, "sample", run, "--config", cfg, *common, "--out", b)[0] == 0
    code, _, err = cli(capsys, "sample", run, "--set", "sample.model=expert:0", "--model",
                       "expert:1", *common, "--out", c)  # fmt: skip
    assert code == 0, err
    d = tmp_path / "d.npz"
    assert cli(capsys, "sample", run, "--set", "sample.model=expert:0", *common, "--out", d)[0] == 0
    ia, ib, ic, id0 = (np.load(p)["images"] for p in (a, b, c, d))
    assert np.array_equal(ia, ib) and np.array_equal(ia, ic)
    assert not np.array_equal(ia, id0)  # the two experts differ: the choice was really made
    code, _, err = cli(capsys, "eval", run, "--set", "sample.model=ensemble", "--set",
                       "sample.routing= TopK:2", "--n", "8", "--sample-steps", "2", "-q")  # fmt: skip
    assert code == 0, err
    row = rows(run)[-1]
    assert (row["model"], row["routing"]) == ("ensemble", "topk:2")
    assert (run / "samples" / "ensemble-topk2.npz").is_file()
    code, _, err = cli(capsys, "sample", run, "--set", "sample.model=expert:x", "--out", a)
    assert code == 2 and "expected expert:K with an integer K" in err


def test_parse_model_validates_once_with_the_choices():
    from decentdiff.errors import ConfigError
    from decentdiff.loading import ModelSpec, parse_model

    assert parse_model("expert:3") == ModelSpec("expert", 3) and str(parse_model("client:2")) == (
        "client:2"
    )
    assert parse_model("ensemble") == ModelSpec("ensemble")
    for bad, why in [
        ("expert", "choose one of"),
        ("monolith:1", "choose one of"),
        ("client:one", "expected client:I with an integer I"),
        ("gan", "choose one of: ensemble, monolith, distilled, expert:K, federated, client:I"),
    ]:
        with pytest.raises(ConfigError, match=why):
            parse_model(bad)


def test_eval_against_a_heldout_source(tmp_path, capsys):
    """A RUN whose held-out part is a second source: every image of the first trains, and eval's
    reference (n_real, FID, floor) is the second source's images, recomputed here."""
    from decentdiff.config import resolve
    from decentdiff.evaluation import features as FE
    from decentdiff.evaluation.evaluate import feature_net

    rng = np.random.default_rng(3)

    def blobs(n):
        y = np.repeat(np.arange(2), n // 2)
        x = np.zeros((n, 1, 8, 8), np.uint8)
        for i, c in enumerate(y):
            x[i, 0, 4 * c : 4 * c + 4] = 200
        return np.clip(x + rng.integers(0, 40, x.shape), 0, 255).astype(np.uint8), y

    (xt, yt), (xv, yv) = blobs(60), blobs(24)
    np.savez(tmp_path / "train.npz", x=xt, y=yt)
    np.savez(tmp_path / "val.npz", x=xv, y=yv)
    run = tmp_path / "run"
    held = f"--set=data.heldout_source=npz:{tmp_path / 'val.npz'}"
    main(["partition", str(run), "--data", f"npz:{tmp_path / 'train.npz'}", "--parts", "2",
          "--by", "label", held])  # fmt: skip
    main(["train", "monolith", str(run), "--steps", "3", "--batch", "8", *TINY])
    code, _, err = cli(capsys, "eval", run, "--model", "monolith", "--n", "20", "--steps", "2",
                       "--features", "classifier", "-q")  # fmt: skip
    assert code == 0, err
    row = rows(run)[-1]
    r = Run(run)
    data = r.data(resolve(base=r.base_config()), create=False)
    assert len(data.train_idx) == 60 and row["n_real"] == 24
    net, _ = feature_net(r, data, "classifier", progress=False)
    ref = FE.extract(net, xv)["features"]
    with np.load(run / row["fake_features"]) as z:
        assert row["fid"] == pytest.approx(fid_scipy(ref, z["features"]), rel=1e-4)
    floor_rows = np.random.default_rng(0).permutation(np.arange(60))[:24]
    floor = fid_scipy(ref, FE.extract(net, xt[floor_rows])["features"])
    assert row["floor"]["fid"] == pytest.approx(floor, rel=1e-4)
