"""A federation stopped between rounds and started again ends where an uninterrupted one ends.

The server checkpoints the global model after every round and each client's round is a pure
function of (seed, round, client) — its noise, its batches, its fresh Adam — so a run of 2 rounds
resumed to 3 must give bitwise the global model of 3 rounds in one go. (The process here stops
cleanly between rounds; a SIGKILL inside a round is covered by the per-round checkpoint being
written atomically, as for every checkpoint — see test_crash_resume.py.)
"""

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("flwr")

from _cli import cli

COMMON = ["--data", "digits", "--preset", "tiny", "--clients", 2, "--method", "full"]
COMMON += ["--local-steps", 2, "--batch", 16, "--eval-n", 0, "--quiet"]
COMMON += ["--set", "train.threads=1"]


@pytest.mark.slow
def test_stopped_and_resumed_federation_equals_an_uninterrupted_one(tmp_path, capsys):
    once, twice = tmp_path / "once", tmp_path / "twice"
    code, _, err = cli(capsys, "fed", "run", once, *COMMON, "--rounds", 3)
    assert code == 0, err
    code, _, err = cli(capsys, "fed", "run", twice, *COMMON, "--rounds", 2)
    assert code == 0, err
    after_two = load_file(twice / "federated" / "global" / "model.safetensors")
    code, _, err = cli(capsys, "fed", "run", twice, *COMMON, "--rounds", 3)
    assert code == 0, err
    a = load_file(once / "federated" / "global" / "model.safetensors")
    b = load_file(twice / "federated" / "global" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed federation drifted"
    assert any(not torch.equal(after_two[k], b[k]) for k in b)  # round 3 really trained
