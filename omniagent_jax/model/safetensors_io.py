"""Streaming safetensors I/O: read one tensor at a time, write shards tensor by tensor.

The `safetensors` package loads bf16 only through a framework (its numpy backend rejects it) and
writes a file from a dict of tensors that must all be in memory at once. A converter for a 17 GB
checkpoint can afford neither, and the format is small (8-byte little-endian header length, a
JSON header, then the raw bytes), so it is read and written here directly:

* `SafetensorsFile` validates the header against the file size up front, so a truncated file or a
  garbage header is an error naming the file before any tensor is read, and returns tensors as
  numpy arrays (bf16 through `ml_dtypes`) or as raw byte ranges (for carrying a tensor through
  unchanged, whatever its dtype).
* `write_safetensors` writes the header first from the tensor specs, then each tensor's bytes in
  turn, so at most one tensor is in memory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator

import ml_dtypes
import numpy as np


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not match the model; the message names the file/key."""


# safetensors dtype names ↔ numpy dtypes (bf16 and fp8 through ml_dtypes).
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U64": np.dtype(np.uint64),
    "U32": np.dtype(np.uint32),
    "U16": np.dtype(np.uint16),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
DTYPE_NAMES: dict[np.dtype, str] = {v: k for k, v in DTYPES.items()}

# Itemsizes of the names above, so that byte counts of any stored tensor can be checked.
_ITEMSIZE = {name: dt.itemsize for name, dt in DTYPES.items()}
# The reference reader refuses headers above 100 MB; a larger length field means garbage.
_MAX_HEADER = 100_000_000
_COPY_CHUNK = 64 << 20


def dtype_name(dtype: np.dtype | type) -> str:
    """The safetensors name (`BF16`, `F32`, …) of a numpy/ml_dtypes dtype."""
    try:
        return DTYPE_NAMES[np.dtype(dtype)]
    except KeyError:
        raise CheckpointError(f"dtype {np.dtype(dtype)} cannot be stored in safetensors") from None


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in a safetensors header: dtype name, shape, byte range in the data section."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


class SafetensorsFile:
    """A safetensors file whose header has been read and validated; tensors are read on demand."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            size = os.path.getsize(self.path)
            with open(self.path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise CheckpointError(f"{self.path}: corrupt safetensors file (only {size} bytes, no header length)")
                header_len = int.from_bytes(head, "little")
                if header_len > _MAX_HEADER or 8 + header_len > size:
                    raise CheckpointError(
                        f"{self.path}: corrupt safetensors file (header length {header_len} does not fit the file's {size} bytes)"
                    )
                raw = f.read(header_len)
        except FileNotFoundError:
            raise CheckpointError(f"safetensors file not found: {self.path}") from None
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{self.path}: corrupt safetensors file (header is not valid JSON: {e})") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path}: corrupt safetensors file (header is not a JSON object)")
        self.data_start = 8 + header_len
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self.tensors: dict[str, TensorInfo] = {}
        data_size = size - self.data_start
        for key, entry in header.items():
            self.tensors[key] = self._entry(key, entry, data_size)

    def _entry(self, key: str, entry: object, data_size: int) -> TensorInfo:
        try:
            dtype, (begin, end) = entry["dtype"], entry["data_offsets"]  # type: ignore[index]
            shape = tuple(int(d) for d in entry["shape"])  # type: ignore[index]
        except (TypeError, KeyError, ValueError):
            raise CheckpointError(f"{self.path}: corrupt safetensors file (bad header entry for {key!r}: {entry!r})") from None
        if dtype not in _ITEMSIZE:
            raise CheckpointError(f"{self.path}: tensor {key!r} has unsupported dtype {dtype!r}")
        expected = math.prod(shape) * _ITEMSIZE[dtype]
        if not (0 <= begin <= end) or end - begin != expected:
            raise CheckpointError(
                f"{self.path}: corrupt safetensors file (tensor {key!r} spans bytes [{begin}, {end}) "
                f"but {dtype}{list(shape)} needs {expected})"
            )
        if end > data_size:
            raise CheckpointError(
                f"{self.path}: corrupt safetensors file (truncated: tensor {key!r} ends at byte {end} "
                f"of a {data_size}-byte data section)"
            )
        return TensorInfo(dtype, shape, int(begin), int(end))

    def keys(self) -> list[str]:
        return list(self.tensors)

    def info(self, key: str) -> TensorInfo:
        try:
            return self.tensors[key]
        except KeyError:
            raise CheckpointError(f"{self.path} does not contain tensor {key!r}") from None

    def read(self, key: str) -> np.ndarray:
        """The tensor as a fresh numpy array (the only copy in memory)."""
        info = self.info(key)
        out = np.empty(info.shape, DTYPES[info.dtype])
        with open(self.path, "rb") as f:
            f.seek(self.data_start + info.begin)
            got = f.readinto(memoryview(out.reshape(-1).view(np.uint8)))
        if got != info.nbytes:
            raise CheckpointError(f"{self.path}: truncated while reading tensor {key!r} ({got} of {info.nbytes} bytes)")
        return out

    def iter_bytes(self, key: str, chunk: int = _COPY_CHUNK) -> Iterator[bytes]:
        """The tensor's raw bytes in chunks: carries a tensor through unchanged without decoding it."""
        info = self.info(key)
        with open(self.path, "rb") as f:
            f.seek(self.data_start + info.begin)
            left = info.nbytes
            while left:
                piece = f.read(min(chunk, left))
                if not piece:
                    raise CheckpointError(f"{self.path}: truncated while reading tensor {key!r}")
                left -= len(piece)
                yield piece


# A tensor to write: its header entry and a callable producing its bytes (an array or byte chunks).
@dataclasses.dataclass(frozen=True)
class TensorSource:
    key: str
    dtype: str
    shape: tuple[int, ...]
    produce: Callable[[], np.ndarray | Iterable[bytes]]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _ITEMSIZE[self.dtype]


def write_safetensors(
    path: str | os.PathLike,
    tensors: list[TensorSource],
    *,
    metadata: dict[str, str] | None = None,
    on_tensor: Callable[[TensorSource], None] | None = None,
) -> None:
    """Writes one safetensors file, producing (and dropping) one tensor at a time.

    The header is computed from the specs before any data exists; each produced tensor is checked
    against its spec so that a wrong producer cannot silently corrupt the file.
    """
    header: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for t in tensors:
        header[t.key] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned, as the reference writer does
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for t in tensors:
            value = t.produce()
            if isinstance(value, np.ndarray):
                if value.shape != t.shape or dtype_name(value.dtype) != t.dtype:
                    raise CheckpointError(
                        f"internal: tensor {t.key!r} produced {value.dtype}{list(value.shape)}, "
                        f"header says {t.dtype}{list(t.shape)}"
                    )
                written = f.write(memoryview(np.ascontiguousarray(value).reshape(-1).view(np.uint8)))
            else:
                written = sum(f.write(piece) for piece in value)
            del value
            if written != t.nbytes:
                raise CheckpointError(f"internal: tensor {t.key!r} wrote {written} bytes, expected {t.nbytes}")
            if on_tensor is not None:
                on_tensor(t)
