"""Study 3: how many experts (K = 2, 4, 8) and how the data is split (k-means vs random vs label)."""

from __future__ import annotations

from common import DDM, ROOT, ddm_run, evaluate, overall, pick, save
from s1_ddm_vs_monolith import STUDY as S1
from s1_ddm_vs_monolith import seed_runs

STUDY = "s3_k_and_partition"
CLAIM = (
    "The DDM paper splits the data by k-means on image features so that each expert specialises; "
    "it trains 8 experts at the FLOPs of one monolith. Implied: clustered splits beat random splits "
    "(a random split gives K weaker copies of one model), and more experts at the same FLOPs do not "
    "hurt."
)


def main() -> None:
    n, steps, seed = DDM["n"], DDM["sample_steps"], 0
    s1 = seed_runs(seed)
    base = ROOT / "s3"
    runs = {
        "kmeans K=2": ddm_run(base / "kmeans-K2", K=2, seed=seed, monolith=False, study=STUDY),
        "kmeans K=4": s1[4],
        "kmeans K=8": s1[8],
        "random K=4": ddm_run(
            base / "random-K4", K=4, by="random", seed=seed, monolith=False, study=STUDY
        ),
        "label K=4": ddm_run(
            base / "label-K4", K=4, by="label", seed=seed, monolith=False, study=STUDY
        ),
    }
    table = {"monolith": pick(evaluate(s1[4], "monolith", n=n, seed=seed, steps=steps, study=S1))}
    for name, run in runs.items():
        table[name] = pick(
            evaluate(run, "ensemble", routing="top1", n=n, seed=seed, steps=steps, study=STUDY)
        )
    f = {k: v["fid"] for k, v in table.items()}
    checks = {
        "kmeans_beats_random": "held" if f["kmeans K=4"] < f["random K=4"] else "not held",
        # more experts at the same FLOPs: FID at K=8 no worse than at K=2 (within 5%)
        "more_experts_no_worse": "held"
        if f["kmeans K=8"] <= 1.05 * f["kmeans K=2"]
        else "not held",
    }
    save(
        STUDY,
        {
            "claim": CLAIM,
            "setup": {**DDM, "seed": seed, "routing": "top1"},
            "table": table,
            "checks": checks,
            "verdict": overall(checks),
        },
    )


if __name__ == "__main__":
    main()
