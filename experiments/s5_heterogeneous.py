"""Study 5: heterogeneous experts (2 DDPM epsilon-experts + 2 flow experts) vs 4 flow experts."""

from __future__ import annotations

import shutil

from common import DDM, ROOT, cli, evaluate, overall, pick, save, scaled, summarise
from common import SEEDS as ALL_SEEDS
from s1_ddm_vs_monolith import STUDY as S1
from s1_ddm_vs_monolith import seed_runs

#: Study 1's seeds (their K=4 runs give the flow experts and the router).
SEEDS = ALL_SEEDS
#: A diagnostic arm on the first seed: the epsilon-experts trained for this many steps.
EPS_LONG_STEPS = scaled(1000, 2)
STUDY = "s5_heterogeneous"
CLAIM = (
    "Experts trained with different objectives mix without retraining once every output is "
    "converted to a velocity; 2 epsilon-experts + 6 flow experts gave FID 11.88 vs 12.45 for 8 flow "
    "experts, and in that setting top-2 routing beat top-1."
)
EPS_EXPERTS = (0, 1)


def hetero_run(seed: int, eps_steps: int | None = None, tag: str = ""):
    """A copy of study 1's K=4 run in which experts 0 and 1 are retrained as epsilon-experts
    (same cluster, batch and seed; steps as the flow experts unless ``eps_steps``); the router
    and experts 2, 3 are the same files."""
    src = seed_runs(seed)[4]
    dst = ROOT / "s5" / f"seed{seed}{tag}"
    if not (dst / "run.toml").is_file():
        keep = {"run.toml", "partition.npz", "router", "experts"}
        dst.mkdir(parents=True, exist_ok=True)
        for item in src.iterdir():
            if item.name not in keep:
                continue
            if item.is_dir():
                ignore = shutil.ignore_patterns(*(str(k) for k in EPS_EXPERTS))
                shutil.copytree(
                    item, dst / item.name, ignore=ignore if item.name == "experts" else None
                )
            else:
                shutil.copy2(item, dst / item.name)
    for k in EPS_EXPERTS:
        cli(
            "train",
            "expert",
            dst,
            "--expert",
            k,
            "--objective",
            "ddpm",
            "--set",
            "objective.eps_param=direct",  # as recorded (before study 17's default)
            "--set",
            "objective.weighting=uniform",  # and before study 18's
            "--set",
            "objective.step_dist=uniform",
            "--preset",
            DDM["preset"],
            "--steps",
            eps_steps or DDM["steps"],
            "--batch",
            DDM["batch"] // 4,
            "--seed",
            seed,
            "--quiet",
            study=STUDY,
        )
    return src, dst


def main() -> None:
    n, steps = DDM["n"], DDM["sample_steps"]
    per_seed, runs = {}, {}
    for seed in SEEDS:
        homo, het = runs[seed] = hetero_run(seed)
        row = {}
        for routing in ("top1", "topk:2"):
            row[f"homogeneous {routing}"] = pick(
                evaluate(homo, "ensemble", routing=routing, n=n, seed=seed, steps=steps, study=S1)
            )
            row[f"heterogeneous {routing}"] = pick(
                evaluate(het, "ensemble", routing=routing, n=n, seed=seed, steps=steps, study=STUDY)
            )
        per_seed[seed] = row
    out: dict[str, object] = {
        "claim": CLAIM,
        "setup": {**DDM, "K": 4, "eps_experts": list(EPS_EXPERTS), "seeds": list(SEEDS)},
    }
    for name in per_seed[SEEDS[0]]:
        out[name] = summarise([per_seed[s][name]["fid"] for s in SEEDS])
    ratios = [
        per_seed[s]["heterogeneous top1"]["fid"] / per_seed[s]["homogeneous top1"]["fid"]
        for s in SEEDS
    ]
    top2 = [
        per_seed[s]["heterogeneous topk:2"]["fid"] < per_seed[s]["heterogeneous top1"]["fid"]
        for s in SEEDS
    ]
    checks = {
        # the heterogeneous ensemble is no worse (within 5%) than the homogeneous one in every seed
        "heterogeneous_no_worse": "held"
        if all(r <= 1.05 for r in ratios)
        else ("not held" if all(r > 1.05 for r in ratios) else "mixed"),
        "top2_beats_top1": "held" if all(top2) else ("not held" if not any(top2) else "mixed"),
    }
    # Diagnostic (no verdict): do the epsilon-experts catch up when trained longer?
    s0, long_steps = SEEDS[0], EPS_LONG_STEPS
    _, het_long = hetero_run(s0, eps_steps=long_steps, tag=f"-eps{long_steps}")
    diagnostic = {
        "seed": s0,
        "eps_expert_steps": long_steps,
        "flow_expert_steps": DDM["steps"],
        **{
            f"heterogeneous {r}": pick(
                evaluate(het_long, "ensemble", routing=r, n=n, seed=s0, steps=steps, study=STUDY)
            )
            for r in ("top1", "topk:2")
        },
        # the same 300-step ensembles, sampled by the ancestral DDPM sampler instead of the ODE
        **{
            f"{name} top1, ancestral": pick(
                evaluate(run, "ensemble", routing="top1", n=n, seed=s0, steps=steps,
                         solver="ddpm", study=STUDY)
            )
            for name, run in zip(("homogeneous", "heterogeneous"), runs[s0], strict=True)
        },
    }  # fmt: skip
    out.update(per_seed=per_seed, ratios=ratios, checks=checks, longer_eps_experts=diagnostic)
    out["verdict"] = overall(checks)
    save(STUDY, out)


if __name__ == "__main__":
    main()
