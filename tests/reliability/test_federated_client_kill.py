"""A federated client process SIGKILLed in the middle of a round does not stop the federation.

`decentdiff fed run` runs as a user runs it (a subprocess). Each client records what it is doing
in RUN/federated/live/client-<i>.json (round, state, PID); as soon as one says it is training
round 2, that process (a Ray worker of this test's own process tree) is killed with SIGKILL. Ray
restarts the worker and re-runs its task; since a client round is a pure function of (seed,
round, client), every round completes with all clients and the final global model is bitwise the
one of a federation that nobody killed (run in-process, through the same ServerApp loop and
ClientApp handler: the transport changes no bit). (Found by this test: without the restart, Flower 1.41
kept the dead actor in its pool and every later task sent to it failed, so from round 2 on the
rounds were incomplete and the global model froze.)
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("flwr")

from tests.federated._flower_fakes import _task_identity, serve_in_process  # noqa: F401 (autouse)


def _descendants(root: int) -> set[int]:
    """PIDs in the process tree under ``root`` (from ps's pid/ppid table)."""
    out = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        pid, ppid = map(int, line.split())
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [root]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in found:
                found.add(c)
                todo.append(c)
    return found


def _busy_client(run, root: int, round_: int):
    """(partition, pid) of a client that its own marker (RUN/federated/live/client-<i>.json)
    says is training ``round_`` in a process of the federation started as ``root``; else None.
    Only a process of this test's own tree is ever returned."""
    mine = _descendants(root)
    for f in sorted((run / "federated" / "live").glob("client-*.json")):
        try:
            m = json.loads(f.read_text())
        except (OSError, ValueError):
            continue  # replaced atomically, but a reader may still race the first write
        if m["round"] == round_ and m["state"] == "training" and m["pid"] in mine:
            return m["partition"], m["pid"]
    return None


@pytest.mark.slow
def test_a_client_killed_mid_round_does_not_stop_the_federation(tmp_path):
    run, twin = tmp_path / "fed", tmp_path / "twin"
    args = ["--data", "digits", "--preset", "tiny", "--clients", "3", "--rounds", "2"]
    # 25 steps of 32 images: a client round of ~2 s, against a poll every 0.1 s for the kill
    args += ["--local-steps", "25", "--batch", "32", "--min-replies", "2"]
    args += ["--n", "0", "--quiet", "--set", "train.threads=1"]
    args += ["--recipe", "paper"]  # the config of serve_in_process's twin (fed_base)
    proc = subprocess.Popen(
        [sys.executable, "-m", "decentdiff", "fed", "run", str(run), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    rounds = run / "federated" / "rounds.jsonl"
    killed, rounds_at_kill, marker_after = None, None, None
    # Deadlines only a hung run reaches: on a loaded machine (two CPU hogs beside it) 300 s
    # was not enough for the federation to finish its rounds.
    deadline = time.monotonic() + 900
    try:
        while killed is None and time.monotonic() < deadline and proc.poll() is None:
            busy = _busy_client(run, proc.pid, round_=2)
            if busy is not None:
                partition, killed = busy
                os.kill(killed, signal.SIGKILL)
                rounds_at_kill = rounds.read_text().count("\n")
                marker = run / "federated" / "live" / f"client-{partition}.json"
                marker_after = json.loads(marker.read_text())
            time.sleep(0.1)
        out, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed is not None, "no client was seen training round 2"
    assert rounds_at_kill == 1, "the kill came after round 2 had finished: not mid-round"
    # The killed process never wrote "done": it died in the middle of its task.
    assert marker_after["pid"] == killed and marker_after["state"] == "training"
    assert proc.returncode == 0, err[-3000:]
    rows = [json.loads(x) for x in rounds.read_text().splitlines() if x.strip()]
    assert [r["round"] for r in rows] == [1, 2]
    for r in rows:
        statuses = [c["status"] for c in r["clients"]]
        assert r["complete"] and r["accepted"] == 3, f"round {r['round']}: {statuses}"
    model = load_file(run / "federated" / "global" / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in model.values() if v.is_floating_point())
    # the same federation, nobody killed: bitwise the same global model
    serve_in_process(twin, clients=3, method="full", rounds=2, local_steps=25, batch=32,
                     min_replies=2, sets=["train.threads=1"])  # fmt: skip
    ref = load_file(twin / "federated" / "global" / "model.safetensors")
    assert ref.keys() == model.keys()
    assert all(torch.equal(ref[k], model[k]) for k in ref), "the re-run client changed the result"
