"""Study 13 (issue 15): heterogeneous ensembles (2 DDPM ε-experts + 2 flow experts) against 4 flow
experts, at study 10's longest budget, with the best routing of study 10 (``mixture``) and each
model's best sampler.

Set-up: study 10's K=4 runs of the 5,000-step budget (tiny UNet, experts 5,000 steps at batch 16);
experts 0 and 1 retrained as ε-experts (same cluster, preset, steps, batch and seed), experts 2, 3
and the partition are the same files. Same data, same FLOPs. Sampled by the ancestral sampler
(what ``--solver auto`` picks for an ensemble with an ε-expert) and, for comparison, by Euler;
the homogeneous ensemble by both as well. FID on 1,000 images, 20 steps, 3 seeds.

    python experiments/s13_heterogeneous_budget.py [run] [--worker I/N]
    python experiments/s13_heterogeneous_budget.py report
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common import (
    ROOT,
    SEEDS,
    claim,
    cli,
    copy_run,
    ddm_run,
    evaluate,
    previous,
    run_phases,
    save,
    scaled,
    summarise,
    t_interval,
)
from s10_routing_budgets import budget, trained_k4

STUDY = "s13_heterogeneous_budget"
CLAIM = (
    "Issue 15 / Heterogeneous DDM (2026: 11.88 vs 12.45 for 2 DDPM + 6 flow experts vs 8 flow): "
    "the heterogeneous ensemble's FID <= 1.1x the homogeneous one's, 3 seeds."
)
EPS_EXPERTS = (0, 1)
#: arm -> extra training arguments of the ε-experts
ARMS = {
    # Study 17's default ε-model (skip connection; Ho et al.'s steps and weighting).
    "eps-skip": ["--set", "objective.weighting=uniform", "--set", "objective.eps_param=skip",
                 "--set", "objective.step_dist=uniform"],
    # Before study 17 (recorded at stop 26): the network's output read as ε̂ directly.
    "eps": ["--set", "objective.weighting=uniform", "--set", "objective.eps_param=direct",
            "--set", "objective.step_dist=uniform"],
    "eps-velocity100": ["--set", "objective.weighting=velocity:100",
                        "--set", "objective.eps_param=direct",
                        "--set", "objective.step_dist=uniform"],  # study 11's better ε-loss
    # The skip ε-model on flow matching's noise levels with the velocity weighting:
    # min(1/(1−t)², 100) × the ε-loss is the flow-matching loss of the converted velocity (study
    # 11), so this ε-expert sees the flow experts' objective in ε-parameterisation: what is left
    # of the gap is the parameterisation, not the loss. `--objective ddpm`'s default since study 18.
    "eps-skip-ln-v": ["--set", "objective.weighting=velocity:100",
                      "--set", "objective.eps_param=skip",
                      "--set", "objective.step_dist=logit_normal"],
    # ... and with the ε-loss unweighted: flow matching's noise levels only (the flow experts'
    # logit-normal t instead of uniform integer steps, a third of which have ᾱ < 0.01).
    "eps-skip-ln": ["--set", "objective.weighting=uniform", "--set", "objective.eps_param=skip",
                    "--set", "objective.step_dist=logit_normal"],
}  # fmt: skip
#: The ε-recipe the verdict is read on: chosen before it ran (stop 29) as the ε-loss that equals
#: the flow experts' loss; the other arms are reported beside it, the default's (eps-skip) too.
VERDICT_ARM = "eps-skip-ln-v"
STEPS = scaled(5000, 2)
N = scaled(1000, 20)
ROUTING = "mixture"
WORKER = False  # set by work(): the base RUNs are not trained by parallel workers
BAR = 1.1


def source(seed: int, train: bool = True) -> Path | None:
    """Study 10's K=4 RUN of the 5,000-step budget; where it was not trained on this machine,
    this study's own copy made by the same commands (partition, experts, router; no monolith),
    trained here if ``train`` (one process at a time: run this study without --worker), else
    None while it is missing."""
    own = ROOT / "s13" / "base" / f"seed{seed}"
    try:
        return trained_k4(seed, STUDY)
    except SystemExit:
        if not (own / "trained").is_file():
            if not train:
                return None
            if WORKER:
                raise SystemExit(
                    f"study {STUDY}: {own} is trained by one process; run without --worker"
                ) from None
            ddm_run(own, K=4, seed=seed, study=STUDY, budget=budget("b5000"), monolith=False)
            (own / "trained").write_text("")
        return own


def recorded(arm: str, seed: int) -> bool:
    """The arm's numbers for the seed are in the study's saved result (made on another machine)."""
    row = ((previous(STUDY) or {}).get("per_seed") or {}).get(f"seed{seed}", {})
    return f"heterogeneous ({arm}) ddpm" in row


def run_dir(arm: str, seed: int) -> Path:
    return ROOT / "s13" / arm / f"seed{seed}"


def prepare(arm: str, seed: int) -> Path:
    """Study 10's RUN without the experts to be retrained as ε-experts (study 10's RUN untouched)."""
    return copy_run(source(seed), run_dir(arm, seed), skip_experts=EPS_EXPERTS)


def ev(run: Path, seed: int, solver: str) -> dict[str, Any]:
    return evaluate(run, "ensemble", routing=ROUTING, n=N, seed=seed, steps=20, solver=solver,
                    study=STUDY)  # fmt: skip


def work(worker: tuple[int, int] | None) -> None:
    global WORKER
    WORKER = worker is not None
    for seed in SEEDS:
        for arm, extra in ARMS.items():
            run = run_dir(arm, seed)
            if (run / "evaluated").is_file() or recorded(arm, seed):
                continue
            if worker is not None and not claim(run.parent / f".claim-{run.name}"):
                continue
            run = prepare(arm, seed)
            for k in EPS_EXPERTS:
                cli("train", "expert", run, "--expert", k, "--objective", "ddpm", *extra,
                    "--preset", "tiny", "--steps", STEPS, "--batch", 16, "--seed", seed,
                    "--quiet", study=STUDY)  # fmt: skip
            for solver in ("ddpm", "euler"):
                ev(run, seed, solver)
            (run / "evaluated").write_text("")
        ev(source(seed), seed, "ddpm")  # the homogeneous ensemble by the ancestral sampler too


def report() -> dict[str, Any]:
    per: dict[str, dict[str, float]] = {}
    ratios: dict[str, list[float]] = {}
    before = (previous(STUDY) or {}).get("per_seed") or {}
    for seed in SEEDS:
        old = before.get(f"seed{seed}", {})
        base = source(seed, train=False)
        if base is None:
            continue
        homo = {s: ev(base, seed, s)["fid"] for s in ("euler", "ddpm")}
        row = {f"homogeneous {s}": v for s, v in homo.items()}
        for arm in ARMS:
            run = run_dir(arm, seed)
            if (run / "evaluated").is_file():
                het = {s: ev(run, seed, s)["fid"] for s in ("euler", "ddpm")}
                # each ensemble by its best sampler, against the homogeneous one it was built from
                ratio = min(het.values()) / min(homo.values())
            elif recorded(arm, seed):  # made elsewhere: its numbers and ratio as recorded
                het = {s: old[f"heterogeneous ({arm}) {s}"] for s in ("euler", "ddpm")}
                # (saves before the ratio was stored divided by that machine's homogeneous FIDs)
                ratio = old.get(f"ratio ({arm})") or min(het.values()) / min(
                    old[f"homogeneous {s}"] for s in ("euler", "ddpm")
                )
                for s in ("euler", "ddpm"):
                    key = f"homogeneous {s} (where {arm} was recorded)"
                    row[key] = old.get(key, old[f"homogeneous {s}"])
            else:
                continue
            row.update({f"heterogeneous ({arm}) {s}": v for s, v in het.items()})
            row[f"ratio ({arm})"] = ratio
            ratios.setdefault(arm, []).append(ratio)
        per[f"seed{seed}"] = row
    keys = next(iter(per.values())).keys() if per else []
    summary = {k: summarise([per[s][k] for s in per if k in per[s]]) for k in keys}
    checks = {
        f"heterogeneous ({arm}) <= {BAR}x homogeneous": (
            "held" if summarise(r)["mean"] <= BAR else "not held"
        )
        for arm, r in ratios.items()
        if len(r) == len(SEEDS)
    }
    key = f"heterogeneous ({VERDICT_ARM}) <= {BAR}x homogeneous"
    verdict = checks.get(key, "inconclusive")
    result = {
        "claim": CLAIM,
        "setup": {"source": "study 10, b5000, K=4 (or this study's own, by the same commands)", "eps_experts": list(EPS_EXPERTS),
                  "arms": ARMS, "steps": STEPS, "batch": 16, "preset": "tiny", "n": N,
                  "routing": ROUTING, "sample_steps": 20, "seeds": list(SEEDS)},
        "per_seed": per,
        "summary": summary,
        "ratios": ratios,
        "intervals95": {a: t_interval(r) for a, r in ratios.items()},
        "checks": checks,
        "verdict": verdict,
    }  # fmt: skip
    save(STUDY, result)
    return result


def main(argv: list[str] | None = None) -> None:
    run_phases(argv, work, report)


if __name__ == "__main__":
    main()
