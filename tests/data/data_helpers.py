"""Helpers for the psyche-data tests: options, token files, the real fixtures' location."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from psyche_core.options import CORE_OPTIONS, Options
from psyche_data.plugin import OPTIONS

FIXTURES_ENV = "PSYCHE_FIXTURES"


def fixtures_dir() -> Path:
    """The real-data fixtures: $PSYCHE_FIXTURES, else shared/fixtures/psyche beside the repo."""
    override = os.environ.get(FIXTURES_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "psyche"


def make_options(**values) -> Options:
    """Every core and psyche-data option at its default, with ``values`` on top."""
    defaults = {spec.key: spec.default for spec in (*CORE_OPTIONS, *OPTIONS)}
    return Options({**defaults, **values})


def write_tokens(path: Path, tokens, token_size: int = 2) -> np.ndarray:
    """Write ``tokens`` as raw little-endian integers; returns them as an array."""
    array = np.asarray(tokens, dtype="<u2" if token_size == 2 else "<u4")
    path.parent.mkdir(parents=True, exist_ok=True)
    array.tofile(path)
    return array


def expected_sequences(folder: Path, names, length: int, token_size: int = 2) -> np.ndarray:
    """The unshuffled sequences of ``names`` (in that order), computed independently."""
    dtype = "<u2" if token_size == 2 else "<u4"
    rows = []
    for name in names:
        tokens = np.fromfile(folder / name, dtype=dtype)
        for start in range(0, len(tokens) - length + 1, length):
            rows.append(tokens[start : start + length])
    return np.array(rows, dtype=np.int64)


CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Packing documents keeps attention inside each one.\nNew lines, too.",
    "Ünïcödé text — with dashes, emoji 🙂 and  double  spaces.",
    "A researcher with a folder of text has a way in now.",
]


def tiny_tokenizer(path: Path, vocab_size: int = 400, eos: bool = True) -> Path:
    """A byte-level BPE tokenizer.json trained on :data:`CORPUS` (round-trips any text), with
    ``<s>``/``</s>``; its post-processor appends ``</s>`` when ``eos``, like datatrove's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS * 3, trainer)
    if eos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single="$A </s>", special_tokens=[("</s>", tokenizer.token_to_id("</s>"))]
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return path
