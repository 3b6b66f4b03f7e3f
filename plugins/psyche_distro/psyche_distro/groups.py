"""Parameter groups, the unit a DisTrO step works on, and the block kernels that run on them.

A group is one tensor in row-major ``(rows, width)`` form cut into ``n1 x n2`` chunks: either
one large parameter (its own storage, no copy), or several small parameters with the same
chunk shape and width stacked row-wise, so the transform, top-k, aggregation and decode run
once for all of them instead of once per parameter (Python overhead dominates small models).
Stacking moves rows, never splits a chunk, so each parameter's chunks keep their order and
the payload is the same as per-parameter processing.

Work is done in blocks of whole chunk-grid rows (contiguous slices of the weights, the
gradient and ``delta``) of about ``_BLOCK_ELEMENTS`` elements, so a block's tensors stay in
cache from one operation to the next. The block size is a constant, so every peer computes
in the same blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from psyche_distro.compression import (
    bf16_select_applies,
    clamp_topk,
    scatter_mean_dense,
    scatter_mean_sparse,
    sparse_factors,
    topk_block,
    topk_rows_bf16,
)
from psyche_distro.dct import ChunkGrid, decode_block, decode_chunk_major, encode_block

# Elements per processing block: large enough that per-call overhead stays small, small
# enough that a block's few tensors share the cache.
_BLOCK_ELEMENTS = 1 << 20
# Parameters with at most this many elements are stacked with others of the same layout.
_STACK_MAX = 1 << 17
# Above this many selected coefficients per chunk (over all peers) a sparse result is decoded
# densely (scatter, then two matrix products) instead of one rank-m product per chunk, and the
# scatter-mean is a dense scatter instead of an O(m^2) pairwise comparison: no cliff in k.
_SPARSE_MAX = 32


@dataclass(frozen=True)
class Member:
    """One parameter of a group."""

    position: int  # index in the payload (parameter) order
    name: str
    param: nn.Parameter
    rows: slice  # its rows in the group's stacked (rows, width) tensor
    chunks: slice  # its chunks in the group's chunk order


def layout_key(p: nn.Parameter, grid: ChunkGrid) -> tuple:
    """Parameters with equal keys can share a group."""
    return (grid.n1, grid.n2, grid.width, p.dtype, p.device)


class Group:
    """Parameters sharing a chunk layout, with their ``delta`` stacked in one tensor."""

    def __init__(
        self,
        params: list[tuple[int, str, nn.Parameter, ChunkGrid]],
        topk: int,
        bf16_select: bool,
    ) -> None:
        first = params[0][3]
        n1, n2, width = first.n1, first.n2, first.width
        self.members: list[Member] = []
        row = chunk = 0
        for position, name, p, grid in params:
            self.members.append(
                Member(
                    position,
                    name,
                    p,
                    slice(row, row + grid.rows),
                    slice(chunk, chunk + grid.num_chunks),
                )
            )
            row, chunk = row + grid.rows, chunk + grid.num_chunks
        self.grid = ChunkGrid((row, width), n1, n2, row // n1, width // n2)
        self.k = clamp_topk(topk, self.grid.chunk_numel)
        self.bf16_select = bf16_select and bf16_select_applies(n1, n2, self.k)
        param = params[0][2]
        self.dtype = param.dtype
        state_dtype = torch.float64 if param.dtype == torch.float64 else torch.float32
        self.delta = torch.zeros((row, width), dtype=state_dtype, device=param.device)
        self.blocks = self.grid.row_blocks(_BLOCK_ELEMENTS)
        self.stacked = len(params) > 1
        # gather buffers for stacked groups (weights and gradients are separate tensors)
        self._weights: torch.Tensor | None = None
        self._grads: torch.Tensor | None = None

    @property
    def numel(self) -> int:
        return self.delta.numel()

    def delta_of(self, member: Member) -> torch.Tensor:
        return self.delta[member.rows].view(member.param.shape)

    def rows(self, t: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
        """Rows ``l0*n1 .. l1*n1`` of a ``(rows, width)`` tensor."""
        return t[block[0] * self.grid.n1 : block[1] * self.grid.n1]

    def weights(self) -> torch.Tensor:
        """The weights as ``(rows, width)``: a view of a lone parameter, else a gathered copy
        (write changes back with :meth:`write_back`)."""
        width = self.grid.width
        if not self.stacked:
            return self.members[0].param.detach().view(-1, width)
        if self._weights is None:
            self._weights = torch.empty_like(self.delta, dtype=self.dtype)
        parts = [m.param.detach().view(-1, width) for m in self.members]
        return torch.cat(parts, out=self._weights)

    def write_back(self, weights: torch.Tensor) -> None:
        if self.stacked:
            targets = [m.param.detach().view(-1, self.grid.width) for m in self.members]
            torch._foreach_copy_(targets, [weights[m.rows] for m in self.members])

    def grads(self) -> torch.Tensor | None:
        """The gradients as ``(rows, width)`` (zeros for a member without one); None if no
        member has one."""
        width = self.grid.width
        grads = [m.param.grad for m in self.members]
        if all(g is None for g in grads):
            return None
        if not self.stacked:
            return grads[0].view(-1, width)
        if self._grads is None:
            self._grads = torch.empty_like(self.delta, dtype=self.dtype)
        parts = [
            g.view(-1, width) if g is not None else torch.zeros_like(m.param).view(-1, width)
            for g, m in zip(grads, self.members)
        ]
        return torch.cat(parts, out=self._grads)


class Update:
    """A sum of selected DCT coefficients for one group, decoded block by block: sparse
    factors (``left @ right`` per chunk) or a dense row-major coefficient tensor."""

    def __init__(self, group: Group, idx: torch.Tensor, val: torch.Tensor, peers: int) -> None:
        self.group = group
        grid = group.grid
        self.factors: tuple[torch.Tensor, torch.Tensor] | None = None
        self.dense: torch.Tensor | None = None
        self.chunk_major: torch.Tensor | None = None
        if group.k == grid.chunk_numel and idx.shape[1] > _SPARSE_MAX:
            # everything sent, in index order: the mean over peers needs no indices
            self.chunk_major = _mean_of_full(val, peers, grid)
        elif idx.shape[1] <= _SPARSE_MAX:
            idx, val = scatter_mean_sparse(idx, val) if peers > 1 else (idx, val)
            self.factors = sparse_factors(idx, val, grid.n1, grid.n2)
        else:
            self.dense = scatter_mean_dense(idx, val, peers, grid)

    def decode(self, block: tuple[int, int], work: torch.Tensor):
        """The inverse DCT over one block as ``(Y, n1, X, n2)`` (a view into ``work``,
        possibly strided), to add to :func:`grid4` of the block's rows."""
        grid = self.group.grid
        l0, l1 = block
        if self.dense is not None:
            coeffs = self.dense[l0 * grid.n1 : l1 * grid.n1]
            return decode_block(coeffs, grid.n1, grid.n2, work=work)
        c0, c1 = l0 * grid.cols, l1 * grid.cols
        if self.chunk_major is not None:
            coeffs = self.chunk_major[c0:c1]
            return decode_chunk_major(coeffs, l1 - l0, grid.n1, grid.n2, work=work)
        left, right = self.factors[0][c0:c1], self.factors[1][c0:c1]
        out = work[: (c1 - c0) * grid.chunk_numel].view(c1 - c0, grid.n1, grid.n2)
        out = torch.bmm(left, right, out=out)
        # chunk-major (Y, X, n1, n2) seen as the row-major (Y, n1, X, n2) block
        return out.view(l1 - l0, grid.cols, grid.n1, grid.n2).transpose(1, 2)


