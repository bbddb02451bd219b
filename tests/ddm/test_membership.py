"""Data owners leaving (experts remove) and joining (experts add) a DDM run."""

import json

import numpy as np
import pytest
import torch

from _cli import _bad, cli, tree_hashes
from decentdiff import config as C
from decentdiff.cli import main
from decentdiff.ddm.distill import distill
from decentdiff.ddm.load import load_ensemble
from decentdiff.ddm.membership import added_sources, member_data
from decentdiff.ddm.store import load_partition
from decentdiff.run import Run

TINY = ["--preset", "tiny", "-q"]
SMALL = ["--set", "train.batch=12", "--steps", "3", *TINY]


def _family(n, rows, seed, shape=(1, 8, 8)):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 40, (n, *shape))
    x[:, :, rows] += 200
    return np.clip(x, 0, 255).astype(np.uint8)


@pytest.fixture
def run_dir(tmp_path):
    # Three visually distinct clusters (bright rows 0-2 / 3-5 / 6-7), labelled 0, 1, 2.
    x = np.concatenate(
        [_family(20, slice(0, 3), 0), _family(20, slice(3, 6), 1), _family(20, slice(6, 8), 2)]
    )
    np.savez(tmp_path / "three.npz", x=x, y=np.repeat(np.arange(3), 20))
    run = tmp_path / "run"
    main(
        [
            "partition",
            str(run),
            "--data",
            f"npz:{tmp_path / 'three.npz'}",
            "--parts",
            "3",
            "--by",
            "label",
        ]
    )
    main(["train", "experts", str(run), *SMALL])
    main(["train", "router", str(run), *SMALL])
    return run


def _cfg(run):
    return C.resolve(
        None, ["model.preset=tiny", "train.steps=3", "train.batch=12"], base=Run(run).base_config()
    )


def test_remove_expert_renumbers_and_retrains_only_the_router(run_dir, capsys):
    r = Run(run_dir)
    before = load_partition(r)
    w2 = (run_dir / "experts" / "2" / "model.safetensors").read_bytes()
    w0 = (run_dir / "experts" / "0" / "model.safetensors").read_bytes()
    router_before = (run_dir / "router" / "model.safetensors").read_bytes()
    code, out, err = cli(capsys, "experts", "remove", run_dir, "1", *SMALL)
    assert code == 0, err
    rec = load_partition(r)
    assert rec.num_parts == 2
    # Cluster 1's rows are withdrawn; old cluster 2 is now cluster 1.
    old = before.assignments
    assert (rec.assignments[old == 1] == -1).all()
    assert (rec.assignments[old == 2] == 1).all() and (rec.assignments[old == 0] == 0).all()
    # Experts' weights are moved, not retrained; expert 2 (old) no longer exists.
    assert (run_dir / "experts" / "1" / "model.safetensors").read_bytes() == w2
    assert (run_dir / "experts" / "0" / "model.safetensors").read_bytes() == w0
    assert not (run_dir / "experts" / "2").exists()
    # The router was retrained on the remaining members only: 2 outputs, none of cluster 1's rows.
    assert (run_dir / "router" / "model.safetensors").read_bytes() != router_before
    rmeta = json.loads((run_dir / "router" / "meta.json").read_text())
    assert rmeta["num_parts"] == 2 and rmeta["members"] == int((old != 1).sum())
    images, _, clusters, _ = member_data(r, _cfg(run_dir))
    assert len(images) == int((old != 1).sum()) and set(clusters.tolist()) == {0, 1}
    # Nothing trained on cluster 1 remains; the record says so.
    log = json.loads((run_dir / "membership.json").read_text())["events"][0]
    assert (
        log["event"] == "remove"
        and log["expert"] == 1
        and log["withdrawn_images"] == int((old == 1).sum())
    )
    # The ensemble loads (partition ids consistent) and samples.
    ens, metas, _, _ = load_ensemble(r, "full")
    with torch.no_grad():
        v = ens(torch.randn(3, 1, 8, 8), torch.full((3,), 0.5))
    assert v.shape == (3, 1, 8, 8) and torch.isfinite(v).all()
    # Distillation after a withdrawal uses the remaining members only (no teacher for cluster 1).
    meta = distill(r, _cfg(run_dir), steps=2, batch=4, progress=False)
    assert meta["num_images"] == int((old != 1).sum()) and meta["num_parts"] == 2
    # The report states the withdrawal, with the number of images withdrawn.
    code, out, err = cli(capsys, "report", run_dir)
    assert code == 0, err
    report = (run_dir / "report.md").read_text()
    assert "Membership changes" in report
    assert f"Expert 1 withdrawn ({int((old == 1).sum())} training images" in report


def test_remove_the_last_expert_is_refused(run_dir, capsys):
    main(["experts", "remove", str(run_dir), "2", *SMALL])
    main(["experts", "remove", str(run_dir), "1", *SMALL])
    _bad(capsys, run_dir, "experts", "remove", run_dir, "0", *SMALL, match="last expert")
    _bad(capsys, run_dir, "experts", "remove", run_dir, "5", *SMALL, match="out of range")


