"""The baseline DDM is compared with: one model trained on all training data (RUN/monolith),
optionally FLOP-matched to the experts (batch = the sum of their batches, the same steps)."""

from __future__ import annotations

from typing import Any

from ..config import Config
from ..run import Run


def flop_match(run: Run, cfg: Config) -> int:
    """Set ``cfg.train`` to the experts' total compute: batch = the sum of the experts' batches,
    steps = the most steps any expert was trained for. Returns K (needs trained experts)."""
    from ..errors import ConfigError
    from ..training.checkpoint import read_meta
    from .experts import expert_metas
    from .store import load_partition
    from .warm import init_of

    rec = load_partition(run)
    metas = expert_metas(run, rec.num_parts, rec.partition_id)
    cfg.train.batch = sum(m["train"]["batch"] for m in metas)
    cfg.train.steps = max(m["train"]["steps"] for m in metas)
    if any(init_of(m) for m in metas):  # the monolith goes on from the experts' warm-up
        mono = run.model_dir("monolith")
        started = read_meta(mono) if (mono / "meta.json").is_file() else {}
        batch = (started.get("train") or {}).get("batch")
        if batch is not None and batch != cfg.train.batch:
            raise ConfigError(
                f"--flop-match: the experts started from the monolith at batch {batch} but "
                f"their batches sum to {cfg.train.batch}, so the two would not cost the same; "
                f"train the experts at batch {batch} // K with K dividing {batch} (no --batch)"
            )
    return rec.num_parts


def train_monolith(
    run: Run, cfg: Config, *, fresh: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train the monolith on every training image of RUN into RUN/monolith; returns meta.json."""
    from ..data.cache import rows_of
    from ..training.generative import train_generative

    d = run.data(cfg, heldout=False)  # a new RUN still reads (and records) its held-out source
    out = run.model_dir("monolith")
    return train_generative(
        out,
        rows_of(d.images, d.train_idx),  # a memmap's rows stay on disk until drawn
        d.labels[d.train_idx] if d.labels is not None else None,
        d.num_classes,
        cfg,
        role="monolith",
        meta={"data_fingerprint": d.fingerprint, "source": d.source},
        metrics_path=out / "metrics.jsonl",
        fresh=fresh,
        progress=progress,
    )


def summary(run: Run, cfg: Config, meta: dict[str, Any]) -> str:
    """One line: step, loss, size, where."""
    from .experts import loss_text

    return (
        f"monolith: step {meta['step']}/{cfg.train.steps}, loss {loss_text(meta.get('loss'))}, "
        f"{meta['params']:,} params -> {run.model_dir('monolith')}"
    )
