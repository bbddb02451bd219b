"""`compare` (the paper's Table 1 on your data) and `report` (RUN/report.md with figures)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import Config
from .ddm.defaults import DEFAULT_ROUTING, DEFAULT_ROUTINGS
from .ddm.warm import total_train_flops
from .evaluation.evaluate import evaluate, find_row, read_rows, sample_key
from .loading import samples_path
from .models.registry import describe
from .run import Run


def available_models(run: Run) -> list[str]:
    """Models of RUN that can be evaluated, in the order the comparison shows them."""
    out = []
    if (run.path / "experts").is_dir():  # routings that need the router check for it
        out.append("ensemble")
    for m in ("monolith", "distilled"):
        if (run.path / m / "meta.json").is_file():
            out.append(m)
    return out


def compare(
    run: Run,
    cfg: Config,
    *,
    routings: tuple[str, ...] = DEFAULT_ROUTINGS,
    models: list[str] | None = None,
    features: str = "auto",
    recompute: bool = False,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Evaluate the ensemble under each routing and every other model; reuse matching rows."""
    from .errors import RunError
    from .figures import fid_vs_flops_figure

    models = models or available_models(run)
    if not models:
        raise RunError(
            f"{run.path} has no trained model to compare: train experts + router "
            f"(`decentdiff train experts/router {run.path}`) or `decentdiff train monolith {run.path}`"
        )
    from .evaluation.evaluate import resolve_features

    features = resolve_features(run.data(cfg, create=False), features)
    rows, key = [], {**sample_key(cfg), "features": features}
    existing = [] if recompute else read_rows(run)
    from .ddm.routing import parse_routing

    has_router = (run.path / "router" / "meta.json").is_file()
    jobs = [
        ("ensemble", r)
        for r in routings
        if "ensemble" in models and (has_router or not parse_routing(r).needs_router)
    ]
    jobs += [(m, None) for m in models if m != "ensemble"]
    from .loading import resolve_guidance, resolve_solver

    for model, routing in jobs:
        solver = resolve_solver(run, model, cfg.sample.solver)
        guidance = resolve_guidance(run, model, cfg.sample.guidance)
        row = find_row(existing, model=model, routing=routing,
                       **{**key, "solver": solver, "guidance": guidance})  # fmt: skip
        if row is None:
            out = samples_path(run, model, routing)
            row = evaluate(
                run,
                cfg,
                model,
                routing=routing or DEFAULT_ROUTING,
                features=features,
                device=device,
                progress=progress,
                save_samples_to=out,
            )
        rows.append(row)
    fid_vs_flops_figure(rows, run.path / "figures" / "fid_vs_flops.png")
    from .training.checkpoint import atomic_write_text

    atomic_write_text(run.path / "compare.md", comparison_table(rows) + "\n")
    return rows


