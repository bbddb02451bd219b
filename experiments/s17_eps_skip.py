"""Study 17 (issue 15): the ε-model with a skip connection. Does a DDPM ε-model whose network
output F becomes ε̂ = √(1−ᾱ)·z + √ᾱ·F (`objective.eps_param=skip`, same ε-MSE loss) sample
deterministically as well as ancestrally?

Study 11 measured the cause of the gap: an ε error δ becomes an x̂0 error δ·√(1−ᾱ)/√ᾱ. The same
division turns a Jacobian ∂ε̂/∂z a few percent short of 1/√(1−ᾱ) (study 11's probe: t·∂ε̂/∂x =
0.95-1.00 at t ≥ 0.9) into an x̂0 that follows the noise in its input, (1 − √(1−ᾱ)·∂ε̂/∂z)/√ᾱ,
where the exact posterior's barely moves; the ODE carries that along, the ancestral sampler's
fresh noise washes it out. With the skip connection, x̂0 = √ᾱ·z − √(1−ᾱ)·F: nothing is divided
by √ᾱ.

Set-up: study 11's (compact UNet, 1,000 steps at batch 64, mnist5k, 3 seeds, FID on 1,000 images,
the same five samplers), one arm. The direct-ε, v-prediction and flow-matching arms are studies 11
and 15's recorded numbers (same seeds and evaluation seeds).

    python experiments/s17_eps_skip.py [run] [--worker I/N]
    python experiments/s17_eps_skip.py report
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common import RESULTS, ROOT, SEEDS, claim, cli, evaluate, run_phases, save, summarise
from common import t_interval as interval
from s11_eps_sampling import ANCESTRAL, BAR, BASE, ODE, SAMPLERS

STUDY = "s17_eps_skip"
CLAIM = (
    "Issue 15: a default `--objective ddpm` model sampled with `--solver euler` in 20-50 steps has "
    "FID <= 1.3x its best ancestral sampling (mnist5k, 3 seeds) -- here the ε-model with a skip "
    "connection, trained with the same ε-loss."
)
ARM = ["--objective", "ddpm", "--set", "objective.eps_param=skip"]
NAME = "eps-skip"


def run_dir(seed: int) -> Path:
    return ROOT / "s17" / f"seed{seed}"


def ev(seed: int, solver: str, steps: int) -> dict[str, Any]:
    return evaluate(run_dir(seed), "monolith", n=BASE["n"], seed=seed, steps=steps, solver=solver,
                    study=STUDY)  # fmt: skip


def work(worker: tuple[int, int] | None) -> None:
    for seed in SEEDS:
        run = run_dir(seed)
        if (run / "evaluated").is_file():
            continue
        if worker is not None and not claim(run.parent / f".claim-{run.name}"):
            continue
        cli("train", "monolith", run, "--data", BASE["data"], "--preset", BASE["preset"], *ARM,
            "--steps", BASE["steps"], "--batch", BASE["batch"], "--seed", seed, "--quiet",
            study=STUDY)  # fmt: skip
        for solver, steps in SAMPLERS:
            ev(seed, solver, steps)
        (run / "evaluated").write_text("")


def _best(fids: dict[str, float], kinds: tuple[str, ...]) -> float:
    return min(v for k, v in fids.items() if k.rstrip("0123456789") in kinds)


def report() -> dict[str, Any]:
    s11 = json.loads((RESULTS / "s11_eps_sampling.json").read_text())["per_seed"]
    s15 = json.loads((RESULTS / "s15_vpred.json").read_text())["per_seed"]
    s11 = {**s11, "vpred": {
        k: {n.removeprefix("vpred "): v for n, v in row.items() if "/" not in n}
        for k, row in s15.items()
    }}  # fmt: skip
    per: dict[str, dict[str, float]] = {}
    for seed in SEEDS:
        if not (run_dir(seed) / "evaluated").is_file():
            continue
        fids = {f"{s}{k}": ev(seed, s, k)["fid"] for s, k in SAMPLERS}
        key = f"seed{seed}"
        row = {f"{NAME} {k}": v for k, v in fids.items()}
        row[f"{NAME} best euler / best ancestral"] = _best(fids, ODE) / _best(fids, ANCESTRAL)
        for arm in ("eps-uniform", "vpred", "fm"):
            other = s11[arm][key]
            row[f"{NAME} best euler / {arm} best ancestral"] = _best(fids, ODE) / _best(
                other, ANCESTRAL
            )
            row[f"{NAME} best / {arm} best"] = min(fids.values()) / min(other.values())
        per[key] = row
    keys = list(next(iter(per.values()))) if per else []
    summary = {k: summarise([per[s][k] for s in per]) for k in keys}
    intervals = {k: interval([per[s][k] for s in per]) for k in keys if "/" in k}
    checks = {}
    if len(per) == len(SEEDS):
        r = summary[f"{NAME} best euler / best ancestral"]["mean"]
        checks[f"{NAME}: best Euler <= {BAR}x best ancestral"] = "held" if r <= BAR else "not held"
    result = {
        "claim": CLAIM,
        "setup": {**BASE, "arm": ARM, "seeds": list(SEEDS), "samplers": SAMPLERS,
                  "other_arms": "studies 11 and 15, recorded"},
        "per_seed": per,
        "summary": summary,
        "intervals95": intervals,
        "checks": checks,
        "verdict": next(iter(checks.values())) if checks else "inconclusive",
    }  # fmt: skip
    save(STUDY, result)
    return result


def main(argv: list[str] | None = None) -> None:
    run_phases(argv, work, report)


if __name__ == "__main__":
    main()
