"""Top-k, index and 1-bit packing, scatter-mean aggregation (design distro.md 1.6, 1.7, 1.10;
properties 5-12)."""

from __future__ import annotations

import pytest
import torch

from psyche_distro.compression import (
    batch_decompress,
    bf16_select_applies,
    clamp_topk,
    compress,
    decode_sparse,
    decompress,
    index_width,
    pack_indices,
    pack_signs,
    payload_nbytes,
    row_major_index,
    scatter_mean_dense,
    scatter_mean_sparse,
    topk_block,
    topk_chunks,
    topk_rows,
    topk_rows_bf16,
    unpack_indices,
    unpack_signs,
)
from psyche_distro.dct import (
    ChunkGrid,
    decode,
    decode_chunks,
    decode_rows,
    encode,
    encode_block,
    encode_chunks,
    encode_rows,
    from_chunks,
)

RANDOM_4X4 = torch.tensor(
    [
        [0.1911, 0.4076, 0.1649, 0.8059],
        [0.2803, 0.9381, 0.9071, 0.2573],
        [0.4070, 0.5765, 0.7226, 0.9486],
        [0.0737, 0.7378, 0.1898, 0.2990],
    ]
)
VECTOR_8 = torch.tensor([0.5223, 0.9625, 0.5487, 0.2152, 0.2161, 0.0363, 0.4944, 0.0974])


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- 5. compress goldens ------------------------------------------------------------------------


def test_compress_golden_2d():
    idx, val, xshape, total = compress(RANDOM_4X4, 2)
    assert torch.equal(idx, torch.tensor([[3, 1], [1, 2], [3, 2], [1, 3]]))
    golden = torch.tensor([[0.8059, 0.4076], [0.9381, 0.9071], [0.9486, 0.7226], [0.7378, 0.2990]])
    torch.testing.assert_close(val, golden, atol=1e-4, rtol=0)
    assert xshape == (4, 4)
    assert total == 4


def test_compress_golden_1d():
    idx, val, xshape, total = compress(VECTOR_8, 2)
    assert torch.equal(idx, torch.tensor([1, 2]))
    torch.testing.assert_close(val, torch.tensor([0.9625, 0.5487]), atol=1e-4, rtol=0)
    assert xshape == (8,)
    assert total == 8


# -- 6, 7. top-k properties ---------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, 1, 3, 16, 17, 100])
def test_topk_properties(k):
    x = torch.randn(5, 3, 16, generator=gen(k), dtype=torch.float64)
    idx, val = topk_chunks(x, k)
    kept = clamp_topk(k, 16)
    assert kept == min(max(k, 1), 16)
    assert idx.shape == val.shape == (5, 3, kept)
    assert torch.equal(val, x.gather(-1, idx))  # signed values at the indices
    for row_x, row_i, row_v in zip(x.reshape(-1, 16), idx.reshape(-1, kept), val.reshape(-1, kept)):
        assert len(set(row_i.tolist())) == kept  # unique
        dropped = torch.ones(16, dtype=torch.bool)
        dropped[row_i] = False
        if dropped.any():
            assert row_v.abs().min() >= row_x[dropped].abs().max()
        if kept < 16:
            assert torch.all(row_v.abs()[:-1] >= row_v.abs()[1:])  # descending magnitude
        else:  # everything is sent, in index order (no sort)
            assert row_i.tolist() == list(range(16))


def test_compress_flattens_chunks_of_encoded_nd_tensors():
    coded = encode(torch.randn(3, 8, 12, generator=gen(1), dtype=torch.float64), 4)
    idx, val, xshape, total = compress(coded, 5)
    assert xshape == (3, 2, 3, 4, 4) and total == 16
    assert idx.shape == (3, 2, 3, 5)
    assert torch.equal(val, coded.flatten(-2).gather(-1, idx))


