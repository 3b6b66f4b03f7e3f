"""What every model's ``forward`` checks and derives from its inputs.

:func:`check_inputs` turns bad input into one clear :class:`InvalidInputError` instead of an
index error deep inside torch (it costs a few host syncs). :func:`document_layout` turns packed
``sequence_lengths`` into positions that restart per document and a block-diagonal causal mask;
:func:`positions_and_mask` picks a model's rotary positions and mask from ``forward``'s arguments.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from psyche_core.data import IGNORE_INDEX
from psyche_core.errors import InvalidInputError


def check_inputs(
    input_ids: torch.Tensor,
    labels: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    *,
    vocab_size: int,
    max_length: int | None = None,
) -> None:
    """Shapes, token and label ranges, the context length (``None``: unlimited)."""
    if input_ids.dim() != 2 or input_ids.is_floating_point():
        raise InvalidInputError(
            f"input_ids must be (batch, seq_len) integer token ids, got a {input_ids.dtype} "
            f"tensor of shape {tuple(input_ids.shape)}"
        )
    B, T = input_ids.shape
    if max_length is not None and max_length < T:
        raise InvalidInputError(
            f"sequence of {T} tokens is longer than the model's context "
            f"(max_position_embeddings={max_length})"
        )
    if input_ids.numel():
        low, high = torch.aminmax(input_ids)
        if low < 0 or high >= vocab_size:
            bad = int(low) if low < 0 else int(high)
            raise InvalidInputError(
                f"token id {bad} is outside the vocabulary (vocab_size={vocab_size})"
            )
    if labels is not None:
        if labels.shape != input_ids.shape:
            raise InvalidInputError(
                f"labels shape {tuple(labels.shape)} differs from input_ids shape {(B, T)}"
            )
        bad_labels = ((labels < 0) & (labels != IGNORE_INDEX)) | (labels >= vocab_size)
        if bad_labels.any():
            raise InvalidInputError(
                f"label {int(labels[bad_labels][0])} is outside the vocabulary "
                f"(vocab_size={vocab_size}; use {IGNORE_INDEX} to skip a position)"
            )
    if position_ids is not None and (
        position_ids.shape[-1] != T or position_ids.numel() // T not in (1, B)
    ):
        raise InvalidInputError(
            f"position_ids shape {tuple(position_ids.shape)} does not match input_ids {(B, T)}"
        )


def check_sequence_lengths(
    sequence_lengths: Sequence[Sequence[int]], batch: int, length: int
) -> list[int]:
    """Validate per-row document lengths; returns them flattened, row after row."""
    if len(sequence_lengths) != batch:
        raise InvalidInputError(
            f"sequence_lengths has {len(sequence_lengths)} rows for a batch of {batch}"
        )
    flat: list[int] = []
    for i, row in enumerate(sequence_lengths):
        row = [int(n) for n in row]
        if any(n <= 0 for n in row) or sum(row) != length:
            raise InvalidInputError(
                f"sequence_lengths[{i}] = {row} must be positive lengths summing to {length}"
            )
        flat.extend(row)
    return flat


def document_layout(
    sequence_lengths: Sequence[Sequence[int]], batch: int, length: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Positions restarting per document ``(B, T)`` and the block-diagonal causal attention
    mask ``(B, 1, T, T)`` (``None`` when every row holds a single document)."""
    lengths = check_sequence_lengths(sequence_lengths, batch, length)
    sizes = torch.tensor(lengths, device=device)
    doc = torch.repeat_interleave(torch.arange(len(lengths), device=device), sizes)  # (B*T,)
    starts = torch.cumsum(sizes, 0) - sizes  # flat index where each document starts
    positions = (torch.arange(batch * length, device=device) - starts[doc]).view(batch, length)
    if len(lengths) == batch:  # one document per row: plain causal attention
        return positions, None
    doc = doc.view(batch, length)
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    mask = (doc[:, :, None] == doc[:, None, :]) & causal  # (B, T, T)
    return positions, mask[:, None]


def positions_and_mask(
    input_ids: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    sequence_lengths: Sequence[Sequence[int]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rotary positions ``(B|1, T)`` and the attention mask for ``CausalLM.forward``'s
    arguments: explicit ``position_ids`` win, else positions restart per packed document, else
    ``0..T-1``. The mask is ``None`` for plain causal attention, else a boolean ``(B, 1, T, T)``
    block-diagonal causal mask (True = may attend)."""
    B, T = input_ids.shape
    device = input_ids.device
    mask = None
    if sequence_lengths is not None:
        positions, mask = document_layout(sequence_lengths, B, T, device)
    if position_ids is not None:
        positions = position_ids.to(device).reshape(-1, T)
    elif sequence_lengths is None:
        positions = torch.arange(T, device=device)[None]
    return positions, mask
