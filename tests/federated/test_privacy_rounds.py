"""DP rounds through the real ServerApp loop and ClientApp handler in this process: the (ε, δ)
per round in rounds.jsonl, client-side adaptive clipping with quantised USPLIT updates, resume."""

import pytest

pytest.importorskip("flwr")

from tests.federated._flower_fakes import _task_identity, serve_in_process  # noqa: F401

from decentdiff.federated import privacy as D
from decentdiff.federated.store import read_rounds


def test_server_side_dp_rounds_report_the_accountants_epsilon_and_resume(tmp_path):
    common = dict(method="full", local_steps=1, dp="server", dp_clip=0.05, noise_multiplier=2.0)
    serve_in_process(tmp_path, clients=3, rounds=2, **common)
    rows = read_rounds(tmp_path)
    assert [r["dp"]["releases"] for r in rows] == [1, 2]
    for r in rows:
        dp = r["dp"]
        assert dp["epsilon"] == D.epsilon(dp["releases"], 2.0, 1e-5)
        assert dp["epsilon_rdp"] >= dp["epsilon"] and dp["delta"] == 1e-5
        assert dp["clip"] == 0.05 and len(dp["norms"]) == 3
    assert rows[0]["dp"]["epsilon"] < rows[1]["dp"]["epsilon"]
    serve_in_process(tmp_path, clients=3, rounds=3, **common)  # resumed: the count goes on
    rows = read_rounds(tmp_path)
    assert [r["dp"]["releases"] for r in rows] == [1, 2, 3]
    assert D.final(rows)["epsilon"] == D.epsilon(3, 2.0, 1e-5)
    assert "ε = " in D.summary_line(rows)


def test_client_side_adaptive_clipping_with_quantised_usplit(tmp_path):
    """Clients clip before encoding 8-bit updates and report whether they were within C; the
    server's C for round 2 is round 1's next_clip, and every update it combined has norm ≤ C
    (up to the quantisation error it re-clips)."""
    serve_in_process(tmp_path, clients=4, rounds=2, method="usplit", local_steps=1, quantize=8,
                     dp="client", dp_clip=1e-3, noise_multiplier=0.5, dp_adaptive=True,
                     dp_count_std=1.0)  # fmt: skip
    rows = read_rounds(tmp_path)
    assert all(r["complete"] and r["accepted"] == 4 for r in rows)
    assert rows[1]["dp"]["clip"] == rows[0]["dp"]["next_clip"]
    for r in rows:
        assert r["dp"]["mode"] == "client" and r["dp"]["sigma_model"] > 0.5
        assert all(n <= r["dp"]["clip"] * 1.05 for n in r["dp"]["norms"])
        assert r["dp"]["epsilon"] == D.epsilon(r["dp"]["releases"], 0.5, 1e-5)
