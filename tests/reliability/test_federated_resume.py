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

COMMON = ["--data", "digits", "--preset", "tiny", "--local-steps", 2, "--batch", 16]
COMMON += ["--eval-n", 0, "--quiet", "--set", "train.threads=1"]
#: FULL at full precision: the global model; UDEC with 8-bit updates under label skew: the
#: server's shared parts and every client's personal model (its private parts come back from disk).
CASES = {
    "full": ["--method", "full", "--clients", 2],
    "udec-q8": ["--method", "udec", "--quantize", 8, "--clients", 3, "--split", "dirichlet:1"],
}


def _models(run):
    """Every checkpointed model of a federated run: global or shared, and each client's own."""
    fed = run / "federated"
    files = sorted(fed.glob("global/model.safetensors")) + sorted(
        fed.glob("shared/model.safetensors")
    )
    files += sorted(fed.glob("clients/*/model.safetensors"))
    return {str(f.relative_to(fed)): load_file(f) for f in files}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_stopped_and_resumed_federation_equals_an_uninterrupted_one(tmp_path, capsys, case):
    once, twice = tmp_path / "once", tmp_path / "twice"
    args = [*COMMON, *CASES[case]]
    code, _, err = cli(capsys, "fed", "run", once, *args, "--rounds", 3)
    assert code == 0, err
    code, _, err = cli(capsys, "fed", "run", twice, *args, "--rounds", 2)
    assert code == 0, err
    after_two = _models(twice)
    code, _, err = cli(capsys, "fed", "run", twice, *args, "--rounds", 3)
    assert code == 0, err
    a, b = _models(once), _models(twice)
    assert a.keys() == b.keys() and len(a) == (1 if case == "full" else 4)
    for name in a:
        assert a[name].keys() == b[name].keys()
        drift = [k for k in a[name] if not torch.equal(a[name][k], b[name][k])]
        assert not drift, f"resumed federation drifted in {name}: {drift[:3]}"
        # round 3 really trained every model
        assert any(not torch.equal(after_two[name][k], b[name][k]) for k in b[name]), name
