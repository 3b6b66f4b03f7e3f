"""The :class:`DataProvider` contract and the batch the trainer builds from it.

Samples are addressed by a global index. Global step ``s`` (1-based) with total batch ``B``
uses samples ``(s-1)*B .. s*B-1``; data-parallel peer ``r`` of ``N`` takes the ``r``-th of
``N`` equal slices, and splits it into micro-batches. A provider must return the same tokens for
the same index on every machine (seeded shuffles included).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from psyche_core.errors import PsycheError

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TokenizedData:
    """One training sample.

    ``input_ids`` is required; ``labels`` defaults to ``input_ids`` (the model shifts them);
    ``position_ids`` to ``0..T-1``; ``sequence_lengths`` lists the lengths of packed documents
    (summing to ``len(input_ids)``) when the sample packs several.
    """

    input_ids: np.ndarray | Sequence[int]
    labels: np.ndarray | Sequence[int] | None = None
    position_ids: np.ndarray | Sequence[int] | None = None
    sequence_lengths: Sequence[int] | None = None


class DataProvider(ABC):
    """A source of tokenized samples addressed by index."""

    @property
    @abstractmethod
    def num_sequences(self) -> int:
        """How many samples there are; valid indices are ``0 .. num_sequences - 1``."""

    @abstractmethod
    def get_samples(self, ids: Sequence[int]) -> list[TokenizedData]:
        """The samples at ``ids`` (usually a ``range``), in that order.

        Raise :class:`~psyche_core.errors.PsycheError` for an index past the end or data that
        cannot be read; never return fewer samples than asked for.
        """

    def describe(self) -> str:
        """One line for the run header (``"local: 3 files, 1.2M tokens"``)."""
        return f"{type(self).__name__}: {self.num_sequences} sequences"

    def close(self) -> None:
        """Release files, connections and threads."""

    def __enter__(self) -> DataProvider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Batch:
    """A micro-batch as tensors, ready for :meth:`CausalLM.forward`."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor | None
    sequence_lengths: list[list[int]] | None

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())

    def to(self, device: torch.device) -> Batch:
        return Batch(
            self.input_ids.to(device, non_blocking=True),
            self.labels.to(device, non_blocking=True),
            None if self.position_ids is None else self.position_ids.to(device, non_blocking=True),
            self.sequence_lengths,
        )


def collate(samples: Sequence[TokenizedData], pad_token_id: int = 0) -> Batch:
    """Stack samples into a batch, right-padding shorter ones (padding gets no loss)."""
    if not samples:
        raise PsycheError("cannot build a batch from zero samples")
    length = max(len(s.input_ids) for s in samples)
    batch = len(samples)
    input_ids = torch.full((batch, length), pad_token_id, dtype=torch.long)
    labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
    any_positions = any(s.position_ids is not None for s in samples)
    position_ids = torch.arange(length).repeat(batch, 1) if any_positions else None
    any_lengths = any(s.sequence_lengths is not None for s in samples)
    sequence_lengths: list[list[int]] | None = [] if any_lengths else None
    for row, sample in enumerate(samples):
        tokens = torch.as_tensor(np.asarray(sample.input_ids, dtype=np.int64))
        n = tokens.numel()
        input_ids[row, :n] = tokens
        source = sample.input_ids if sample.labels is None else sample.labels
        labels[row, :n] = torch.as_tensor(np.asarray(source, dtype=np.int64))
        if position_ids is not None and sample.position_ids is not None:
            position_ids[row, :n] = torch.as_tensor(np.asarray(sample.position_ids, np.int64))
        if sequence_lengths is not None:
            lengths = list(sample.sequence_lengths or [n])
            if length > n:
                lengths.append(length - n)  # the padding is its own "document"
            sequence_lengths.append([int(x) for x in lengths])
    return Batch(input_ids, labels, position_ids, sequence_lengths)
