"""The bytes one peer sends per step: every parameter's sparse result in one uint8 buffer.

For each parameter, in the optimizer's fixed order: its ``m = chunks * k'`` indices, packed to
``index_width(T)`` bytes each (little-endian), then its ``m`` values, either in the parameter's
dtype (its raw little-endian bytes) or as 1-bit signs packed LSB first (``ceil(m / 8)`` bytes).
No header: every peer knows every shape, so a payload's length is fixed by the model and the
options, and the buffer is exactly the design's byte formula summed over the parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch

from psyche_distro.compression import (
    bytes_to_values,
    index_width,
    pack_indices,
    pack_signs,
    unpack_indices,
    unpack_signs,
    values_to_bytes,
)
from psyche_distro.dct import ChunkGrid


@dataclass(frozen=True)
class Segment:
    """Where one parameter's result sits in the payload."""

    grid: ChunkGrid
    k: int  # k' = clamp(topk, 1, T)
    value_dtype: torch.dtype  # dtype of the values on the wire (ignored when 1-bit)
    one_bit: bool
    offset: int

    @cached_property  # read for every segment at every step
    def count(self) -> int:
        """``m``: coefficients sent for this parameter."""
        return self.grid.num_chunks * self.k

    @cached_property
    def index_bytes(self) -> int:
        return self.count * index_width(self.grid.chunk_numel)

    @cached_property
    def value_bytes(self) -> int:
        if self.one_bit:
            return math.ceil(self.count / 8)
        return self.count * torch.empty((), dtype=self.value_dtype).element_size()

    @cached_property
    def nbytes(self) -> int:
        return self.index_bytes + self.value_bytes

    @property
    def full(self) -> bool:
        """Every coefficient is sent (``k' = T``), in index order: the indices are known."""
        return self.k == self.grid.chunk_numel


class PayloadLayout:
    """Serialize this peer's results; parse every peer's."""

    def __init__(self, entries: Sequence[tuple[ChunkGrid, int, torch.dtype]], one_bit: bool):
        self.segments: list[Segment] = []
        offset = 0
        for grid, k, dtype in entries:
            segment = Segment(grid, k, dtype, one_bit, offset)
            self.segments.append(segment)
            offset += segment.nbytes
        self.nbytes = offset
        self.one_bit = one_bit
        self._packed_full: dict[tuple[int, torch.device], torch.Tensor] = {}

    def _full_indices(self, segment: Segment, device: torch.device) -> torch.Tensor:
        key = (segment.offset, device)
        if key not in self._packed_full:
            idx = torch.arange(segment.k, device=device).repeat(segment.grid.num_chunks)
            self._packed_full[key] = pack_indices(idx, segment.grid.chunk_numel)
        return self._packed_full[key]

    @property
    def coefficients(self) -> int:
        return sum(s.count for s in self.segments)

    def serialize(self, results: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """``results[i] = (idx, val)``, each ``(chunks, k')``, values in the wire dtype ->
        one 1-D uint8 tensor of :attr:`nbytes`."""
        parts = []
        for segment, (idx, val) in zip(self.segments, results, strict=True):
            if segment.full:  # arange(T) per chunk: packed once
                parts.append(self._full_indices(segment, idx.device))
            else:
                parts.append(pack_indices(idx, segment.grid.chunk_numel).reshape(-1))
            parts.append(pack_signs(val) if segment.one_bit else values_to_bytes(val))
        if not parts:
            return torch.empty(0, dtype=torch.uint8)
        device = parts[0].device
        return torch.cat([p.to(device) for p in parts])

    def parse(
        self,
        payloads: torch.Tensor,
        dtypes: Sequence[torch.dtype],
        devices: Sequence[torch.device] | None = None,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``payloads`` is ``(peers, nbytes)`` in rank order. Returns per parameter ``(idx,
        val)`` of shape ``(chunks, peers * k')``, each chunk's row being the peers' selections
        concatenated in rank order (Psyche's ``batch_decompress`` order); values converted to
        that parameter's entry of ``dtypes`` (1-bit values as +-1) on its entry of ``devices``."""
        if payloads.dim() != 2 or payloads.shape[1] != self.nbytes:
            raise ValueError(f"expected payloads of shape (peers, {self.nbytes})")
        peers = payloads.shape[0]
        devices = devices or [payloads.device] * len(self.segments)
        out = []
        for s, dtype, device in zip(self.segments, dtypes, devices, strict=True):
            chunks = s.grid.num_chunks
            if s.full:  # every peer sends arange(T) per chunk: a broadcast view, never stored
                idx = torch.arange(s.k, device=device).repeat(peers).expand(chunks, -1)
            else:
                raw = payloads[:, s.offset : s.offset + s.index_bytes]
                idx = unpack_indices(raw.to(device), s.grid.chunk_numel)  # (peers, m)
            raw = payloads[:, s.offset + s.index_bytes : s.offset + s.nbytes]
            if s.one_bit:
                val = unpack_signs(raw.to(device), s.count, dtype)
            else:
                val = bytes_to_values(raw.to(device), s.value_dtype).to(dtype)

            def by_chunk(t: torch.Tensor, chunks: int = chunks, k: int = s.k) -> torch.Tensor:
                # (peers, chunks * k) -> (chunks, peers * k)
                return t.view(peers, chunks, k).transpose(0, 1).reshape(chunks, peers * k)

            out.append((idx if s.full else by_chunk(idx), by_chunk(val)))
        return out
