"""folder:DIR and cmnist5k from the command line: bad input is one line, exit 2 and no RUN
written; a flat folder of mixed images and cmnist5k partition and train (tiny, a few steps)."""

import os
import struct
import zlib

import numpy as np
import pytest
import tomllib
from PIL import Image

from _cli import _bad, cli

TINY = ["--preset", "tiny", "-q", "--set", "train.batch=8", "--set", "train.threads=1"]


def png_header(width, height):
    """A PNG that only has a header (IHDR + IEND): its size can be read, its pixels cannot."""

    def chunk(kind, data):
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _flat(d, n=24):
    """Mixed sizes, modes and formats, two colours (so two clusters exist)."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        w, h = (int(v) for v in rng.integers(12, 40, 2))
        a = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
        a[..., i % 2] += 180
        img = Image.fromarray(a)
        if i % 4 == 3:
            img = img.convert("L")
        img.save(d / f"{i:02d}.{('png', 'jpg', 'webp')[i % 3]}")
    return d


BAD = {
    "empty": (lambda d: None, "no PNG/JPEG/WebP images"),
    "not-an-image": (lambda d: (d / "x.png").write_text("text"), "cannot read image x.png"),
    "one-pixel": (lambda d: Image.new("RGB", (1, 1)).save(d / "x.png"), "x.png is 1x1 pixels"),
    "huge": (lambda d: (d / "x.png").write_bytes(png_header(20000, 20000)), "67,108,864"),
    "symlink-loop": (lambda d: os.symlink("x.png", d / "x.png"), "symlink loop"),
}


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("command", ["partition", "train"])
def test_bad_folders_on_the_command_line(tmp_path, capsys, case, command):
    make, match = BAD[case]
    d = tmp_path / "data"
    d.mkdir()
    if case != "empty":
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(d / "ok.png")
    make(d)
    run = tmp_path / "run"
    if command == "partition":
        args = ["partition", run, "--data", f"folder:{d}", "--parts", "2"]
    else:
        args = ["train", "monolith", run, "--data", f"folder:{d}", "--steps", "2", *TINY]
    _bad(capsys, None, *args, match=match)
    assert not run.exists(), "a failing command wrote a RUN"


def test_data_show_a_bad_option(capsys):
    _bad(capsys, None, "data", "show", "digits", "--set", "data.channels=2", match="data.channels")
    _bad(capsys, None, "data", "show", "digits", "--set", "data.size=abc", match="data.size")


def test_flat_folder_partition_and_train(tmp_path, capsys, monkeypatch):
    d = _flat(tmp_path / "flat")
    run = tmp_path / "run"
    # Mixed sizes without data.size: one line naming the fix.
    _bad(capsys, None, "partition", run, "--data", f"folder:{d}", "--parts", "2", match="data.size")
    size = ["--set", "data.size=16"]
    code, out, err = cli(capsys, "partition", run, "--data", f"folder:{d}", "--parts", "2", *size)
    assert code == 0, err
    recorded = tomllib.loads((run / "run.toml").read_text())["data"]
    assert recorded["size"] == 16 and recorded["shape"] == [3, 16, 16]
    # The RUN remembers data.size: the expert trains without repeating it.
    code, out, err = cli(capsys, "train", "expert", run, "--expert", "0", "--steps", "3", *TINY)
    assert code == 0, err
    assert (run / "experts" / "0" / "model.safetensors").is_file()
    # Another size is other data: refused by fingerprint, nothing changed.
    _bad(
        capsys,
        run,
        "train",
        "expert",
        run,
        "--expert",
        "0",
        "--steps",
        "4",
        "--set",
        "data.size=12",
        *TINY,
        match="fingerprint",
    )
    # Unlabeled data: the classifier features would need labels; said before sampling.
    import decentdiff.generate

    def no_sampling(*a, **k):
        raise AssertionError("sampled before the features were checked")

    monkeypatch.setattr(decentdiff.generate, "generate", no_sampling)
    _bad(capsys, run, "eval", run, "--model", "expert:0", "--n", "4", "--eval-features", "classifier",
         match="--eval-features inception")  # fmt: skip


def test_cmnist5k_partition_and_train(tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = cli(capsys, "data", "show", "cmnist5k")
    assert code == 0 and "(3, 28, 28)" in out and "classes      10" in out, out
    code, out, err = cli(
        capsys, "partition", run, "--data", "cmnist5k", "--parts", "2", "--by", "label"
    )
    assert code == 0, err
    code, out, err = cli(capsys, "train", "expert", run, "--expert", "1", "--steps", "2", *TINY)
    assert code == 0, err
    assert tomllib.loads((run / "run.toml").read_text())["data"]["shape"] == [3, 28, 28]
