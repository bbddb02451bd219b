"""A RUN's trained models as a folder to hand to a colleague or upload to a model hub.

``decentdiff export RUN OUT`` copies what sampling needs and nothing else: the weights (EMA and
raw, safetensors), each model's meta.json, run.toml, the partition record and membership (for the
ensemble's routing prior), a federated run's settings — no optimizer state, no training images, no
metrics log. OUT keeps the RUN layout, so ``decentdiff sample OUT`` and ``decentdiff.load(OUT)``
work on it unchanged and draw bitwise the same images as the RUN. Beside it: ``config.json`` (what
the folder holds, machine-readable) and ``README.md``, a model card with YAML front matter as
model hubs read it (data fingerprint, partition, each model's size, objective, training FLOPs and
latest metrics, the routing, sample grids, the license). Nothing touches the network.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .ddm.warm import total_train_flops
from .errors import ConfigError, RunError
from .models.registry import describe
from .run import Run

#: Format of config.json; bumped when the layout changes.
FORMAT = "decentdiff-export/1"
#: Files of a model directory that a sampler reads.
WEIGHTS = ("meta.json", "model.safetensors", "ema.safetensors")
#: Files of the RUN itself that sampling reads.
RUN_FILES = ("run.toml", "partition.npz", "membership.json", "federated/fed.json")


def _model_dirs(run: Run) -> dict[str, Path]:
    """{``--model`` spec: directory} of every trained model of RUN (router included)."""
    out: dict[str, Path] = {}
    experts = sorted(
        (p for p in (run.path / "experts").glob("*") if p.name.isdigit()), key=lambda p: int(p.name)
    )
    for p in experts:
        out[f"expert:{p.name}"] = p
    for name in ("router", "monolith", "distilled"):
        out[name] = run.path / name
    out["federated"] = run.path / "federated" / "global"
    clients = (run.path / "federated" / "clients").glob("*")
    for p in sorted((c for c in clients if c.name.isdigit()), key=lambda c: int(c.name)):
        out[f"client:{p.name}"] = p
    return {k: v for k, v in out.items() if (v / "meta.json").is_file()}


def _latest_rows(run: Run) -> dict[tuple[str, str | None], dict[str, Any]]:
    from .evaluation.evaluate import read_rows

    latest: dict[tuple[str, str | None], dict[str, Any]] = {}
    for r in read_rows(run):
        latest[(r["model"], r.get("routing"))] = r
    return latest


def export_run(run: Run, out: Path, *, license: str = "other", force: bool = False) -> Path:
    """Write the export of RUN to ``out`` (atomically: a partial export is never left at ``out``).

    Args:
        license: the license field of the model card (an SPDX id such as ``apache-2.0``, or
            ``other``); the data's license is the user's to state.
        force: replace an existing ``out``.
    """
    if not run.exists():
        raise RunError(f"{run.path} is not a decentdiff run (no run.toml); nothing to export")
    models = _model_dirs(run)
    if not models:
        raise RunError(f"{run.path} has no trained model yet; train one, then export")
    out = Path(out)
    if out.resolve() == run.path.resolve() or run.path.resolve() in out.resolve().parents:
        raise ConfigError(f"--out {out} is inside the RUN; export to a folder outside {run.path}")
    if out.exists() and any(out.iterdir()) and not force:
        raise ConfigError(f"{out} exists and is not empty; choose a new folder or pass --fresh")
    tmp = out.with_name(f".{out.name}.export-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for rel in RUN_FILES:
            src = run.path / rel
            if src.is_file():
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, tmp / rel)
        metas: dict[str, dict[str, Any]] = {}
        for spec, d in models.items():
            dest = tmp / d.relative_to(run.path)
            dest.mkdir(parents=True, exist_ok=True)
            for name in WEIGHTS:
                if (d / name).is_file():
                    shutil.copy2(d / name, dest / name)
            metas[spec] = json.loads((d / "meta.json").read_text())
        _bundle_vae(tmp, metas, models, run)
        grids = []
        for png in sorted((run.path / "samples").glob("*.png")):
            (tmp / "samples").mkdir(exist_ok=True)
            shutil.copy2(png, tmp / "samples" / png.name)
            grids.append(f"samples/{png.name}")
        config = _config(run, metas, models, grids, license)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "README.md").write_text(_card(run, config))
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _bundle_vae(tmp: Path, metas: dict[str, dict], dirs: dict[str, Path], run: Run) -> None:
    """Latent models: their VAE travels in ``vae/`` and each meta.json points there by a relative
    path, so the export samples on another machine (the fingerprint is checked on load)."""
    vaes = {(m.get("vae") or {}).get("path") for m in metas.values()} - {None}
    if not vaes:
        return
    if len(vaes) > 1:
        raise RunError("the models of this RUN use different VAEs; export them separately")
    src = Path(next(iter(vaes)))
    if not (src / "config.json").is_file():
        raise RunError(f"the VAE {src} of this RUN's models is gone; restore it to export")
    shutil.copytree(src, tmp / "vae", ignore=shutil.ignore_patterns(".*"))
    for spec, m in metas.items():
        if m.get("vae"):
            dest = tmp / dirs[spec].relative_to(run.path)
            m["vae"] = {**m["vae"], "path": os.path.relpath(tmp / "vae", dest)}
            (dest / "meta.json").write_text(json.dumps(m, indent=2) + "\n")


def _config(
    run: Run, metas: dict[str, dict], dirs: dict[str, Path], grids: list[str], license: str
) -> dict[str, Any]:
    from .ddm.load import resolve_routing

    toml = run.read_toml()
    data = toml.get("data", {})
    models: dict[str, Any] = {}
    latest = _latest_rows(run)
    for spec, m in metas.items():
        row = latest.get((spec, None))
        models[spec] = {
            "path": str(dirs[spec].relative_to(run.path)),
            "kind": m.get("kind"),
            "params": m.get("params"),
            "objective": (m.get("objective") or {}).get("kind"),
            "architecture": describe(m),
            "image_shape": m.get("image_shape"),
            "vae": (m.get("vae") or {}).get("fingerprint"),
            "train_flops": None if m.get("train_flops") is None else total_train_flops([m]),
            "steps": m.get("step"),
            "metrics": None if row is None else _metrics(row),
        }
    ensemble = None
    if any(s.startswith("expert:") for s in metas):
        routing = resolve_routing(run, "auto")
        rows = {r: _metrics(v) for (m, r), v in latest.items() if m == "ensemble"}
        ensemble = {
            "experts": sum(s.startswith("expert:") for s in metas),
            "router": "router" in metas,
            "default_routing": routing,
            "metrics_by_routing": rows,
        }
    return {
        "format": FORMAT,
        "library": "decentdiff",
        "license": license,
        "exported": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "data": {
            "source": data.get("source"),
            "fingerprint": data.get("fingerprint"),
            "shape": data.get("shape"),
            "heldout": data.get("heldout"),
        },
        "model": toml.get("model", {}),
        "objective": _objective(toml.get("objective", {})),
        "models": models,
        "ensemble": ensemble,
        "sample_grids": grids,
    }


def _objective(section: dict[str, Any]) -> dict[str, Any]:
    """run.toml's objective with ``auto`` resolved for the RUN's kind (each model's own, possibly
    another kind, is in its meta.json)."""
    from .config import ObjectiveConfig

    try:
        return asdict(ObjectiveConfig.from_meta(section))
    except TypeError:  # a section with keys this version does not know: as written
        return dict(section)


def _metrics(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("fid", "kid_mean", "precision", "recall", "n", "steps", "solver", "guidance")
    return {k: row.get(k) for k in keys} | {"floor_fid": (row.get("floor") or {}).get("fid")}


def _card(run: Run, c: dict[str, Any]) -> str:
    """The model card: YAML front matter, then what a reader needs to trust and use the models."""
    fp = c["data"]["fingerprint"] or "unknown"
    lines = [
        "---",
        "library_name: decentdiff",
        f"license: {c['license']}",
        "tags:",
        "- diffusion",
        "- decentralized-diffusion" if c["ensemble"] else "- flow-matching",
        "---",
        "",
        f"# {run.path.name}",
        "",
        f"Diffusion models trained with decentdiff, exported {c['exported']}. This folder is a "
        "decentdiff run directory with the weights only (no optimizer state, no training images).",
        "",
        "## Use",
        "",
        "```bash",
        f"decentdiff sample THIS_FOLDER --model {next(iter(c['models']))} --n 64 --out samples.npz",
        "```",
        "",
        "```python",
        "import decentdiff",
        'out = decentdiff.load("THIS_FOLDER").sample(64)   # images (N, C, H, W) in [-1, 1]',
        "```",
        "",
        "## Data",
        "",
        f"- source: `{c['data']['source']}`; image shape (C, H, W) {c['data']['shape']}",
        f"- content fingerprint (sha256 of images and labels): `{fp}`",
        f"- held-out share kept for evaluation: {c['data']['heldout']}",
        "",
        "## Models",
        "",
        "| model | parameters | objective | training steps | train TFLOPs | FID (n, steps, solver) |",
        "|---|---|---|---|---|---|",
    ]
    for spec, m in c["models"].items():
        met = m["metrics"]
        fid = "–" if not met else f"{met['fid']:.2f} ({met['n']}, {met['steps']}, {met['solver']})"
        tflops = "–" if m["train_flops"] is None else f"{m['train_flops'] / 1e12:.3f}"
        params = "–" if m["params"] is None else f"{m['params']:,}"
        lines.append(
            f"| {spec} | {params} | {m['objective'] or 'classifier'} | {m['steps']} | {tflops} | "
            f"{fid} |"
        )
    if c["ensemble"]:
        e = c["ensemble"]
        lines += [
            "",
            "## The ensemble",
            "",
            f"{e['experts']} experts, each trained only on its own cluster of the data"
            + (", mixed by a router" if e["router"] else "")
            + f". Default routing: `{e['default_routing']}` (`--model ensemble`).",
        ]
        if e["metrics_by_routing"]:
            lines += ["", "| routing | FID | floor FID | n |", "|---|---|---|---|"]
            for r, met in e["metrics_by_routing"].items():
                lines.append(f"| {r} | {met['fid']:.2f} | {met['floor_fid']:.2f} | {met['n']} |")
    if c["sample_grids"]:
        lines += ["", "## Samples", ""]
        lines += [f"![{g}]({g})" for g in c["sample_grids"]]
    lines += [
        "",
        "## Files",
        "",
        "`config.json` lists every model with its size, objective, training FLOPs and metrics. Each "
        "model directory holds `ema.safetensors` (the weights sampled by default), "
        "`model.safetensors` and `meta.json` (checksums, configuration). `partition.npz` holds "
        "the cluster record the ensemble's routing prior comes from: cluster sizes and priors, "
        "k-means centroids in feature space and the training-image indices of each cluster — no "
        "images.",
        "",
        f"License: {c['license']}. The license of the training data is the data owner's to state.",
        "",
    ]
    return "\n".join(lines)
