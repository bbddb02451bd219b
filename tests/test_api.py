"""decentdiff as a library (docs/api.md): the documented examples run, and the Python API gives
bitwise what the command line gives."""

import doctest
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import decentdiff
from _cli import cli

DOCS = Path(__file__).resolve().parents[1] / "docs" / "api.md"


@pytest.mark.slow
def test_the_examples_of_docs_api_md_run():
    result = doctest.testfile(str(DOCS), module_relative=False, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 15 and result.failed == 0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("api") / "run"
    run = decentdiff.load(path)
    run.partition(2, data="digits", by="label")
    kw = dict(preset="tiny", steps=2, progress=False, sets=["train.batch=8"])
    run.train_experts(**kw)
    run.train_monolith(flop_match=True, preset="tiny", progress=False)
    return path


def test_sample_is_bitwise_the_command_line_sample(trained, tmp_path, capsys):
    run = decentdiff.load(trained)
    for model in ("monolith", "expert:1"):
        out = tmp_path / f"{model.replace(':', '')}.npz"
        code, _, err = cli(capsys, "sample", trained, "--model", model, "--n", 6, "--sample-steps", 3,
                           "--seed", 4, "--device", "cpu", "--out", out)  # fmt: skip
        assert code == 0, err
        mine = run.sample(6, model=model, steps=3, seed=4, device="cpu")
        assert torch.equal(mine.images, torch.from_numpy(np.load(out)["images"]))
        assert mine.solver == "euler" and mine.gflops_per_image > 0


def test_evaluate_gives_the_eval_rows_numbers_for_the_same_images(trained, capsys):
    code, _, err = cli(capsys, "eval", trained, "--model", "monolith", "--n", 12, "--sample-steps", 3,
                       "--device", "cpu", "-q")  # fmt: skip
    assert code == 0, err
    lines = (trained / "metrics.jsonl").read_text().splitlines()
    row = json.loads(lines[-1])
    run = decentdiff.load(trained)
    images = run.sample(12, model="monolith", steps=3, device="cpu").images
    scores = run.evaluate(images)
    for k in ("fid", "kid_mean", "precision", "recall", "n_real"):
        assert scores[k] == pytest.approx(row[k], rel=1e-6), k
    assert scores["floor"] == row["floor"]
    # Nothing was appended by evaluate().
    assert (trained / "metrics.jsonl").read_text().splitlines() == lines
    # Other images, other numbers: the score is of the images given.
    worse = run.evaluate(torch.zeros_like(images))
    assert worse["fid"] > scores["fid"]


def test_bad_input_is_one_clear_error(trained):
    from decentdiff.errors import ConfigError

    run = decentdiff.load(trained)
    with pytest.raises(ConfigError, match="unknown --model"):
        run.sample(2, model="gan")
    with pytest.raises(ConfigError, match=r"images must be \(N, C, H, W\)"):
        run.evaluate(np.zeros((3, 8, 8), np.float32))
