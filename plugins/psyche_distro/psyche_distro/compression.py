"""Top-k sparsification of DCT coefficients, index and 1-bit packing, and aggregation.

Semantics follow Psyche (``shared/modeling/src/distro.rs``):

- **Top-k** keeps, per chunk, the ``k' = clamp(k, 1, T)`` coefficients of largest magnitude,
  ordered by descending magnitude; values stay signed.
- **Indices** go on the wire as uint8 / uint16 / uint32 / int64, picked by ``T`` (the chunk's
  coefficient count, not the largest index), little-endian.
- **1-bit values** are the sign bit (1 = negative, so +0 reads back as +1 and -0 as -1), packed
  least-significant bit first and padded to a whole byte per tensor.
- **Aggregation** is a scatter-mean: a coefficient gets the mean of the values of the peers that
  selected it; nobody's choice stays 0 (not a sum, not a division by the peer count).

:func:`compress`, :func:`decompress` and :func:`batch_decompress` are the dense reference
forms (Psyche's API, used for golden values). The optimizer uses :func:`topk_block` on
:func:`~psyche_distro.dct.encode_block`'s layout (or :func:`topk_rows_bf16`) and, for few
coefficients per chunk, the sparse forms :func:`scatter_mean_sparse` + :func:`sparse_factors`
(as in :func:`decode_sparse`), which never build the dense coefficient tensor, else
:func:`scatter_mean_dense`; all give the reference's numbers up to rounding.
"""

from __future__ import annotations

import math
import sys

import torch

from psyche_distro.dct import ChunkGrid, basis_rows, encode_rows

_LITTLE_ENDIAN = sys.byteorder == "little"


def clamp_topk(k: int, total: int) -> int:
    """``k' = clamp(k, 1, T)``."""
    return min(max(int(k), 1), int(total))


