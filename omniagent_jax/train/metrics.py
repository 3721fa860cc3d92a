"""Metrics sinks: a JSONL file and TensorBoard event files.

TensorBoard is not a dependency: `EventWriter` writes its record format itself (TFRecord framing
with masked CRC-32C, `Event` protobufs with scalar summaries), which TensorBoard reads as is.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from typing import Any


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
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, wire: int, payload: bytes) -> bytes:
    return _varint((num << 3) | wire) + payload


def _bytes_field(num: int, data: bytes) -> bytes:
    return _field(num, 2, _varint(len(data)) + data)


def encode_event(
    wall_time: float, step: int, *, scalars: dict[str, float] | None = None, file_version: str | None = None
) -> bytes:
    """`tensorflow.Event`: wall_time=1 (double), step=2 (int64), file_version=3, summary=5 with
    `Summary.Value{tag=1, simple_value=2 (float)}`."""
    msg = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step))
    if file_version is not None:
        msg += _bytes_field(3, file_version.encode())
    if scalars:
        values = b"".join(
            _bytes_field(1, _bytes_field(1, tag.encode()) + _field(2, 5, struct.pack("<f", float(v))))
            for tag, v in scalars.items()
        )
        msg += _bytes_field(5, values)
    return msg


def frame_record(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc(header)) + data + struct.pack("<I", masked_crc(data))


class EventWriter:
    """Appends scalar summaries to `events.out.tfevents.<time>.<host>` in `logdir`."""

    def __init__(self, logdir: str | os.PathLike):
        os.makedirs(logdir, exist_ok=True)
        self.path = os.path.join(logdir, f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}")
        self._f = open(self.path, "ab")
        self._f.write(frame_record(encode_event(time.time(), 0, file_version="brain.Event:2")))
        self._f.flush()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self._f.write(frame_record(encode_event(time.time(), step, scalars=values)))
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def read_records(path: str | os.PathLike) -> list[bytes]:
    """The payloads of a TFRecord file, CRCs checked (for tests and tooling)."""
    out = []
    with open(path, "rb") as f:
        data = f.read()
    i = 0
    while i < len(data):
        header = data[i : i + 8]
        (n,) = struct.unpack("<Q", header)
        if struct.unpack("<I", data[i + 8 : i + 12])[0] != masked_crc(header):
            raise ValueError("bad length CRC")
        payload = data[i + 12 : i + 12 + n]
        if struct.unpack("<I", data[i + 12 + n : i + 16 + n])[0] != masked_crc(payload):
            raise ValueError("bad data CRC")
        out.append(payload)
        i += 16 + n
    return out


class JsonlWriter:
    def __init__(self, path: str | os.PathLike):
        self._f = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()
