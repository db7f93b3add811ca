"""Checksummed MNIST-family data: IDX files, sources, fetching, verification and loading."""

from __future__ import annotations

from mnistlab.data.idx import read_idx, write_idx
from mnistlab.data.sources import (
    SPECS,
    DataFile,
    DatasetSpec,
    data_dir,
    dataset_dir,
    fetch,
    get_spec,
    load_split,
    verify,
)

__all__ = [
    "SPECS",
    "DataFile",
    "DatasetSpec",
    "data_dir",
    "dataset_dir",
    "fetch",
    "get_spec",
    "load_split",
    "read_idx",
    "verify",
    "write_idx",
]
