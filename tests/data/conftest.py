"""Fixtures for the psyche-data tests (helpers live in data_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("psyche_data", reason="psyche-data is not installed")

from data_helpers import FIXTURES_ENV, fixtures_dir, write_tokens


@pytest.fixture
def fixtures() -> Path:
    path = fixtures_dir()
    if not (path / "llama2_tokenizer.json").is_file():
        pytest.skip(f"real-data fixtures not found at {path} (set {FIXTURES_ENV})")
    return path


@pytest.fixture
def token_folder(tmp_path: Path) -> Path:
    """Four files of different sizes (in tokens: 1000, 2500, 64, 3000; seeded random ids),
    written out of name order."""
    rng = np.random.default_rng(1234)
    folder = tmp_path / "tokens"
    for name, n in [("b.ds", 2500), ("a.ds", 1000), ("d.npy", 3000), ("c.bin", 64)]:
        write_tokens(folder / name, rng.integers(0, 65536, n, dtype=np.uint16))
    (folder / "README.md").write_text("not data\n")
    return folder