@pytest.mark.parametrize(
    ("n1", "n2", "k"), [(64, 64, 4), (64, 64, 1), (16, 32, 16), (4, 64, 6), (8, 8, 64)]
)
def test_row_major_topk_matches_plain_topk(n1, n2, k):
    """topk_rows on encode_rows' layout (3 x 5 chunks) picks what topk_chunks picks on the
    chunk-major copy, through the row-maxima route for large chunks."""
    coeffs = torch.randn(3 * n1, 5 * n2, generator=gen(n1 + k))
    chunk_major = coeffs.view(3, n1, 5, n2).transpose(1, 2).reshape(15, n1 * n2)
    idx, val = topk_rows(coeffs, n1, n2, k, work=torch.empty(coeffs.numel() + 5))
    ref_idx, ref_val = topk_chunks(chunk_major, k)
    assert torch.equal(idx, ref_idx)
    assert torch.equal(val, ref_val)


@pytest.mark.parametrize(
    ("n1", "n2", "k"), [(64, 64, 4), (64, 64, 1), (16, 32, 16), (4, 64, 6), (8, 8, 64)]
)
@pytest.mark.parametrize("ties", [False, True])
def test_block_topk_matches_row_major_topk(n1, n2, k, ties):
    """topk_block on encode_block's layout returns exactly topk_rows' indices and values,
    also among equal magnitudes (small integers: many ties)."""
    g = gen(n1 + k + ties)
    coeffs = torch.randn(3 * n1, 5 * n2, generator=g)
    if ties:
        coeffs = torch.randint(-3, 4, coeffs.shape, generator=g).float()
    block = coeffs.view(3, n1, 5, n2).permute(0, 2, 3, 1).contiguous()
    idx, val = topk_block(block, k, work=torch.empty(coeffs.numel() + 5))
    ref_idx, ref_val = topk_rows(coeffs, n1, n2, k)
    assert torch.equal(idx, ref_idx)
    assert torch.equal(val, ref_val)


def test_golden_chunk_top_k_is_the_same_on_every_route():
    """The golden 4x4 input as one chunk's largest coefficients in momentum-like data: the
    optimizer's route (encode_block + topk_block) picks the reference top-k (topk_chunks on
    encode_chunks' chunk-major coefficients) with equal values."""
    g = torch.Generator().manual_seed(11)
    x = torch.zeros(3 * 64, 4 * 64)
    for _ in range(5):
        x.mul_(0.9).add_(torch.randn(x.shape, generator=g))
    golden = torch.zeros(x.shape)
    golden[:4, :4] = RANDOM_4X4 * 100
    x += decode_rows(golden, 64, 64)
    grid = ChunkGrid.for_shape(tuple(x.shape), 64)
    for k in (1, 4, 16, 4096):
        idx, val = topk_block(encode_block(x, 64, 64), k)
        ref_idx, ref_val = topk_chunks(encode_chunks(x, grid), k)
        assert torch.equal(idx, ref_idx)
        assert torch.equal(val, ref_val)
    # chunk 0's four largest: the golden input's four largest, (0,3) (1,1) (1,2) (2,3)
    top = topk_block(encode_block(x, 64, 64), 4)[0][0]
    assert sorted(top.tolist()) == [3, 65, 66, 131]


@pytest.mark.parametrize("k", [1, 4, 16])
def test_bf16_selection_matches_the_exact_top_k(k):
    """--distro-bf16-select: on momentum-like data, with the 4x4 golden input as the largest
    coefficients of one chunk, the chosen indices are the exact ones and the values agree to
    float32 rounding."""
    g = torch.Generator().manual_seed(k)
    x = torch.zeros(3 * 64, 4 * 64)
    for _ in range(5):
        x.mul_(0.9).add_(torch.randn(x.shape, generator=g))
    golden = torch.zeros(x.shape)
    golden[:4, :4] = RANDOM_4X4 * 100  # chunk 0's largest coefficients: the golden 4x4 input
    x += decode_rows(golden, 64, 64)
    assert bf16_select_applies(64, 64, k)
    idx, val = topk_rows_bf16(x, 64, 64, k)
    ref_idx, ref_val = topk_rows(encode_rows(x, 64, 64), 64, 64, k)
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(val, ref_val, atol=1e-4, rtol=1e-5)
    assert not bf16_select_applies(4, 4, 2)  # small chunks: the exact route
    assert not bf16_select_applies(64, 64, 40)  # k close to the chunk rows: exact route


