"""Chunked orthonormal DCT-II: the transform DisTrO compresses in.

A tensor is cut into chunks and each chunk is transformed on its own:

- a 1-D tensor of length ``L`` into ``L / n`` pieces of ``n = smaller_split(L, chunk)``;
- a tensor of shape ``(..., R, K)`` into ``n1 x n2`` tiles of its last two dims, with
  ``n1 = smaller_split(R, chunk)`` and ``n2 = smaller_split(K, chunk)`` chosen independently,
  so tiles can be rectangular (``96 x 40`` with chunk 64 gives ``48 x 40``). Leading dims are kept.

Layouts (Psyche's, so golden values carry over): a 1-D tensor encodes to ``[L / n, n]``; an
N-D tensor to ``[..., R / n1, K / n2, n1, n2]`` (chunk grid first, frequencies last), where tile
``(y, x)`` holds ``F1^T @ X[y*n1:(y+1)*n1, x*n2:(x+1)*n2] @ F2``. Flattened, both are
``(chunks, T)`` with ``T`` coefficients per chunk, the form compression works on.

``F_n`` is the orthonormal DCT-II matrix with inputs on rows: ``F[i, c] = a_c cos(pi (2i+1) c /
2n)``, ``a_0 = sqrt(1/n)``, ``a_c = sqrt(2/n)``; ``x @ F`` is ``scipy.fft.dct(x, norm="ortho")``
and ``F^-1 = F^T``. Bases are built once per size in float64 and cached per dtype and device.
"""

from __future__ import annotations

import bisect
import functools
import math
import os
from dataclasses import dataclass

import torch


def divisors(n: int) -> list[int]:
    """The divisors of ``n`` in ascending order (``[]`` for ``n = 0``)."""
    return list(_divisors(n))


