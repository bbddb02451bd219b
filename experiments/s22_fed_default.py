"""Study 22: the README's first federated command at its defaults against central training of
the same budget.

``decentdiff fed run RUN --data mnist5k --clients 5 --split dirichlet:0.5 --method udec --rounds 15``
exactly as the README gives it (the default recipe, ``pooled``; the default ``small`` UNet; its
default scoring of 500 images per personal model), one RUN per seed. Its yardstick is the
monolith the central trainer makes at its defaults (batch 128) from the same images: 15 epochs of
the clients' training images, ceil(15 x images / 128) steps, scored on 500 images with the
federation's sampler and steps. The ratio is the mean FID of the 5 clients' personal models over
the monolith's, per seed.

    python experiments/s22_fed_default.py [run|report]
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from common import (
    ROOT,
    SEEDS,
    cli,
    evaluate,
    find_row,
    overall,
    run_phases,
    save,
    summarise,
    t_interval,
)

STUDY = "s22_fed_default"
CLAIM = (
    "Issue 36: the README's first federated command at its defaults (UDEC, dirichlet:0.5, 15 "
    "rounds) scores within 3x the FID of the central monolith of the same budget, 3 seeds."
)
BAR = 3.0
README = ("--data", "mnist5k", "--clients", 5, "--split", "dirichlet:0.5", "--method", "udec",
          "--rounds", 15)  # fmt: skip
N = 500  # fed run's default scoring (federate.RUN_EVAL_N) and the monolith's
CENTRAL_BATCH = 128  # the central trainer's default (config.TrainConfig.batch)


def fed(seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the fed_eval row, the run's rounds) of the README command at ``seed``."""
    run = ROOT / "s22" / f"fed-s{seed}"
    if find_row(run, kind="fed_eval", n=N) is None:
        cli("fed", "run", run, *README, "--seed", seed, "--quiet", study=STUDY)
    row = find_row(run, kind="fed_eval", n=N)
    if row is None:
        raise SystemExit(f"study {STUDY}: {run} has no fed_eval row of {N} images")
    rounds = [json.loads(x) for x in (run / "federated" / "rounds.jsonl").read_text().splitlines()]
    fed_json = json.loads((run / "federated" / "fed.json").read_text())
    return row, {"rounds": rounds, "settings": fed_json}


def central(seed: int, images: int, steps: int, solver: str) -> tuple[dict[str, Any], int]:
    """The central monolith trained on ``images`` images at batch 128, and its eval row."""
    run: Path = ROOT / "s22" / f"central-s{seed}"
    n_steps = math.ceil(images / CENTRAL_BATCH)
    cli("train", "monolith", run, "--data", "mnist5k", "--steps", n_steps, "--batch",
        CENTRAL_BATCH, "--seed", seed, "--quiet", study=STUDY)  # fmt: skip
    return evaluate(
        run, "monolith", study=STUDY, n=N, seed=seed, steps=steps, solver=solver
    ), n_steps


def work() -> None:
    for seed in SEEDS:
        row, info = fed(seed)
        images = seen_images(info)
        central(seed, images, int(row["steps"]), str(row["solver"]))


def seen_images(info: dict[str, Any]) -> int:
    """Images the federation trained on: each round, every client's local steps x batch."""
    batch = int(info["settings"]["train"]["batch"])
    total = 0
    for r in info["rounds"]:
        for c in r["clients"]:
            total += int(c.get("steps", 0)) * batch
    if total == 0:  # rows without per-client steps: one local epoch of every client's images
        sizes = [int(c["num_examples"]) for c in info["rounds"][0]["clients"]]
        total = len(info["rounds"]) * sum(math.ceil(n / batch) * batch for n in sizes)
    return total


def report() -> dict[str, Any]:
    per_seed: dict[str, Any] = {}
    for seed in SEEDS:
        run = ROOT / "s22" / f"fed-s{seed}"
        row = find_row(run, kind="fed_eval", n=N)
        if row is None:
            continue
        _, info = fed(seed)  # scored already: reads, never trains
        images = seen_images(info)
        steps = math.ceil(images / CENTRAL_BATCH)
        c = find_row(ROOT / "s22" / f"central-s{seed}", model="monolith", n=N, seed=seed,
                     steps=int(row["steps"]), solver=str(row["solver"]))  # fmt: skip
        if c is None:  # the yardstick of this seed is not scored yet
            continue
        fid = float(row["fid"]["mean"])
        per_seed[str(seed)] = {
            "fed_fid": fid,
            "fed_fid_per_client": {k: v["fid"] for k, v in (row.get("per_model") or {}).items()},
            "fed_fid_std_over_clients": row["fid"].get("std"),
            "central_fid": float(c["fid"]),
            "ratio": fid / float(c["fid"]),
            "floor_fid": (c.get("floor") or {}).get("fid"),
            "images": images,
            "central_steps": steps,
            "client_batch": int(info["settings"]["train"]["batch"]),
            "client_sizes": [int(x["num_examples"]) for x in info["rounds"][0]["clients"]],
            "fed_round_seconds": sum(r.get("seconds", 0.0) for r in info["rounds"]),
            "bytes": sum(r["total"] for r in info["rounds"]),
            "sample_steps": row["steps"],
            "solver": row["solver"],
        }
    ratios = [v["ratio"] for v in per_seed.values()]
    checks: dict[str, str] = {}
    if len(ratios) == len(SEEDS):  # a verdict only on every planned seed
        mean = summarise(ratios)["mean"]
        checks["readme_fed_command_within_3x_central (mean)"] = (
            "held" if mean <= BAR else "not held"
        )
        checks["every_seed_within_3x"] = "held" if max(ratios) <= BAR else "not held"
    result = {
        "claim": CLAIM,
        "setup": {
            "command": ["fed", "run", "RUN", *map(str, README)],
            "n": N,
            "central_batch": CENTRAL_BATCH,
            "seeds": list(SEEDS),
            "bar": BAR,
        },
        "per_seed": per_seed,
        "ratio": {**summarise(ratios), "interval": t_interval(ratios)} if ratios else None,
        "fed_fid": summarise([v["fed_fid"] for v in per_seed.values()]) if ratios else None,
        "central_fid": summarise([v["central_fid"] for v in per_seed.values()]) if ratios else None,
        "checks": checks,
        "verdict": overall(checks),
    }
    save(STUDY, result)
    return result


if __name__ == "__main__":
    run_phases(sys.argv[1:], lambda _worker: work(), report)
