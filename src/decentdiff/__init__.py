"""decentdiff: train diffusion models without one big cluster — Decentralized Diffusion Models
(isolated experts mixed by a router) and federated diffusion on Flower.

From Python: ``run = decentdiff.load("runs/demo")``, then ``run.sample(...)``, ``run.evaluate(...)``,
the training methods of :class:`decentdiff.api.RunHandle` and ``run.federate(...)`` /
``run.fed_eval(...)`` (docs/api.md). Importing this package
imports nothing heavy; torch is loaded when a method needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from .api import RunHandle

__all__ = ["load"]


def load(path: str | Path) -> RunHandle:
    """The RUN directory at ``path`` as a :class:`~decentdiff.api.RunHandle`."""
    from .api import load as _load

    return _load(path)