@functools.lru_cache(maxsize=8192)
def _divisors(n: int) -> tuple[int, ...]:
    if n < 1:
        return ()
    small, large = [], []
    for d in range(1, math.isqrt(n) + 1):
        if n % d == 0:
            small.append(d)
            if d != n // d:
                large.append(n // d)
    return (*small, *large[::-1])


def smaller_split(n: int, chunk: int) -> int:
    """Chunk length for a dimension of size ``n``: the largest divisor of ``n`` that is at most
    ``chunk`` (Psyche's ``get_smaller_split``). ``n`` itself when ``chunk >= n``; 1 for a prime
    ``n > chunk``; 0 for ``n = 0``; 1 when ``chunk < 1``."""
    if n == 0:
        return 0
    if chunk >= n:
        return n
    if chunk < 1:
        return 1
    options = _divisors(n)
    return options[bisect.bisect_right(options, chunk) - 1]


@functools.lru_cache(maxsize=256)
def _basis64(n: int) -> torch.Tensor:
    i = torch.arange(n, dtype=torch.float64)
    scale = torch.full((n,), math.sqrt(2.0 / n), dtype=torch.float64)
    scale[0] = math.sqrt(1.0 / n)
    return torch.cos(math.pi * (2 * i[:, None] + 1) * i[None, :] / (2 * n)) * scale[None, :]


@functools.lru_cache(maxsize=256)
def _basis(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return _basis64(n).to(dtype=dtype, device=device)


def dct_basis(
    n: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """``F_n`` (rows: inputs, columns: frequencies); cached, never modify it in place."""
    return _basis(n, dtype, torch.device(device if device is not None else "cpu"))


@functools.lru_cache(maxsize=256)
def basis_rows(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``F_n^T`` as a contiguous tensor: row ``c`` is frequency ``c``'s basis vector."""
    return _basis(n, dtype, device).T.contiguous()


def idct_basis(
    n: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """``B_n = F_n^T = F_n^-1``, the inverse transform (``coeffs @ B_n``)."""
    return dct_basis(n, dtype, device).T


@dataclass(frozen=True)
class ChunkGrid:
    """How one tensor shape is cut into chunks (see the module docstring).

    Chunks form a ``lead x cols`` grid: chunk ``c = l * cols + x`` covers rows
    ``l*n1 .. (l+1)*n1`` (counting rows over all leading dims) and columns ``x*n2 .. (x+1)*n2``
    of the last two dims. A 1-D tensor of length ``L`` is ``L/n`` chunks of ``1 x n`` (the size-1
    DCT is the identity), so one code path serves every rank; a 0-d tensor counts as length 1.
    """

    shape: tuple[int, ...]
    n1: int  # chunk rows (1 for a 1-D tensor)
    n2: int  # chunk columns
    lead: int  # chunk-grid rows
    cols: int  # chunk-grid columns

    @classmethod
    def for_shape(cls, shape: tuple[int, ...] | torch.Size, chunk: int) -> ChunkGrid:
        shape = tuple(int(s) for s in shape)
        if any(s == 0 for s in shape):
            raise ValueError(f"cannot chunk an empty tensor of shape {shape}")
        if len(shape) <= 1:
            length = shape[0] if shape else 1
            n = smaller_split(length, chunk)
            return cls(shape, 1, n, length // n, 1)
        rows, cols = shape[-2], shape[-1]
        n1, n2 = smaller_split(rows, chunk), smaller_split(cols, chunk)
        return cls(shape, n1, n2, math.prod(shape[:-2]) * (rows // n1), cols // n2)

    @property
    def chunk_numel(self) -> int:
        """``T``: coefficients per chunk."""
        return self.n1 * self.n2

    @property
    def num_chunks(self) -> int:
        return self.lead * self.cols

    @property
    def encoded_shape(self) -> tuple[int, ...]:
        """Psyche's layout: ``[L/n, n]`` for 1-D, ``[..., R/n1, K/n2, n1, n2]`` otherwise."""
        if len(self.shape) <= 1:
            return (self.lead, self.n2)
        rows = self.shape[-2] // self.n1
        return (*self.shape[:-2], rows, self.cols, self.n1, self.n2)

    def chunk_view(self, x: torch.Tensor) -> torch.Tensor:
        """A ``(lead, cols, n1, n2)`` strided view of a contiguous tensor of this shape: element
        ``[l, x]`` is chunk ``l * cols + x``. Writes go to ``x``."""
        return x.view(self.lead, self.n1, self.cols, self.n2).transpose(1, 2)

    @property
    def rows(self) -> int:
        """Rows of the tensor's row-major 2-D view ``(rows, width)`` (leading dims folded in)."""
        return self.lead * self.n1

    @property
    def width(self) -> int:
        return self.cols * self.n2

    def row_blocks(self, max_elements: int) -> list[tuple[int, int]]:
        """Consecutive ranges ``[l0, l1)`` of chunk-grid rows holding at most ``max_elements``
        elements (at least one grid row each). A block is rows ``l0*n1 .. l1*n1`` of the 2-D
        view, so it is a contiguous slice of the tensor and of every tensor shaped like it."""
        step = max(1, max_elements // (self.n1 * self.width))
        return [(l0, min(self.lead, l0 + step)) for l0 in range(0, self.lead, step)]


# float32 products on the CPU go through oneDNN's linear (``x @ w.T``) where torch has it: on
# AMD CPUs MKL's sgemm runs AVX2 code, oneDNN AVX-512, about 3x faster for these shapes. Both
# accumulate each output over the inner dimension in order, so the results equal torch.mm's
# bit for bit on the machines measured (tests/distro checks the two routes agree); set
# PSYCHE_DISTRO_ONEDNN=0 to use torch.mm everywhere.
_ONEDNN = os.environ.get("PSYCHE_DISTRO_ONEDNN", "1") != "0"


def _linear_op():
    try:
        op = torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None
    return op if torch.backends.mkldnn.is_available() else None


_LINEAR = _linear_op()


def onednn_route(x: torch.Tensor) -> bool:
    """Whether products on ``x`` go through oneDNN (float32 on the CPU, where available)."""
    return _ONEDNN and _LINEAR is not None and x.dtype == torch.float32 and x.device.type == "cpu"


def _times(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ w.T`` for a contiguous ``(M, K)`` ``x`` and a contiguous ``(N, K)`` ``w``."""
    if onednn_route(x):
        try:
            return _LINEAR(x, w, None, "none", [], "")
        except RuntimeError:  # a build whose oneDNN refuses this shape: the plain product
            pass
    return torch.mm(x, w.T, out=out)


def encode_block(x: torch.Tensor, n1: int, n2: int, work: torch.Tensor | None = None):
    """DCT of every ``n1 x n2`` chunk of a contiguous row-major ``(Y*n1, X*n2)`` tensor, as
    ``(Y, X, n2, n1)``: element ``[y, x, d, b]`` is coefficient ``(b, d)`` of chunk ``(y, x)``
    (chunk-major, each chunk transposed). Both products contract the last dimension (the form
    the fast matrix routines want): ``x @ F2`` on rows of ``n2``, a transposing copy (into
    ``work``, an optional buffer of ``x.numel()`` elements), then ``@ F1``. Equal, element for
    element, to :func:`encode_rows`."""
    rows, width = x.shape
    ylen, xlen = rows // n1, width // n2
    if not onednn_route(x):
        coeffs = encode_rows(x, n1, n2).view(ylen, n1, xlen, n2)
        return _transposed_copy(coeffs, work)
    t = _times(x.view(-1, n2), basis_rows(n2, x.dtype, x.device))  # (Y, n1, X, n2)
    if n1 == 1:
        return t.view(ylen, 1, xlen, n2).permute(0, 2, 3, 1)
    t = _transposed_copy(t.view(ylen, n1, xlen, n2), work)
    f1t = basis_rows(n1, x.dtype, x.device)
    return _times(t.view(-1, n1), f1t).view(ylen, xlen, n2, n1)


def _transposed_copy(t: torch.Tensor, work: torch.Tensor | None) -> torch.Tensor:
    """``(Y, n1, X, n2)`` -> a contiguous ``(Y, X, n2, n1)`` copy (in ``work`` if given)."""
    ylen, n1, xlen, n2 = t.shape
    if work is None:
        return t.permute(0, 2, 3, 1).contiguous()
    out = work[: t.numel()].view(ylen, xlen, n2, n1)
    return out.copy_(t.permute(0, 2, 3, 1))


def decode_block(coeffs: torch.Tensor, n1: int, n2: int, work: torch.Tensor | None = None):
    """Inverse DCT of a row-major ``(Y*n1, X*n2)`` coefficient tensor, as a ``(Y, n1, X, n2)``
    view (of a chunk-major buffer, so strided) of the row-major result; products as in
    :func:`encode_block`. Equal, element for element, to :func:`decode_rows`."""
    rows, width = coeffs.shape
    ylen, xlen = rows // n1, width // n2
    if not onednn_route(coeffs):
        return decode_rows(coeffs, n1, n2).view(ylen, n1, xlen, n2)
    f2 = dct_basis(n2, coeffs.dtype, coeffs.device)  # x @ F2^T: rows of n2 back to space
    t = _times(coeffs.reshape(-1, n2), f2)  # (Y, n1, X, n2)
    if n1 == 1:
        return t.view(ylen, 1, xlen, n2)
    t = _transposed_copy(t.view(ylen, n1, xlen, n2), work)
    out = _times(t.view(-1, n1), dct_basis(n1, coeffs.dtype, coeffs.device))  # (Y, X, n2, n1)
    return out.view(ylen, xlen, n2, n1).permute(0, 3, 1, 2)


def decode_chunk_major(
    coeffs: torch.Tensor, ylen: int, n1: int, n2: int, work: torch.Tensor | None = None
) -> torch.Tensor:
    """:func:`decode_block` of coefficients given chunk-major, ``(Y*X, n1*n2)`` in ``(b, d)``
    order per chunk (as every peer sends them when it sends everything): the same products,
    without first copying them to the row-major layout. Returns ``(Y, n1, X, n2)`` (strided)."""
    chunks = coeffs.shape[0]
    xlen = chunks // ylen
    if not onednn_route(coeffs):
        rows = coeffs.reshape(ylen, xlen, n1, n2).transpose(1, 2).reshape(ylen * n1, xlen * n2)
        return decode_block(rows, n1, n2, work)
    t = _times(coeffs.reshape(-1, n2), dct_basis(n2, coeffs.dtype, coeffs.device))  # (C, n1, n2)
    if n1 == 1:
        return t.view(ylen, xlen, 1, n2).transpose(1, 2)
    if work is not None:
        t = work[: t.numel()].view(chunks, n2, n1).copy_(t.view(chunks, n1, n2).transpose(1, 2))
    else:
        t = t.view(chunks, n1, n2).transpose(1, 2).contiguous()
    out = _times(t.view(-1, n1), dct_basis(n1, coeffs.dtype, coeffs.device))  # (C, n2, n1)
    return out.view(ylen, xlen, n2, n1).permute(0, 3, 1, 2)


def encode_rows(
    x: torch.Tensor,
    n1: int,
    n2: int,
    work: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """DCT of every ``n1 x n2`` chunk of a contiguous row-major ``(rows, width)`` tensor, in the
    same layout: ``result[y*n1 + b, x*n2 + d]`` is coefficient ``(b, d)`` of chunk ``(y, x)``.
    Two large matrix products (no chunk-major copy): ``x @ F2`` on rows of ``n2``, then
    ``F1^T @`` each grid row; for float32 on the CPU, :func:`encode_block`'s products (the
    same numbers) copied back to this layout. ``work`` and ``out``: optional buffers of
    ``x.numel()`` elements; with ``n1 = 1`` the result lives in ``work``."""
    rows, width = x.shape
    if onednn_route(x):
        block = encode_block(x, n1, n2)  # (Y, X, n2, n1)
        target = out[: x.numel()] if out is not None else torch.empty_like(x)
        view = target.view(rows // n1, n1, width // n2, n2)
        return view.copy_(block.permute(0, 3, 1, 2)).view(rows, width)
    f2 = dct_basis(n2, x.dtype, x.device)
    if work is not None:
        work = work[: x.numel()].view(-1, n2)
    t = torch.mm(x.view(-1, n2), f2, out=work)
    if n1 == 1:
        return t.view(rows, width)
    f1t = basis_rows(n1, x.dtype, x.device)
    if out is not None:
        out = out[: x.numel()].view(rows // n1, n1, width)
    return torch.matmul(f1t, t.view(rows // n1, n1, width), out=out).view(rows, width)


def decode_rows(
    coeffs: torch.Tensor,
    n1: int,
    n2: int,
    work: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Inverse of :func:`encode_rows` (same layout and buffers)."""
    rows, width = coeffs.shape
    if onednn_route(coeffs):
        block = decode_block(coeffs, n1, n2)  # (Y, n1, X, n2), strided
        target = out[: coeffs.numel()] if out is not None else torch.empty_like(coeffs)
        return target.view(block.shape).copy_(block).view(rows, width)
    if work is not None:
        work = work[: coeffs.numel()].view(-1, n2)
    t = torch.mm(coeffs.reshape(-1, n2), basis_rows(n2, coeffs.dtype, coeffs.device), out=work)
    if n1 == 1:
        return t.view(rows, width)
    if out is not None:
        out = out[: coeffs.numel()].view(rows // n1, n1, width)
    f1 = dct_basis(n1, coeffs.dtype, coeffs.device)
    return torch.matmul(f1, t.view(rows // n1, n1, width), out=out).view(rows, width)


def to_chunks(x: torch.Tensor, grid: ChunkGrid) -> torch.Tensor:
    """A tensor of ``grid.shape`` -> its chunks, ``(chunks, n1, n2)`` (a copy for ``n1 > 1``)."""
    view = grid.chunk_view(x.contiguous())
    return view.reshape(grid.num_chunks, grid.n1, grid.n2)


def from_chunks(chunks: torch.Tensor, grid: ChunkGrid) -> torch.Tensor:
    """Inverse of :func:`to_chunks`."""
    view = chunks.reshape(grid.lead, grid.cols, grid.n1, grid.n2).transpose(1, 2)
    return view.reshape(grid.shape)


def encode_chunks(x: torch.Tensor, grid: ChunkGrid) -> torch.Tensor:
    """DCT of every chunk of ``x``, as ``(chunks, T)`` in chunk order (dtype of ``x``); the same
    products as the optimizer's :func:`encode_rows`."""
    coeffs = encode_rows(x.contiguous().view(grid.rows, grid.width), grid.n1, grid.n2)
    return to_chunks(coeffs, grid).reshape(grid.num_chunks, grid.chunk_numel)


def decode_chunks(coeffs: torch.Tensor, grid: ChunkGrid) -> torch.Tensor:
    """Inverse of :func:`encode_chunks`: ``(chunks, T)`` -> a tensor of ``grid.shape``."""
    rows = from_chunks(coeffs.reshape(grid.num_chunks, grid.n1, grid.n2), grid)
    return decode_rows(rows.view(grid.rows, grid.width), grid.n1, grid.n2).view(grid.shape)


def encode(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """Chunked DCT of ``x`` in Psyche's layout (see the module docstring)."""
    grid = ChunkGrid.for_shape(x.shape, chunk)
    return encode_chunks(x, grid).view(grid.encoded_shape)


def decode(coeffs: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`encode`. Like Psyche, the chunk sizes come from the encoded tensor: its
    last two dims for ``ndim > 2``; an encoded tensor with ``ndim <= 2`` is a 1-D one."""
    if coeffs.dim() <= 2:
        n = coeffs.shape[-1]
        grid = ChunkGrid((coeffs.numel(),), 1, n, coeffs.numel() // n, 1)
        return decode_chunks(coeffs, grid)
    *lead, rows, cols, n1, n2 = coeffs.shape
    grid = ChunkGrid((*lead, rows * n1, cols * n2), n1, n2, math.prod(lead) * rows, cols)
    return decode_chunks(coeffs, grid)
