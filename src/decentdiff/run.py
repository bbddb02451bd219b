"""The run directory (RUN): one folder per experiment, the single source of truth.

``RUN/run.toml`` records the resolved data settings and the data fingerprint; every command that
reads RUN checks that the data it loads is the data RUN was made from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import Config, DataConfig, dump_toml
from .errors import DataError, RunError
from .training.checkpoint import atomic_write_text

RUN_TOML = "run.toml"


@dataclass
class RunData:
    """A data source with its train / held-out split."""

    images: np.ndarray  # uint8 (N, C, H, W), the whole source
    labels: np.ndarray | None
    fingerprint: str
    train_idx: np.ndarray  # int64 indices into images
    heldout_idx: np.ndarray
    source: str
    num_classes: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]


def load_data(cfg: DataConfig) -> RunData:
    """Load ``cfg.source`` and split it (seeded, stratified); the held-out part is never trained on."""
    from .data.sources import load_source
    from .data.split import heldout_split

    ds = load_source(cfg.source, size=cfg.size, channels=cfg.channels, skip_bad=cfg.skip_bad)
    if len(ds) == 0:
        raise DataError(f"data source {cfg.source} holds no images; point it at a non-empty set")
    train_idx, held_idx = heldout_split(len(ds), ds.labels, cfg.heldout, cfg.split_seed)
    return RunData(
        images=ds.images,
        labels=ds.labels,
        fingerprint=ds.fingerprint,
        train_idx=train_idx,
        heldout_idx=held_idx,
        source=cfg.source,
        num_classes=ds.num_classes,
    )


class Run:
    """Accessor for a RUN directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise RunError(f"{self.path} exists and is not a directory; choose another RUN path")

    @property
    def toml_path(self) -> Path:
        return self.path / RUN_TOML

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def exists(self) -> bool:
        return self.toml_path.is_file()

    def read_toml(self) -> dict[str, Any]:
        import tomllib

        if not self.exists():
            return {}
        try:
            return tomllib.loads(self.toml_path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            raise RunError(
                f"{self.toml_path} is not valid TOML; restore it or start a new RUN"
            ) from None

    def base_config(self) -> dict[str, Any]:
        """run.toml's sections that are Config sections (for ``config.resolve(base=...)``)."""
        data = self.read_toml()
        base = {k: dict(v) for k, v in data.items() if k in ("data", "model", "objective")}
        if "data" in base:
            base["data"].pop("fingerprint", None)
            base["data"].pop("shape", None)
        if "objective" in base:
            from .config import ObjectiveConfig  # a run.toml that predates a field: as trained then

            # weighting and step_dist whatever the kind (a later `train expert --objective ddpm`
            # in an old RUN trains as the RUN's other ddpm experts did); eps_param for ddpm RUNs.
            legacy = dict(ObjectiveConfig.LEGACY)
            if base["objective"].get("kind") != "ddpm":
                legacy.pop("eps_param")
            base["objective"] = {**legacy, **base["objective"]}
        return base

    def write_toml(
        self, cfg: Config, data: RunData, extra: dict[str, dict[str, Any]] | None = None
    ) -> None:
        content = {
            "data": {
                **asdict(cfg.data),
                "fingerprint": data.fingerprint,
                "shape": list(data.shape),
            },
            "model": asdict(cfg.model),
            "objective": asdict(cfg.objective),
            **(extra or {}),
        }
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.toml_path, dump_toml(content))

    def data(self, cfg: Config, *, create: bool = True) -> RunData:
        """Load the data RUN was made from (or ``cfg.data`` for a new RUN) and check its fingerprint."""
        recorded = self.read_toml().get("data", {})
        if not recorded and not create:
            raise RunError(f"{self.path} is not a decentdiff run (no run.toml); create it first")
        data = load_data(cfg.data)
        want = recorded.get("fingerprint")
        if want and want != data.fingerprint:
            raise RunError(
                f"{self.path} was made from data {recorded.get('source')!r} (fingerprint "
                f"{want[:12]}…) but {cfg.data.source!r} has fingerprint {data.fingerprint[:12]}…; "
                "use the original data or a new RUN directory"
            )
        if not recorded:
            self.write_toml(cfg, data)
        return data

    def model_dir(self, role: str) -> Path:
        """``monolith``, ``router``, ``distilled`` or ``experts/<k>``."""
        return self.path / role