def test_full_topk_is_lossless():
    x = torch.randn(6, 16, generator=gen(2), dtype=torch.float64)
    idx, val, xshape, total = compress(x, total_k := 16)
    assert total == total_k
    assert torch.equal(decompress(idx, val, xshape), x)
    y = torch.randn(8, 12, generator=gen(3), dtype=torch.float64)
    coded = encode(y, 4)
    idx, val, xshape, total = compress(coded, 10**6)
    torch.testing.assert_close(decode(decompress(idx, val, xshape)), y, atol=1e-12, rtol=0)


# -- 8. decompress goldens ----------------------------------------------------------------------


def test_decompress_golden_1d():
    out = decompress(torch.tensor([1, 2]), torch.tensor([0.9625, 0.5487]), (8,))
    golden = torch.tensor([0, 0.9625, 0.5487, 0, 0, 0, 0, 0])
    torch.testing.assert_close(out, golden, atol=1e-4, rtol=0)


def test_decompress_golden_2d():
    idx = torch.tensor([[0, 2], [1, 2], [2, 3], [3, 1]])
    val = torch.tensor([[0.8988, 0.5175], [0.9882, 0.8945], [0.8285, 0.8163], [0.9093, 0.7600]])
    golden = torch.tensor(
        [
            [0.8988, 0.0000, 0.5175, 0.0000],
            [0.0000, 0.9882, 0.8945, 0.0000],
            [0.0000, 0.0000, 0.8285, 0.8163],
            [0.0000, 0.7600, 0.0000, 0.9093],
        ]
    )
    torch.testing.assert_close(decompress(idx, val, (4, 4)), golden, atol=1e-4, rtol=0)


# -- 9. index packing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "width"),
    [(1, 1), (64, 1), (256, 1), (257, 2), (4096, 2), (65536, 2), (65537, 4)],
)
def test_index_packing_round_trip(total, width):
    assert index_width(total) == width
    idx = torch.randint(0, total, (3, 5, 4), generator=gen(total))
    idx[0, 0, 0] = total - 1  # the largest index fits
    packed = pack_indices(idx, total)
    assert packed.dtype == torch.uint8
    assert packed.shape == (3, 5, 4 * width)
    assert torch.equal(unpack_indices(packed, total), idx)


def test_index_packing_is_little_endian():
    assert pack_indices(torch.tensor([258]), 4096).tolist() == [2, 1]
    assert pack_indices(torch.tensor([0x01020304]), 2**20).tolist() == [4, 3, 2, 1]
    assert index_width(2**32) == 4 and index_width(2**32 + 1) == 8


# -- 10. 1-bit ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 7, 8, 9, 13, 64, 100])
def test_one_bit_round_trip(n):
    v = torch.randn(n, generator=gen(n))
    v = v + v.sign() * 0.1  # no zeros
    packed = pack_signs(v)
    assert packed.dtype == torch.uint8
    assert packed.numel() == (n + 7) // 8
    assert torch.equal(unpack_signs(packed, n), v.sign())


def test_one_bit_special_values_and_bit_order():
    v = torch.tensor([-1.0, 0.0, -0.0, float("inf"), float("-inf"), 2.0, 3.0, 4.0, -5.0])
    packed = pack_signs(v)
    # Bit i of byte 0 is element i (LSB first): negatives at 0, 2 (-0.0), 4 (-inf).
    assert packed.tolist() == [0b00010101, 0b00000001]
    assert unpack_signs(packed, 9).tolist() == [-1, 1, -1, 1, -1, 1, 1, 1, -1]
    bf16 = pack_signs(torch.tensor([-0.5, 0.5], dtype=torch.bfloat16))
    assert bf16.tolist() == [1]


# -- 11, 12. aggregation ------------------------------------------------------------------------


def result(seed: int, rows: int = 4, total: int = 16, k: int = 3):
    x = torch.randn(rows, total, generator=gen(seed), dtype=torch.float64)
    idx, val, xshape, _ = compress(x, k)
    return idx, val, xshape


def test_one_peer_and_identical_peers():
    idx, val, xshape = result(0)
    one = decompress(idx, val, xshape)
    assert torch.equal(batch_decompress([idx], [val], xshape), one)
    assert torch.equal(batch_decompress([idx] * 4, [val] * 4, xshape), one)


