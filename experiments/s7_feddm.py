"""Study 7: FedDM's variants: FedProx under label skew, 8-bit updates, against vanilla FedAvg."""

from __future__ import annotations

from common import FED, INCONCLUSIVE, ROOT, fed_run, overall, save
from s6_feddiffuse import central_sequential, trained_enough

STUDY = "s7_feddm"
CLAIM = (
    "Quantised (8-bit) updates give up to 4x communication efficiency for at most ~1.75x worse "
    "FID; FedProx converges better than vanilla FedAvg under non-IID data."
)
MU = 0.01


def main() -> None:
    root = ROOT / "s6"  # vanilla FULL runs are study 6's (same budget, same seed)
    vanilla_iid = fed_run(root / "full-iid", method="full", split="iid", study="s6_feddiffuse")
    vanilla_skew = fed_run(
        root / "full-dirichlet0.5", method="full", split="dirichlet:0.5", study="s6_feddiffuse"
    )
    q8 = fed_run(
        ROOT / "s7" / "full-iid-q8",
        method="full",
        split="iid",
        study=STUDY,
        extra=("--quantize", 8),
    )
    prox = fed_run(
        ROOT / "s7" / "full-dirichlet0.5-prox",
        method="full",
        split="dirichlet:0.5",
        study=STUDY,
        extra=("--prox", MU),
    )
    q8_fid = q8["fid"]["mean"] / vanilla_iid["fid"]["mean"]
    q8_up = q8["bytes_up"] / vanilla_iid["bytes_up"]
    q8_total = q8["bytes_total"] / vanilla_iid["bytes_total"]
    prox_fid = prox["fid"]["mean"] / vanilla_skew["fid"]["mean"]
    # FID ratios mean something only if the vanilla model is trained (study 6's rule).
    trained = trained_enough(vanilla_iid["fid"]["mean"], central_sequential())
    q = INCONCLUSIVE
    checks = {
        "q8_uplink_about_4x_smaller": "held" if q8_up <= 0.3 else "not held",
        "q8_fid_at_most_1.75x": ("held" if q8_fid <= 1.75 else "not held") if trained else q,
        "prox_better_under_label_skew": ("held" if prox_fid < 1 else "not held") if trained else q,
    }
    save(
        STUDY,
        {
            "claim": CLAIM,
            "setup": {**FED, "prox_mu": MU, "quantize_bits": 8},
            "vanilla_iid": vanilla_iid,
            "q8_iid": q8,
            "vanilla_dirichlet0.5": vanilla_skew,
            "prox_dirichlet0.5": prox,
            "q8_fid_ratio": q8_fid,
            "q8_uplink_bytes_ratio": q8_up,
            "q8_total_bytes_ratio": q8_total,
            "prox_fid_ratio": prox_fid,
            "checks": checks,
            "models_trained_enough": trained,
            "verdict": overall(checks) + ("" if trained else " (bytes only; quality inconclusive)"),
        },
    )


if __name__ == "__main__":
    main()
