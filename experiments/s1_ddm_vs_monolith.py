"""Study 1: DDM vs the FLOP-matched monolith (the DDM paper's headline), K = 4 and 8, 3 seeds."""

from __future__ import annotations

from common import DDM, ROOT, SEEDS, ddm_run, evaluate, overall, pick, save, summarise

STUDY = "s1_ddm_vs_monolith"
CLAIM = (
    "K experts trained in isolation on k-means clusters, mixed by a router with top-1 routing, beat "
    "a monolith trained on all data with the same FLOPs (ImageNet: FID 6.08 vs 8.49, 0.72x)."
)


def seed_runs(seed: int) -> dict[str, object]:
    """The K=4 run (which also holds the monolith) and the K=8 run of one seed."""
    base = ROOT / "s1" / f"seed{seed}"
    return {
        4: ddm_run(base / "K4", K=4, seed=seed, study=STUDY),
        8: ddm_run(base / "K8", K=8, seed=seed, monolith=False, study=STUDY),
    }


def verdict_of(ratios: list[float]) -> str:
    """held: the ensemble is better in every seed; not held: worse in every seed; else mixed."""
    if all(r < 1 for r in ratios):
        return "held"
    if all(r > 1 for r in ratios):
        return "not held"
    return "mixed"


def main() -> None:
    n, steps = DDM["n"], DDM["sample_steps"]
    per_seed = {}
    for seed in SEEDS:
        runs = seed_runs(seed)
        mono = pick(evaluate(runs[4], "monolith", n=n, seed=seed, steps=steps, study=STUDY))
        row = {"monolith": mono}
        for K, run in runs.items():
            row[f"K{K}_top1"] = pick(
                evaluate(run, "ensemble", routing="top1", n=n, seed=seed, steps=steps, study=STUDY)
            )
        per_seed[seed] = row
    result: dict[str, object] = {"claim": CLAIM, "setup": {**DDM, "seeds": list(SEEDS)}}
    verdicts = {}
    for K in (4, 8):
        ratios = [per_seed[s][f"K{K}_top1"]["fid"] / per_seed[s]["monolith"]["fid"] for s in SEEDS]
        result[f"K{K}"] = {
            "fid": summarise([per_seed[s][f"K{K}_top1"]["fid"] for s in SEEDS]),
            "ratio_to_monolith": summarise(ratios),
            "ratios": ratios,
            "train_flops_vs_monolith": per_seed[SEEDS[0]][f"K{K}_top1"]["train_flops"]
            / per_seed[SEEDS[0]]["monolith"]["train_flops"],
        }
        verdicts[K] = verdict_of(ratios)
    result["monolith"] = {"fid": summarise([per_seed[s]["monolith"]["fid"] for s in SEEDS])}
    result["per_seed"] = per_seed
    result["verdicts"] = {f"K{K}": v for K, v in verdicts.items()}
    result["verdict"] = overall(verdicts)
    save(STUDY, result)


if __name__ == "__main__":
    main()
