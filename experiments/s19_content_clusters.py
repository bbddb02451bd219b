"""Study 19: do clusters follow content? Cluster–label agreement (normalised mutual information) of
pixel PCA against the FID Inception network's pool3 features, on Tiny ImageNet at 32×32.

Cluster–label agreement also as AMI (adjusted for chance: with 202 classes and a few clusters, NMI of a random split is already ~0.05). Two labelled colour sets from Tiny ImageNet's validation split (DIR = the unpacked
tiny-imagenet-200 folder; ``DECENTDIFF_TINY_IMAGENET``): every class with 10 images each, and 10
random classes with all 50 of theirs. Each feature set goes through the partition's own k-means
(fine → coarse, seeded, rows L2-normalised) at several K, 3 partition seeds. Inception at input
sides 299 (the FID standard), 160 and 128; and the 299 features PCA-whitened to 64 dimensions.

    python experiments/s19_content_clusters.py           # prints and saves the table
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from common import overall, save

STUDY = "s19_content_clusters"
#: The unpacked tiny-imagenet-200 folder: $DECENTDIFF_TINY_IMAGENET, else ~/data/tiny-imagenet-200.
DIR = os.environ.get("DECENTDIFF_TINY_IMAGENET", str(Path.home() / "data" / "tiny-imagenet-200"))
SIDES = tuple(int(s) for s in os.environ.get("S19_SIDES", "299,160,128").split(","))
SEEDS = (0, 1, 2)
PCA = "pixel PCA 64"
CLAIM = (
    "The DDM paper clusters a pretrained network's embedding (DINOv2) so that each expert owns a "
    "region of content; clusters of pixels follow brightness and colour instead."
)


def subsets() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from decentdiff.data.sources import load_source

    val = load_source(f"tinyimagenet-val:{DIR}", size=32)
    rng = np.random.default_rng(0)
    y = np.asarray(val.labels)
    every = np.sort(
        np.concatenate([rng.permutation(np.flatnonzero(y == c))[:10] for c in np.unique(y)])
    )
    ten = rng.choice(np.unique(y), 10, replace=False)
    some = np.sort(np.flatnonzero(np.isin(y, ten)))
    x = np.asarray(val.images)
    return {
        f"all {len(np.unique(y))} classes x 10": (x[every], y[every]),
        "10 classes x 50": (x[some], y[some]),
    }


def whiten(f: np.ndarray, dim: int = 64) -> np.ndarray:
    from sklearn.decomposition import PCA

    return PCA(n_components=dim, whiten=True, random_state=0).fit_transform(f)


def nmi_table(
    feats: np.ndarray | None, labels: np.ndarray, ks: tuple[int, ...]
) -> dict[str, list[float]]:
    from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

    from decentdiff.data.partition import make_partition

    out = {}
    for k in ks:
        nmi, ami = [], []
        for s in SEEDS:
            if feats is None:  # the chance level: a random split into k parts
                assign = np.random.default_rng(s).integers(0, k, len(labels))
            else:
                n = len(feats)
                assign = make_partition("kmeans", k=k, features=feats, n=n, seed=s).assignments
            nmi.append(float(normalized_mutual_info_score(labels, assign)))
            ami.append(float(adjusted_mutual_info_score(labels, assign)))
        out[f"K={k}"] = {"nmi": nmi, "ami": ami}
    return out


def main() -> None:
    from decentdiff.data.features import featurize, inception_features

    table: dict[str, dict] = {}
    for name, (x, y) in subsets().items():
        ks = (4, 8, 16) if "all" in name else (4, 8, 10)
        rows = {}
        rows["random split (chance)"] = nmi_table(None, y, ks)
        rows[PCA] = nmi_table(featurize(x, "pca", seed=0), y, ks)
        for side in SIDES:
            f = inception_features(x, side=side)
            rows[f"inception {side}"] = nmi_table(f, y, ks)
            if side == 299:
                rows["inception 299, PCA-whitened 64"] = nmi_table(whiten(f), y, ks)
        table[name] = {"images": len(x), "classes": len(np.unique(y)), "agreement": rows}
        for arm, r in rows.items():
            print(
                name,
                "|",
                arm,
                "|",
                "NMI, AMI:",
                {k: [round(float(np.mean(v[m])), 3) for m in ("nmi", "ami")] for k, v in r.items()},
                flush=True,
            )
    from decentdiff.data.features import INCEPTION_SIDE

    default = f"inception {INCEPTION_SIDE}"
    checks = {}
    for name, t in table.items():
        rows = t["agreement"]
        if default not in rows:
            continue
        ratios = {
            k: float(np.mean(rows[default][k]["nmi"]) / np.mean(rows[PCA][k]["nmi"]))
            for k in rows[PCA]
        }
        t["default_over_pca_nmi"] = ratios
        checks[f"{name}: the default features' NMI >= 4x pixel PCA's at every K"] = (
            "held" if min(ratios.values()) >= 4 else "not held"
        )
    save(
        STUDY,
        {
            "claim": CLAIM,
            "setup": {
                "data": "tinyimagenet-val at 32x32 (this copy: 202 classes x 50)",
                "seeds": list(SEEDS),
                "sides": list(SIDES),
                "default": default,
            },
            "table": table,
            "checks": checks,
            "verdict": overall(checks) if checks else "inconclusive",
        },
    )


if __name__ == "__main__":
    sys.exit(main())