def _mean_of_full(val: torch.Tensor, peers: int, grid: ChunkGrid) -> torch.Tensor:
    """:func:`scatter_mean_dense` when every peer sent every coefficient in index order
    (``val`` is ``(chunks, peers * T)``): the same formula, without indices, kept chunk-major
    ``(chunks, T)`` (for :func:`~psyche_distro.dct.decode_chunk_major`)."""
    values = val.reshape(grid.num_chunks, peers, grid.chunk_numel)
    first = values[:, 0]
    if peers > 1:
        total = torch.zeros_like(first)
        for rank in range(peers):
            total.add_(values[:, rank] - first)
        first = first + total.div_(peers)
    return first


def grid4(rows: torch.Tensor, grid: ChunkGrid) -> torch.Tensor:
    """A ``(rows, width)`` block as ``(Y, n1, X, n2)``."""
    return rows.view(-1, grid.n1, grid.cols, grid.n2)


def lookahead(group: Group, saved: torch.Tensor, prev_lr: float, work: torch.Tensor) -> None:
    """``saved = theta; theta = theta - prev_lr * sign(delta)``, one pass, block by block."""
    weights = group.weights()
    for block in group.blocks:
        wb, sb = group.rows(weights, block), group.rows(saved, block)
        sb.copy_(wb)
        sign = torch.sign(group.rows(group.delta, block), out=work[: wb.numel()].view(wb.shape))
        torch.add(sb, sign, alpha=-prev_lr, out=wb)
    group.write_back(weights)


