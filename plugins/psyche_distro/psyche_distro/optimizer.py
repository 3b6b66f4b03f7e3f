"""The DisTrO optimizer: compressed momentum exchange with a sign-SGD update.

Per parameter, each peer keeps a momentum ``delta`` (float32, or float64 for float64
parameters; zero at start). One step on one peer, with ``lr = lr(t)``::

    theta *= 1 - lr * weight_decay                  # decoupled, local
    delta  = decay * delta + lr * grad              # grad: this peer's (clipped) local gradient
    R      = top-k of |DCT(delta)| per chunk        # sent to every peer (values or 1-bit signs)
    delta -= DCT^-1(R)                              # error feedback: keep what was not sent
    theta -= lr * sign(DCT^-1(scatter_mean(R of every peer)))

Two schedules share that code (``--distro-mode``):

``sync`` (DeMo): all of it within the step.

``psyche`` (Psyche's pipeline, the default): the aggregate of step t is applied at step t+1
with lr(t+1). Before
the forward pass of step t+1 the weights take a lookahead ``theta -= lr(t) * sign(delta)`` (the
update that is still pending), which :meth:`step` undoes exactly from a snapshot. The first
step sends but applies nothing; the last aggregate stays pending (and in the state dict).

In both modes this peer subtracts its own R_t from delta at the start of step t+1 (fused with
the decay; for ``sync`` this computes the same as subtracting right away).

Every peer concatenates the payloads in rank order and runs the same deterministic code, so
all peers apply bit-identical updates and keep identical weights.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from psyche_core.comm import Communicator
from psyche_core.errors import PsycheError
from psyche_core.optim import Optimizer, StepContext
from psyche_core.options import Options
from psyche_distro.compression import (
    bf16_select_applies,
    clamp_topk,
    scatter_mean_dense,
    scatter_mean_sparse,
    sparse_factors,
    topk_rows,
    topk_rows_bf16,
)
from psyche_distro.dct import ChunkGrid, decode_rows, encode_rows
from psyche_distro.payload import PayloadLayout
from psyche_distro.plugin import MODES

_STATE_FORMAT = 1
# Elements per processing block: a block's tensors stay in cache from one operation to the next
# and the scratch buffers stay small. A constant, so every peer computes in the same blocks.
_BLOCK_ELEMENTS = 1 << 20
# Above this many selected coefficients per chunk (over all peers) a sparse result is decoded
# densely (scatter, then two matrix products) instead of one rank-m product per chunk, and the
# scatter-mean is a dense scatter instead of an O(m^2) pairwise comparison: no cliff in k.
_SPARSE_MAX = 32


@dataclass
class _Slot:
    """One parameter and its DisTrO state. ``delta`` is shaped like the parameter (row-major),
    so a block of grid rows is a contiguous slice of the parameter, its gradient and delta."""

    name: str
    param: nn.Parameter
    grid: ChunkGrid
    k: int
    delta: torch.Tensor
    blocks: list[tuple[int, int]]
    bf16_select: bool  # choose this parameter's top-k from a bfloat16 transform

    def rows(self, t: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
        """Rows ``l0*n1 .. l1*n1`` of a tensor shaped like the parameter, as ``(rows, width)``."""
        n1 = self.grid.n1
        return t.view(self.grid.rows, self.grid.width)[block[0] * n1 : block[1] * n1]


class _Update:
    """A decoded-on-demand sum of selected DCT coefficients for one parameter: either sparse
    factors (``left @ right`` per chunk, chunk-major) or a dense row-major coefficient tensor."""

    def __init__(self, slot: _Slot, idx: torch.Tensor, val: torch.Tensor, peers: int) -> None:
        self.slot = slot
        grid = slot.grid
        if idx.shape[1] <= _SPARSE_MAX:
            idx, val = scatter_mean_sparse(idx, val) if peers > 1 else (idx, val)
            self.factors: tuple[torch.Tensor, torch.Tensor] | None = sparse_factors(
                idx, val, grid.n1, grid.n2
            )
            self.dense: torch.Tensor | None = None
        else:
            self.factors = None
            self.dense = scatter_mean_dense(idx, val, peers, grid)

    def decode(
        self, block: tuple[int, int], work: torch.Tensor, spare: torch.Tensor
    ) -> torch.Tensor:
        """The inverse DCT over one block as ``(Y, n1, X, n2)`` (a view into ``work`` or
        ``spare``, possibly strided): add it to :func:`_grid4` of a block of rows."""
        grid = self.slot.grid
        l0, l1 = block
        if self.dense is not None:
            coeffs = self.dense[l0 * grid.n1 : l1 * grid.n1]
            out = decode_rows(coeffs, grid.n1, grid.n2, work=work, out=spare)
            return out.view(l1 - l0, grid.n1, grid.cols, grid.n2)
        c0, c1 = l0 * grid.cols, l1 * grid.cols
        left, right = self.factors[0][c0:c1], self.factors[1][c0:c1]
        out = work[: (c1 - c0) * grid.chunk_numel].view(c1 - c0, grid.n1, grid.n2)
        out = torch.bmm(left, right, out=out)
        # chunk-major (Y, X, n1, n2) seen as the row-major (Y, n1, X, n2) block
        return out.view(l1 - l0, grid.cols, grid.n1, grid.n2).transpose(1, 2)


class DistroOptimizer(Optimizer):
    """DisTrO over data-parallel peers; see the module docstring and ``docs/distro.md``.

    Args:
        params: a module or its ``named_parameters()``; the order is the payload order and must
            be the same on every peer.
        chunk: target DCT chunk size per dimension (``--compression-chunk``).
        topk: coefficients sent per chunk (``--compression-topk``).
        decay: momentum decay in [0, 1] (``--compression-decay``).
        weight_decay: decoupled weight decay, ``theta *= 1 - lr * weight_decay``.
        quantize_1bit: send sign bits instead of values (``--distro-quantization``).
        mode: ``"psyche"`` (pipelined) or ``"sync"`` (DeMo) (``--distro-mode``).
        bf16_select: choose the top-k indices from a bfloat16 transform, values in float32
            (``--distro-bf16-select``; see :func:`~psyche_distro.compression.topk_rows_bf16`).
    """

    averages_gradients = False

    def __init__(
        self,
        params: nn.Module | Iterable[tuple[str, nn.Parameter]],
        *,
        chunk: int = 64,
        topk: int = 4,
        decay: float = 0.999,
        weight_decay: float = 0.0,
        quantize_1bit: bool = False,
        mode: str = "psyche",
        bf16_select: bool = False,
    ) -> None:
        if isinstance(params, nn.Module):
            params = params.named_parameters()
        super().__init__(params)
        _check(
            _is_int(chunk) and chunk >= 1,
            f"--compression-chunk must be an integer >= 1, got {chunk!r}",
        )
        _check(
            _is_int(topk) and topk >= 1, f"--compression-topk must be an integer >= 1, got {topk!r}"
        )
        _check(0.0 <= decay <= 1.0, f"--compression-decay must be in [0, 1], got {decay!r}")
        _check(weight_decay >= 0.0, f"--weight-decay must be >= 0, got {weight_decay!r}")
        _check(mode in MODES, f"--distro-mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.chunk, self.topk, self.decay = int(chunk), int(topk), float(decay)
        self.weight_decay, self.quantize_1bit, self.mode = (
            float(weight_decay),
            bool(quantize_1bit),
            mode,
        )
        self.bf16_select = bool(bf16_select)

        self._slots: list[_Slot] = []
        for name, p in self.named_params:
            if p.numel() == 0:
                continue  # nothing to send or update
            if not p.is_contiguous():
                raise PsycheError(f"DisTrO needs contiguous parameters; {name!r} is not")
            grid = ChunkGrid.for_shape(tuple(p.shape), self.chunk)
            state_dtype = torch.float64 if p.dtype == torch.float64 else torch.float32
            delta = torch.zeros(p.shape, dtype=state_dtype, device=p.device)
            k = clamp_topk(self.topk, grid.chunk_numel)
            bf16 = self.bf16_select and bf16_select_applies(grid.n1, grid.n2, k)
            blocks = grid.row_blocks(_BLOCK_ELEMENTS)
            self._slots.append(_Slot(name, p, grid, k, delta, blocks, bf16))
        self.layout = PayloadLayout(
            [(s.grid, s.k, s.param.dtype) for s in self._slots], one_bit=self.quantize_1bit
        )
        self._numel = sum(s.param.numel() for s in self._slots)
        # This peer's last sent result, unquantized, subtracted from delta at the next step.
        self._own: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        # psyche mode: every peer's payload of the last step, applied at the next step.
        self._pending: torch.Tensor | None = None
        self._snapshot: list[torch.Tensor] | None = None
        self._lookahead = False
        self._peers_checked = False
        self._scratch: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, ...]] = {}

    # -- public views ---------------------------------------------------------------------------

    @property
    def payload_nbytes(self) -> int:
        """Bytes this peer sends per step."""
        return self.layout.nbytes

    @property
    def delta(self) -> dict[str, torch.Tensor]:
        """Copies of the momentum tensors by parameter name, shaped like the parameters. Between
        steps this is delta as compressed at the last step: the part this peer sent is
        subtracted at the start of the next step (in both modes)."""
        return {s.name: s.delta.clone() for s in self._slots}

    # -- the step -------------------------------------------------------------------------------

    @torch.no_grad()
    def prepare_step(self, ctx: StepContext) -> None:
        """psyche mode: move the weights to where the pending update will roughly put them,
        ``theta -= prev_lr * sign(delta)``; :meth:`step` or :meth:`abort_step` restore them.
        One pass, block by block: copy the weights aside, then write the moved weights."""
        self._restore()
        if self.mode != "psyche" or self._pending is None or ctx.prev_lr == 0:
            return
        if self._snapshot is None:
            self._snapshot = [torch.empty_like(s.param) for s in self._slots]
        for slot, saved in zip(self._slots, self._snapshot):
            work = self._work(slot)[0]
            p = slot.param.detach()
            for block in slot.blocks:
                pb, sb = slot.rows(p, block), slot.rows(saved, block)
                sb.copy_(pb)
                sign = torch.sign(slot.rows(slot.delta, block), out=_like(work, pb))
                torch.add(sb, sign, alpha=-ctx.prev_lr, out=pb)
        self._lookahead = True

    def abort_step(self, ctx: StepContext) -> None:
        self._restore()

    @torch.no_grad()
    def step(self, ctx: StepContext) -> dict[str, Any]:
        lr, stats = ctx.lr, ctx.collect_stats
        metrics: dict[str, Any] = {}
        pending = self._aggregate(self._pending) if self._pending is not None else None
        restore = self._snapshot if self._lookahead else None  # undone block by block below
        self._lookahead = False
        own_results: list[tuple[torch.Tensor, torch.Tensor]] = []
        wire: list[tuple[torch.Tensor, torch.Tensor]] = []
        for i, slot in enumerate(self._slots):
            own = self._own[i] if self._own is not None else None
            idx, val, energies = self._generate(
                slot,
                lr,
                saved=restore[i] if restore is not None else None,
                own=_Update(slot, *own, peers=1) if own is not None else None,
                update=pending[i] if pending is not None else None,
                stats=stats,
            )
            if stats:
                metrics[f"{slot.name}.grad_energy"], metrics[f"{slot.name}.delta_energy"] = energies
            val = val.to(slot.param.dtype)  # the values as every peer will see them (unless 1-bit)
            wire.append((idx, val))
            own_results.append((idx, val.to(slot.delta.dtype)))
        self._own = own_results

        gathered = self._exchange(ctx.communicator, self.layout.serialize(wire))
        if self.mode == "sync":
            for slot, update in zip(self._slots, self._aggregate(gathered)):
                self._apply(slot, update, lr)
        else:
            self._pending = gathered

        metrics["distro_payload_bytes"] = self.layout.nbytes
        metrics["distro_received_bytes"] = self.layout.nbytes * (gathered.shape[0] - 1)
        if stats:
            metrics["distro_coefficients"] = self.layout.coefficients
            metrics["distro_compression_ratio"] = 4.0 * self._numel / max(self.layout.nbytes, 1)
        return metrics

    def _generate(
        self,
        slot: _Slot,
        lr: float,
        saved: torch.Tensor | None,
        own: _Update | None,
        update: _Update | None,
        stats: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[float, float]]:
        """One parameter's step, block by block (every operation is local to a chunk, and a
        block is a contiguous slice of every tensor): undo the lookahead, weight decay,
        ``delta = decay * (delta - own) + lr * grad``, top-k of its DCT, and in psyche mode the
        pending update. Returns ``(idx, val)`` of this step's result, ``(chunks, k')``, and the
        L1 energies of the gradient and of delta."""
        p, grad = slot.param.detach(), slot.param.grad
        grid = slot.grid
        shrink = 1.0 - lr * self.weight_decay
        beta = self.decay
        work, spare, third = self._work(slot)
        idx = torch.empty((grid.num_chunks, slot.k), dtype=torch.int64, device=p.device)
        val = torch.empty((grid.num_chunks, slot.k), dtype=slot.delta.dtype, device=p.device)
        grad_energy = _l1(grad) if stats and grad is not None else 0.0
        delta_energy = 0.0
        for block in slot.blocks:
            pb = slot.rows(p, block)
            if saved is not None:  # exact undo of the lookahead, fused with the weight decay
                if shrink != 1.0:
                    torch.mul(slot.rows(saved, block), shrink, out=pb)
                else:
                    pb.copy_(slot.rows(saved, block))
            elif shrink != 1.0:
                pb.mul_(shrink)
            d = slot.rows(slot.delta, block)  # (rows, width), contiguous
            if own is not None:  # error feedback, deferred from the last step: decay * (d - own)
                _grid4(d, grid).sub_(own.decode(block, work, spare))
            if beta != 1.0:
                d.mul_(beta)
            if grad is not None:
                d.add_(slot.rows(grad, block), alpha=lr)
            if stats:
                delta_energy += _l1(d)
            c0, c1 = block[0] * grid.cols, block[1] * grid.cols
            if slot.bf16_select:
                idx[c0:c1], val[c0:c1] = topk_rows_bf16(
                    d, grid.n1, grid.n2, slot.k, buffers=(work, spare, third)
                )
            else:
                coeffs = encode_rows(d, grid.n1, grid.n2, work=work, out=spare)
                idx[c0:c1], val[c0:c1] = topk_rows(
                    coeffs, grid.n1, grid.n2, slot.k, work=third if grid.n1 > 1 else spare
                )
            if update is not None:  # psyche mode: last step's aggregate
                self._apply_block(update, block, pb, lr, work, spare)
        return idx, val, (grad_energy, delta_energy)

    def _apply(self, slot: _Slot, update: _Update, lr: float) -> None:
        """``theta -= lr * sign(update)`` for one parameter, block by block."""
        work, spare, _ = self._work(slot)
        p = slot.param.detach()
        for block in slot.blocks:
            self._apply_block(update, block, slot.rows(p, block), lr, work, spare)

    @staticmethod
    def _apply_block(
        update: _Update,
        block: tuple[int, int],
        pb: torch.Tensor,
        lr: float,
        work: torch.Tensor,
        spare: torch.Tensor,
    ) -> None:
        decoded = update.decode(block, work, spare)
        _grid4(pb, update.slot.grid).add_(decoded.sign_(), alpha=-lr)

    def _aggregate(self, payloads: torch.Tensor) -> list[_Update]:
        """Every parameter's scatter-mean over the peers' payloads, ready to decode."""
        dtypes = [s.delta.dtype for s in self._slots]
        devices = [s.delta.device for s in self._slots]
        parsed = self.layout.parse(payloads, dtypes, devices)
        peers = payloads.shape[0]
        return [_Update(slot, idx, val, peers) for slot, (idx, val) in zip(self._slots, parsed)]

    def _work(self, slot: _Slot) -> tuple[torch.Tensor, ...]:
        """Three scratch buffers big enough for any block, per device and dtype."""
        key = (slot.delta.device, slot.delta.dtype)
        if key not in self._scratch:
            size = max(
                (l1 - l0) * s.grid.n1 * s.grid.width
                for s in self._slots
                if (s.delta.device, s.delta.dtype) == key
                for l0, l1 in s.blocks
            )
            self._scratch[key] = tuple(
                torch.empty(size, dtype=key[1], device=key[0]) for _ in range(3)
            )
        return self._scratch[key]

    def _exchange(self, comm: Communicator, payload: torch.Tensor) -> torch.Tensor:
        """All peers' payloads as ``(peers, nbytes)``, in rank order."""
        if not self._peers_checked:
            mine = self._fingerprint()
            if any(other != mine for other in comm.all_gather_object(mine)):
                raise PsycheError(
                    "DisTrO peers disagree on the model or the DisTrO options (parameter "
                    "shapes, dtypes, --compression-chunk/-topk, --distro-quantization, "
                    "--distro-mode); every peer must use the same"
                )
            self._peers_checked = True
        payloads = comm.all_gather_bytes(payload)
        for rank, other in enumerate(payloads):
            if other.numel() != self.layout.nbytes:
                raise PsycheError(
                    f"DisTrO: peer {rank} sent {other.numel()} bytes, expected {self.layout.nbytes}"
                )
        return torch.stack([other.to(payload.device) for other in payloads])

    def _fingerprint(self) -> tuple[Any, ...]:
        shapes = tuple((s.name, tuple(s.param.shape), str(s.param.dtype)) for s in self._slots)
        return (self.mode, self.chunk, self.topk, self.quantize_1bit, shapes)

    def _restore(self) -> None:
        """Undo the lookahead bit-exactly."""
        if not self._lookahead:
            return
        with torch.no_grad():
            for slot, saved in zip(self._slots, self._snapshot or []):
                slot.param.detach().copy_(saved)
        self._lookahead = False

    # -- checkpoints ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain numbers only: the options that shape the payload, delta (shaped like
        the parameters), this peer's last result (subtracted at the next step) and, in psyche
        mode, every peer's last payload (applied at the next step)."""
        if self._lookahead:
            raise PsycheError("DisTrO: state_dict() called between prepare_step() and step()")
        state: dict[str, Any] = {
            "format": _STATE_FORMAT,
            "sync": int(self.mode == "sync"),
            "chunk": self.chunk,
            "topk": self.topk,
            "quantize_1bit": int(self.quantize_1bit),
            "delta": self.delta,
        }
        if self._own is not None:
            state["own_idx"] = {s.name: i.clone() for s, (i, _) in zip(self._slots, self._own)}
            state["own_val"] = {s.name: v.clone() for s, (_, v) in zip(self._slots, self._own)}
        if self._pending is not None:
            state["pending_payloads"] = self._pending.clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != _STATE_FORMAT:
            raise PsycheError(f"DisTrO: unknown optimizer state format {state.get('format')!r}")
        names = sorted(s.name for s in self._slots)
        if sorted(state.get("delta", {})) != names:
            raise PsycheError("DisTrO: the optimizer state was saved for other parameters")
        for slot in self._slots:
            saved = state["delta"][slot.name]
            if tuple(saved.shape) != tuple(slot.param.shape):
                raise PsycheError(
                    f"DisTrO: saved delta for {slot.name!r} has shape {tuple(saved.shape)}, "
                    f"the parameter {tuple(slot.param.shape)}"
                )
        layout_same = state["chunk"] == self.chunk and state["topk"] == self.topk
        pending = state.get("pending_payloads")
        if "own_idx" in state and not layout_same:
            raise PsycheError(
                "DisTrO: the checkpoint's pending result was made with another "
                "--compression-chunk/--compression-topk"
            )
        if pending is not None and (
            self.mode != "psyche"
            or state["quantize_1bit"] != int(self.quantize_1bit)
            or tuple(pending.shape[1:]) != (self.layout.nbytes,)
        ):
            raise PsycheError(
                "DisTrO: the checkpoint holds a psyche-mode update still to apply; resume it "
                "with --distro-mode psyche and the same --compression-chunk/-topk and "
                "--distro-quantization"
            )
        self._restore()
        for slot in self._slots:
            slot.delta.copy_(state["delta"][slot.name])
        self._own = None
        if "own_idx" in state:
            self._own = [
                (
                    state["own_idx"][s.name].to(s.delta.device, torch.int64).clone(),
                    state["own_val"][s.name].to(s.delta.device, s.delta.dtype).clone(),
                )
                for s in self._slots
            ]
        self._pending = pending.to(torch.uint8).clone() if pending is not None else None


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise PsycheError(message)


def _like(work: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The front of a scratch buffer, shaped like ``t``."""
    return work[: t.numel()].view(t.shape)


def _grid4(rows: torch.Tensor, grid: ChunkGrid) -> torch.Tensor:
    """A ``(rows, width)`` block as ``(Y, n1, X, n2)``."""
    return rows.view(-1, grid.n1, grid.cols, grid.n2)


def _l1(t: torch.Tensor) -> float:
    """L1 norm, accumulated in at least float32."""
    return float(torch.linalg.vector_norm(t, 1, dtype=torch.promote_types(t.dtype, torch.float32)))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def build_distro(model: nn.Module, options: Options) -> DistroOptimizer:
    """The ``distro`` optimizer factory: ``--compression-*``, ``--distro-*``, ``--weight-decay``
    (declared options are always present on ``options``)."""
    return DistroOptimizer(
        model,
        chunk=options.compression_chunk,
        topk=options.compression_topk,
        decay=options.compression_decay,
        weight_decay=options.weight_decay,
        quantize_1bit=bool(options.distro_quantization),
        mode=options.distro_mode,
        bf16_select=bool(options.distro_bf16_select),
    )
