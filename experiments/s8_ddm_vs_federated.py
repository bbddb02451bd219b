"""Study 8: DDM vs federated training on the same data and FLOPs: quality, bytes, wall time."""

from __future__ import annotations

import json

from common import DDM, FED, ROOT, evaluate, fed_run, log_path, pick, save
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


def main() -> None:
    n, steps, seed = FED["n"], FED["sample_steps"], 0
    ddm = seed_runs(seed)[4]
    ddm_row = pick(
        evaluate(ddm, "ensemble", routing="top1", n=n, seed=seed, steps=steps, study=STUDY)
    )
    mono_row = pick(evaluate(ddm, "monolith", n=n, seed=seed, steps=steps, study=STUDY))
    # the same images (so FLOPs) as the DDM run: rounds x clients x steps x batch = DDM steps x B
    matched = DDM["steps"] * DDM["batch"] // (FED["rounds"] * FED["clients"] * FED["batch"])
    full_fm = fed_run(
        ROOT / "s8" / "full-iid-fm",
        method="full",
        split="iid",
        study=STUDY,
        local_steps=matched,
    )
    shipped = sum(model_bytes(ddm / "experts" / str(k)) for k in range(4)) + model_bytes(
        ddm / "router"
    )
    arms = {
        "DDM K=4 top-1 (fm)": {
            "fid": ddm_row["fid"],
            "train_bytes": 0,
            "one_time_bytes": shipped,
            "train_flops": ddm_row["train_flops"],
            "wall_s": logged_wall(str(ddm), ("train experts", "train router")),
        },
        "FedAvg FULL iid (fm)": {
            "fid": full_fm["fid"]["mean"],
            "train_bytes": full_fm["bytes_total"],
            "wall_s": logged_wall(str(ROOT / "s8" / "full-iid-fm"), ("fed run",)),
        },
        "monolith, centralised (fm)": {
            "fid": mono_row["fid"],
            "train_bytes": 0,
            "train_flops": mono_row["train_flops"],
            "wall_s": logged_wall(str(ddm), ("train monolith",)),
        },
    }
    held = arms["DDM K=4 top-1 (fm)"]["fid"] <= arms["FedAvg FULL iid (fm)"]["fid"]
    save(
        STUDY,
        {
            "claim": CLAIM,
            "setup": {
                "ddm": {**DDM, "K": 4, "seed": seed},
                "fed": {**FED, "local_steps": matched},
                "eval_n": n,
            },
            "arms": arms,
            "checks": {"ddm_no_worse_than_fedavg_same_objective": "held" if held else "not held"},
            "verdict": "held" if held else "not held",
        },
    )


if __name__ == "__main__":
    main()
