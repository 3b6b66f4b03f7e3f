"""Sample addressing and the seeded shuffle."""

from __future__ import annotations

import numpy as np
import pytest

from psyche_core.errors import PsycheError
from psyche_data.index import SequenceIndex, hash_stream, permutation, sample_ids, splitmix64


def test_splitmix64_matches_reference_values():
    # the first outputs of the reference splitmix64 generator seeded with 0 (state += golden)
    golden = 0x9E3779B97F4A7C15
    states = np.array([0, golden, (2 * golden) % 2**64], dtype=np.uint64)
    assert splitmix64(states).tolist() == [
        0xE220A8397B1DCDAF,
        0x6E789E6AA1B965F4,
        0x06C45D188009454F,
    ]


def test_permutation_golden_order():
    # recorded once; any change here changes every shuffled run
    assert permutation(10, 42).tolist() == [6, 2, 5, 7, 0, 9, 4, 3, 8, 1]
    assert permutation(10, 0).tolist() == [0, 7, 8, 2, 5, 9, 4, 6, 3, 1]


def test_permutation_is_a_permutation_and_depends_on_seed_and_salt():
    n = 10_000
    a = permutation(n, 1)
    assert np.array_equal(np.sort(a), np.arange(n))
    assert not np.array_equal(a, permutation(n, 2))
    assert not np.array_equal(a, permutation(n, 1, salt=1))
    assert np.array_equal(a, permutation(n, 1))


def test_hash_stream_handles_negative_and_huge_seeds():
    index = np.arange(4, dtype=np.uint64)
    assert hash_stream(-1, 0, index).tolist() == hash_stream(2**64 - 1, 0, index).tolist()


def test_sample_ids_accepts_ranges_and_lists_and_checks_the_end():
    assert sample_ids(range(2, 5), 10).tolist() == [2, 3, 4]
    assert sample_ids([7, 1], 10).tolist() == [7, 1]
    assert sample_ids(range(0), 10).tolist() == []
    with pytest.raises(PsycheError, match=r"sample id 10 is past the end.*10 sequences"):
        sample_ids(range(8, 11), 10)
    with pytest.raises(PsycheError, match="negative"):
        sample_ids([-1], 10)


def test_index_drops_tails_and_skips_files_without_a_sequence():
    index = SequenceIndex(["a", "b", "c"], [2 * 25, 2 * 5, 2 * 20], 2, 10, None)
    assert index.sequences_per_file.tolist() == [2, 0, 2]
    assert index.num_sequences == 4
    where = index.locate(range(4))
    assert where.file.tolist() == [0, 0, 2, 2]
    assert where.token_offset.tolist() == [0, 10, 0, 10]


def test_index_includes_a_sequence_ending_exactly_at_the_end_of_a_file():
    # Psyche's loop would drop the last one here; we keep every whole sequence
    index = SequenceIndex(["a"], [2 * 30], 2, 10, None)
    assert index.num_sequences == 3


def test_index_errors_are_one_clear_line():
    with pytest.raises(PsycheError, match="not a multiple of the token size"):
        SequenceIndex(["odd.ds"], [7], 2, 2, None)
    with pytest.raises(PsycheError, match="longer than every data file"):
        SequenceIndex(["a", "b"], [20, 40], 2, 100, None)
    with pytest.raises(PsycheError, match="token size must be 2 or 4"):
        SequenceIndex(["a"], [24], 3, 2, None)
    with pytest.raises(PsycheError, match="at least 1"):
        SequenceIndex(["a"], [24], 2, 0, None)
