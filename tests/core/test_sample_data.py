"""The embedded sample data: bit-identical everywhere, in the vocabulary, and structured."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest

from psyche_core import sample_data as sample
from psyche_core.errors import PsycheError
from psyche_core.options import Options
from psyche_core.sample_data import (
    BOS,
    CLOSE,
    EOS,
    FIRST_WORD,
    OPEN,
    RECALL,
    SEP,
    VOCAB_SIZE,
    SampleDataProvider,
    build_sample,
    generate,
    sample_data,
)

# recorded once: any change to the generator changes these, and every run on the sample data
SHA256_256 = "769d1118800b0eb8debab45d280148c048fbd51bfcf4e2de267dc08e9560705a"
SHA256_SMALL = "46705d92e11f19637a9c1b22f6e1783704ba28ce5d215e79a2d6a13cd140b01e"


def sha256(tokens: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(tokens, dtype="<u2").tobytes()).hexdigest()


def test_small_generation_is_bit_identical():
    data = generate(4, 64)
    assert sha256(data.tokens) == SHA256_SMALL
    assert data.entropy_floor == pytest.approx(1.8668, abs=1e-4)


def test_default_data_is_bit_identical_fast_and_in_the_vocabulary():
    sample_data.cache_clear()
    started = time.perf_counter()
    data = sample_data(256)
    elapsed = time.perf_counter() - started
    assert data.tokens.shape == (16384, 256)
    assert sha256(data.tokens) == SHA256_256
    assert int(data.tokens.min()) >= 1  # 0 (pad) is never used
    assert int(data.tokens.max()) < VOCAB_SIZE
    assert data.entropy_floor == pytest.approx(1.7021, abs=1e-4)
    assert elapsed < 10, f"generating 4M tokens took {elapsed:.1f}s"
    started = time.perf_counter()
    assert sample_data(256) is data  # cached
    assert time.perf_counter() - started < 0.01


def test_sequences_do_not_depend_on_how_many_are_made():
    assert np.array_equal(generate(3, 50).tokens, generate(7, 50).tokens[:3])


def check_document_structure(row: np.ndarray) -> int:
    """Parse one sequence against the grammar; returns how many documents were complete."""
    complete = 0
    i, n = 0, len(row)
    while i < n:
        assert row[i] == BOS
        i += 1
        title = []
        while i < n and row[i] != SEP:
            assert row[i] >= FIRST_WORD
            title.append(row[i])
            i += 1
        if i == n:
            break
        assert 2 <= len(title) <= 8
        i += 1
        stack = []
        while i < n and row[i] != RECALL:
            if row[i] in OPEN:
                stack.append(CLOSE[OPEN.index(row[i])])
            elif row[i] in CLOSE:
                assert stack and row[i] == stack.pop(), "brackets must match"
            else:
                assert row[i] >= FIRST_WORD
            i += 1
        if i == n:
            break
        assert not stack
        i += 1
        recalled = row[i : i + len(title)]
        assert recalled.tolist() == title[: len(recalled)], "RECALL repeats the title"
        i += len(title)
        if i >= n:
            break
        assert row[i] == EOS
        i += 1
        complete += 1
    return complete


def test_documents_follow_the_grammar():
    tokens = sample_data(256).tokens
    assert sum(check_document_structure(row) for row in tokens[:300]) > 300


def test_provider():
    provider = build_sample(Options({"sequence_length": 256, "seed": None}))
    assert provider.num_sequences == 16384
    assert "entropy floor 1.70" in provider.describe()
    samples = provider.get_samples(range(2))
    assert samples[0].input_ids.dtype == np.int32
    assert np.array_equal(samples[1].input_ids, sample_data(256).tokens[1])
    shuffled = SampleDataProvider(256, seed=3)
    assert np.array_equal(shuffled.read([0, 1]), SampleDataProvider(256, seed=3).read([0, 1]))
    assert not np.array_equal(shuffled.read([0]), provider.read([0]))
    with pytest.raises(PsycheError, match="past the end"):
        provider.get_samples([16384])
    with pytest.raises(PsycheError, match="between 2 and"):
        SampleDataProvider(1)


def test_tables_are_a_valid_distribution():
    unigram, _unigram_p, chain, chain_p = sample._tables()
    assert unigram.shape == (4096,)
    for state in (0, 17, sample.START):
        words = np.unique(chain[state])
        assert 1 <= len(words) <= 10
        total = sum(chain_p[state][chain[state] == w][0] for w in words)
        assert total == pytest.approx(1.0)
