"""Study 8: DDM vs federated training on the same data and FLOPs: quality, bytes, wall time."""

from __future__ import annotations

import json

from common import DDM, FED, ROOT, ddm_run, evaluate, fed_run, log_path, overall, pick, save
from s1_ddm_vs_monolith import seed_runs

STUDY = "s8_ddm_vs_federated"
CLAIM = (
    "(Ours; neither paper compares the two.) Experts trained in isolation with zero communication "
    "reach the quality of federated averaging at the same FLOPs, while federated training moves "
    "the model over the network every round."
)


def logged_wall(path_part: str, verbs: tuple[str, ...]) -> float:
    """Seconds of logged commands on ``path_part`` whose command starts with one of ``verbs``."""
    total = 0.0
    p = log_path()
    for line in p.read_text().splitlines() if p.is_file() else []:
        r = json.loads(line)
        cmd = r["cmd"].removeprefix("decentdiff ")
        if path_part in cmd and cmd.startswith(verbs):
            total += float(r["wall_s"])
    return total


def model_bytes(run_dir) -> int:
    return sum(p.stat().st_size for p in run_dir.glob("model.safetensors"))


def fed_images() -> int:
    return FED["rounds"] * FED["clients"] * FED["local_steps"] * FED["batch"]


def main() -> None:
    n, steps, seed = FED["n"], FED["sample_steps"], 0
    ddm_images = DDM["steps"] * DDM["batch"]
    # Budget 1, a DDM run's images: study 1's K=4 run (and its FLOP-matched monolith) against a
    # federation with as many local steps as make the same images (so the same FLOPs).
    ddm = seed_runs(seed)[4]
    matched = ddm_images // (FED["rounds"] * FED["clients"] * FED["batch"])
    fed_small = ROOT / "s8" / "full-iid-fm"
    # Budget 2, the federated budget's images: study 6's FedAvg FULL iid and its centralised
    # baseline against a K=4 DDM run with as many images (each expert: steps at batch B/K).
    big_steps = fed_images() // DDM["batch"]
    ddm_big = ddm_run(
        ROOT / "s8" / "ddm-K4", K=4, seed=seed, monolith=False, steps=big_steps, study=STUDY
    )
    budgets = {
        f"{ddm_images // 1000}k images (a DDM run)": {
            "ddm": ddm,
            "fed": fed_run(fed_small, method="full", split="iid", study=STUDY, local_steps=matched),
            "fed_run": fed_small,
            "central": (ddm, "monolith"),
        },
        f"{fed_images() // 1000}k images (the federated budget)": {
            "ddm": ddm_big,
            "fed": fed_run(
                ROOT / "s6" / "full-iid", method="full", split="iid", study="s6_feddiffuse"
            ),
            "fed_run": ROOT / "s6" / "full-iid",
            "central": (ROOT / "s6" / "central", "monolith"),
        },
    }
    out: dict[str, dict] = {}
    checks: dict[str, str] = {}
    for label, b in budgets.items():
        row = pick(
            evaluate(b["ddm"], "ensemble", routing="top1", n=n, seed=seed, steps=steps, study=STUDY)
        )
        crun, cmodel = b["central"]
        crow = pick(evaluate(crun, cmodel, n=n, seed=seed, steps=steps, study=STUDY))
        shipped = sum(model_bytes(b["ddm"] / "experts" / str(k)) for k in range(4))
        shipped += model_bytes(b["ddm"] / "router")
        arms = {
            "DDM K=4 top-1 (fm)": {
                "fid": row["fid"],
                "train_bytes": 0,
                "one_time_bytes": shipped,
                "train_flops": row["train_flops"],
                "wall_s": logged_wall(str(b["ddm"]) + " ", ("train experts", "train router")),
            },
            "FedAvg FULL iid (fm)": {
                "fid": b["fed"]["fid"]["mean"],
                "train_bytes": b["fed"]["bytes_total"],
                "rounds": b["fed"]["rounds"],
                "wall_s": logged_wall(str(b["fed_run"]) + " ", ("fed run",)),
            },
            "centralised monolith (fm)": {
                "fid": crow["fid"],
                "train_bytes": 0,
                "train_flops": crow["train_flops"],
                "wall_s": logged_wall(str(crun) + " ", ("train monolith",)),
            },
        }
        out[label] = arms
        held = arms["DDM K=4 top-1 (fm)"]["fid"] <= arms["FedAvg FULL iid (fm)"]["fid"]
        checks[f"ddm_no_worse_than_fedavg_at_{label.split()[0]}"] = "held" if held else "not held"
    save(
        STUDY,
        {
            "claim": CLAIM,
            "setup": {
                "ddm": {**DDM, "K": 4, "seed": seed},
                "fed": dict(FED),
                "budgets": {
                    label: {
                        "images": ddm_images if i == 0 else fed_images(),
                        "ddm_expert_steps": DDM["steps"] if i == 0 else big_steps,
                        "fed_local_steps": matched if i == 0 else FED["local_steps"],
                    }
                    for i, label in enumerate(budgets)
                },
                "eval_n": n,
            },
            "budgets": out,
            "checks": checks,
            "verdict": overall(checks),
        },
    )


if __name__ == "__main__":
    main()
