"""Checkpoints as safetensors + JSON, written atomically, verified on load. Nothing is unpickled.

A checkpoint directory holds ``model.safetensors``, ``ema.safetensors``, ``state.safetensors``
(optimizer tensors and the step) and ``meta.json`` (config, data fingerprint, parameter count,
FLOPs so far, and the sha256 of every tensor file). Each file is written to a temporary name,
flushed to disk and renamed into place; ``meta.json`` goes last, so it is the commit point: a file
whose checksum disagrees with ``meta.json`` (a crash between renames, truncation, tampering) is
reported, never silently used.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from ..errors import CheckpointError, RunError

TENSOR_FILES = ("model", "ema", "state")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _contiguous(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, Tensor]:
    """Flatten an optimizer's per-parameter state into ``opt.<index>.<key>`` tensors."""
    out: dict[str, Tensor] = {}
    for idx, st in opt.state_dict()["state"].items():
        for key, val in st.items():
            out[f"opt.{idx}.{key}"] = val if torch.is_tensor(val) else torch.tensor(val)
    return out


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict[str, Tensor]) -> None:
    sd = opt.state_dict()
    state: dict[int, dict[str, Tensor]] = {}
    for name, val in tensors.items():
        if not name.startswith("opt."):
            continue
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = val
    sd["state"] = state
    opt.load_state_dict(sd)


def save_checkpoint(
    directory: Path,
    tensors: dict[str, dict[str, Tensor]],
    meta: dict[str, Any],
) -> None:
    """Write each ``tensors[name]`` as ``name.safetensors`` then ``meta.json`` with their sha256."""
    directory.mkdir(parents=True, exist_ok=True)
    sums = {}
    for name, sd in tensors.items():
        data = st_save(_contiguous(sd))
        sums[f"{name}.safetensors"] = sha256(data)
        atomic_write_bytes(directory / f"{name}.safetensors", data)
    meta = {**meta, "files": sums}
    atomic_write_text(directory / "meta.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")


def read_meta(directory: Path, make_hint: str = "") -> dict[str, Any]:
    p = directory / "meta.json"
    if not p.is_file():
        hint = f": run `{make_hint}`" if make_hint else ""
        raise RunError(f"{directory} has no checkpoint{hint}")
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(
            f"{p} is not valid JSON (truncated or edited); restore it or retrain this model"
        ) from None


def load_tensors(
    directory: Path,
    name: str,
    meta: dict[str, Any],
    expected: dict[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Read ``name.safetensors``, verify its checksum and, if given, keys/shapes/dtypes.

    Args:
        expected: a reference state dict (e.g. a fresh model's); every key must be present with the
            same shape and dtype, and no other key may appear.
    """
    path = directory / f"{name}.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; retrain this model or restore the file")
    data = path.read_bytes()
    want = meta.get("files", {}).get(path.name)
    if want is not None and sha256(data) != want:
        raise CheckpointError(
            f"{path} does not match the checksum in meta.json (truncated, altered or a crash "
            "mid-write); restore the file or retrain this model"
        )
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); retrain") from None
    if expected is not None:
        missing = sorted(set(expected) - set(tensors))
        extra = sorted(set(tensors) - set(expected))
        if missing or extra:
            raise CheckpointError(
                f"{path} does not fit this model (missing {missing[:3]}, unexpected {extra[:3]}); "
                "use the preset it was trained with"
            )
        for k, ref in expected.items():
            got = tensors[k]
            if got.shape != ref.shape or got.dtype != ref.dtype:
                raise CheckpointError(
                    f"{path}: tensor {k} has shape {tuple(got.shape)} {got.dtype}, the model "
                    f"expects {tuple(ref.shape)} {ref.dtype}; use the preset it was trained with"
                )
    return tensors


def load_into(module: nn.Module, directory: Path, name: str, meta: dict[str, Any]) -> None:
    sd = module.state_dict()
    module.load_state_dict(load_tensors(directory, name, meta, expected=sd))
