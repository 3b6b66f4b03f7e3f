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
    clamp_topk,
    scatter_mean_sparse,
    sparse_factors,
    topk_batch,
)
from psyche_distro.dct import Block, ChunkGrid, encode_batch, from_chunks, to_chunks
from psyche_distro.payload import PayloadLayout
from psyche_distro.plugin import MODES, OPTIONS

_STATE_FORMAT = 1
# Elements per processing block: a block's tensors stay in cache from one operation to the next
# and the scratch buffers stay small. A constant, so every peer computes in the same blocks.
_BLOCK_ELEMENTS = 1 << 19

Factors = tuple[torch.Tensor, torch.Tensor]  # sparse_factors(): (chunks, n1, K), (chunks, K, n2)


@dataclass
class _Slot:
    """One parameter and its DisTrO state. ``delta`` is stored chunk-major,
    ``(chunks, n1, n2)``, so every block of it is contiguous."""

    name: str
    param: nn.Parameter
    grid: ChunkGrid
    k: int
    delta: torch.Tensor
    blocks: list[Block]

    def view(self, t: torch.Tensor) -> torch.Tensor:
        """A tensor shaped like the parameter as a ``(lead, cols, n1, n2)`` chunk view."""
        return self.grid.chunk_view(t)

    def factors(self, idx: torch.Tensor, val: torch.Tensor) -> Factors:
        return sparse_factors(idx, val, self.grid.n1, self.grid.n2)


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

        self._slots: list[_Slot] = []
        for name, p in self.named_params:
            if p.numel() == 0:
                continue  # nothing to send or update
            if not p.is_contiguous():
                raise PsycheError(f"DisTrO needs contiguous parameters; {name!r} is not")
            grid = ChunkGrid.for_shape(tuple(p.shape), self.chunk)
            state_dtype = torch.float64 if p.dtype == torch.float64 else torch.float32
            delta = torch.zeros(
                (grid.num_chunks, grid.n1, grid.n2), dtype=state_dtype, device=p.device
            )
            k = clamp_topk(self.topk, grid.chunk_numel)
            blocks = grid.blocks(_BLOCK_ELEMENTS // grid.chunk_numel)
            self._slots.append(_Slot(name, p, grid, k, delta, blocks))
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
        self._scratch: dict[
            tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]
        ] = {}

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
        return {s.name: from_chunks(s.delta, s.grid).clone() for s in self._slots}

    # -- the step -------------------------------------------------------------------------------

    @torch.no_grad()
    def prepare_step(self, ctx: StepContext) -> None:
        """psyche mode: move the weights to where the pending update will roughly put them,
        ``theta -= prev_lr * sign(delta)``; :meth:`step` or :meth:`abort_step` restore them."""
        self._restore()
        if self.mode != "psyche" or self._pending is None or ctx.prev_lr == 0:
            return
        if self._snapshot is None:
            self._snapshot = [torch.empty_like(s.param) for s in self._slots]
        for slot, saved in zip(self._slots, self._snapshot):
            work, _ = self._work(slot)
            pv, sv = slot.view(slot.param.detach()), slot.view(saved)
            for blk in slot.blocks:
                pb, sb = blk.of(pv), blk.of(sv)
                sb.copy_(pb)
                sign = torch.sign(
                    slot.delta[blk.start : blk.stop], out=self._buffer(work, slot, blk)
                )
                torch.add(sb, sign.view(pb.shape), alpha=-ctx.prev_lr, out=pb)
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
                own=slot.factors(*own) if own is not None else None,
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
        own: Factors | None,
        update: Factors | None,
        stats: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[float, float]]:
        """One parameter's step, block by block (every operation is local to a chunk):
        undo the lookahead, weight decay, ``delta = decay * (delta - own) + lr * grad``, top-k
        of its DCT, and in psyche mode the pending update. Returns ``(idx, val)`` of this step's
        result, ``(chunks, k')``, and the L1 energies of the gradient and of delta."""
        p, grad = slot.param.detach(), slot.param.grad
        pv, gv = slot.view(p), slot.view(grad) if grad is not None else None
        sv = slot.view(saved) if saved is not None else None
        shrink = 1.0 - lr * self.weight_decay
        beta = self.decay
        work, spare = self._work(slot)
        idx = torch.empty((slot.grid.num_chunks, slot.k), dtype=torch.int64, device=p.device)
        val = torch.empty((slot.grid.num_chunks, slot.k), dtype=slot.delta.dtype, device=p.device)
        grad_energy = _l1(grad) if stats and grad is not None else 0.0
        delta_energy = 0.0
        for blk in slot.blocks:
            pb = blk.of(pv)
            if sv is not None:  # exact undo of the lookahead, fused with the weight decay
                if shrink != 1.0:
                    torch.mul(blk.of(sv), shrink, out=pb)
                else:
                    pb.copy_(blk.of(sv))
            elif shrink != 1.0:
                pb.mul_(shrink)
            d = slot.delta[blk.start : blk.stop]  # (B, n1, n2)
            if own is not None:  # error feedback, deferred from the last step: decay * (d - own)
                left, right = own[0][blk.start : blk.stop], own[1][blk.start : blk.stop]
                d.baddbmm_(left, right, beta=beta, alpha=-beta)
            elif beta != 1.0:
                d.mul_(beta)
            if gv is not None:
                d.view(*blk.size, slot.grid.n1, slot.grid.n2).add_(blk.of(gv), alpha=lr)
            if stats:
                delta_energy += _l1(d)
            coeffs = encode_batch(d, work=work, out=self._buffer(spare, slot, blk, d.shape))
            magnitude_work = spare if coeffs.data_ptr() == work.data_ptr() else work
            idx[blk.start : blk.stop], val[blk.start : blk.stop] = topk_batch(
                coeffs, slot.k, work=magnitude_work
            )
            if update is not None:  # psyche mode: last step's aggregate
                self._apply_block(slot, update, blk, pb, lr, work)
        return idx, val, (grad_energy, delta_energy)

    def _apply(self, slot: _Slot, update: Factors, lr: float) -> None:
        """``theta -= lr * sign(update)`` for one parameter, block by block."""
        work, _ = self._work(slot)
        pv = slot.view(slot.param.detach())
        for blk in slot.blocks:
            self._apply_block(slot, update, blk, blk.of(pv), lr, work)

    def _apply_block(
        self,
        slot: _Slot,
        update: Factors,
        blk: Block,
        pb: torch.Tensor,
        lr: float,
        work: torch.Tensor,
    ) -> None:
        left, right = update[0][blk.start : blk.stop], update[1][blk.start : blk.stop]
        decoded = torch.bmm(left, right, out=self._buffer(work, slot, blk, None))
        pb.add_(decoded.sign_().view(pb.shape), alpha=-lr)

    def _aggregate(self, payloads: torch.Tensor) -> list[Factors]:
        """Every parameter's scatter-mean over the peers' payloads, as sparse-decode factors."""
        dtypes = [s.delta.dtype for s in self._slots]
        devices = [s.delta.device for s in self._slots]
        parsed = self.layout.parse(payloads, dtypes, devices)
        return [
            slot.factors(*scatter_mean_sparse(idx, val))
            for slot, (idx, val) in zip(self._slots, parsed)
        ]

    def _work(self, slot: _Slot) -> tuple[torch.Tensor, torch.Tensor]:
        """Two scratch buffers big enough for any block, per device and dtype."""
        key = (slot.delta.device, slot.delta.dtype)
        if key not in self._scratch:
            size = max(
                max(b.stop - b.start for b in s.blocks) * s.grid.chunk_numel
                for s in self._slots
                if (s.delta.device, s.delta.dtype) == key
            )
            self._scratch[key] = tuple(
                torch.empty(size, dtype=key[1], device=key[0]) for _ in range(2)
            )
        return self._scratch[key]

    @staticmethod
    def _buffer(
        work: torch.Tensor, slot: _Slot, blk: Block, shape: tuple[int, ...] | None = None
    ) -> torch.Tensor:
        chunks = blk.stop - blk.start
        view = work[: chunks * slot.grid.chunk_numel]
        if shape is None:
            return view.view(chunks, slot.grid.n1, slot.grid.n2)
        return view.view(shape)

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
            slot.delta.copy_(to_chunks(state["delta"][slot.name], slot.grid))
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


def _l1(t: torch.Tensor) -> float:
    """L1 norm, accumulated in at least float32."""
    return float(torch.linalg.vector_norm(t, 1, dtype=torch.promote_types(t.dtype, torch.float32)))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_DEFAULTS = {spec.key: spec.default for spec in OPTIONS}


def _option(options: Options, key: str, default: Any = None) -> Any:
    value = getattr(options, key, None)
    if value is None:
        value = _DEFAULTS.get(key, default)
    return value


def build_distro(model: nn.Module, options: Options) -> DistroOptimizer:
    """The ``distro`` optimizer factory: ``--compression-*``, ``--distro-*``, ``--weight-decay``."""
    return DistroOptimizer(
        model,
        chunk=_option(options, "compression_chunk"),
        topk=_option(options, "compression_topk"),
        decay=_option(options, "compression_decay"),
        weight_decay=_option(options, "weight_decay", 0.0),
        quantize_1bit=bool(_option(options, "distro_quantization")),
        mode=_option(options, "distro_mode"),
    )