def topk_chunks(coeffs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``coeffs`` (one chunk per row, any leading dims): the indices (int64) and
    signed values of the ``clamp(k, 1, T)`` largest magnitudes, by descending magnitude."""
    total = coeffs.shape[-1]
    k = clamp_topk(k, total)
    if k == total:  # everything is sent: in index order (a sort would cost more than the rest)
        idx = torch.arange(total, device=coeffs.device).expand(coeffs.shape).contiguous()
        return idx, coeffs.clone()
    idx = coeffs.abs().topk(k, dim=-1, largest=True, sorted=True).indices
    return idx, coeffs.gather(-1, idx)


# Top-k through the chunk rows' maxima pays off from about this many coefficients per chunk.
_GROUPED_TOPK_MIN = 256


def topk_rows(
    coeffs: torch.Tensor, n1: int, n2: int, k: int, work: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`topk_chunks` for coefficients in :func:`~psyche_distro.dct.encode_rows`' row-major
    layout ``(Y*n1, X*n2)``: ``(Y*X, k')`` indices ``b * n2 + d`` and signed values, chunks
    in row-major grid order. Large chunks go through the rows' maxima (the magnitudes are never
    stored); small chunks, or ``k' >= n1``, copy the block to
    chunk-major order for a plain top-k (``work``: an optional buffer for that copy)."""
    rows, width = coeffs.shape
    ylen, xlen, total = rows // n1, width // n2, n1 * n2
    k = clamp_topk(k, total)
    grid4 = coeffs.view(ylen, n1, xlen, n2)
    chunks = ylen * xlen
    if n1 < k or total < _GROUPED_TOPK_MIN or k == total:
        if work is not None:
            work = work[: coeffs.numel()].view(ylen, xlen, n1, n2)
            flat = work.copy_(grid4.transpose(1, 2)).view(chunks, total)
        else:
            flat = grid4.transpose(1, 2).reshape(chunks, total)
        return topk_chunks(flat, k)
    # (Y, n1, X): max |c| per chunk row, as max(max c, -min c) so |c| is never stored
    peak = torch.maximum(grid4.amax(-1), grid4.amin(-1).neg_())
    best = peak.transpose(1, 2).topk(k, dim=-1, largest=True, sorted=False).indices  # (Y, X, k)
    # those rows of every chunk, (Y, X, k, n2)
    rows = best.unsqueeze(-1).expand(ylen, xlen, k, n2)
    candidates = grid4.transpose(1, 2).gather(2, rows).view(chunks, k * n2)
    pos = candidates.abs().topk(k, dim=-1, largest=True, sorted=True).indices
    best = best.view(chunks, k)
    idx = best.gather(1, torch.div(pos, n2, rounding_mode="floor")) * n2 + pos.remainder(n2)
    return idx, candidates.gather(1, pos)


def topk_block(
    coeffs: torch.Tensor, k: int, work: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`topk_rows` for coefficients in :func:`~psyche_distro.dct.encode_block`'s layout
    ``(Y, X, n2, n1)`` (chunk-major, each chunk transposed): the same indices ``b * n2 + d``
    and values, ties included (every route ranks the same values in the same order)."""
    ylen, xlen, n2, n1 = coeffs.shape
    chunks, total = ylen * xlen, n1 * n2
    k = clamp_topk(k, total)
    blocks = coeffs.view(chunks, n2, n1)
    if n1 < k or total < _GROUPED_TOPK_MIN or k == total:
        if work is not None:  # chunk-major in (b, d) order, as topk_chunks ranks it
            flat = work[: coeffs.numel()].view(chunks, n1, n2).copy_(blocks.transpose(1, 2))
        else:
            flat = blocks.transpose(1, 2).contiguous()
        return topk_chunks(flat.view(chunks, total), k)
    # (chunks, n1): max |c| per chunk row b (over d), without storing |c| (aminmax over a
    # middle dimension is ~15x slower than amax and amin here)
    peak = torch.maximum(blocks.amax(1), blocks.amin(1).neg_())
    best = peak.topk(k, dim=-1, largest=True, sorted=False).indices  # (chunks, k)
    # those rows of every chunk, (chunks, k, n2), in topk_rows' candidate order
    candidates = blocks.gather(2, best.unsqueeze(1).expand(chunks, n2, k))
    candidates = candidates.transpose(1, 2).reshape(chunks, k * n2)
    pos = candidates.abs().topk(k, dim=-1, largest=True, sorted=True).indices
    idx = best.gather(1, torch.div(pos, n2, rounding_mode="floor")) * n2 + pos.remainder(n2)
    return idx, candidates.gather(1, pos)


def bf16_select_applies(n1: int, n2: int, k: int) -> bool:
    """Whether :func:`topk_rows_bf16` selects from a bfloat16 transform for these chunks (large
    chunks with few coefficients kept); otherwise it is :func:`topk_rows` of the exact one."""
    k = clamp_topk(k, n1 * n2)
    return n1 * n2 >= _GROUPED_TOPK_MIN and n1 >= _BF16_OVERSAMPLE * k


# bf16 selection keeps this many times k candidates, then ranks them by their exact values.
_BF16_OVERSAMPLE = 2


def topk_rows_bf16(
    x: torch.Tensor,
    n1: int,
    n2: int,
    k: int,
    buffers: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`topk_rows` of ``encode_rows(x)`` (``x`` in parameter space, ``(Y*n1, X*n2)``),
    choosing the indices from a bfloat16 transform: ``2k`` candidates per chunk by their
    bfloat16 magnitudes, their values computed in ``x``'s dtype (one rank-``2k`` product per
    chunk), and the ``k`` largest of those kept, by descending magnitude. The values are the
    float32 transform's up to float32 rounding; the indices differ from the exact top-k only
    where a coefficient outside the 2k bfloat16 candidates is among the exact k largest
    (magnitudes within bfloat16 rounding of each other). Used only where
    :func:`bf16_select_applies`. ``buffers``: three optional scratch tensors of ``x``'s dtype
    and at least ``x.numel()`` elements (fresh large allocations cost page faults)."""
    k = clamp_topk(k, n1 * n2)
    rows, width = x.shape
    ylen, xlen, numel = rows // n1, width // n2, x.numel()
    if buffers is None:
        buffers = tuple(torch.empty(numel, dtype=x.dtype, device=x.device) for _ in range(3))
    first, second, third = (b.view(-1)[:numel] for b in buffers)
    halves = first.view(torch.bfloat16)  # a float32 buffer holds two bf16 ones
    low = halves[:numel].view(rows, width).copy_(x)
    approx = encode_rows(
        low, n1, n2, work=halves[numel : 2 * numel], out=second.view(torch.bfloat16)
    )
    # ranked in float32, where the reductions are faster than in bf16
    approx = third.view(rows, width).copy_(approx)
    candidates, _ = topk_rows(approx, n1, n2, _BF16_OVERSAMPLE * k)
    # exact values of the candidates: f1[:, b]^T @ X_chunk @ f2[:, d]
    chunks = first.view(ylen, xlen, n1, n2).copy_(x.view(ylen, n1, xlen, n2).transpose(1, 2))
    chunks = chunks.view(ylen * xlen, n1, n2)
    b, d = torch.div(candidates, n2, rounding_mode="floor"), candidates.remainder(n2)
    right = basis_rows(n2, x.dtype, x.device)[d]  # (B, 2k, n2)
    partial = torch.bmm(chunks, right.transpose(1, 2))  # (B, n1, 2k)
    values = (partial.transpose(1, 2) * basis_rows(n1, x.dtype, x.device)[b]).sum(-1)
    order = values.abs().topk(k, dim=-1, largest=True, sorted=True).indices
    return candidates.gather(1, order), values.gather(1, order)


def compress(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...], int]:
    """Psyche's ``CompressDCT::compress`` on an encoded tensor: for ``ndim > 2`` the last two
    dims are one chunk, otherwise the last dim is. Returns ``(idx, val, xshape, T)`` with int64
    indices (pack them with :func:`pack_indices` for the wire)."""
    xshape = tuple(x.shape)
    flat = x.flatten(-2) if x.dim() > 2 else x
    idx, val = topk_chunks(flat, k)
    return idx, val, xshape, flat.shape[-1]


def decompress(
    idx: torch.Tensor,
    val: torch.Tensor,
    xshape: tuple[int, ...],
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Dense scatter-mean of ``val`` at ``idx`` into zeros of ``xshape`` (Psyche's
    ``decompress``); repeated indices in a row average, untouched positions stay 0."""
    dtype = dtype or val.dtype
    x = torch.zeros(xshape, dtype=dtype, device=val.device)
    flat = x.flatten(-2) if len(xshape) > 2 else x
    flat.scatter_reduce_(-1, idx.long(), val.to(dtype), reduce="mean", include_self=False)
    return x


def batch_decompress(
    idx: list[torch.Tensor],
    val: list[torch.Tensor],
    xshape: tuple[int, ...],
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Several peers' results for one tensor: concatenated along the last dim in the given order,
    then :func:`decompress`."""
    return decompress(torch.cat(idx, -1), torch.cat(val, -1), xshape, dtype)


# -- wire packing -----------------------------------------------------------------------------


def index_width(total: int) -> int:
    """Bytes per index on the wire for ``T`` coefficients per chunk."""
    if total <= 256:
        return 1
    if total <= 65536:
        return 2
    if total <= 2**32:
        return 4
    return 8


def pack_indices(idx: torch.Tensor, total: int) -> torch.Tensor:
    """int64 indices -> uint8 bytes, little-endian, ``index_width(T)`` per index; the last dim
    grows by that factor."""
    width = index_width(total)
    if width == 1:
        return idx.to(torch.uint8)
    if _LITTLE_ENDIAN and width in (2, 4):  # the low bytes of each int32, without shifts
        raw = idx.to(torch.int32).contiguous().view(torch.uint8).view(*idx.shape, 4)
        return raw[..., :width].flatten(-2)
    shifts = torch.arange(0, 8 * width, 8, device=idx.device, dtype=torch.int64)
    parts = (idx.long().unsqueeze(-1) >> shifts) & 0xFF
    return parts.to(torch.uint8).flatten(-2)


def unpack_indices(packed: torch.Tensor, total: int) -> torch.Tensor:
    """Inverse of :func:`pack_indices`: uint8 bytes -> int64 indices."""
    width = index_width(total)
    if width == 1:
        return packed.long()
    if _LITTLE_ENDIAN and width in (2, 4):  # reinterpret, then drop the sign extension
        fresh = torch.empty(packed.shape, dtype=torch.uint8, device=packed.device)
        signed = fresh.copy_(packed).view(torch.int16 if width == 2 else torch.int32)
        return signed.long() & ((1 << (8 * width)) - 1)
    parts = packed.long().unflatten(-1, (-1, width))
    shifts = torch.arange(0, 8 * width, 8, device=packed.device, dtype=torch.int64)
    return (parts << shifts).sum(-1)  # disjoint bits: the sum is an exact bitwise OR


def pack_signs(val: torch.Tensor) -> torch.Tensor:
    """1-bit quantization: ``signbit(val)`` of every element (flattened), packed least
    significant bit first into ``ceil(n / 8)`` bytes."""
    bits = torch.signbit(val.reshape(-1)).to(torch.uint8)
    pad = (-bits.numel()) % 8
    if pad:
        bits = torch.cat([bits, bits.new_zeros(pad)])
    return pack_bits(bits)


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """0/1 uint8 values, a multiple of 8 of them -> bytes, least significant bit first."""
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=bits.device)
    return (bits.view(-1, 8) * weights).sum(-1, dtype=torch.uint8)


def unpack_signs(packed: torch.Tensor, n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`pack_signs` for ``n`` values: bit 1 -> -1, bit 0 -> +1 (so zeros
    come back as +1, -0 as -1); leading dims of ``packed`` are kept."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(-1) >> shifts) & 1
    bits = bits.flatten(-2)[..., :n]
    return 1 - 2 * bits.to(dtype)


def values_to_bytes(val: torch.Tensor) -> torch.Tensor:
    """A tensor's elements as little-endian bytes (flattened)."""
    raw = val.contiguous().reshape(-1).view(torch.uint8)
    if not _LITTLE_ENDIAN and val.element_size() > 1:
        raw = raw.view(-1, val.element_size()).flip(-1).reshape(-1)
    return raw


def bytes_to_values(raw: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of :func:`values_to_bytes` (leading dims of ``raw`` are kept)."""
    size = torch.empty((), dtype=dtype).element_size()
    aligned = raw.data_ptr() % size == 0 and raw.storage_offset() % size == 0
    if _LITTLE_ENDIAN and raw.is_contiguous() and aligned:
        # aligned: reinterpret in place (a view of ``raw``)
        return raw.reshape(-1).view(dtype).view(*raw.shape[:-1], -1)
    # A fresh copy: a slice of a larger buffer may sit at an offset ``view`` cannot reinterpret.
    raw = torch.empty(raw.shape, dtype=torch.uint8, device=raw.device).copy_(raw)
    if not _LITTLE_ENDIAN and size > 1:
        raw = raw.unflatten(-1, (-1, size)).flip(-1).flatten(-2).contiguous()
    return raw.view(dtype)


def payload_nbytes(shape: tuple[int, ...], chunk: int, k: int, value_bits: int) -> int:
    """Bytes one peer sends for one tensor (the design's 3.2 formula):
    ``m * index_width(T) + ceil(m * value_bits / 8)`` with ``m = chunks * clamp(k, 1, T)``."""
    grid = ChunkGrid.for_shape(shape, chunk)
    m = grid.num_chunks * clamp_topk(k, grid.chunk_numel)
    return m * index_width(grid.chunk_numel) + math.ceil(m * value_bits / 8)


# -- sparse aggregation and decode --------------------------------------------------------------

# Entries of the pairwise-equality matrix handled per block in scatter_mean_sparse.
_BLOCK_ELEMENTS = 1 << 22


def scatter_mean_sparse(idx: torch.Tensor, val: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scatter-mean without the dense tensor: ``idx`` and ``val`` are ``(chunks, m)``, the
    concatenation of every peer's selection per chunk. Returns ``(idx, weight)`` of shape
    ``(chunks, K)`` holding each selected position once (first occurrence, in input order) with
    the mean of its values; ``K`` is the largest number of distinct positions in a chunk and
    shorter rows are padded with weight 0.

    The mean is ``v_first + sum(v_j - v_first) / count``, so a position chosen by one peer, or
    by several with equal values, keeps its value exactly; N identical peers therefore reduce to
    exactly one peer's entries. Computed by pairwise comparison within each chunk: deterministic
    on every device (unlike ``scatter_reduce`` on CUDA), ``O(chunks * m^2)``.
    """
    chunks, m = idx.shape
    if m == 1:
        return idx, val
    out_idx = torch.empty_like(idx)
    out_val = torch.empty_like(val)
    keep = torch.empty(idx.shape, dtype=torch.bool, device=idx.device)
    block = max(1, _BLOCK_ELEMENTS // (m * m))
    earlier = torch.ones(m, m, dtype=torch.bool, device=idx.device).tril(-1)
    for start in range(0, chunks, block):
        i = idx[start : start + block]
        v = val[start : start + block]
        same = i.unsqueeze(-1) == i.unsqueeze(-2)  # (b, m, m)
        first = ~(same & earlier).any(-1)  # no equal index earlier in the row
        count = same.sum(-1)
        diff = torch.where(same, v.unsqueeze(-2) - v.unsqueeze(-1), torch.zeros((), dtype=v.dtype))
        mean = v + diff.sum(-1) / count
        # Stable partition: first occurrences to the front, in their input order.
        order = torch.argsort((~first).to(torch.uint8), dim=-1, stable=True)
        out_idx[start : start + block] = i.gather(-1, order)
        out_val[start : start + block] = torch.where(first, mean, 0).gather(-1, order)
        keep[start : start + block] = first.gather(-1, order)
    width = int(keep.sum(-1).max())
    return out_idx[:, :width], out_val[:, :width]


def row_major_index(idx: torch.Tensor, grid: ChunkGrid, first_chunk: int = 0) -> torch.Tensor:
    """Positions ``(chunks, m)`` within chunks ``first_chunk, first_chunk + 1, ...`` -> flat
    indices into the tensor's row-major ``(rows, width)`` view."""
    chunk = torch.arange(first_chunk, first_chunk + idx.shape[0], device=idx.device).view(-1, 1)
    b, d = torch.div(idx, grid.n2, rounding_mode="floor"), idx.remainder(grid.n2)
    row = torch.div(chunk, grid.cols, rounding_mode="floor") * grid.n1 + b
    return row * grid.width + chunk.remainder(grid.cols) * grid.n2 + d


def scatter_mean_dense(
    idx: torch.Tensor, val: torch.Tensor, peers: int, grid: ChunkGrid
) -> torch.Tensor:
    """:func:`scatter_mean_sparse` into a dense row-major ``(rows, width)`` coefficient tensor,
    for selections too large for pairwise comparison: ``idx`` and ``val`` are ``(chunks,
    peers * k)`` (every peer's ``k`` positions per chunk, in rank order, unique per peer).
    The same formula, ``v_first + sum(v - v_first) / count`` with the lowest rank's value
    first; ``O(peers * chunks * k)`` and deterministic (CPU index_add runs in order)."""
    chunks = idx.shape[0]
    flat = row_major_index(idx, grid).view(chunks, peers, -1)
    values = val.view(chunks, peers, -1)
    first = torch.zeros(grid.rows * grid.width, dtype=val.dtype, device=val.device)
    for rank in reversed(range(peers)):  # the lowest rank writes last
        first[flat[:, rank].reshape(-1)] = values[:, rank].reshape(-1)
    if peers == 1:
        return first.view(grid.rows, grid.width)
    total = torch.zeros_like(first)
    count = torch.zeros_like(first)
    ones = torch.ones(1, dtype=val.dtype, device=val.device)
    for rank in range(peers):
        where = flat[:, rank].reshape(-1)
        total.index_add_(0, where, values[:, rank].reshape(-1) - first[where])
        count.index_add_(0, where, ones.expand(where.numel()))
    mean = first.add_(total.div_(count.clamp_(min=1)))
    return mean.view(grid.rows, grid.width)


def sparse_factors(
    idx: torch.Tensor, weight: torch.Tensor, n1: int, n2: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """For sparse chunks (``(B, K)`` positions, unique per chunk, and weights): ``left`` of shape
    ``(B, n1, K)`` and ``right`` of ``(B, K, n2)`` with ``left @ right`` the inverse DCT of each
    chunk. Entry ``(b, d) = divmod(position, n2)`` contributes ``w * F1[:, b] (x) F2[:, d]``."""
    dtype, device = weight.dtype, weight.device
    b, d = torch.div(idx, n2, rounding_mode="floor"), idx.remainder(n2)
    left = basis_rows(n1, dtype, device)[b].transpose(1, 2).contiguous()
    right = basis_rows(n2, dtype, device)[d] * weight.unsqueeze(-1)
    return left, right


def decode_sparse(idx: torch.Tensor, weight: torch.Tensor, grid: ChunkGrid) -> torch.Tensor:
    """Inverse DCT of sparse chunks -> ``(chunks, n1, n2)``: one batched matmul of inner size
    ``K`` instead of two dense transforms (see :func:`sparse_factors`)."""
    return torch.bmm(*sparse_factors(idx, weight, grid.n1, grid.n2))
