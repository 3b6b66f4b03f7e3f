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
    pack_bits,
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
        self._stacks: dict[tuple[int, ...], StackedSegments] = {}

    def _full_indices(self, segment: Segment, device: torch.device) -> torch.Tensor:
        key = (segment.offset, device)
        if key not in self._packed_full:
            idx = torch.arange(segment.k, device=device).repeat(segment.grid.num_chunks)
            self._packed_full[key] = pack_indices(idx, segment.grid.chunk_numel)
        return self._packed_full[key]

    def _pack(
        self, segment: Segment, idx: torch.Tensor, val: torch.Tensor, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One segment's index bytes and value bytes."""
        if segment.full:  # arange(T) per chunk: packed once
            packed = self._full_indices(segment, device)
        else:
            packed = pack_indices(idx, segment.grid.chunk_numel).reshape(-1)
        return packed, pack_signs(val) if segment.one_bit else values_to_bytes(val)

    @property
    def coefficients(self) -> int:
        return sum(s.count for s in self.segments)

    def serialize(self, results: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """``results[i] = (idx, val)``, each ``(chunks, k')``, values in the wire dtype ->
        one 1-D uint8 tensor of :attr:`nbytes`."""
        parts = []
        for segment, (idx, val) in zip(self.segments, results, strict=True):
            parts.extend(self._pack(segment, idx, val, idx.device))
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
        self._check(payloads)
        devices = devices or [payloads.device] * len(self.segments)
        return [
            self._parse_one(payloads, s, dtype, device)
            for s, dtype, device in zip(self.segments, dtypes, devices, strict=True)
        ]

    def _check(self, payloads: torch.Tensor) -> None:
        if payloads.dim() != 2 or payloads.shape[1] != self.nbytes:
            raise ValueError(f"expected payloads of shape (peers, {self.nbytes})")

    def _parse_one(
        self, payloads: torch.Tensor, s: Segment, dtype: torch.dtype, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        peers, chunks = payloads.shape[0], s.grid.num_chunks
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
        if not s.full:
            idx = _by_chunk(idx, peers, chunks, s.k)
        return idx, _by_chunk(val, peers, chunks, s.k)

    # -- by group: the optimizer's path -------------------------------------------------------

    def _stacked(self, positions: Sequence[int]) -> StackedSegments:
        key = tuple(positions)
        if key not in self._stacks:
            self._stacks[key] = StackedSegments(self, key)
        return self._stacks[key]

    def serialize_groups(
        self, results: Sequence[tuple[Sequence[int], torch.Tensor, torch.Tensor]]
    ) -> torch.Tensor:
        """:meth:`serialize` (the same bytes) from results stacked by group: ``(positions,
        idx, val)`` with ``idx`` and ``val`` the results of the segments at ``positions``
        (same chunk size, top-k and dtype) concatenated along the chunks."""
        if not results:
            return torch.empty(0, dtype=torch.uint8)
        payload = torch.empty(self.nbytes, dtype=torch.uint8, device=results[0][1].device)
        for positions, idx, val in results:
            if len(positions) > 1:
                self._stacked(positions).write(payload, idx, val)
                continue
            s = self.segments[positions[0]]
            packed, raw = self._pack(s, idx, val, payload.device)
            payload[s.offset : s.offset + s.index_bytes] = packed
            payload[s.offset + s.index_bytes : s.offset + s.nbytes] = raw
        return payload

    def parse_groups(
        self,
        payloads: torch.Tensor,
        groups: Sequence[tuple[Sequence[int], torch.dtype, torch.device]],
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """:meth:`parse` by group: for each ``(positions, dtype, device)`` the ``(idx, val)`` of
        those segments concatenated along the chunks."""
        self._check(payloads)
        out = []
        for positions, dtype, device in groups:
            if len(positions) > 1:
                out.append(self._stacked(positions).read(payloads, dtype, device))
            else:
                out.append(self._parse_one(payloads, self.segments[positions[0]], dtype, device))
        return out


class StackedSegments:
    """Several segments with the same chunk size, top-k and value dtype (a stacked group's
    members, in the group's chunk order) serialized and parsed with a few tensor operations
    instead of a dozen per segment: their bytes are scattered to / gathered from the payload
    through byte positions computed once. Bytes on the wire are :class:`PayloadLayout`'s."""

    def __init__(self, layout: PayloadLayout, positions: Sequence[int]) -> None:
        self.segments = [layout.segments[i] for i in positions]
        first = self.segments[0]
        self.k, self.total, self.one_bit = first.k, first.grid.chunk_numel, first.one_bit
        self.value_dtype, self.full = first.value_dtype, first.full
        self.count = sum(s.count for s in self.segments)
        self.chunks = sum(s.grid.num_chunks for s in self.segments)
        self._index_at = torch.cat(
            [torch.arange(s.offset, s.offset + s.index_bytes) for s in self.segments]
        )
        self._value_at = torch.cat(
            [torch.arange(s.offset + s.index_bytes, s.offset + s.nbytes) for s in self.segments]
        )
        if self.one_bit:  # each segment's signs start on a fresh byte: where the real bits sit
            starts = [0]
            for s in self.segments[:-1]:
                starts.append(starts[-1] + 8 * s.value_bytes)
            self._bit_at = torch.cat(
                [torch.arange(b, b + s.count) for b, s in zip(starts, self.segments)]
            )
            self._bits = starts[-1] + 8 * self.segments[-1].value_bytes
        self._device_copies: dict[tuple[str, torch.device], torch.Tensor] = {}

    def _on(self, name: str, device: torch.device) -> torch.Tensor:
        key = (name, device)
        if key not in self._device_copies:
            self._device_copies[key] = getattr(self, name).to(device)
        return self._device_copies[key]

    def write(self, payload: torch.Tensor, idx: torch.Tensor, val: torch.Tensor) -> None:
        """Put the stacked ``(chunks, k')`` result into ``payload`` (1-D uint8)."""
        device = payload.device
        if self.full:
            idx = torch.arange(self.k, device=device).repeat(self.chunks)
        packed = pack_indices(idx.reshape(-1), self.total)
        payload.index_copy_(0, self._on("_index_at", device), packed.to(device))
        if self.one_bit:
            bits = torch.zeros(self._bits, dtype=torch.uint8, device=val.device)
            bits[self._on("_bit_at", val.device)] = torch.signbit(val.reshape(-1)).to(torch.uint8)
            raw = pack_bits(bits)
        else:
            raw = values_to_bytes(val)
        payload.index_copy_(0, self._on("_value_at", device), raw.to(device))

    def read(
        self, payloads: torch.Tensor, dtype: torch.dtype, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`PayloadLayout.parse` of the stacked segments at once: ``(idx, val)`` of shape
        ``(chunks, peers * k')`` in the stacked chunk order."""
        peers = payloads.shape[0]
        if self.full:
            idx = torch.arange(self.k, device=device).repeat(peers).expand(self.chunks, -1)
        else:
            raw = payloads.index_select(1, self._on("_index_at", payloads.device))
            idx = unpack_indices(raw.to(device), self.total)
        raw = payloads.index_select(1, self._on("_value_at", payloads.device)).to(device)
        if self.one_bit:
            val = unpack_signs(raw, self._bits, dtype)[:, self._on("_bit_at", device)]
        else:
            val = bytes_to_values(raw, self.value_dtype).to(dtype)
        if not self.full:
            idx = _by_chunk(idx, peers, self.chunks, self.k)
        return idx, _by_chunk(val, peers, self.chunks, self.k)


def _by_chunk(t: torch.Tensor, peers: int, chunks: int, k: int) -> torch.Tensor:
    """``(peers, chunks * k)`` -> ``(chunks, peers * k)``: each chunk's row holds the peers'
    selections in rank order."""
    return t.view(peers, chunks, k).transpose(0, 1).reshape(chunks, peers * k)
