"""The skeleton of studies 15 and 17: one objective arm on study 11's set-up (compact UNet,
1,000 steps at batch 64, mnist5k, 3 seeds, FID on 1,000 images, study 11's five samplers), its
best Euler against its best ancestral sampling, and its best FIDs against other arms' recorded
numbers (same seeds and evaluation seeds)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import RESULTS, ROOT, SEEDS, claim, cli, evaluate, run_phases, save, summarise
from common import t_interval as interval
from s11_eps_sampling import ANCESTRAL, BAR, BASE, ODE, SAMPLERS


def _best(fids: dict[str, float], kinds: tuple[str, ...]) -> float:
    return min(v for k, v in fids.items() if k.rstrip("0123456789") in kinds)


def recorded_arm(study: str, name: str) -> dict[str, dict[str, float]]:
    """An arm study's recorded FIDs, ``seedN -> {sampler: fid}``, from its saved result."""
    per = json.loads((RESULTS / f"{study}.json").read_text())["per_seed"]
    return {
        k: {n.removeprefix(f"{name} "): v for n, v in row.items() if "/" not in n}
        for k, row in per.items()
    }


def study11_arms() -> dict[str, dict[str, dict[str, float]]]:
    """Study 11's recorded arms (eps-uniform, eps-velocity100, fm, ...), ``arm -> seedN -> FIDs``."""
    return json.loads((RESULTS / "s11_eps_sampling.json").read_text())["per_seed"]


@dataclass
class ArmStudy:
    study: str  # the result's name (docs/reproduction/<study>.json)
    name: str  # the arm's name in the result's keys
    folder: str  # runs/repro/<folder>/seedN
    claim: str
    arm: list[str]  # the arm's training arguments
    others: Callable[[], dict[str, dict[str, dict[str, float]]]]  # recorded arms to compare with
    other_arms: str  # where those come from, for the setup record

    def run_dir(self, seed: int) -> Path:
        return ROOT / self.folder / f"seed{seed}"

    def ev(self, seed: int, solver: str, steps: int) -> dict[str, Any]:
        return evaluate(self.run_dir(seed), "monolith", n=BASE["n"], seed=seed, steps=steps,
                        solver=solver, study=self.study)  # fmt: skip

    def work(self, worker: tuple[int, int] | None) -> None:
        for seed in SEEDS:
            run = self.run_dir(seed)
            if (run / "evaluated").is_file():
                continue
            if worker is not None and not claim(run.parent / f".claim-{run.name}"):
                continue
            cli("train", "monolith", run, "--data", BASE["data"], "--preset", BASE["preset"],
                *self.arm, "--steps", BASE["steps"], "--batch", BASE["batch"], "--seed", seed,
                "--quiet", study=self.study)  # fmt: skip
            for solver, steps in SAMPLERS:
                self.ev(seed, solver, steps)
            (run / "evaluated").write_text("")

    def report(self) -> dict[str, Any]:
        others = self.others()
        name = self.name
        per: dict[str, dict[str, float]] = {}
        for seed in SEEDS:
            if not (self.run_dir(seed) / "evaluated").is_file():
                continue
            fids = {f"{s}{k}": self.ev(seed, s, k)["fid"] for s, k in SAMPLERS}
            key = f"seed{seed}"
            row = {f"{name} {k}": v for k, v in fids.items()}
            row[f"{name} best euler / best ancestral"] = _best(fids, ODE) / _best(fids, ANCESTRAL)
            for arm, recorded in others.items():
                other = recorded[key]  # every compared arm was recorded on the same seeds
                row[f"{name} best euler / {arm} best ancestral"] = _best(fids, ODE) / _best(
                    other, ANCESTRAL
                )
                row[f"{name} best / {arm} best"] = min(fids.values()) / min(other.values())
            per[key] = row
        keys = list(next(iter(per.values()))) if per else []
        summary = {k: summarise([per[s][k] for s in per]) for k in keys}
        intervals = {k: interval([per[s][k] for s in per]) for k in keys if "/" in k}
        checks = {}
        if len(per) == len(SEEDS):
            r = summary[f"{name} best euler / best ancestral"]["mean"]
            checks[f"{name}: best Euler <= {BAR}x best ancestral"] = (
                "held" if r <= BAR else "not held"
            )
        result = {
            "claim": self.claim,
            "setup": {**BASE, "arm": self.arm, "seeds": list(SEEDS), "samplers": SAMPLERS,
                      "other_arms": self.other_arms},
            "per_seed": per,
            "summary": summary,
            "intervals95": intervals,
            "checks": checks,
            "verdict": next(iter(checks.values())) if checks else "inconclusive",
        }  # fmt: skip
        save(self.study, result)
        return result

    def main(self, argv: list[str] | None = None) -> None:
        run_phases(argv, self.work, self.report)
