"""``psyche data inspect``: what a folder of token files holds, and its samples as text."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from psyche_core.errors import PsycheError
from psyche_data.index import SequenceIndex, token_dtype
from psyche_data.local import LocalDataProvider, find_data_files

_CHUNK_TOKENS = 1 << 24


@dataclass(frozen=True)
class Summary:
    folder: str
    files: int
    bytes: int
    tokens: int
    sequences: int
    sequence_length: int
    token_size: int
    min_token: int | None
    max_token: int | None

    def lines(self) -> Iterator[str]:
        yield f"folder:     {self.folder}"
        yield f"files:      {self.files}"
        yield f"bytes:      {self.bytes:,}"
        yield f"token size: {self.token_size} bytes"
        yield f"tokens:     {self.tokens:,}"
        yield f"sequences:  {self.sequences:,} of {self.sequence_length} tokens"
        if self.min_token is not None:
            yield f"token ids:  {self.min_token} .. {self.max_token}"


def summarize(path: str | os.PathLike[str], sequence_length: int, token_size: int) -> Summary:
    """Count files, tokens and sequences, and scan every token for the id range."""
    dtype = token_dtype(token_size)
    root, names = find_data_files(path)
    paths = [root / name for name in names]
    sizes = [p.stat().st_size for p in paths]
    index = SequenceIndex(names, sizes, token_size, sequence_length, None)
    low, high = None, None
    for file, size in zip(paths, sizes):
        if size == 0:
            continue
        tokens = np.memmap(file, dtype=dtype, mode="r")
        for start in range(0, len(tokens), _CHUNK_TOKENS):
            chunk = tokens[start : start + _CHUNK_TOKENS]
            lo, hi = int(chunk.min()), int(chunk.max())
            low = lo if low is None else min(low, lo)
            high = hi if high is None else max(high, hi)
        del tokens
    return Summary(
        str(root),
        len(names),
        sum(sizes),
        index.num_tokens,
        index.num_sequences,
        sequence_length,
        token_size,
        low,
        high,
    )


def decoded_samples(
    path: str | os.PathLike[str], sequence_length: int, token_size: int, count: int, tokenizer: str
) -> Iterator[str]:
    """The first ``count`` samples (file order) as text, special tokens skipped."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise PsycheError(
            "--decode needs the tokenizers library: pip install 'psyche-data[decode]'"
        ) from None
    try:
        decoder = Tokenizer.from_file(str(tokenizer))
    except Exception as exc:
        raise PsycheError(f"cannot load tokenizer {tokenizer!r}: {exc}") from None
    with LocalDataProvider(path, sequence_length, token_size) as provider:
        for start in range(0, min(count, provider.num_sequences), 64):
            stop = min(count, provider.num_sequences, start + 64)
            for row in provider.read(range(start, stop)):
                yield decoder.decode(row.tolist(), skip_special_tokens=True)


def manifest_lines(manifest: dict) -> Iterator[str]:
    """What ``psyche data tokenize`` recorded: tokenizer, special tokens, counts, source."""
    tokenizer = manifest.get("tokenizer", {})
    yield f"tokenizer:  {tokenizer.get('name')} (vocab {tokenizer.get('vocab_size')}, sha256 " + (
        f"{str(tokenizer.get('sha256'))[:12]})"
    )
    yield f"documents:  {manifest.get('documents', 0):,} (BOS {manifest.get('bos_id')}, EOS " + (
        f"{manifest.get('eos_id')}; boundaries in NAME.idx)"
    )
    yield f"text:       {manifest.get('text_bytes', 0):,} bytes"
    if manifest.get("skipped_bad"):
        yield f"skipped:    {manifest['skipped_bad']:,} bad records"
    source = manifest.get("source", {})
    what = source.get("dataset") or f"{len(source.get('files', []))} files"
    yield f"source:     {what}, sha256 {str(source.get('sha256'))[:12]}"
