"""TensorBoard logging (issue 20, item 3): `--log tensorboard` writes event files that
TensorBoard's own reader reads back with the numbers of metrics.jsonl, accuracy.json and the eval
rows."""

import json
import struct

import numpy as np
import pytest

from _cli import cli
from decentdiff.events import EventWriter, crc32c

EventAccumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator"
).EventAccumulator


def read(directory):
    ea = EventAccumulator(str(directory))
    ea.Reload()
    return {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}


def test_crc32c_check_value_and_record_framing(tmp_path):
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C catalogue's check value
    w = EventWriter(tmp_path)
    w.scalars(3, {"a": 1.5, "skip": "text", "nan": float("nan"), "flag": True})
    data = w.path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]  # first record: the file version event
    assert data[12 + n + 4 :].startswith(struct.pack("<Q", len(data) - (12 + n + 4) - 16))
    assert read(tmp_path) == {"a": [(3, 1.5)]}


def test_training_router_and_eval_write_what_tensorboard_reads(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = np.zeros((64, 1, 8, 8), np.uint8)
    y = np.repeat(np.arange(2), 32)
    x[y == 0, 0, :4] = 220
    x[y == 1, 0, 4:] = 220
    x = np.clip(x.astype(int) + rng.integers(0, 30, x.shape), 0, 255).astype(np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    run = tmp_path / "run"
    tiny = ["--preset", "tiny", "-q", "--log", "tensorboard"]
    assert cli(capsys, "partition", run, "--data", f"npz:{tmp_path / 'd.npz'}", "--parts", 2,
               "--by", "label")[0] == 0  # fmt: skip
    code, _, err = cli(capsys, "train", "experts", run, "--steps", 6, "--set", "train.batch=8",
                       "--set", "train.log_every=2", *tiny)  # fmt: skip
    assert code == 0, err
    rows = [
        json.loads(x) for x in (run / "experts" / "0" / "metrics.jsonl").read_text().splitlines()
    ]
    got = read(run / "experts" / "0")
    assert [s for s, _ in got["train/loss"]] == [r["step"] for r in rows] == [2, 4, 6]
    np.testing.assert_allclose([v for _, v in got["train/loss"]], [r["loss"] for r in rows],
                               rtol=1e-6)  # fmt: skip
    assert {"train/lr", "train/img_per_s"} <= set(got)
    code, _, err = cli(capsys, "train", "router", run, "--steps", 4, "--batch", 8, *tiny)
    assert code == 0, err
    acc = json.loads((run / "router" / "accuracy.json").read_text())
    got = read(run / "router")
    assert [v for _, v in got["router/accuracy_vs_t"]] == pytest.approx(acc["accuracy"])
    assert [s for s, _ in got["router/accuracy_vs_t"]] == [round(1000 * t) for t in acc["t"]]
    code, _, err = cli(capsys, "train", "monolith", run, "--flop-match", *tiny)
    assert code == 0, err
    code, _, err = cli(capsys, "eval", run, "--model", "monolith", "--n", 8, "--sample-steps", 3, "-q",
                       "--log", "tensorboard")  # fmt: skip
    assert code == 0, err
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    got = read(run / "eval" / "tensorboard" / "monolith")
    assert got["eval/fid"] == [(3, pytest.approx(row["fid"], rel=1e-6))]
    assert got["eval/floor_fid"][0][1] == pytest.approx(row["floor"]["fid"], rel=1e-6)
    code, _, err = cli(capsys, "train", "router", run, "--steps", 4, "--log", "wandb", "-q")
    assert code == 2 and "train.log='wandb'" in err


def test_no_event_files_unless_asked(tmp_path, capsys):
    src = tmp_path / "d.npz"
    np.savez(src, x=np.random.default_rng(1).integers(0, 255, (40, 1, 8, 8), dtype=np.uint8),
             y=np.repeat(np.arange(2), 20))  # fmt: skip
    run = tmp_path / "r"
    assert (
        cli(capsys, "partition", run, "--data", f"npz:{src}", "--parts", 2, "--by", "label")[0] == 0
    )
    assert cli(capsys, "train", "experts", run, "--steps", 2, "--preset", "tiny", "-q", "--set",
               "train.batch=8")[0] == 0  # fmt: skip
    assert not list(run.rglob("events.out.tfevents.*"))
