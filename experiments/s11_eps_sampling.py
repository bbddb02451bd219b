"""Study 11 (issue 15): can a DDPM ε-model be sampled deterministically (the probability-flow ODE)
about as well as ancestrally, and what makes the difference?

Set-up: study 6's centralised budget (compact UNet, 1,000 steps at batch 64, mnist5k), 3 seeds.
Arms: ε-models trained with Ho et al.'s uniform ε-loss and with the velocity weighting
(``objective.weighting=velocity:G``: the ε-loss weighted by min(1/(1 − t)², G), i.e. the flow-matching
loss of the converted velocity, capped), and a flow-matching model as the reference. Each model is
sampled by Euler (20 and 50 steps), DDIM (20, the DDPM grid) and the ancestral DDPM sampler (20 and
50 steps); FID on 1,000 images against the 1,000 held-out ones.

    python experiments/s11_eps_sampling.py [run] [--worker I/N]    (trains + evaluates)
    python experiments/s11_eps_sampling.py report
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common import (
    ROOT,
    SEEDS,
    claim,
    cli,
    evaluate,
    run_phases,
    save,
    scaled,
    summarise,
    t_interval,
)

STUDY = "s11_eps_sampling"
CLAIM = (
    "Issue 15: a default `--objective ddpm` model sampled with `--solver euler` in 20-50 steps has "
    "FID <= 1.3x its best ancestral sampling (mnist5k, 3 seeds)."
)
BASE: dict[str, Any] = {
    "data": "mnist5k",
    "preset": "compact",
    "batch": 64,
    "steps": scaled(1000, 2),
    "n": scaled(1000, 20),
}
#: arm -> extra training arguments
ARMS: dict[str, list[str]] = {
    # The network's output read as ε̂ (eps_param=direct), the default before study 17.
    "eps-uniform": [
        "--objective",
        "ddpm",
        "--set",
        "objective.weighting=uniform",
        "--set",
        "objective.eps_param=direct",
        "--set",
        "objective.step_dist=uniform",
    ],
    "eps-velocity100": [
        "--objective",
        "ddpm",
        "--set",
        "objective.weighting=velocity:100",
        "--set",
        "objective.eps_param=direct",
        "--set",
        "objective.step_dist=uniform",
    ],
    "fm": ["--objective", "fm"],
}
#: (solver, steps) evaluated for every model
SAMPLERS = (("euler", 20), ("euler", 50), ("ddim", 20), ("ddpm", 20), ("ddpm", 50))
ODE = ("euler",)
ANCESTRAL = ("ddpm",)
BAR = 1.3


def run_dir(arm: str, seed: int) -> Path:
    return ROOT / "s11" / arm / f"seed{seed}"


def jobs() -> list[tuple[str, int]]:
    return [(arm, seed) for seed in SEEDS for arm in ARMS]


def ev(arm: str, seed: int, solver: str, steps: int) -> dict[str, Any]:
    return evaluate(run_dir(arm, seed), "monolith", n=BASE["n"], seed=seed, steps=steps,
                    solver=solver, study=STUDY)  # fmt: skip


def work(worker: tuple[int, int] | None) -> None:
    for arm, seed in jobs():
        run = run_dir(arm, seed)
        if (run / "evaluated").is_file():
            continue
        if worker is not None and not claim(run.parent / f".claim-{run.name}"):
            continue
        cli("train", "monolith", run, "--data", BASE["data"], "--preset", BASE["preset"],
            *ARMS[arm], "--steps", BASE["steps"], "--batch", BASE["batch"], "--seed", seed,
            "--quiet", study=STUDY)  # fmt: skip
        for solver, steps in SAMPLERS:
            ev(arm, seed, solver, steps)
        (run / "evaluated").write_text("")


def report() -> dict[str, Any]:
    per: dict[str, dict[str, dict[str, float]]] = {}
    ratios: dict[str, list[float]] = {}
    for arm in ARMS:
        for seed in SEEDS:
            if not (run_dir(arm, seed) / "evaluated").is_file():
                continue
            fids = {f"{s}{k}": ev(arm, seed, s, k)["fid"] for s, k in SAMPLERS}
            per.setdefault(arm, {})[f"seed{seed}"] = fids
            best_ode = min(v for k, v in fids.items() if k.rstrip("0123456789") in ODE)
            best_anc = min(v for k, v in fids.items() if k.rstrip("0123456789") in ANCESTRAL)
            ratios.setdefault(arm, []).append(best_ode / best_anc)
    summary = {
        arm: {
            "ratio_ode_to_ancestral": summarise(r),
            "ratio_interval95": t_interval(r),
            **{
                key: summarise([per[arm][s][key] for s in per[arm]])
                for key in next(iter(per[arm].values()))
            },
        }
        for arm, r in ratios.items()
    }
    default = "eps-uniform"
    checks = {}
    for arm in ratios:
        if arm.startswith("eps") and len(ratios[arm]) == len(SEEDS):
            ok = summarise(ratios[arm])["mean"] <= BAR
            checks[f"{arm}: best Euler <= {BAR}x best ancestral"] = "held" if ok else "not held"
    verdict = (
        "held"
        if checks.get(f"{default}: best Euler <= {BAR}x best ancestral") == "held"
        else ("not held" if checks else "inconclusive")
    )
    result = {
        "claim": CLAIM,
        "setup": {**BASE, "seeds": list(SEEDS), "arms": ARMS, "samplers": SAMPLERS},
        "per_seed": per,
        "ratios": ratios,
        "summary": summary,
        "checks": checks,
        "verdict": verdict,
    }
    save(STUDY, result)
    return result


def main(argv: list[str] | None = None) -> None:
    run_phases(argv, work, report)


if __name__ == "__main__":
    main()
