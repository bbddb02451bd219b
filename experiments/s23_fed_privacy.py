"""Study 23: the price of client-level differential privacy in FID.

Study 21's honest federation (FED's budget: mnist5k, flow matching, 5 IID clients x 10 rounds x
20 local steps at batch 64, the ``tiny`` UNet, study 16's central recipe, FedAvg FULL) with
``--dp server``: the server clips each client's update to norm C = 1 (about the median update norm
here: 0.7-1.3 over the first rounds) and adds Gaussian noise of std sigma * C / 5 per weight.
Arms: no DP (study 21's ``fedavg`` honest runs, the same command), sigma picked by the exact
accountant for epsilon 8 and 1 at delta 1e-5 after the 10 rounds (``--target-epsilon``), and two
small fixed sigmas (1e-3, 1e-2) whose epsilon is astronomically large, to show where the noise
starts to cost FID. FID on FED["n"] samples, SEEDS seeds.

    python experiments/s23_fed_privacy.py [run|report]
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from common import FED, ROOT, SEEDS, cli, find_row, overall, run_phases, save, summarise, t_interval
from s21_robust_aggregation import arm as s21_arm
from s21_robust_aggregation import done, fed_args, score

STUDY = "s23_fed_privacy"
CLAIM = (
    "Issue 39: the FID a federation pays for client-level (epsilon, delta = 1e-5) differential "
    "privacy, 5 clients, 3 seeds."
)
CLIP = 1.0
DELTA = 1e-5
#: arm -> the --dp options (None: study 21's FedAvg without DP).
ARMS: dict[str, tuple[Any, ...] | None] = {
    "no DP": None,
    "epsilon 8": ("--target-epsilon", 8),
    "epsilon 1": ("--target-epsilon", 1),
    "sigma 0.01": ("--noise-multiplier", 0.01),
    "sigma 0.001": ("--noise-multiplier", 0.001),
}


def run_dir(name: str, seed: int) -> Path:
    return ROOT / "s23" / f"{name.replace(' ', '')}-s{seed}"


def arm(name: str, seed: int) -> None:
    """Train and score one arm (once; resumable)."""
    opts = ARMS[name]
    if opts is None:
        s21_arm("fedavg", "honest", seed, FED["clients"])
        return
    run = run_dir(name, seed)
    dp = ("--dp", "server", "--dp-clip", CLIP, "--dp-delta", DELTA, *opts)
    cli(*fed_args(run, seed, FED["clients"], *dp), study=STUDY)
    score(run, seed, STUDY)


def read(name: str, seed: int) -> dict[str, Any]:
    """FID and the (epsilon, delta) of a finished arm."""
    if ARMS[name] is None:
        fid = done("fedavg", "honest", seed, FED["clients"])
        return {"fid": fid, "epsilon": None, "sigma": 0.0}  # epsilon None: unbounded
    run = run_dir(name, seed)
    row = find_row(run, kind="fed_eval", n=FED["n"])
    rows = [json.loads(x) for x in (run / "federated" / "rounds.jsonl").read_text().splitlines()]
    last = [r["dp"] for r in rows if r.get("complete") and "dp" in r][-1]
    eps = last["epsilon"] if math.isfinite(last["epsilon"]) else None
    return {"fid": float(row["fid"]["mean"]), "epsilon": eps, "sigma": last["sigma"],
            "clipped_last_round": last["clipped"]}  # fmt: skip


def work() -> None:
    """The DP arms, arm by arm (the epsilon arms on every seed first); the no-DP arm is study
    21's, run by it (two processes must not share a RUN)."""
    for name, opts in ARMS.items():
        if opts is not None:
            for seed in SEEDS:
                arm(name, seed)


def report() -> dict[str, Any]:
    """Each arm over the seeds it has finished; a verdict only when every arm has every seed."""
    table: dict[str, Any] = {}
    for name in ARMS:
        seeds = [s for s in SEEDS if _done(name, s)]
        rows = [read(name, s) for s in seeds]
        fids = [r["fid"] for r in rows]
        table[name] = {
            "seeds": seeds,
            "per_seed": rows,
            "fid": summarise(fids) if fids else None,
            "interval": t_interval(fids) if fids else None,
            "epsilon": rows[0]["epsilon"] if rows else None,
            "sigma": rows[0]["sigma"] if rows else None,
        }
    seeds = [s for s in SEEDS if all(s in table[n]["seeds"] for n in ARMS)]
    checks: dict[str, str] = {}
    if len(seeds) == len(SEEDS):  # a verdict only on every planned seed
        base = table["no DP"]["fid"]["mean"]
        for name in ARMS:
            if name != "no DP":
                key = f"{name}: FID within 1.2x of no DP"
                checks[key] = "held" if table[name]["fid"]["mean"] <= 1.2 * base else "not held"
    result = {
        "claim": CLAIM,
        "setup": {
            **{k: v for k, v in FED.items() if k != "lr"},  # the recipe sets lr
            "preset": "tiny",
            "recipe": "central",
            "dp": "server",
            "clip": CLIP,
            "delta": DELTA,
            "seeds": seeds,
        },
        "arms": table,
        "checks": checks,
        "verdict": overall(checks),
    }
    save(STUDY, result)
    return result


def _done(name: str, seed: int) -> bool:
    if ARMS[name] is None:
        return done("fedavg", "honest", seed, FED["clients"]) is not None
    return find_row(run_dir(name, seed), kind="fed_eval", n=FED["n"]) is not None


if __name__ == "__main__":
    run_phases(sys.argv[1:], lambda _worker: work(), report)
