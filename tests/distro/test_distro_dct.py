"""Chunk choice and the chunked DCT (design distro.md 1.3-1.5; properties 1-4)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.fft
import torch

import psyche_distro.dct as dct_module
from psyche_distro.dct import (
    ChunkGrid,
    dct_basis,
    decode,
    decode_block,
    decode_chunk_major,
    decode_chunks,
    decode_rows,
    divisors,
    encode,
    encode_block,
    encode_chunks,
    encode_rows,
    from_chunks,
    idct_basis,
    smaller_split,
)

# -- 1. chunk split ----------------------------------------------------------------------------


def test_smaller_split_golden_values():
    assert smaller_split(12, 3) == 3
    assert smaller_split(12, 4) == 4
    assert smaller_split(12, 5) == 4
    assert smaller_split(100, 7) == 5
    assert smaller_split(100, 26) == 25
    assert smaller_split(100, 101) == 100
    assert smaller_split(1, 1) == 1
    assert smaller_split(0, 1) == 0
    assert smaller_split(1000000007, 500000000) == 1
    assert smaller_split(12, 0) == 1  # C < 1: the first divisor
    assert divisors(12) == [1, 2, 3, 4, 6, 12]
    assert divisors(100) == [1, 2, 4, 5, 10, 20, 25, 50, 100]
    assert divisors(0) == []


def test_smaller_split_is_the_largest_divisor_not_above_chunk():
    for n in range(1, 5001):
        divs = [d for d in range(1, n + 1) if n % d == 0] if n <= 200 else divisors(n)
        for chunk in range(1, 129):
            got = smaller_split(n, chunk)
            assert n % got == 0
            expected = n if chunk >= n else max(d for d in divs if d <= chunk)
            assert got == expected, (n, chunk)


def test_divisors_match_brute_force():
    for n in range(1, 2000):
        assert divisors(n) == [d for d in range(1, n + 1) if n % d == 0]


# -- 2. DCT basis -------------------------------------------------------------------------------


def test_dct_basis_f4_golden():
    golden = torch.tensor(
        [
            [0.5000, 0.6533, 0.5000, 0.2706],
            [0.5000, 0.2706, -0.5000, -0.6533],
            [0.5000, -0.2706, -0.5000, 0.6533],
            [0.5000, -0.6533, 0.5000, -0.2706],
        ]
    )
    torch.testing.assert_close(dct_basis(4), golden, atol=1e-4, rtol=0)
    torch.testing.assert_close(idct_basis(4), golden.T, atol=1e-4, rtol=0)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 16, 64])
def test_dct_basis_is_orthonormal_closed_form_and_scipy(n):
    f = dct_basis(n, torch.float64)
    torch.testing.assert_close(f.T @ f, torch.eye(n, dtype=torch.float64), atol=1e-12, rtol=0)
    i = np.arange(n)
    a = np.where(i == 0, math.sqrt(1 / n), math.sqrt(2 / n))
    closed = a[None, :] * np.cos(np.pi * (2 * i[:, None] + 1) * i[None, :] / (2 * n))
    np.testing.assert_allclose(f.numpy(), closed, atol=1e-12)
    # x @ F is scipy's orthonormal DCT-II along the last axis: row i of F is dct(e_i).
    np.testing.assert_allclose(
        f.numpy(), scipy.fft.dct(np.eye(n), type=2, norm="ortho", axis=-1), atol=1e-12
    )


# -- 3. encode / decode goldens -----------------------------------------------------------------

ARANGE8_CODED = [9.8995, -6.4423, 0.0, -0.67345, 0.0, -0.20090, 0.0, -0.050702]


def test_encode_golden_1d():
    coded = encode(torch.arange(8.0), 64)
    assert coded.shape == (1, 8)
    torch.testing.assert_close(coded.squeeze(), torch.tensor(ARANGE8_CODED), atol=1e-4, rtol=1e-4)


def test_encode_golden_2d():
    coded = encode(torch.eye(4), 64)
    assert coded.shape == (1, 1, 4, 4)
    torch.testing.assert_close(coded.squeeze(), torch.eye(4), atol=1e-4, rtol=1e-4)


def test_decode_goldens():
    out = decode(torch.tensor([ARANGE8_CODED]))
    torch.testing.assert_close(out, torch.arange(8.0), atol=1e-4, rtol=1e-4)
    out = decode(torch.eye(4).reshape(1, 1, 4, 4))
    torch.testing.assert_close(out, torch.eye(4), atol=1e-4, rtol=1e-4)


# -- 4. round trip, Parseval, linearity, layout ------------------------------------------------

SHAPES = [
    ((256,), 64),
    ((7,), 64),  # prime length below the chunk: one chunk of 7
    ((67,), 16),  # prime length above the chunk: chunks of 1
    ((64, 64), 64),
    ((128, 192), 64),
    ((96, 40), 64),  # rectangular chunks 48 x 40
    ((67, 64), 64),  # prime rows: 1 x 64 chunks
    ((3, 5, 128), 64),  # 3-D, leading dim kept
    ((2, 3, 12, 18), 4),
]


@pytest.mark.parametrize(("shape", "chunk"), SHAPES)
@pytest.mark.parametrize(("dtype", "atol"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_round_trip_and_parseval(shape, chunk, dtype, atol):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = x.to(dtype)
    coded = encode(x, chunk)
    grid = ChunkGrid.for_shape(shape, chunk)
    assert coded.shape == grid.encoded_shape
    torch.testing.assert_close(decode(coded), x, atol=atol, rtol=0)
    torch.testing.assert_close(coded.norm(), x.norm(), atol=atol * 10, rtol=atol)


def test_encoded_layouts():
    assert encode(torch.zeros(96, 40), 64).shape == (2, 1, 48, 40)
    assert encode(torch.zeros(67, 64), 64).shape == (67, 1, 1, 64)
    assert encode(torch.zeros(3, 5, 128), 64).shape == (3, 1, 2, 5, 64)
    assert encode(torch.zeros(256), 64).shape == (4, 64)


@pytest.mark.parametrize(("shape", "chunk"), SHAPES)
def test_chunks_are_tiles_transformed_on_both_sides(shape, chunk):
    """Chunk (y, x) of the encoding is F1^T @ tile(y, x) @ F2, flat index b * n2 + d."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    grid = ChunkGrid.for_shape(shape, chunk)
    coeffs = encode_chunks(x, grid)
    f1, f2 = dct_basis(grid.n1, torch.float64), dct_basis(grid.n2, torch.float64)
    rows = x.reshape(grid.lead * grid.n1, grid.cols * grid.n2)  # 1-D: one row per chunk
    for c in range(grid.num_chunks):
        gy, gx = divmod(c, grid.cols)
        tile = rows[gy * grid.n1 : (gy + 1) * grid.n1, gx * grid.n2 : (gx + 1) * grid.n2]
        expected = (f1.T @ tile @ f2).reshape(-1)
        torch.testing.assert_close(coeffs[c], expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(decode_chunks(coeffs, grid), x, atol=1e-12, rtol=0)


def test_linearity():
    g = torch.Generator().manual_seed(5)
    x, y = (
        torch.randn(96, 40, generator=g, dtype=torch.float64),
        torch.randn(96, 40, generator=g, dtype=torch.float64),
    )
    a, b = 0.75, -2.5
    torch.testing.assert_close(
        encode(a * x + b * y, 64), a * encode(x, 64) + b * encode(y, 64), atol=1e-12, rtol=0
    )


@pytest.mark.parametrize(("shape", "chunk"), SHAPES)
@pytest.mark.parametrize("max_elements", [1, 300, 10**6])
def test_row_blocks_cover_every_chunk_once(shape, chunk, max_elements):
    grid = ChunkGrid.for_shape(shape, chunk)
    blocks = grid.row_blocks(max_elements)
    assert blocks[0][0] == 0 and blocks[-1][1] == grid.lead
    for (_, stop), (start, _) in itertools.pairwise(blocks):
        assert stop == start  # consecutive, no gap, no overlap
    for l0, l1 in blocks:
        assert l1 > l0
        assert (l1 - l0) * grid.n1 * grid.width <= max_elements or l1 - l0 == 1


@pytest.mark.parametrize(("shape", "chunk"), SHAPES)
def test_encode_rows_blockwise_equals_whole_tensor(shape, chunk):
    """A block of grid rows encodes as it does inside the whole tensor (up to the rounding of
    a matrix product, which may depend on its row count)."""
    grid = ChunkGrid.for_shape(shape, chunk)
    x = torch.randn(grid.rows, grid.width, generator=torch.Generator().manual_seed(3))
    whole = encode_rows(x, grid.n1, grid.n2)
    for l0, l1 in grid.row_blocks(2 * grid.n1 * grid.width):
        rows = slice(l0 * grid.n1, l1 * grid.n1)
        torch.testing.assert_close(
            encode_rows(x[rows], grid.n1, grid.n2), whole[rows], atol=1e-6, rtol=0
        )
    torch.testing.assert_close(decode_rows(whole, grid.n1, grid.n2), x, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("shape", "chunk"), SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_block_layouts_equal_the_row_major_transform(shape, chunk, dtype):
    """encode_block is encode_rows in chunk-major, chunk-transposed order, element for element;
    decode_block and decode_chunk_major are decode_rows (the optimizer's routes)."""
    grid = ChunkGrid.for_shape(shape, chunk)
    x = torch.randn(grid.rows, grid.width, generator=torch.Generator().manual_seed(4)).to(dtype)
    rows = encode_rows(x, grid.n1, grid.n2)
    ylen, n1, xlen, n2 = grid.lead, grid.n1, grid.cols, grid.n2
    block = encode_block(x, n1, n2, work=torch.empty(x.numel() + 3, dtype=dtype))
    assert torch.equal(block, rows.view(ylen, n1, xlen, n2).permute(0, 2, 3, 1))
    back = decode_rows(rows, n1, n2)
    assert torch.equal(decode_block(rows, n1, n2).reshape(grid.rows, grid.width), back)
    chunk_major = to_chunk_major(rows, grid)
    decoded = decode_chunk_major(chunk_major, ylen, n1, n2, work=torch.empty_like(x).view(-1))
    assert torch.equal(decoded.reshape(grid.rows, grid.width), back)


def to_chunk_major(rows: torch.Tensor, grid: ChunkGrid) -> torch.Tensor:
    view = rows.view(grid.lead, grid.n1, grid.cols, grid.n2).transpose(1, 2)
    chunks = view.reshape(grid.num_chunks, grid.chunk_numel)
    assert torch.equal(from_chunks(chunks, grid).view(grid.rows, grid.width), rows)
    return chunks


@pytest.mark.skipif(dct_module._LINEAR is None, reason="this torch has no oneDNN linear")
@pytest.mark.parametrize(("shape", "chunk"), SHAPES)
def test_onednn_products_agree_with_torch_mm(shape, chunk, monkeypatch):
    """float32 products through oneDNN give torch.mm's numbers (bit for bit on the machines
    measured; here to float32 rounding, and the same top-k on data with a golden chunk)."""
    from psyche_distro.compression import topk_block

    grid = ChunkGrid.for_shape(shape, chunk)
    x = torch.randn(grid.rows, grid.width, generator=torch.Generator().manual_seed(5))
    fast = encode_block(x, grid.n1, grid.n2)
    fast_back = decode_block(encode_rows(x, grid.n1, grid.n2), grid.n1, grid.n2)
    monkeypatch.setattr(dct_module, "_ONEDNN", False)
    plain = encode_block(x, grid.n1, grid.n2)
    plain_back = decode_block(encode_rows(x, grid.n1, grid.n2), grid.n1, grid.n2)
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(fast_back, plain_back, atol=1e-5, rtol=1e-6)
    for k in (1, 4, 16):
        assert torch.equal(topk_block(fast, k)[0], topk_block(plain, k)[0])
