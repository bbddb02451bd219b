"""Study 9 (ours): is the router what limits DDM at this budget? Ten times the router's steps."""

from __future__ import annotations

import shutil

from common import DDM, ROOT, cli, evaluate, overall, pick, save
from s1_ddm_vs_monolith import STUDY as S1
from s1_ddm_vs_monolith import seed_runs

STUDY = "s9_router_budget"
CLAIM = (
    "(Ours, from study 2: oracle routing beat the monolith while top-1 did not.) The experts are "
    "good enough; the router, trained for 300 steps, is what limits top-1 routing. With 10x the "
    "router's steps (its FLOPs still a small fraction of the experts') top-1 gets closer to oracle "
    "routing."
)
ROUTER_STEPS = 10 * DDM["router_steps"]


def long_router_run(src, dst):
    """A copy of a study-1 run (partition and experts, not the router) with a longer router."""
    if not (dst / "run.toml").is_file():
        dst.mkdir(parents=True, exist_ok=True)
        for name in ("run.toml", "partition.npz"):
            shutil.copy2(src / name, dst / name)
        shutil.copytree(src / "experts", dst / "experts")
    cli(
        "train", "router", dst, "--preset", DDM["preset"], "--steps", ROUTER_STEPS,
        "--batch", DDM["batch"], "--seed", 0, "--quiet", study=STUDY,
    )  # fmt: skip
    return dst


def main() -> None:
    n, steps, seed = DDM["n"], DDM["sample_steps"], 0
    s1 = seed_runs(seed)
    table = {"monolith": pick(evaluate(s1[4], "monolith", n=n, seed=seed, steps=steps, study=S1))}
    improved = {}
    for K in (4, 8):
        run = long_router_run(s1[K], ROOT / "s9" / f"K{K}")
        for routing in ("top1", "oracle"):
            table[f"K={K} {routing}, router {DDM['router_steps']} steps"] = pick(
                evaluate(s1[K], "ensemble", routing=routing, n=n, seed=seed, steps=steps, study=S1)
            )
        table[f"K={K} top1, router {ROUTER_STEPS} steps"] = pick(
            evaluate(run, "ensemble", routing="top1", n=n, seed=seed, steps=steps, study=STUDY)
        )
        short = table[f"K={K} top1, router {DDM['router_steps']} steps"]["fid"]
        long_ = table[f"K={K} top1, router {ROUTER_STEPS} steps"]["fid"]
        improved[K] = long_ < short
    checks = {
        f"K{K}_longer_router_helps": "held" if ok else "not held" for K, ok in improved.items()
    }
    save(
        STUDY,
        {
            "claim": CLAIM,
            "setup": {**DDM, "long_router_steps": ROUTER_STEPS, "seed": seed},
            "table": table,
            "checks": checks,
            "verdict": overall(checks),
        },
    )


if __name__ == "__main__":
    main()
