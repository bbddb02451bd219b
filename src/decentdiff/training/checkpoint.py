"""Checkpoints as safetensors + JSON, written atomically, verified on load. Nothing is unpickled.

A checkpoint directory holds ``model.safetensors``, ``ema.safetensors``, ``state.safetensors``
(optimizer tensors and the step) and ``meta.json`` (config, data fingerprint, parameter count,
FLOPs so far, and the sha256 of every tensor file). Each file is written to a temporary name,
flushed to disk and renamed into place; ``meta.json`` goes last, so it is the commit point: a file
whose checksum disagrees with ``meta.json`` (a crash between renames, truncation, tampering) is
reported, never silently used.

The last good checkpoint is kept: before the new files are renamed into place, the current
checkpoint, if it verifies, is hard-linked into ``DIR/.prev/`` (links cost no space until the
names are replaced). So at every instant ``DIR`` or ``DIR/.prev`` holds a complete, verifiable
checkpoint, and :func:`decentdiff.training.loop.train` resumes from ``.prev`` when ``DIR`` fails
verification.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from ..errors import CheckpointError, RunError

TENSOR_FILES = ("model", "ema", "state")
#: Sub-directory of a checkpoint directory that holds the previous complete checkpoint.
PREVIOUS = ".prev"


def _write_temp(path: Path, data: bytes | Callable[[BinaryIO], object]) -> Path:
    """Write ``data`` (bytes, or a function that writes to the open file) to a fsynced temporary
    file beside ``path``; return the temporary's path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _fsync_dir(directory: Path) -> None:
    # Makes renames durable across a power loss; best effort (not every platform allows it).
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes | Callable[[BinaryIO], object]) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory and an atomic rename.
    ``data`` may be a function that writes to the open file (large contents, never in memory twice).
    """
    tmp = _write_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
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
    """Write each ``tensors[name]`` as ``name.safetensors`` then ``meta.json`` with their sha256.

    Every file is first written to a fsynced temporary; then the current checkpoint, if intact,
    is kept in ``directory/.prev``; then the temporaries are renamed into place, ``meta.json``
    last. A crash at any point leaves ``directory`` or ``directory/.prev`` complete.
    """
    directory.mkdir(parents=True, exist_ok=True)
    sums: dict[str, str] = {}
    temps: list[tuple[Path, Path]] = []
    try:
        for name, sd in tensors.items():
            data = st_save(_contiguous(sd))
            path = directory / f"{name}.safetensors"
            sums[path.name] = sha256(data)
            temps.append((_write_temp(path, data), path))
            del data
        meta = {**meta, "files": sums}
        text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
        temps.append((_write_temp(directory / "meta.json", text.encode()), directory / "meta.json"))
        keep_previous(directory)
        for tmp, path in temps:
            os.replace(tmp, path)
        _fsync_dir(directory)
    finally:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)


def verify(directory: Path) -> dict[str, Any] | None:
    """The checkpoint's meta if ``meta.json`` parses and every file it lists matches its sha256."""
    try:
        meta = json.loads((directory / "meta.json").read_text())
        files = meta["files"]
        for name, want in files.items():
            if sha256((directory / name).read_bytes()) != want:
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return meta


def keep_previous(directory: Path) -> None:
    """Hard-link (or copy) the current checkpoint into ``directory/.prev`` if it verifies.

    An unverifiable current checkpoint (e.g. left by a crash mid-rename) never replaces a good
    ``.prev``. The new ``.prev`` is assembled under a temporary name and renamed into place, and
    the current checkpoint stays untouched meanwhile, so one complete copy exists at every instant.
    """
    meta = verify(directory)
    if meta is None:
        return
    tmp = Path(tempfile.mkdtemp(dir=directory, prefix=f"{PREVIOUS}.", suffix=".tmp"))
    try:
        for name in [*meta["files"], "meta.json"]:
            try:
                os.link(directory / name, tmp / name)
            except OSError:
                shutil.copy2(directory / name, tmp / name)
        _fsync_dir(tmp)
        prev = directory / PREVIOUS
        if prev.exists():
            shutil.rmtree(prev)
        os.replace(tmp, prev)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_temps(directory: Path) -> None:
    """Delete temporaries a killed writer left in ``directory`` (call only as its sole writer)."""
    if not directory.is_dir():
        return
    for p in directory.glob(".*.tmp"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _previous_hint(directory: Path) -> str:
    prev = directory / PREVIOUS
    if (prev / "meta.json").is_file():
        return f"; the last good checkpoint is kept in {prev} (training again resumes from it)"
    return ""


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
            + _previous_hint(directory)
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
        raise CheckpointError(
            f"{path} is missing; retrain this model or restore the file" + _previous_hint(directory)
        )
    data = path.read_bytes()
    want = meta.get("files", {}).get(path.name)
    if want is not None and sha256(data) != want:
        raise CheckpointError(
            f"{path} does not match the checksum in meta.json (truncated, altered or a crash "
            "mid-write); restore the file or retrain this model" + _previous_hint(directory)
        )
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({e}); retrain" + _previous_hint(directory)
        ) from None
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