def generate(
    group: Group,
    lr: float,
    weight_decay: float,
    decay: float,
    saved: torch.Tensor | None,
    own: Update | None,
    update: Update | None,
    buffers: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """One group's step, block by block (every operation is local to a chunk): undo the
    lookahead, weight decay, ``delta = decay * (delta - own) + lr * grad``, top-k of its DCT,
    and in psyche mode the pending update. Returns this step's ``(idx, val)``, ``(chunks,
    k')``, in the group's chunk order."""
    grid = group.grid
    weights, grads = group.weights(), group.grads()
    shrink = 1.0 - lr * weight_decay
    work, spare = buffers[0], buffers[1]
    # k' = T at full precision: this peer sent all of delta, nothing is left to feed back
    full = group.k == grid.chunk_numel
    everything_sent = full and group.dtype == group.delta.dtype
    device = group.delta.device
    if full:  # every coefficient, in index order: the indices are a broadcast view
        idx = torch.arange(group.k, device=device).expand(grid.num_chunks, group.k)
    else:
        idx = torch.empty((grid.num_chunks, group.k), dtype=torch.int64, device=device)
    val = torch.empty((grid.num_chunks, group.k), dtype=group.delta.dtype, device=device)
    for block in group.blocks:
        wb = group.rows(weights, block)
        if saved is not None:  # exact undo of the lookahead, fused with the weight decay
            if shrink != 1.0:
                torch.mul(group.rows(saved, block), shrink, out=wb)
            else:
                wb.copy_(group.rows(saved, block))
        elif shrink != 1.0:
            wb.mul_(shrink)
        d = group.rows(group.delta, block)
        if own is not None and everything_sent:
            d.zero_()  # delta - D^-1(D(delta)): zero up to the transform's rounding
        elif own is not None:  # error feedback, deferred from the last step: decay * (d - own)
            grid4(d, grid).sub_(own.decode(block, work))
        if decay != 1.0:
            d.mul_(decay)
        if grads is not None:
            d.add_(group.rows(grads, block), alpha=lr)
        c0, c1 = block[0] * grid.cols, block[1] * grid.cols
        if group.bf16_select:
            idx[c0:c1], val[c0:c1] = topk_rows_bf16(d, grid.n1, grid.n2, group.k, buffers)
        else:
            coeffs = encode_block(d, grid.n1, grid.n2, work=work)
            if full:  # (b, d) order per chunk
                chunks = val[c0:c1].view(c1 - c0, grid.n1, grid.n2)
                chunks.copy_(coeffs.reshape(c1 - c0, grid.n2, grid.n1).transpose(1, 2))
            else:
                idx[c0:c1], val[c0:c1] = topk_block(coeffs, group.k, work=spare)
        if update is not None:  # psyche mode: last step's aggregate
            decoded = update.decode(block, work)
            grid4(wb, grid).add_(decoded.sign_(), alpha=-lr)
    group.write_back(weights)
    return idx, val


def apply(group: Group, update: Update, lr: float, buffers: tuple[torch.Tensor, ...]) -> None:
    """``theta -= lr * sign(update)``, block by block."""
    work = buffers[0]
    weights = group.weights()
    for block in group.blocks:
        decoded = update.decode(block, work)
        grid4(group.rows(weights, block), group.grid).add_(decoded.sign_(), alpha=-lr)
    group.write_back(weights)


def build_groups(
    params: list[tuple[str, nn.Parameter, ChunkGrid]], topk: int, bf16_select: bool
) -> list[Group]:
    """Small parameters with the same layout share a group (in parameter order); large ones
    get their own."""
    stacks: dict[tuple, list] = {}
    groups: list[list] = []
    for position, (name, p, grid) in enumerate(params):
        entry = (position, name, p, grid)
        if p.numel() > _STACK_MAX:
            groups.append([entry])
            continue
        key = layout_key(p, grid)
        if key not in stacks:
            stacks[key] = []
            groups.append(stacks[key])
        stacks[key].append(entry)
    return [Group(entries, topk, bf16_select) for entries in groups]
