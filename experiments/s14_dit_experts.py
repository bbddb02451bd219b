"""Study 14 (issue 16): DDM with DiT experts in study 10's K=4 set-up, against the UNet ensemble
at equal FLOPs and against its own FLOP-matched DiT monolith.

Set-up: study 10's 500-step budget (K=4 k-means clusters of mnist5k, each expert 500 steps at
batch 16, the monolith 500 steps at 64, the `compact` convolutional router 500 steps at 64,
1,000 generated images per FID, 20 Euler steps), with `dit-tiny` (DiT/2, 80k parameters, 1.01x the
forward FLOPs of the `tiny` UNet's 87k) in place of `tiny` for the experts and the monolith. The
UNet arm is study 10's recorded b500/K4 cells (same seeds, partitions and evaluation seeds;
docs/reproduction/s10_routing_budgets.json), so only the DiT arm is trained here.

    python experiments/s14_dit_experts.py [run] [--worker I/N] [--repeat]
    python experiments/s14_dit_experts.py report

A seed whose RUN is not on this machine but whose row is in the saved results (same scale and
set-up) keeps that row and is not retrained; `--repeat` retrains such seeds, after the others.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from common import (
    RESULTS,
    ROOT,
    SCALE,
    SEEDS,
    claim,
    ddm_run,
    evaluate,
    run_phases,
    save,
    summarise,
)
from common import t_interval as interval
from s10_routing_budgets import budget

STUDY = "s14_dit_experts"
CLAIM = (
    "Issue 16: DDM is architecture-agnostic (the paper trains DiT experts). A K=4 ensemble of DiT "
    "experts beats its FLOP-matched DiT monolith as the UNet ensemble beats its own, and is "
    "compared with the UNet ensemble at equal FLOPs."
)
#: study 10's budget whose UNet cells are the comparison (b500: a DiT-tiny expert trains at about
#: 12-40 img/s at batch 16 on the shared 2 cores, so b1500's 3 seeds did not fit one session)
B = "b500"
BUDGET = {**budget(B), "preset": "dit-tiny"}  # router_preset stays compact (study 10's)
ROUTINGS = ("mixture", "top1")
K = 4
#: what a recorded seed must share with this study to be reused
SETUP = {**BUDGET, "K": K, "routings": list(ROUTINGS)}


def run_dir(seed: int) -> Path:
    return ROOT / "s14" / B / f"seed{seed}" / f"K{K}"


def ev(run: Path, model: str, seed: int, routing: str | None = None) -> dict[str, Any]:
    return evaluate(run, model, routing=routing, n=BUDGET["n"], seed=seed,
                    steps=BUDGET["sample_steps"], study=STUDY)  # fmt: skip


def recorded() -> dict[str, dict[str, float]]:
    """The per-seed rows of the last saved report: a seed whose RUN is not on this machine (it
    ran on another) keeps its recorded row instead of being dropped from the report."""
    path = RESULTS / f"{STUDY}.json"
    if not path.is_file():
        return {}
    before = json.loads(path.read_text())
    setup = {k: v for k, v in before.get("setup", {}).items() if k in SETUP}
    if before.get("scale", SCALE) != SCALE or setup != SETUP:
        return {}  # recorded at another scale or budget: not this study's numbers
    return before.get("per_seed", {})


def work(worker: tuple[int, int] | None, repeat: bool = False) -> None:
    """Train and score every seed not measured yet; a seed recorded on another machine is re-run
    only with ``repeat`` (``run --repeat``), last."""
    done = recorded()
    for seed in sorted(SEEDS, key=lambda s: f"seed{s}" in done):
        run = run_dir(seed)
        if (run / "evaluated").is_file() or (f"seed{seed}" in done and not repeat):
            continue
        if worker is not None and not claim(run.parent / f".claim-{run.name}"):
            continue
        ddm_run(run, K=K, seed=seed, study=STUDY, budget=BUDGET, monolith=True)
        ev(run, "monolith", seed)
        for r in ROUTINGS:
            ev(run, "ensemble", seed, r)
        (run / "evaluated").write_text("")


def unet_cells() -> dict[str, dict[int, dict[str, Any]]]:
    """Study 10's UNet K=4 results of budget B per routing and seed: FID, monolith FID, ratio."""
    s10 = json.loads((RESULTS / "s10_routing_budgets.json").read_text())
    cells = {r: s10["cells"][f"{B}/K{K}/{r}"]["per_seed"] for r in ROUTINGS}
    return {r: {int(p["seed"]): p for p in ps} for r, ps in cells.items()}


def report() -> dict[str, Any]:
    unet = unet_cells()
    done = recorded()
    per: dict[str, dict[str, float]] = {}
    inherited: list[int] = []
    for seed in SEEDS:
        run = run_dir(seed)
        if not (run / "evaluated").is_file():
            if f"seed{seed}" in done:  # measured on another machine: its row as recorded
                per[f"seed{seed}"] = done[f"seed{seed}"]
                inherited.append(seed)
            continue
        mono = ev(run, "monolith", seed)
        row = {"dit monolith": mono["fid"], "unet monolith": unet["mixture"][seed]["monolith_fid"]}
        row["dit train TFLOPs"] = mono["train_flops"] / 1e12
        for r in ROUTINGS:
            e = ev(run, "ensemble", seed, r)
            row[f"dit {r}"] = e["fid"]
            row[f"unet {r}"] = unet[r][seed]["fid"]
            row[f"dit {r} / dit monolith"] = e["fid"] / mono["fid"]
            row[f"unet {r} / unet monolith"] = unet[r][seed]["ratio"]
            row[f"dit {r} / unet {r}"] = e["fid"] / unet[r][seed]["fid"]
        per[f"seed{seed}"] = row
    keys = list(next(iter(per.values()))) if per else []
    summary = {k: summarise([per[s][k] for s in per]) for k in keys}
    intervals = {k: interval([per[s][k] for s in per]) for k in keys if "/" in k}
    checks = {}
    if len(per) == len(SEEDS):
        ratios = [per[s]["dit mixture / dit monolith"] for s in per]
        checks["DiT ensemble (mixture) beats its FLOP-matched DiT monolith in every seed"] = (
            "held" if all(r < 1 for r in ratios) else "not held"
        )
    verdict = "inconclusive" if not checks else next(iter(checks.values()))
    result = {
        "claim": CLAIM,
        "setup": {**SETUP, "seeds": list(SEEDS),
                  "unet_arm": f"study 10, {B}/K{K} (tiny UNet), recorded",
                  "dit_seeds_recorded_elsewhere": inherited},
        "per_seed": per,
        "summary": summary,
        "intervals95": intervals,
        "checks": checks,
        "verdict": verdict,
    }  # fmt: skip
    save(STUDY, result)
    return result


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    repeat = "--repeat" in argv
    run_phases([a for a in argv if a != "--repeat"], lambda w: work(w, repeat), report)


if __name__ == "__main__":
    main()