def test_same_index_means_disjoint_indices_union():
    idx_a, val_a = torch.tensor([[1, 5]]), torch.tensor([[1.0, 2.0]])
    idx_b, val_b = torch.tensor([[1, 6]]), torch.tensor([[3.0, -4.0]])
    out = batch_decompress([idx_a, idx_b], [val_a, val_b], (1, 8))
    assert out.tolist() == [[0, 2.0, 0, 0, 0, 2.0, -4.0, 0]]  # mean at 1, union elsewhere


def test_permuting_peers_and_one_of_four():
    peers = [result(seed) for seed in range(4)]
    xshape = peers[0][2]
    forward = batch_decompress([p[0] for p in peers], [p[1] for p in peers], xshape)
    backward = batch_decompress([p[0] for p in peers[::-1]], [p[1] for p in peers[::-1]], xshape)
    torch.testing.assert_close(forward, backward, atol=1e-15, rtol=0)
    lonely = [(torch.tensor([[2]]), torch.tensor([[0.8]]))] + [
        (torch.tensor([[5]]), torch.tensor([[1.0]]))
    ] * 3
    out = batch_decompress([i for i, _ in lonely], [v for _, v in lonely], (1, 8))
    assert out[0, 2] == pytest.approx(0.8)  # full value, not 0.8 / 4
    assert out[0, 5] == 1.0


@pytest.mark.parametrize("peers", [1, 2, 3, 5])
@pytest.mark.parametrize(
    ("shape", "chunk", "k"), [((8, 12), 4, 3), ((96, 40), 64, 4), ((24,), 8, 2)]
)
def test_sparse_aggregate_equals_dense_reference(peers, shape, chunk, k):
    grid = ChunkGrid.for_shape(shape, chunk)
    results = []
    for rank in range(peers):
        x = torch.randn(shape, generator=gen(rank), dtype=torch.float64)
        # low-frequency bias so that peers pick overlapping positions
        coeffs = encode(x, chunk).reshape(grid.num_chunks, -1)
        coeffs[:, :2] += 3.0
        idx, val = topk_chunks(coeffs, k)
        results.append((idx, val))
    idx = torch.cat([i for i, _ in results], -1)
    val = torch.cat([v for _, v in results], -1)
    dense = decompress(idx, val, (grid.num_chunks, grid.chunk_numel))
    reference = decode_chunks(dense, grid)
    sparse_idx, weight = scatter_mean_sparse(idx, val)
    assert sparse_idx.shape[1] <= peers * k
    sparse = decode_sparse(sparse_idx, weight, grid)
    torch.testing.assert_close(
        sparse.reshape(grid.lead, grid.cols, grid.n1, grid.n2),
        grid.chunk_view(reference),
        atol=1e-12,
        rtol=0,
    )


@pytest.mark.parametrize("peers", [1, 2, 3])
@pytest.mark.parametrize(("shape", "chunk", "k"), [((8, 12), 4, 16), ((96, 40), 64, 40)])
def test_dense_aggregate_equals_sparse_aggregate(peers, shape, chunk, k):
    """The dense scatter-mean (used above 32 coefficients per chunk) gives the pairwise one's
    numbers, in the row-major coefficient layout."""
    grid = ChunkGrid.for_shape(shape, chunk)
    parts = []
    for rank in range(peers):
        coeffs = torch.randn(grid.num_chunks, grid.chunk_numel, generator=gen(rank + 20))
        coeffs[:, :3] += 3.0  # overlapping picks
        parts.append(topk_chunks(coeffs.double(), k))
    idx = torch.cat([i for i, _ in parts], -1)
    val = torch.cat([v for _, v in parts], -1)
    dense = scatter_mean_dense(idx, val, peers, grid)
    reference = decompress(idx, val, (grid.num_chunks, grid.chunk_numel))
    expected = from_chunks(reference.view(-1, grid.n1, grid.n2), grid)
    torch.testing.assert_close(dense.view(grid.shape), expected, atol=1e-12, rtol=0)
    sparse_idx, weight = scatter_mean_sparse(idx, val)
    picked = row_major_index(sparse_idx, grid)
    real = weight != 0  # shorter rows are padded with weight 0
    torch.testing.assert_close(dense.view(-1)[picked][real], weight[real], atol=1e-12, rtol=0)


