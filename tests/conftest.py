"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


# --- data ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """A data root (pass it as `data_dir=` / `--data-dir`) holding verified real MNIST.

    The user's data dir ($MNISTLAB_DATA, else the cache): reused when already there, fetched into it once
    otherwise, never deleted.
    """
    from mnistlab.data import data_dir, fetch

    root = data_dir()
    fetch("mnist", root)
    return root
