"""Issue 19, item 5: for every method the bytes a federation sends each way equal `fed bytes`'
prediction, round by round summed. The federations run through the real ServerApp loop and
ClientApp handler in this process (the server counts the bytes of the ArrayRecords it sends and
receives, so the transport does not change them); the Ray simulation's own count is checked by
tests/federated/test_simulation.py (UDEC, 8-bit)."""

import json

import pytest

pytest.importorskip("flwr")

from tests._cli import cli
from tests.federated._flower_fakes import _task_identity, serve_in_process  # noqa: F401 (autouse)

from decentdiff.federated.store import read_rounds


@pytest.mark.parametrize(("method", "quantize"), [("usplit", 0), ("ulatdec", 0), ("full", 8)])
def test_bytes_measured_equal_bytes_predicted(capsys, tmp_path, method, quantize):
    run = tmp_path / "run"
    keep = method == "usplit"  # one federation carries Adam between rounds (issue 21)
    # ULATDEC with one FULL round first (--full-rounds): round 1 sends and reports everything.
    full = 1 if method == "ulatdec" else 0
    serve_in_process(run, clients=2, method=method, quantize=quantize, rounds=2, local_steps=1,
                     client_state="keep" if keep else "reset", full_rounds=full)  # fmt: skip
    rows = read_rounds(run)
    assert [r["round"] for r in rows] == [1, 2] and all(r["accepted"] == 2 for r in rows)
    for i in range(2):  # with keep each client's Adam ran on over both rounds (1 step each)
        carry_dir = run / "federated" / "clients" / str(i) / "carry"
        assert (carry_dir / "2" / "meta.json").is_file() == keep
        if keep:
            from decentdiff.federated.client import load_carry

            c = load_carry(run / "federated" / "clients" / str(i), 2)
            assert c.offset == 2 and int(c.optimizer["opt.0.step"]) == 2
    code, out, _ = cli(capsys, "fed", "bytes", "--preset", "tiny", "--clients", 2, "--rounds", 2,
                       "--quantize", quantize, "--json", "--full-rounds", full)  # fmt: skip
    assert code == 0
    want = json.loads(out)[method]
    if full:  # round 1 reported the whole model, round 2 only ULATDEC's parts, but it received
        # the whole averaged model (ULATDEC's own round 2 would receive its parts only)
        assert rows[0]["up"] > rows[1]["up"] and rows[0]["down"] == rows[1]["down"]
    assert sum(r["up"] for r in rows) == want["up"] > 0
    assert sum(r["down"] for r in rows) == want["down"] > 0
