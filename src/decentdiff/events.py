"""TensorBoard event files, written without TensorBoard (``train.log = "tensorboard"``).

An event file is a sequence of TFRecords (length, masked CRC-32C of the length, the bytes, their
masked CRC-32C), each holding one ``Event`` protocol buffer: first the file version, then one
event per (step, scalars). The few protobuf fields needed are encoded here by hand, so logging
costs no dependency; ``tensorboard --logdir RUN`` (``pip install tensorboard``) shows every model
of a RUN as its own run, and the tests read the files back with TensorBoard's own reader.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Mapping
from pathlib import Path

#: ``train.log`` values: metrics.jsonl is always written; ``tensorboard`` adds event files.
LOG_KINDS = ("jsonl", "tensorboard")


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as TFRecord uses."""
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(
    wall_time: float, step: int, *, version: str | None = None, summary: bytes = b""
) -> bytes:
    msg = bytes([1 << 3 | 1]) + struct.pack("<d", wall_time) + _varint(2 << 3) + _varint(step)
    if version is not None:
        msg += _field_bytes(3, version.encode())
    if summary:
        msg += _field_bytes(5, summary)
    return msg


def _scalar(tag: str, value: float) -> bytes:
    value_msg = _field_bytes(1, tag.encode()) + bytes([2 << 3 | 5]) + struct.pack("<f", value)
    return _field_bytes(1, value_msg)


def _record(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return (
        length
        + struct.pack("<I", _masked(crc32c(length)))
        + data
        + struct.pack("<I", _masked(crc32c(data)))
    )


class EventWriter:
    """Appends scalar events to a new event file in ``directory`` (created if needed)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = self.directory / f"{name}.decentdiff"
        self._write(_event(time.time(), 0, version="brain.Event:2"))

    def _write(self, event: bytes) -> None:
        with self.path.open("ab") as f:  # one append per event: a crash loses at most that one
            f.write(_record(event))
            f.flush()

    def scalars(self, step: int, values: Mapping[str, object], prefix: str = "") -> None:
        """One event at ``step`` with every finite number of ``values`` (others are skipped)."""
        summary = b""
        for tag, v in values.items():
            if isinstance(v, bool) or not isinstance(v, int | float):
                continue
            if v != v or v in (float("inf"), float("-inf")):
                continue
            summary += _scalar(prefix + tag, float(v))
        if summary:
            self._write(_event(time.time(), int(step), summary=summary))