def comparison_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: model/routing, GFLOPs per image, FID, KID, precision, recall, confident share."""
    head = (
        "| model | routing | solver | guidance | sampling GFLOPs/img | train TFLOPs | FID | KID "
        "| precision | recall | confident ≥0.9 |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r.get('routing') or '–'} | {r.get('solver') or '–'} | "
            f"{r.get('guidance') or 1:g} | {r['sample_gflops_per_image']:.2f} | "
            f"{r['train_flops'] / 1e12:.2f} | {r['fid']:.2f} | {r['kid_mean']:.3f} | "
            f"{r['precision']:.3f} | {r['recall']:.3f} | {r.get('confident_share', float('nan')):.3f} |"
        )
    if rows and rows[0].get("floor"):
        f = rows[0]["floor"]
        lines.append(
            f"| *floor: train vs held-out* | – | – | – | – | – | {f['fid']:.2f} | {f['kid_mean']:.3f} | "
            f"{f['precision']:.3f} | {f['recall']:.3f} | {f.get('confident_share', float('nan')):.3f} |"
        )
    return "\n".join(lines)


def _hidden(path: Path, root: Path) -> bool:
    """Inside a dot-directory of RUN (a checkpoint's ``.prev`` copy, launcher scratch, ...)."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _curves(run: Run) -> dict[str, list[tuple[int, float]]]:
    curves = {}
    for p in sorted(run.path.glob("**/metrics.jsonl")):
        if p.parent == run.path or _hidden(p, run.path):
            continue
        pts = []
        for line in p.read_text().splitlines():
            try:
                row = json.loads(line)
                pts.append((int(row["step"]), float(row["loss"])))
            except (json.JSONDecodeError, KeyError, ValueError):
                continue
        # A resumed run may repeat steps: keep the last value per step.
        curves[str(p.parent.relative_to(run.path))] = sorted(dict(pts).items())
    return curves


def write_report(run: Run, cfg: Config) -> Path:
    """Assemble RUN/report.md from what RUN holds; sections for missing parts say what to run."""
    from .figures import attribution_figure, training_curves_figure
    from .training.checkpoint import atomic_write_text, read_meta

    rp = run.path
    md: list[str] = [f"# decentdiff report: `{rp}`", ""]
    toml = run.read_toml()
    data = run.data(cfg, create=False)
    rows = read_rows(run)
    summary = _summary(run, rows)
    md += ["## Summary", "", *[f"- {s}" for s in summary], ""]
    md += [
        "## Data and partition",
        "",
        f"Source `{toml.get('data', {}).get('source')}`: {len(data.images)} images of shape "
        f"{tuple(data.shape)}, {len(data.train_idx)} for training, {len(data.heldout_idx)} held out "
        + (
            f"from `{toml['data']['heldout_source']}` "
            if toml.get("data", {}).get("heldout_source")
            else ""
        )
        + f"(never trained on; evaluation compares with them). Fingerprint `{data.fingerprint[:16]}…`.",
        "",
    ]
    part = None
    if (rp / "partition.npz").is_file():
        from .ddm.membership import added_sources
        from .ddm.store import load_partition

        part = load_partition(run, data)
        added = added_sources(run)
        sizes = [
            f"{int(s)}" if k not in added else f"(added: `{added[k][0]}`)"
            for k, s in enumerate(part.sizes())
        ]
        md += [
            f"Partition: `{part.method}` ({part.features} features), K = {part.num_parts}, sizes "
            + ", ".join(sizes)
            + ".",
            "",
            "![partition](figures/partition.png)",
            "",
        ]
        if data.labels is not None:
            md += _cluster_lines(part, data, added)
        from .ddm.membership import membership_lines

        changes = membership_lines(run)
        if changes:
            md += ["### Membership changes", "", *[f"- {c}" for c in changes], ""]
    # Training
    md += [
        "## Training",
        "",
        "| model | architecture | params | steps | batch | train TFLOPs | final loss |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    dirs = sorted(
        p.parent
        for p in rp.glob("**/meta.json")
        if p.parent.name not in ("classifier",) and not _hidden(p, rp)
    )
    for d in dirs:
        try:
            m = read_meta(d)
        except Exception:  # a damaged meta is reported as such, the report still renders
            md.append(f"| {d.relative_to(rp)} | (unreadable meta.json) | | | | | |")
            continue
        if "train" not in m:
            continue
        md.append(
            f"| {d.relative_to(rp)} | {describe(m)} | {m.get('params', 0):,} | {m.get('step')} | "
            f"{m['train'].get('batch')} | {total_train_flops([m]) / 1e12:.3g} | "
            f"{(m.get('loss') or float('nan')):.4f} |"
        )
    curves = _curves(run)
    if curves:
        training_curves_figure(curves, rp / "figures" / "training_curves.png")
        md += ["", "![training curves](figures/training_curves.png)"]
    md.append("")
    if (rp / "router" / "accuracy.json").is_file():
        acc = json.loads((rp / "router" / "accuracy.json").read_text())
        md += [
            "## Router",
            "",
            f"Top-1 accuracy of the router at predicting the cluster of x0 from (x_t, t), on fresh "
            f"noise over {acc['n']} training images; always answering the largest cluster scores "
            f"{acc['prior']:.2f}.",
            "",
            "| t | " + " | ".join(f"{t:.2f}" for t in acc["t"]) + " |",
            "|---|" + "---:|" * len(acc["t"]),
            "| accuracy | " + " | ".join(f"{a:.2f}" for a in acc["accuracy"]) + " |",
            "",
            "![router accuracy](figures/router_accuracy.png)",
            "",
        ]
    # Comparison
    latest: dict[tuple, dict] = {}  # per model, routing and guidance (its own column)
    for r in rows:
        latest[(r["model"], r.get("routing"), r.get("guidance"))] = r
    if latest:
        md += ["## Comparison", "", comparison_table(list(latest.values())), ""]
        if (rp / "figures" / "fid_vs_flops.png").is_file():
            md += ["![FID vs FLOPs](figures/fid_vs_flops.png)", ""]
        md += [
            "FID, KID, precision/recall use the features of a classifier trained on the training "
            "part (held-out accuracy "
            + (
                f"{rows[-1]['classifier_accuracy']:.3f}"
                if rows[-1].get("classifier_accuracy")
                else "n/a"
            )
            + "); the floor row compares training with held-out images, the best any model can reach. "
            "Sampling GFLOPs are measured by counting network evaluations during sampling.",
            "",
        ]
        with_hist = [r for r in latest.values() if r.get("class_hist")]
        if with_hist and data.labels is not None:
            from .figures import class_histogram_figure

            held_labels = data.heldout()[2]
            if held_labels is None:  # an unlabelled held-out source: no real histogram
                held_labels = np.zeros(0, np.int64)
            real = np.bincount(held_labels, minlength=len(with_hist[0]["class_hist"]))
            class_histogram_figure(with_hist, real, rp / "figures" / "class_histogram.png")
            md += [
                "Which classes each model makes (the evaluation classifier's prediction for each "
                "generated image) against the held-out data: a routing that favours the large "
                "clusters shows here as too many of their classes.",
                "",
                "![class histogram](figures/class_histogram.png)",
                "",
            ]
    md += memorisation_lines(run, rows)
    if (rp / "diagnostics.json").is_file():
        from .ddm.diagnostics import summary_lines

        try:
            diag = json.loads((rp / "diagnostics.json").read_text())
            lines = summary_lines(diag)
        except (json.JSONDecodeError, KeyError, IndexError, TypeError):
            lines = ["(diagnostics.json is unreadable: run `decentdiff diagnose` again)"]
        md += [
            "## Routing diagnostics",
            "",
            "From `decentdiff diagnose`: the router's accuracy, entropy and expected calibration "
            "error per noise level, and which expert a router-driven routing picks at each step.",
            "",
            *[f"- {x}" for x in lines],
            "",
        ]
        if (rp / "figures" / "routing_diagnostics.png").is_file():
            md += ["![routing diagnostics](figures/routing_diagnostics.png)", ""]
    # Samples
    grids = sorted((rp / "samples").glob("*.png")) if (rp / "samples").is_dir() else []
    if grids:
        md += ["## Samples", ""]
        for g in grids:
            md += [f"**{g.stem}**", "", f"![{g.stem}](samples/{g.name})", ""]
    # Attribution
    from .ddm.load import resolve_routing

    att = samples_path(run, "ensemble", resolve_routing(run, DEFAULT_ROUTING))
    if not att.is_file():
        att = rp / "samples" / "ensemble-top1.npz"
    if part is not None and att.is_file():
        with np.load(att) as z:
            if "routing" in z.files:
                from .training.generative import to_uint8

                imgs = to_uint8(torch.from_numpy(z["images"]))
                routing = z["routing"]
                train_imgs = data.images[data.train_idx]
                attribution_figure(
                    imgs, routing, train_imgs, part.parts(), rp / "figures" / "attribution.png"
                )
                dom = np.bincount(routing.argmax(1), minlength=part.num_parts)
                md += [
                    "## Attribution",
                    "",
                    f"Each generated image (ensemble, {att.stem.removeprefix('ensemble-')} routing) is "
                    "attributed to the experts, hence the data clusters, that produced it: the mean "
                    "weight of each expert along its trajectory (with mixture routing one expert made "
                    "the whole image). Samples per dominant expert: "
                    + ", ".join(f"expert {k}: {int(c)}" for k, c in enumerate(dom))
                    + ".",
                    "",
                    "![attribution](figures/attribution.png)",
                    "",
                ]
    cmds = rp / "commands.txt"
    islands = sorted(
        (rp / "experts").glob("*/commands.txt") if (rp / "experts").is_dir() else [],
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 1 << 30,
    )
    if cmds.is_file() or islands:
        md += ["## Reproduce", ""]
        if cmds.is_file():
            md += [
                "The commands that made this run, in order:",
                "",
                "```bash",
                *cmds.read_text().strip().splitlines(),
                "```",
                "",
            ]
        if islands:
            md += [
                "Each island's own commands (logged inside its expert directory):",
                "",
                "```bash",
                *[line for p in islands for line in p.read_text().strip().splitlines()],
                "```",
                "",
            ]
    out = rp / "report.md"
    atomic_write_text(out, "\n".join(md) + "\n")
    return out


def memorisation_lines(run: Run, rows: list[dict[str, Any]]) -> list[str]:
    """The report's memorisation section: for each model, the newest eval row with a check."""
    latest: dict[tuple, dict] = {}
    for r in rows:
        if isinstance(r.get("memorisation"), dict):
            latest[(r["model"], r.get("routing"))] = r
    if not latest:
        return []

    def pct(part: dict | None) -> str:
        return "–" if not part else f"{part['copies']:.1%}"

    first = next(iter(latest.values()))["memorisation"]
    md = [
        "## Memorisation",
        "",
        "Each generated image against its nearest training images (L2 in pixels in [0, 1], and "
        f"in the evaluation features). A copy: d(NN1) / d(NN2) < {first['threshold']:.3g} in pixels "
        "(Yoon et al. 2023; Gu et al. 2023), far nearer one training image than any other. The "
        "held-out column is the same test on held-out images, never trained on: the data's own "
        "near-duplicates.",
        "",
        "| model | routing | images | training images | copies (pixels) | copies (features) "
        "| held-out flagged | median nearest distance (pixels) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (model, routing), r in latest.items():
        m = r["memorisation"]
        md.append(
            f"| {model} | {routing or '–'} | {m['n']} | {m['n_train']} | {pct(m['pixels'])} | "
            f"{pct(m.get('features'))} | {pct(m.get('heldout_pixels'))} | "
            f"{m['pixels']['nn_median']:.3g} |"
        )
    md.append("")
    per_client = [
        (k, r["memorisation"]) for k, r in latest.items() if r["memorisation"].get("groups")
    ]
    if per_client:
        md += [
            "Per client: the same test within each client's own training images alone, as the "
            "silo could run it.",
            "",
            "| model | client | its images | copies (pixels) | copies (features) | median nearest "
            "distance (pixels) |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for (model, _), m in per_client:
            for g, v in m["groups"].items():
                md.append(
                    f"| {model} | {g} | {v['n_train']} | {pct(v['pixels'])} | "
                    f"{pct(v.get('features'))} | {v['pixels']['nn_median']:.3g} |"
                )
        md.append("")
    for (model, routing), r in latest.items():
        fig = r["memorisation"].get("figure")
        if fig and (run.path / fig).is_file():
            name = model if routing is None else f"{model} {routing}"
            md += [
                f"**{name}**: the most copy-like pairs",
                "",
                f"![memorisation {name}]({fig})",
                "",
            ]
    return md


def _cluster_lines(part: Any, data: Any, added: dict) -> list[str]:
    """The classes each cluster (so each expert) holds, by name, and how far the clusters follow
    the labels."""
    from .ddm.cluster import cluster_contents

    labels = data.labels[data.train_idx]
    nmi, tops = cluster_contents(part.assignments, labels, part.num_parts, data.class_names)
    lines = [
        f"Clusters against the {data.num_classes} labelled classes: normalised mutual "
        f"information {nmi:.3f} (0: unrelated; 1: the clusters are the classes).",
        "",
        "| cluster | images | most frequent classes (share of the cluster) |",
        "|---:|---:|---|",
    ]
    for k, (size, top) in enumerate(zip(part.sizes(), tops, strict=True)):
        if k in added:
            lines.append(f"| {k} | – | added from `{added[k][0]}` |")
            continue
        names = ", ".join(f"{name.replace('|', '/')} {share:.0%}" for name, share in top)
        lines.append(f"| {k} | {int(size)} | {names} |")
    return [*lines, ""]


def _summary(run: Run, rows: list[dict]) -> list[str]:
    """Up to five lines: the headline comparison of this RUN."""
    latest: dict[tuple, dict] = {}
    for r in rows:
        latest[(r["model"], r.get("routing"))] = r
    lines = []
    mono = latest.get(("monolith", None))
    ens = [r for (m, _), r in latest.items() if m == "ensemble"]
    if ens:
        best = min(ens, key=lambda r: r["fid"])
        lines.append(
            f"DDM ensemble, best routing `{best['routing']}`: FID {best['fid']:.2f} at "
            f"{best['sample_gflops_per_image']:.2f} GFLOPs/image"
        )
        from .ddm.load import resolve_routing

        chosen = resolve_routing(run, DEFAULT_ROUTING)
        default = latest.get(("ensemble", chosen))
        if default:
            lines.append(
                f"default routing `{DEFAULT_ROUTING}` = `{chosen}` for this model (one expert per "
                f"image per step): FID {default['fid']:.2f}, "
                f"{100 * default.get('confident_share', 0):.0f}% of samples classified with "
                "confidence ≥ 0.9"
            )
    if mono:
        lines.append(
            f"monolith (FLOP-matched): FID {mono['fid']:.2f} at {mono['sample_gflops_per_image']:.2f} "
            "GFLOPs/image"
        )
    if ens and mono:
        best = min(ens, key=lambda r: r["fid"])
        lines.append(
            f"ensemble / monolith FID ratio: {best['fid'] / mono['fid']:.2f} (paper, ImageNet: 0.72)"
        )
    if rows and rows[-1].get("floor"):
        lines.append(f"floor (training vs held-out images): FID {rows[-1]['floor']['fid']:.2f}")
    if ens:
        from .ddm.defaults import EVIDENCE

        lines.append(f"why `auto` routes this way: {EVIDENCE} (docs/routing.md)")
    return lines[:6] or ["no evaluation yet: run `decentdiff eval` or `decentdiff compare`"]