def test_add_expert_leaves_other_experts_byte_identical(run_dir, tmp_path, capsys):
    new = _family(30, slice(2, 5), 7)
    np.savez(tmp_path / "new.npz", x=new, y=np.zeros(30, np.int64))
    before = {k: tree_hashes(run_dir / "experts" / str(k)) for k in range(3)}
    code, out, err = cli(
        capsys, "experts", "add", run_dir, "--data", f"npz:{tmp_path / 'new.npz'}", *SMALL
    )
    assert code == 0, err
    assert {k: tree_hashes(run_dir / "experts" / str(k)) for k in range(3)} == before
    rec = load_partition(Run(run_dir))
    assert rec.num_parts == 4 and 3 in added_sources(Run(run_dir))
    meta3 = json.loads((run_dir / "experts" / "3" / "meta.json").read_text())
    images, _, clusters, _ = member_data(Run(run_dir), _cfg(run_dir))
    # The new expert saw only the new source's training part; the router saw every member.
    assert meta3["shard_size"] == int((clusters == 3).sum()) == meta3["num_images"]
    assert json.loads((run_dir / "router" / "meta.json").read_text())["num_parts"] == 4
    ens, *_ = load_ensemble(Run(run_dir), "top1")
    with torch.no_grad():
        assert torch.isfinite(ens(torch.randn(2, 1, 8, 8), torch.full((2,), 0.3))).all()
    code, out, err = cli(capsys, "report", run_dir)
    assert code == 0, err
    report = (run_dir / "report.md").read_text()
    assert f"Expert 3 added: trained alone on {meta3['shard_size']} images" in report
    assert "(added: `npz:" in report


def test_add_data_of_another_shape_is_one_line(run_dir, tmp_path, capsys):
    np.savez(tmp_path / "big.npz", x=np.zeros((10, 1, 12, 12), np.uint8))
    _bad(
        capsys,
        run_dir,
        "experts",
        "add",
        run_dir,
        "--data",
        f"npz:{tmp_path / 'big.npz'}",
        *SMALL,
        match="shape",
    )


def test_withdrawal_leaves_nothing_trained_on_the_withdrawn_cluster(tmp_path, capsys):
    """Issue 19, item 4. Two RUNs identical except that the withdrawn cluster's images are poisoned
    in one of them (inverted pixels, a marker no model could miss). Monolith and student trained
    before the withdrawal are deleted by it; after `experts remove 1`, the retrained router, the
    remaining experts and a student distilled afterwards are bitwise equal across the two RUNs:
    nothing left depends on the withdrawn images."""
    x = np.concatenate(
        [_family(20, slice(0, 3), 0), _family(20, slice(3, 6), 1), _family(20, slice(6, 8), 2)]
    )
    y = np.repeat(np.arange(3), 20)
    np.savez(tmp_path / "clean.npz", x=x, y=y)
    main(["partition", str(tmp_path / "clean"), "--data", f"npz:{tmp_path / 'clean.npz'}",
          "--parts", "3", "--by", "label"])  # fmt: skip
    # The label whose images form cluster 1 (cluster ids need not equal labels).
    r = Run(tmp_path / "clean")
    data = r.data(_cfg(tmp_path / "clean"), create=False)
    (label,) = set(data.labels[data.train_idx][load_partition(r).assignments == 1].tolist())
    poisoned = x.copy()
    poisoned[y == label] = 255 - poisoned[y == label]
    np.savez(tmp_path / "poisoned.npz", x=poisoned, y=y)
    main(["partition", str(tmp_path / "poisoned"), "--data", f"npz:{tmp_path / 'poisoned.npz'}",
          "--parts", "3", "--by", "label"])  # fmt: skip
    runs, weights = {}, {}
    for name in ("clean", "poisoned"):
        run = tmp_path / name
        main(["train", "experts", str(run), *SMALL])
        main(["train", "router", str(run), *SMALL])
        main(["train", "monolith", str(run), *SMALL])
        weights[name] = {
            rel: (run / rel).read_bytes()
            for rel in ("router/model.safetensors", "experts/1/model.safetensors")
        }
        distill(Run(run), _cfg(run), steps=2, batch=4, progress=False)
        assert (run / "monolith").is_dir() and (run / "distilled").is_dir()
        code, _, err = cli(capsys, "experts", "remove", run, "1", *SMALL)
        assert code == 0, err
        assert not (run / "monolith").exists() and not (run / "distilled").exists()
        log = json.loads((run / "membership.json").read_text())["events"][0]
        assert set(log["deleted"]) == {"monolith", "distilled", "router"}
        distill(Run(run), _cfg(run), steps=2, batch=4, progress=False)
        runs[name] = run
    clean, bad = runs["clean"], runs["poisoned"]
    # The check can fail: before the withdrawal the poison did reach the router and expert 1.
    for rel in weights["clean"]:
        assert weights["clean"][rel] != weights["poisoned"][rel], rel
    for rel in ("router/model.safetensors", "router/ema.safetensors",
                "experts/0/model.safetensors", "experts/1/model.safetensors",
                "distilled/model.safetensors", "distilled/ema.safetensors"):  # fmt: skip
        assert (clean / rel).read_bytes() == (bad / rel).read_bytes(), rel
    assert not (clean / "experts" / "2").exists()
