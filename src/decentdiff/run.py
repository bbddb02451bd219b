"""The run directory (RUN): one folder per experiment, the single source of truth.

``RUN/run.toml`` records the resolved data settings and the data fingerprint; every command that
reads RUN checks that the data it loads is the data RUN was made from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .config import Config, DataConfig, dump_toml
from .errors import DataError, RunError
from .training.checkpoint import atomic_write_text

RUN_TOML = "run.toml"


@dataclass
class RunData:
    """A data source with its train / held-out split.

    The held-out images are rows ``heldout_idx`` of ``images``, or, when the RUN evaluates against
    a second source (``data.heldout_source``), rows ``heldout_idx`` of ``heldout_images``: use
    :meth:`heldout` rather than indexing ``images`` yourself.
    """

    images: np.ndarray  # uint8 (N, C, H, W), the whole source
    labels: np.ndarray | None
    fingerprint: str
    train_idx: np.ndarray  # int64 indices into images
    heldout_idx: np.ndarray  # int64 indices into heldout_images (else images)
    source: str
    num_classes: int
    class_names: tuple[str, ...] | None = None
    heldout_images: np.ndarray | None = None  # a second source's images, or None
    heldout_labels: np.ndarray | None = None
    heldout_fingerprint: str = ""

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def heldout(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(array, row indices, labels of those rows or None) of the held-out images."""
        if self.heldout_images is not None:
            labels = None if self.heldout_labels is None else self.heldout_labels[self.heldout_idx]
            return self.heldout_images, self.heldout_idx, labels
        labels = None if self.labels is None else self.labels[self.heldout_idx]
        return self.images, self.heldout_idx, labels


def load_data(cfg: DataConfig) -> RunData:
    """Load ``cfg.source`` and split it (seeded, stratified); the held-out part is never trained on.

    With ``cfg.heldout_source`` the held-out part is that whole second source (loaded with the same
    size and channels), and every image of ``cfg.source`` trains.
    """
    from .data.sources import load_source
    from .data.split import heldout_split

    ds = load_source(cfg.source, size=cfg.size, channels=cfg.channels, skip_bad=cfg.skip_bad)
    if len(ds) == 0:
        raise DataError(f"data source {cfg.source} holds no images; point it at a non-empty set")
    if cfg.heldout_source.strip():
        return _with_heldout_source(cfg, ds)
    train_idx, held_idx = heldout_split(len(ds), ds.labels, cfg.heldout, cfg.split_seed)
    return RunData(
        images=ds.images,
        labels=ds.labels,
        fingerprint=ds.fingerprint,
        train_idx=train_idx,
        heldout_idx=held_idx,
        source=cfg.source,
        num_classes=ds.num_classes,
        class_names=ds.class_names,
    )


def training_only(cfg: DataConfig) -> DataConfig:
    """The data settings without the held-out source, for what only trains (an island, a
    federated client, an added source): the same training images, every one of the source."""
    if not cfg.heldout_source.strip():
        return cfg
    return replace(cfg, heldout_source="", heldout=0.0)


