"""The DDM pipeline through the CLI and the Python API, on a tiny synthetic data set."""

import json
import shutil

import numpy as np
import pytest

from _cli import _bad, cli, tree_hashes
from decentdiff import config as C
from decentdiff.cli import main
from decentdiff.ddm.experts import train_expert
from decentdiff.ddm.store import load_partition
from decentdiff.run import Run

TINY = ["--preset", "tiny", "-q"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    # Two visually distinct families (bright top half / bright bottom half), two labels each.
    rng = np.random.default_rng(0)
    x = np.zeros((80, 1, 8, 8), np.uint8)
    x[:40, :, :4] = 200
    x[40:, :, 4:] = 200
    x = np.clip(x + rng.integers(0, 40, x.shape), 0, 255).astype(np.uint8)
    y = np.repeat(np.arange(4), 20)
    p = tmp_path_factory.mktemp("data") / "two.npz"
    np.savez(p, x=x, y=y)
    return f"npz:{p}"


@pytest.fixture(scope="module")
def ddm_run(tmp_path_factory, source):
    run = tmp_path_factory.mktemp("runs") / "ddm"
    main(["partition", str(run), "--data", source, "--parts", "2", "--by", "label"])
    main(["train", "experts", str(run), "--steps", "4", "--set", "train.batch=8", *TINY])
    main(["train", "router", str(run), "--steps", "4", "--batch", "8", *TINY])
    return run


def test_partition_files(ddm_run):
    rec = load_partition(Run(ddm_run))
    assert rec.num_parts == 2 and rec.sizes().sum() == len(rec.assignments)
    with np.load(ddm_run / "partition.npz") as z:
        p0, p1 = z["part_0"], z["part_1"]
    assert len(np.intersect1d(p0, p1)) == 0
    assert (ddm_run / "figures" / "partition.png").stat().st_size > 0
    assert (ddm_run / "figures" / "router_accuracy.png").stat().st_size > 0


def test_expert_batch_is_flop_matched_and_monolith_flop_match(ddm_run, capsys):
    metas = [json.loads((ddm_run / "experts" / str(k) / "meta.json").read_text()) for k in (0, 1)]
    assert [m["train"]["batch"] for m in metas] == [4, 4]  # B/K with B = 8
    code, _, err = cli(capsys, "train", "monolith", ddm_run, "--flop-match", *TINY)
    assert code == 0, err
    mono = json.loads((ddm_run / "monolith" / "meta.json").read_text())
    assert mono["train"]["batch"] == 8 and mono["train"]["steps"] == 4
    # Same architecture, batch K·b, same steps: the monolith costs what the experts cost together.
    assert mono["train_flops"] == pytest.approx(sum(m["train_flops"] for m in metas), rel=1e-6)


@pytest.mark.parametrize(
    "routing",
    [
        "top1",
        "full",
        "topk:2",
        "sample:1",
        "threshold:0.05",
        "nucleus:0.9",
        "oracle",
        "mixture",
        "sticky:0.9",
        "schedule:0.5,topk:2",
    ],
)
def test_sample_ensemble_every_routing(ddm_run, capsys, tmp_path, routing):
    out = tmp_path / "s.npz"
    code, _, err = cli(
        capsys,
        "sample",
        ddm_run,
        "--model",
        "ensemble",
        "--routing",
        routing,
        "--n",
        "6",
        "--sample-steps",
        "3",
        "--out",
        out,
    )
    assert code == 0, err
    z = np.load(out)
    assert z["images"].shape == (6, 1, 8, 8)
    w = z["routing"]
    assert w.shape == (6, 2) and np.allclose(w.sum(1), 1, atol=1e-5)
    if routing in ("top1", "oracle", "sample:1", "nucleus:0.9", "sticky:0.9"):
        # one expert per step: the trajectory mean is a mean of one-hot rows
        assert np.all((w * 3).round(5) == np.round(w * 3))
    if routing == "mixture":  # one expert for the whole trajectory
        assert set(np.unique(w)) <= {0.0, 1.0}


def test_sample_defaults_to_mixture_without_a_router(ddm_run, capsys, tmp_path):
    """The default routing needs no router: a RUN whose router is missing still samples."""
    run = tmp_path / "norouter"
    shutil.copytree(ddm_run, run)
    shutil.rmtree(run / "router")
    out = tmp_path / "m.npz"
    code, _, err = cli(capsys, "sample", run, "--model", "ensemble", "--n", "8", "--sample-steps", "2",
                       "--out", out)  # fmt: skip
    assert code == 0, err
    w = np.load(out)["routing"]
    assert set(np.unique(w)) <= {0.0, 1.0} and np.allclose(w.sum(1), 1)
    code, _, err = cli(capsys, "sample", run, "--model", "ensemble", "--routing", "top1",
                       "--n", "2", "--sample-steps", "2", "--out", out)  # fmt: skip
    assert code != 0 and "router" in err


def test_auto_routing_follows_the_kind_of_model(ddm_run, tmp_path):
    from decentdiff.ddm.defaults import AUTO_ROUTING
    from decentdiff.ddm.load import resolve_routing

    assert resolve_routing(Run(ddm_run), "auto") == AUTO_ROUTING[False] == "mixture"
    assert resolve_routing(Run(ddm_run), "topk:2") == "topk:2"
    cc = tmp_path / "cc"
    shutil.copytree(ddm_run, cc)
    toml = (cc / "run.toml").read_text()
    assert "class_cond = false" in toml
    (cc / "run.toml").write_text(toml.replace("class_cond = false", "class_cond = true"))
    # this RUN's partition (--by label) keeps every class in one cluster: mixture is exact for a
    # class-conditional model, so auto takes it; a k-means partition splits classes: top1
    with np.load(cc / "partition.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    assert str(arrays["method"]) == "label"
    assert resolve_routing(Run(cc), "AUTO") == "mixture"
    np.savez(cc / "partition.npz", **{**arrays, "method": np.str_("classes")})
    assert resolve_routing(Run(cc), "auto") == "mixture"
    np.savez(cc / "partition.npz", **{**arrays, "method": np.str_("kmeans")})
    assert resolve_routing(Run(cc), "AUTO") == AUTO_ROUTING[True] == "top1"


def test_drop_expert_and_single_expert(ddm_run, capsys, tmp_path):
    code, _, err = cli(
        capsys,
        "sample",
        ddm_run,
        "--model",
        "ensemble",
        "--routing",
        "full",
        "--drop-expert",
        "1",
        "--n",
        "4",
        "--sample-steps",
        "2",
        "--out",
        tmp_path / "d.npz",
    )
    assert code == 0, err
    assert np.allclose(np.load(tmp_path / "d.npz")["routing"][:, 1], 0)
    code, _, err = cli(
        capsys,
        "sample",
        ddm_run,
        "--model",
        "expert:1",
        "--n",
        "2",
        "--sample-steps",
        "2",
        "--out",
        tmp_path / "e.npz",
    )
    assert code == 0, err


def test_expert_is_isolated(tmp_path, source, capsys):
    """Expert k reads nothing of other shards (NaN there changes nothing) and writes only experts/k."""
    run = tmp_path / "iso"
    cli(capsys, "partition", run, "--data", source, "--parts", "2", "--by", "label")
    twin = tmp_path / "twin"
    shutil.copytree(run, twin)
    cfg = C.resolve(
        sets=["model.preset=tiny", "train.steps=3", "train.batch=8"], base=Run(run).base_config()
    )
    before = tree_hashes(run)
    train_expert(Run(run), 0, cfg, progress=False)
    after = tree_hashes(run)
    changed = {k for k in after if before.get(k) != after[k]}
    assert changed and all(k.startswith("experts/0/") for k in changed)
    # The same through the command line, which also logs the command: still only experts/1/.
    code, _, err = cli(capsys, "train", "expert", run, "--expert", "1", "--steps", "2", *TINY)
    assert code == 0, err
    again = tree_hashes(run)
    changed = {k for k in again if after.get(k) != again[k]} | (after.keys() - again.keys())
    assert "experts/1/commands.txt" in changed and all(k.startswith("experts/1/") for k in changed)

    r2 = Run(twin)
    data = r2.data(cfg, create=False)
    rec = load_partition(r2, data)
    poisoned = data.images[data.train_idx].astype(np.float32) / 127.5 - 1
    poisoned[rec.assignments != 0] = np.nan
    train_expert(r2, 0, cfg, progress=False, train_images=poisoned)
    for f in ("model", "ema"):
        a = (run / "experts" / "0" / f"{f}.safetensors").read_bytes()
        b = (twin / "experts" / "0" / f"{f}.safetensors").read_bytes()
        assert a == b


def test_ddm_bad_inputs(ddm_run, tmp_path, capsys, source):
    _bad(capsys, None, "train", "expert", tmp_path / "nopart", "--expert", "0", match="run.toml")
    empty = tmp_path / "np"
    cli(capsys, "train", "monolith", empty, "--data", source, "--steps", "1", *TINY)
    _bad(capsys, empty, "train", "expert", empty, "--expert", "0", match="decentdiff partition")
    _bad(capsys, ddm_run, "train", "expert", ddm_run, "--expert", "5", match="out of range")
    _bad(
        capsys,
        ddm_run,
        "sample",
        ddm_run,
        "--model",
        "ensemble",
        "--routing",
        "top7",
        "--out",
        tmp_path / "x.npz",
        match="topk:K",
    )
    _bad(
        capsys,
        ddm_run,
        "sample",
        ddm_run,
        "--model",
        "ensemble",
        "--routing",
        "topk:5",
        "--out",
        tmp_path / "x.npz",
        match="only 2",
    )
    _bad(
        capsys,
        ddm_run,
        "sample",
        ddm_run,
        "--model",
        "ensemble",
        "--drop-expert",
        "0",
        "--drop-expert",
        "1",
        "--out",
        tmp_path / "x.npz",
        match="every expert",
    )
    _bad(capsys, ddm_run, "partition", ddm_run, "--parts", "3", match="or --fresh")
    # K larger than the data, and K = 0.
    _bad(capsys, None, "partition", tmp_path / "k0", "--data", source, "--parts", "0", match=">= 1")
    _bad(
        capsys,
        None,
        "partition",
        tmp_path / "kbig",
        "--data",
        source,
        "--parts",
        "1000",
        "--by",
        "random",
        match="cannot make K=1000 parts",
    )
    # Missing expert and router checkpoints name the command that makes them.
    part_only = tmp_path / "po"
    cli(capsys, "partition", part_only, "--data", source, "--parts", "2", "--by", "label")
    _bad(
        capsys,
        part_only,
        "sample",
        part_only,
        "--model",
        "ensemble",
        "--out",
        tmp_path / "x.npz",
        match="train expert",
    )
    # Experts trained on another partition.
    other = tmp_path / "other"
    shutil.copytree(ddm_run, other)
    cli(capsys, "partition", other, "--parts", "2", "--by", "random", "--fresh", "--seed", "3")
    _bad(
        capsys,
        other,
        "sample",
        other,
        "--model",
        "ensemble",
        "--out",
        tmp_path / "x.npz",
        match="another partition",
    )


def test_class_conditional_ddm(tmp_path, source, capsys):
    """Experts and router take the class; guidance is applied inside each selected expert."""
    run = tmp_path / "cc"
    cc = ["--set", "model.class_cond=true", "--set", "train.batch=8"]
    assert cli(capsys, "partition", run, "--data", source, "--parts", "2", "--by", "random")[0] == 0
    assert cli(capsys, "train", "experts", run, "--steps", "2", *cc, *TINY)[0] == 0
    assert cli(capsys, "train", "router", run, "--steps", "2", *cc, *TINY)[0] == 0
    meta = json.loads((run / "router" / "meta.json").read_text())
    assert meta["router"]["num_classes"] == 4
    out = tmp_path / "s.npz"
    code, _, err = cli(
        capsys,
        "sample",
        run,
        "--model",
        "ensemble",
        "--routing",
        "topk:2",
        "--label",
        "3",
        "--guidance",
        "2.0",
        "--n",
        "3",
        "--sample-steps",
        "2",
        "--out",
        out,
    )
    assert code == 0, err
    assert (np.load(out)["labels"] == 3).all()
    # Guidance inside each expert, re-derived: Σ_k w_k · (v_k(∅) + w·(v_k(c) − v_k(∅))) with the
    # router's weights, each expert loaded on its own (not through the ensemble).
    import torch

    from decentdiff.ddm.load import load_ensemble
    from decentdiff.ddm.store import expert_dir
    from decentdiff.training.generative import load_generative

    ens, *_ = load_ensemble(Run(run), "full", guidance=2.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, *meta["image_shape"], generator=g)
    t = torch.rand(5, generator=g)
    c = torch.tensor([0, 1, 2, 3, 1])
    with torch.no_grad():
        w = ens.weights(x, t, c)
        want = torch.zeros_like(x)
        for k in range(2):
            v, unet, _, _ = load_generative(expert_dir(Run(run), k))
            vc, vu = v(x, t, c), v(x, t, torch.full_like(c, unet.num_classes))
            want += w[:, k].float().reshape(-1, 1, 1, 1) * (vu + 2.0 * (vc - vu))
        got = ens(x, t, c)
        plain = load_ensemble(Run(run), "full")[0](x, t, c)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.equal(got, plain)  # guidance changed the velocity

    # mixture routing draws each image's expert from p(cluster | class), counted here from the
    # data file and partition.npz directly.
    with np.load(source.removeprefix("npz:")) as z:
        labels = z["y"]
    with np.load(run / "partition.npz") as z:
        table = np.zeros((4, 2))
        for k in range(2):
            np.add.at(table, (labels[z[f"part_{k}"]], k), 1)
    mix, *_ = load_ensemble(Run(run), "mixture")
    np.testing.assert_array_equal(mix.prior.numpy(), table)
    # partition.npz stored the same counts, so sampling needs no data; without them (as after
    # `experts remove|add`) they are counted from the data again, with the same result.
    from decentdiff.ddm.membership import cluster_prior
    from decentdiff.ddm.store import partition_path

    with np.load(partition_path(Run(run))) as z:
        np.testing.assert_array_equal(z["prior_class_counts"], table)
        kept = {k: z[k] for k in z.files if not k.startswith("prior_")}
    np.savez(partition_path(Run(run)), **kept)
    cfg = C.resolve(base=Run(run).base_config())
    again = cluster_prior(Run(run), cfg, class_cond=True, num_classes=6)
    np.testing.assert_array_equal(again[:4], table)
    assert again.shape == (6, 2) and not again[4:].any()  # classes without images: zero rows

    # With no --guidance a class-conditional model of grey images samples at the grey default
    # (config.class_cond_guidance(1), not 1): bitwise the images of an explicit --guidance at
    # that scale, not those of --guidance 1; --set sample.guidance=1 and --guidance 1 still win.
    # This RUN's run.toml was written unconditional (by partition): the models decide.
    from decentdiff.loading import resolve_guidance

    want = C.class_cond_guidance(1)
    assert want != 1.0 and "class_cond = false" in (run / "run.toml").read_text()
    assert cfg.sample.guidance is None and resolve_guidance(Run(run), "ensemble", None) == want

    def draw(name, *extra):
        args = ["sample", run, "--model", "ensemble", "--routing", "full", "--n", "3"]
        args += ["--sample-steps", "2", "--label", "1", "--out", tmp_path / name, *extra]
        code, _, err = cli(capsys, *args)
        assert code == 0, err
        return np.load(tmp_path / name)["images"]

    default = draw("default.npz")
    np.testing.assert_array_equal(default, draw("g.npz", "--guidance", str(want)))
    none = draw("g1.npz", "--guidance", "1")
    assert not np.array_equal(default, none)
    np.testing.assert_array_equal(none, draw("s1.npz", "--set", "sample.guidance=1"))


def test_an_unconditional_run_has_no_guidance_default(ddm_run):
    """Guidance does nothing to an unconditional model: its default is 1, and eval records 1."""
    from decentdiff.loading import resolve_guidance

    assert resolve_guidance(Run(ddm_run), "ensemble", None) == 1.0
    assert resolve_guidance(Run(ddm_run), "expert:0", None) == 1.0


def test_the_guidance_default_follows_each_models_meta(tmp_path):
    """resolve_guidance reads the model's meta.json: a class-conditional model of grey images
    gets 2, of colour images 3 (a latent model: its pixels' channels), an unconditional one 1;
    a given scale is kept."""
    from decentdiff.loading import resolve_guidance

    def meta(**m):
        (tmp_path / "monolith").mkdir(exist_ok=True)
        (tmp_path / "monolith" / "meta.json").write_text(json.dumps(m))
        return resolve_guidance(Run(tmp_path), "monolith", None)

    assert meta(model={"class_cond": True}, image_shape=[1, 8, 8]) == 2.0
    assert meta(model={"class_cond": True}, image_shape=[3, 8, 8]) == 3.0
    latent = {"model": {"class_cond": True}, "image_shape": [4, 8, 8]}
    assert meta(**latent, vae={"pixel_shape": [1, 64, 64]}) == 2.0  # grey pixels, 4 latents
    assert meta(model={"class_cond": False}, image_shape=[3, 8, 8]) == 1.0
    assert resolve_guidance(Run(tmp_path), "monolith", 1.5) == 1.5
    assert C.resolve().sample.guidance is None  # unset unless named
