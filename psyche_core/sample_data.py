"""The ``sample`` provider: a small synthetic language, generated in code, the default data.

Every sequence is a run of documents (the last one cut off by the sequence end), each::

    BOS  title...  SEP  body...  RECALL  title...  EOS

- **title**: 2 to 8 words drawn from a Zipfian unigram distribution (p ~ 1/(rank+3)) over the
  496 word tokens (16..511); after two words it ends (``SEP``) with probability 0.3 per word.
- **body**: a sparse Markov chain over words (each word has 3 to 10 possible successors, drawn
  from the unigram distribution, with weights ~ 1/k^1.5), with brackets: ``(`` ``[`` open with
  probability 0.05 (up to depth 4), and while one is open the innermost closes with probability
  0.2 with the *matching* bracket.
  Brackets do not change the chain's state, so the next word depends on the last word before
  them. At depth 0, after at least 8 body tokens, ``RECALL`` ends the body with probability 0.01.
- **recall**: the title again, word for word (an induction / copying task), then ``EOS``.

Token ids: 0 pad (unused), 1 BOS, 2 EOS, 3 SEP, 4 RECALL, 5 ``(``, 6 ``)``, 7 ``[``, 8 ``]``,
9-15 unused, 16-511 words; so it fits a vocabulary of 512. Every random choice comes from a
counter-based hash (:func:`psyche_core.indexing.hash_stream`) of (sequence, position), so sequence
``i`` is bit-identical on every machine and does not depend on how many sequences are made.

Since each token is one draw with a known probability given the visible prefix, the generator
also records the exact per-token loss of the ideal model, its mean over the data set being the
**entropy floor**: the lowest loss any model can reach on it (1.70 nats/token for sequences of
256, 1.65 for 2048; a bigram model gets 2.35 and a unigram one 4.92; see docs/data.md).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from psyche_core.errors import PsycheError
from psyche_core.indexing import ArrayDataProvider, hash_stream, permutation, sample_ids

VOCAB_SIZE = 512
PAD, BOS, EOS, SEP, RECALL = 0, 1, 2, 3, 4
OPEN = (5, 7)  # "(" and "["
CLOSE = (6, 8)  # ")" and "]"
FIRST_WORD = 16
NUM_WORDS = VOCAB_SIZE - FIRST_WORD
START = NUM_WORDS  # the chain's state at the start of a body

TOTAL_TOKENS = 1 << 22  # about 4.2M tokens, whatever the sequence length
MIN_TITLE, MAX_TITLE, P_SEP = 2, 8, 0.3
MAX_DEPTH, P_OPEN, P_CLOSE = 4, 0.05, 0.2
MIN_BODY, P_END = 8, 0.01

_SEED = 0x5053_5943_4845  # "PSYCHE"
_UNIGRAM_SLOTS = 4096
_CHAIN_SLOTS = 1024
_PHASE_BOS, _PHASE_TITLE, _PHASE_BODY, _PHASE_RECALL, _PHASE_EOS = range(5)


def _quantize(weights: list[int], slots: int) -> np.ndarray:
    """Integer slot counts, each at least 1, summing to ``slots``, in proportion to the integer
    ``weights`` (largest remainder, ties to the first). Integer arithmetic only, so no libm
    rounding can make two machines disagree."""
    total = sum(weights)
    spare = slots - len(weights)
    counts = [1 + w * spare // total for w in weights]
    remainders = [w * spare % total for w in weights]
    for j in sorted(range(len(weights)), key=lambda j: (-remainders[j], j))[: slots - sum(counts)]:
        counts[j] += 1
    return np.array(counts, dtype=np.int64)


def _zipf(n: int, offset: int) -> list[int]:
    """Integer weights proportional to ``1 / (rank + offset) ** 1.5``, ranks 0..n-1."""
    return [10**15 // ((r + offset) * math.isqrt((r + offset) * 10**6)) for r in range(n)]


@functools.lru_cache(maxsize=1)
def _tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(unigram, unigram_p, chain, chain_p)``: slot -> word id tables and each slot's
    word probability, for the titles (unigram) and for the body chain (per state)."""
    unigram_counts = _quantize([10**12 // (r + 3) for r in range(NUM_WORDS)], _UNIGRAM_SLOTS)
    unigram = np.repeat(np.arange(NUM_WORDS), unigram_counts)
    unigram_p = np.repeat(unigram_counts / _UNIGRAM_SLOTS, unigram_counts)

    states = np.arange(NUM_WORDS + 1, dtype=np.uint64)
    fanout = 3 + (hash_stream(_SEED, 1, states) % np.uint64(8)).astype(np.int64)
    chain = np.empty((NUM_WORDS + 1, _CHAIN_SLOTS), dtype=np.int64)
    chain_p = np.empty((NUM_WORDS + 1, _CHAIN_SLOTS), dtype=np.float64)
    for state in range(NUM_WORDS + 1):
        picks = hash_stream(_SEED, 2 + state, np.arange(fanout[state], dtype=np.uint64))
        successors = unigram[(picks % np.uint64(_UNIGRAM_SLOTS)).astype(np.int64)]
        counts = _quantize(_zipf(int(fanout[state]), 1), _CHAIN_SLOTS)
        row = np.repeat(successors, counts)
        chain[state] = row
        _, inverse, word_counts = np.unique(row, return_inverse=True, return_counts=True)
        chain_p[state] = word_counts[inverse] / _CHAIN_SLOTS
    return unigram, unigram_p, chain, chain_p


@dataclass(frozen=True)
class SampleData:
    """The generated tokens and the ideal model's loss on them."""

    tokens: np.ndarray  # (num_sequences, sequence_length) uint16
    entropy_floor: float  # mean -log p over every predicted token (positions 1..T-1), nats


def generate(num_sequences: int, sequence_length: int) -> SampleData:
    """Sequences ``0 .. num_sequences-1`` of the synthetic language (see the module doc)."""
    unigram, unigram_p, chain, chain_p = _tables()
    n, length = num_sequences, sequence_length
    rows = np.arange(n, dtype=np.uint64)
    row_index = np.arange(n)
    out = np.empty((n, length), dtype=np.uint16)
    phase = np.full(n, _PHASE_BOS, dtype=np.int64)
    title = np.zeros((n, MAX_TITLE), dtype=np.int64)
    title_len = np.zeros(n, dtype=np.int64)
    recall_pos = np.zeros(n, dtype=np.int64)
    state = np.full(n, START, dtype=np.int64)
    depth = np.zeros(n, dtype=np.int64)
    stack = np.zeros((n, MAX_DEPTH), dtype=np.int64)
    body_len = np.zeros(n, dtype=np.int64)
    nll = 0.0
    for t in range(length):
        h = hash_stream(_SEED, 2 * t + 1000, rows)
        g = hash_stream(_SEED, 2 * t + 1001, rows)
        u = (h >> np.uint64(11)).astype(np.float64) * 2.0**-53
        word_slot = (g & np.uint64(_CHAIN_SLOTS - 1)).astype(np.int64)
        title_slot = ((g >> np.uint64(10)) & np.uint64(_UNIGRAM_SLOTS - 1)).astype(np.int64)
        kind = ((g >> np.uint64(22)) & np.uint64(1)).astype(np.int64)

        # title: a word, or SEP once it is long enough
        p_sep = np.where(title_len >= MAX_TITLE, 1.0, np.where(title_len >= MIN_TITLE, P_SEP, 0.0))
        is_sep = u < p_sep
        title_tok = np.where(is_sep, SEP, FIRST_WORD + unigram[title_slot])
        title_p = np.where(is_sep, p_sep, (1.0 - p_sep) * unigram_p[title_slot])

        # body: close / open / recall / next word of the chain
        c_close = np.where(depth > 0, P_CLOSE, 0.0)
        c_open = c_close + np.where(depth < MAX_DEPTH, P_OPEN, 0.0)
        c_end = c_open + np.where((depth == 0) & (body_len >= MIN_BODY), P_END, 0.0)
        is_close, is_open, is_end = u < c_close, u < c_open, u < c_end
        top = stack[row_index, np.maximum(depth - 1, 0)]
        word = chain[state, word_slot]
        body_tok = np.where(
            is_close,
            top,
            np.where(
                is_open,
                np.where(kind == 0, OPEN[0], OPEN[1]),
                np.where(is_end, RECALL, FIRST_WORD + word),
            ),
        )
        body_p = np.where(
            is_close,
            P_CLOSE,
            np.where(
                is_open,
                P_OPEN / 2,
                np.where(is_end, P_END, (1.0 - c_end) * chain_p[state, word_slot]),
            ),
        )

        recall_tok = title[row_index, np.minimum(recall_pos, MAX_TITLE - 1)]
        tokens = np.choose(phase, [BOS, title_tok, body_tok, recall_tok, EOS])
        out[:, t] = tokens
        if t > 0:
            p = np.choose(phase, [1.0, title_p, body_p, 1.0, 1.0])
            nll -= float(np.log(p).sum())

        # advance each sequence's state
        in_title = phase == _PHASE_TITLE
        in_body = phase == _PHASE_BODY
        in_recall = phase == _PHASE_RECALL
        add_word = in_title & ~is_sep
        title[row_index[add_word], title_len[add_word]] = tokens[add_word]
        title_len += add_word
        closing = in_body & is_close
        opening = in_body & is_open & ~is_close
        ending = in_body & is_end & ~is_open
        wording = in_body & ~is_end
        depth -= closing
        stack[row_index[opening], depth[opening]] = np.where(kind[opening] == 0, CLOSE[0], CLOSE[1])
        depth += opening
        state = np.where(wording, word, state)
        body_len += in_body
        recall_pos += in_recall
        new_phase = phase.copy()
        new_phase[phase == _PHASE_BOS] = _PHASE_TITLE
        new_phase[in_title & is_sep] = _PHASE_BODY
        new_phase[ending] = _PHASE_RECALL
        new_phase[in_recall & (recall_pos >= title_len)] = _PHASE_EOS
        new_phase[phase == _PHASE_EOS] = _PHASE_BOS
        starting = phase == _PHASE_EOS
        title_len[starting] = 0
        recall_pos[starting] = 0
        state[starting] = START
        depth[starting] = 0
        body_len[starting] = 0
        phase = new_phase
    predicted = n * (length - 1)
    return SampleData(out, nll / predicted if predicted else math.nan)


@functools.lru_cache(maxsize=4)
def sample_data(sequence_length: int) -> SampleData:
    """The sample data set for ``sequence_length`` (cached in memory)."""
    if isinstance(sequence_length, bool) or not isinstance(sequence_length, int):
        raise PsycheError(f"sequence length must be an integer, got {sequence_length!r}")
    if not 2 <= sequence_length <= TOTAL_TOKENS:
        raise PsycheError(
            f"the sample data needs a sequence length between 2 and {TOTAL_TOKENS}, "
            f"got {sequence_length}"
        )
    data = generate(TOTAL_TOKENS // sequence_length, sequence_length)
    data.tokens.setflags(write=False)
    return data


class SampleDataProvider(ArrayDataProvider):
    """The synthetic language as ``TOTAL_TOKENS // sequence_length`` sequences."""

    def __init__(self, sequence_length: int, seed: int | None = None) -> None:
        self.data = sample_data(sequence_length)
        self.seed = seed
        n = len(self.data.tokens)
        self._order = None if seed is None else permutation(n, seed)

    @property
    def num_sequences(self) -> int:
        return len(self.data.tokens)

    @property
    def entropy_floor(self) -> float:
        return self.data.entropy_floor

    def read(self, ids: Sequence[int]) -> np.ndarray:
        array = sample_ids(ids, self.num_sequences)
        if self._order is not None:
            array = self._order[array]
        return self.data.tokens[array].astype(np.int32)

    def describe(self) -> str:
        n, length = self.data.tokens.shape
        return (
            f"sample: synthetic language, {n:,} sequences of {length} tokens, vocab "
            f"{VOCAB_SIZE}, entropy floor {self.entropy_floor:.2f} nats/token"
        )


def build_sample(options, providers=None) -> SampleDataProvider:
    """Factory for ``--data-provider sample`` (the default without --data-path/--data-url)."""
    return SampleDataProvider(options.sequence_length, options.seed)