def _with_heldout_source(cfg: DataConfig, ds: Any) -> RunData:
    """RunData whose held-out part is the source ``cfg.heldout_source``, checked against ``ds``."""
    from .data.sources import load_source

    spec = cfg.heldout_source.strip()  # recorded as given; compared stripped
    held = load_source(spec, size=cfg.size, channels=cfg.channels, skip_bad=cfg.skip_bad)
    if held.fingerprint == ds.fingerprint:
        raise DataError(
            f"held-out source {spec} holds the same images as the training data {cfg.source}; "
            "give a separate split (e.g. its validation set), or drop data.heldout_source"
        )
    if held.shape != ds.shape:
        c, h, w = held.shape
        fix = (
            f"--set data.channels={ds.shape[0]}"
            if (h, w) == ds.shape[1:]
            else f"--set data.size={ds.shape[1]} (it resizes both sources)"
        )
        raise DataError(
            f"held-out source {spec} has images {c}x{h}x{w} but the training data "
            f"{'x'.join(map(str, ds.shape))}; bring them to one shape with {fix}"
        )
    labels = held.labels
    if labels is not None and ds.labels is None:
        labels = None  # unlabelled training data: the held-out labels have nothing to match
    elif labels is not None:
        mine, theirs = ds.class_names, held.class_names
        if mine is not None and theirs is not None and tuple(mine) != tuple(theirs):
            first = next(
                (i for i, (a, b) in enumerate(zip(mine, theirs, strict=False)) if a != b),
                min(len(mine), len(theirs)),
            )
            a = mine[first] if first < len(mine) else "(none)"
            b = theirs[first] if first < len(theirs) else "(none)"
            raise DataError(
                f"held-out source {spec} names its classes differently from {cfg.source} "
                f"(class {first}: {b!r} vs {a!r}, {len(theirs)} vs {len(mine)} classes); "
                "give a held-out split of the same data set"
            )
        if labels.size and int(labels.max()) >= ds.num_classes:
            raise DataError(
                f"held-out source {spec} has label {int(labels.max())} but {cfg.source} only "
                f"{ds.num_classes} classes; give a held-out split of the same data set"
            )
    return RunData(
        images=ds.images,
        labels=ds.labels,
        fingerprint=ds.fingerprint,
        train_idx=np.arange(len(ds), dtype=np.int64),
        heldout_idx=np.arange(len(held), dtype=np.int64),
        source=cfg.source,
        num_classes=ds.num_classes,
        class_names=ds.class_names,
        heldout_images=held.images,
        heldout_labels=labels,
        heldout_fingerprint=held.fingerprint,
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
            for recorded_only in ("fingerprint", "shape", "heldout_fingerprint"):
                base["data"].pop(recorded_only, None)
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
                **(
                    {"heldout_fingerprint": data.heldout_fingerprint}
                    if data.heldout_fingerprint
                    else {}
                ),
            },
            "model": asdict(cfg.model),
            "objective": asdict(cfg.objective),
            **(extra or {}),
        }
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.toml_path, dump_toml(content))

    def data(self, cfg: Config, *, create: bool = True, heldout: bool = True) -> RunData:
        """Load the data RUN was made from (or ``cfg.data`` for a new RUN) and check its fingerprint.

        ``heldout=False`` (training commands of an existing RUN) reads only the training data: an
        island that trains an expert needs no copy of a held-out source.
        """
        recorded = self.read_toml().get("data", {})
        if not recorded and not create:
            raise RunError(f"{self.path} is not a decentdiff run (no run.toml); create it first")
        if recorded and not heldout:
            data = load_data(training_only(cfg.data))
            want = recorded.get("fingerprint")
            if want and want != data.fingerprint:
                raise RunError(
                    f"{self.path} was made from data {recorded.get('source')!r} (fingerprint "
                    f"{want[:12]}…) but {cfg.data.source!r} has fingerprint "
                    f"{data.fingerprint[:12]}…; use the original data or a new RUN directory"
                )
            return data
        data = load_data(cfg.data)
        want = recorded.get("fingerprint")
        if want and want != data.fingerprint:
            raise RunError(
                f"{self.path} was made from data {recorded.get('source')!r} (fingerprint "
                f"{want[:12]}…) but {cfg.data.source!r} has fingerprint {data.fingerprint[:12]}…; "
                "use the original data or a new RUN directory"
            )
        want_held = recorded.get("heldout_fingerprint", "")
        if recorded and want_held != data.heldout_fingerprint:
            made = recorded.get("heldout_source") or "a share of its training data"
            now = cfg.data.heldout_source or "a share of the training data"
            raise RunError(
                f"{self.path} is evaluated against {made!r} (fingerprint {want_held[:12] or '-'}) "
                f"but this command gives {now!r} (fingerprint {data.heldout_fingerprint[:12] or '-'}); "
                "use the original held-out data or a new RUN directory"
            )
        if not recorded:
            self.write_toml(cfg, data)
        return data

    def model_dir(self, role: str) -> Path:
        """``monolith``, ``router``, ``distilled`` or ``experts/<k>``."""
        return self.path / role
