"""The preprocessed (parquet) provider on small generated files."""

from __future__ import annotations

import numpy as np
import pytest
from data_helpers import make_options

from psyche_core.errors import PsycheError

pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed")
pq = pytest.importorskip("pyarrow.parquet")

from psyche_data.preprocessed import PreprocessedDataProvider, build_preprocessed  # noqa: E402


def write(path, **columns):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


def test_rows_in_path_order_with_optional_columns(tmp_path):
    write(tmp_path / "b.parquet", input_ids=[[3, 4, 5]])
    write(tmp_path / "a.parquet", input_ids=[[0, 1, 2], [1, 2, 3]])
    provider = build_preprocessed(make_options(data_path=str(tmp_path), sequence_length=3))
    assert provider.num_sequences == 3
    rows = [s.input_ids.tolist() for s in provider.get_samples(range(3))]
    assert rows == [[0, 1, 2], [1, 2, 3], [3, 4, 5]]
    assert provider.get_samples([0])[0].labels is None
    shuffled = PreprocessedDataProvider(tmp_path, 3, seed=2)
    again = [s.input_ids.tolist() for s in shuffled.get_samples(range(3))]
    assert sorted(again) == rows


def test_labels_and_lengths(tmp_path):
    write(
        tmp_path / "x.parquet",
        inputs=[[7, 8, 9, 10]],
        labels=[[-100, 8, 9, 10]],
        position_ids=[[0, 1, 0, 1]],
        sequence_lengths=[[2, 2]],
    )
    (sample,) = PreprocessedDataProvider(tmp_path, 4).get_samples([0])
    assert sample.labels.tolist() == [-100, 8, 9, 10]
    assert sample.position_ids.tolist() == [0, 1, 0, 1]
    assert sample.sequence_lengths == [2, 2]


def test_bad_input(tmp_path):
    with pytest.raises(PsycheError, match="does not exist"):
        PreprocessedDataProvider(tmp_path / "none", 3)
    with pytest.raises(PsycheError, match="no .parquet files"):
        PreprocessedDataProvider(tmp_path, 3)
    write(tmp_path / "x.parquet", tokens=[[1, 2, 3]])
    with pytest.raises(PsycheError, match="no 'inputs' or 'input_ids' column"):
        PreprocessedDataProvider(tmp_path, 3)
    write(tmp_path / "x.parquet", input_ids=[[1, 2, 3], [1, 2]])
    with pytest.raises(PsycheError, match="parquet row 1: input_ids has 2 tokens, not .* 3"):
        PreprocessedDataProvider(tmp_path, 3)
    with pytest.raises(PsycheError, match="needs --data-path"):
        build_preprocessed(make_options())
    write(tmp_path / "x.parquet", input_ids=[[1, 2, 3]])
    with pytest.raises(PsycheError, match="past the end"):
        PreprocessedDataProvider(tmp_path, 3).get_samples(np.array([1]))
