"""What ``fed run --secagg`` costs per round against plain FedAvg: bytes on the wire (all four
SecAgg+ stages, each way) and wall time, on the same tiny federation (digits, the tiny UNet,
FULL), the real ServerApp loop (``server_app.serve``) and ClientApp with its SecAgg+ mod, run in
this process (no Ray: Ray's start-up would swamp a tiny round). Each message is copied on its way,
as the wire would. Standalone: ``.venv/bin/python benchmarks/secagg_cost.py [--clients 3]
[--rounds 2] [--out DIR]``; prints one line per round and mode and writes DIR/secagg_cost.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any


class WireGrid:
    """Flower's Grid as Strategy.start uses it; the ClientApp (with its mods) runs in-process."""

    def __init__(self, n: int) -> None:
        from flwr.app import Context, RecordDict

        self.ctx = {
            10 + i: Context(
                run_id=1,
                node_id=10 + i,
                node_config={"partition-id": i, "num-partitions": n, "threads": 1},
                state=RecordDict(),
                run_config={},
            )
            for i in range(n)
        }

    def get_node_ids(self) -> list[int]:
        return list(self.ctx)

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Any]:
        from decentdiff.federated.client_app import app

        out = []
        for m in messages:
            reply = app(copy.deepcopy(m), self.ctx[m.metadata.dst_node_id])
            out.append(copy.deepcopy(reply))
        return out


def run(mode: str, root: Path, clients: int, rounds: int) -> list[dict[str, Any]]:
    from flwr.supercore.task_identity import TaskIdentity

    from decentdiff import config as C
    from decentdiff.federated.server_app import serve
    from decentdiff.federated.settings import FedSettings, build_settings, fed_base
    from decentdiff.federated.store import read_rounds, record_settings
    from decentdiff.run import load_data

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    cfg = C.resolve(base=fed_base())
    cfg.data.source, cfg.model.preset, cfg.train.batch = "digits", "tiny", 8
    d = load_data(cfg.data)
    options = FedSettings(
        clients=clients, rounds=rounds, local_steps=1, client_threads=1, secagg=mode == "secagg"
    ).validate()
    run_dir = root / mode
    s = build_settings(
        cfg, options, image_shape=d.shape, num_classes=d.num_classes, run_dir=str(run_dir)
    )
    record_settings(run_dir, s)
    serve(WireGrid(clients), s)
    return read_rounds(run_dir)


def main() -> None:
    import logging

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    logging.getLogger("flwr").setLevel(logging.ERROR)
    out = a.out or Path(tempfile.mkdtemp(prefix="secagg-cost-"))
    result: dict[str, Any] = {"clients": a.clients, "rounds": a.rounds, "modes": {}}
    for mode in ("plain", "secagg"):
        rows = run(mode, out, a.clients, a.rounds)
        per = [
            {"round": r["round"], "seconds": r["seconds"], "up_wire": r["up_wire"],
             "down_wire": r["down_wire"]}
            for r in rows
        ]  # fmt: skip
        result["modes"][mode] = per
        for p in per:
            print(f"{mode:7s} round {p['round']}: {p['seconds']:.2f} s, up {p['up_wire']:,} B, "
                  f"down {p['down_wire']:,} B")  # fmt: skip
    plain, sec = result["modes"]["plain"], result["modes"]["secagg"]
    if a.rounds > 1:  # round 1 of the first mode pays the process's warm-up (imports, data)
        plain, sec = plain[1:], sec[1:]
    for key in ("seconds", "up_wire", "down_wire"):
        ratio = statistics.mean(s[key] for s in sec) / statistics.mean(p[key] for p in plain)
        result[f"{key}_ratio"] = ratio
        print(f"secagg / plain, {key} per round (from round 2): {ratio:.2f}×")
    out.mkdir(parents=True, exist_ok=True)
    (out / "secagg_cost.json").write_text(json.dumps(result, indent=1))
    print(f"-> {out / 'secagg_cost.json'}")


if __name__ == "__main__":
    main()
