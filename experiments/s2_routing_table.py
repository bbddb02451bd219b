"""Study 2: the routing table (the DDM paper's Table 1), on the K=8 ensemble of study 1, seed 0."""

from __future__ import annotations

from common import DDM, evaluate, overall, pick, save
from s1_ddm_vs_monolith import STUDY as S1
from s1_ddm_vs_monolith import seed_runs

STUDY = "s2_routing_table"
CLAIM = (
    "Top-1 routing gives the best FID at about one expert's cost (ImageNet, 8 experts: top-1 9.84 "
    "< threshold 0.1 10.15 < sample-2 10.27 < top-2 10.31 < oracle 10.46 < full 10.52 < monolith "
    "12.81); sampling one expert per step from the router (sample-1: 157) and nucleus are far worse."
)
ROUTINGS = (
    "full",
    "top1",
    "topk:2",
    "topk:3",
    "sample:1",
    "sample:2",
    "threshold:0.01",
    "threshold:0.05",
    "threshold:0.1",
    "nucleus:0.9",
    "oracle",
)


def main() -> None:
    n, steps, seed = DDM["n"], DDM["sample_steps"], 0
    runs = seed_runs(seed)  # resumes (or reuses) study 1's seed-0 runs
    table = {}
    mono = pick(evaluate(runs[4], "monolith", n=n, seed=seed, steps=steps, study=S1))
    table["monolith"] = mono
    for r in ROUTINGS:
        table[r] = pick(
            evaluate(runs[8], "ensemble", routing=r, n=n, seed=seed, steps=steps, study=STUDY)
        )
    fids = {r: table[r]["fid"] for r in ROUTINGS}
    non_oracle = {r: f for r, f in fids.items() if r != "oracle"}
    best = min(non_oracle, key=non_oracle.get)
    checks = {
        # (a) top-1 is the best non-oracle routing, or within 5% of it
        "top1_best": "held"
        if best == "top1"
        else ("mixed" if fids["top1"] <= 1.05 * non_oracle[best] else "not held"),
        # (b) sample-1 is clearly worse than top-1 (paper: 16x)
        "sample1_worse": "held" if fids["sample:1"] > 1.2 * fids["top1"] else "not held",
        # (c) top-1 costs at most 1.1x the monolith's sampling FLOPs (one expert + the router)
        "top1_cost": "held"
        if table["top1"]["sample_gflops_per_image"] <= 1.1 * mono["sample_gflops_per_image"]
        else "not held",
        # (d) top-1 beats the monolith
        "top1_beats_monolith": "held" if fids["top1"] < mono["fid"] else "not held",
    }
    save(
        STUDY,
        {
            "claim": CLAIM,
            "setup": {**DDM, "K": 8, "seed": seed, "run": str(runs[8])},
            "table": table,
            "best_non_oracle": best,
            "checks": checks,
            "verdict": overall(checks),
        },
    )


if __name__ == "__main__":
    main()