def test_dense_aggregate_of_identical_peers_is_exactly_one_peer():
    grid = ChunkGrid.for_shape((16, 16), 4)
    idx, val = topk_chunks(torch.randn(16, 16, generator=gen(5)), 7)
    one = scatter_mean_dense(idx, val, 1, grid)
    assert torch.equal(
        one, scatter_mean_dense(torch.cat([idx] * 3, -1), torch.cat([val] * 3, -1), 3, grid)
    )


def test_sparse_aggregate_of_identical_peers_is_exactly_one_peer():
    idx, val = topk_chunks(torch.randn(10, 16, generator=gen(9)), 3)
    one = scatter_mean_sparse(idx, val)
    many = scatter_mean_sparse(torch.cat([idx] * 3, -1), torch.cat([val] * 3, -1))
    assert torch.equal(one[0], many[0]) and torch.equal(one[1], many[1])


def test_sparse_aggregate_means_in_first_occurrence_order():
    idx = torch.tensor([[4, 1, 1, 7, 4, 4]])
    val = torch.tensor([[1.0, 2.0, 4.0, 8.0, 2.0, 3.0]])
    out_idx, weight = scatter_mean_sparse(idx, val)
    assert out_idx.tolist() == [[4, 1, 7]]
    assert weight.tolist() == [[2.0, 3.0, 8.0]]


# -- byte formula -------------------------------------------------------------------------------


def test_payload_formula_examples():
    assert payload_nbytes((64, 64), 64, 4, 16) == 16  # 4 * (2 + 2)
    assert payload_nbytes((64, 64), 64, 4, 32) == 24
    assert payload_nbytes((64, 64), 64, 4, 1) == 9  # 4 * 2 + ceil(4 / 8)
    assert payload_nbytes((256,), 64, 4, 16) == 48  # 16 * (1 + 2)
    assert payload_nbytes((32000, 256), 64, 4, 16) == 32000


@pytest.mark.parametrize("one_bit", [False, True])
@pytest.mark.parametrize(
    ("k", "dtype"), [(3, torch.float32), (16, torch.bfloat16), (2, torch.float64)]
)
def test_payload_by_group_equals_payload_by_parameter(one_bit, k, dtype):
    """The optimizer's stacked serialize/parse (several parameters' bytes moved at once) writes
    and reads exactly the bytes of the per-parameter path, for several peers."""
    from psyche_distro.payload import PayloadLayout

    shapes = [(8, 4), (12,), (4, 4), (6, 7), (16, 4), (2, 8, 4)]  # chunk 4: several layouts
    grids = [ChunkGrid.for_shape(shape, 4) for shape in shapes]
    layout = PayloadLayout([(grid, min(k, grid.chunk_numel), dtype) for grid in grids], one_bit)
    g = gen(k + one_bit)
    peers = []
    for _ in range(3):
        results = []
        for grid in grids:
            kk = min(k, grid.chunk_numel)
            idx = torch.stack(
                [torch.randperm(grid.chunk_numel, generator=g)[:kk] for _ in range(grid.num_chunks)]
            )
            if kk == grid.chunk_numel:
                idx = idx.sort(-1).values  # everything sent: index order
            results.append((idx, torch.randn(idx.shape, generator=g).to(dtype)))
        peers.append(results)
    # stack the parameters whose chunks have the same shape, as the optimizer's groups do
    groups: dict[tuple[int, int], list[int]] = {}
    for i, grid in enumerate(grids):
        groups.setdefault((grid.n1, grid.n2), []).append(i)
    assert any(len(members) > 1 for members in groups.values())
    payloads = []
    for results in peers:
        stacked = [
            (
                members,
                torch.cat([results[i][0] for i in members]),
                torch.cat([results[i][1] for i in members]),
            )
            for members in groups.values()
        ]
        payload = layout.serialize_groups(stacked)
        assert torch.equal(payload, layout.serialize(results))
        payloads.append(payload)
    payloads = torch.stack(payloads)
    by_param = layout.parse(payloads, [torch.float32] * len(grids))
    by_group = layout.parse_groups(
        payloads, [(members, torch.float32, payloads.device) for members in groups.values()]
    )
    for members, (idx, val) in zip(groups.values(), by_group):
        assert torch.equal(idx, torch.cat([by_param[i][0] for i in members]))
        assert torch.equal(val, torch.cat([by_param[i][1] for i in members]))
