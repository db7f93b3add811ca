"""The IDX format of MNIST: a 4-byte magic (0x0000, type 0x08 = uint8, number of dims), big-endian uint32
sizes, then the raw bytes. Only the two kinds MNIST uses are accepted: labels (0x00000801, N) and images
(0x00000803, N x rows x cols)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from mnistlab.errors import DataError

LABELS_MAGIC = 0x00000801
IMAGES_MAGIC = 0x00000803
_NDIM = {LABELS_MAGIC: 1, IMAGES_MAGIC: 3}


def parse_header(head: bytes, size: int, name: str | Path) -> tuple[int, tuple[int, ...]]:
    """Validate an IDX header (`head`: at least the first 16 bytes) against the total `size` in bytes.

    Returns (header length, dims); raises DataError naming `name` on a bad magic or a length that does not
    match the header.
    """
    if len(head) < 4:
        raise DataError(f"{name}: not an IDX file (only {size} bytes)")
    (magic,) = struct.unpack(">I", head[:4])
    if magic not in _NDIM:
        raise DataError(
            f"{name}: wrong magic 0x{magic:08x} (expected 0x{LABELS_MAGIC:08x} labels or "
            f"0x{IMAGES_MAGIC:08x} images)"
        )
    ndim = _NDIM[magic]
    header_len = 4 + 4 * ndim
    if len(head) < header_len:
        raise DataError(f"{name}: truncated IDX header ({size} bytes)")
    dims = struct.unpack(f">{ndim}I", head[4:header_len])
    expected = header_len + int(np.prod(dims, dtype=np.int64))
    if size != expected:
        kind = "truncated" if size < expected else "too long"
        raise DataError(f"{name}: {kind}: {size} bytes, header {tuple(dims)} needs {expected}")
    return header_len, tuple(int(d) for d in dims)


def read_header(path: str | Path) -> tuple[int, tuple[int, ...]]:
    """Read and validate the header of the IDX file at `path` against its length; see parse_header."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    return parse_header(head, size, path)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file into a writable uint8 array of the shape its header declares."""
    path = Path(path)
    header_len, dims = read_header(path)
    out = np.empty(dims, dtype=np.uint8)
    try:
        with open(path, "rb") as f:
            f.seek(header_len)
            got = f.readinto(memoryview(out).cast("B"))
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    if got != out.size:
        raise DataError(f"{path}: changed while reading ({got} of {out.size} data bytes)")
    return out


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array of 1 (labels) or 3 (images) dims as IDX bytes."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim not in (1, 3):
        raise ValueError(
            f"IDX needs a uint8 array of 1 or 3 dims, got {array.dtype} with shape {array.shape}"
        )
    magic = LABELS_MAGIC if array.ndim == 1 else IMAGES_MAGIC
    header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write `array` (uint8, 1 or 3 dims) as an IDX file at `path` (not atomic: callers pick a temp name)."""
    path = Path(path)
    path.write_bytes(idx_bytes(array))
    return path
