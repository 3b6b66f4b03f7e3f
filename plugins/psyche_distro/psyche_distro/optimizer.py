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

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from psyche_core.comm import Communicator
from psyche_core.errors import PsycheError
from psyche_core.optim import Optimizer, StepContext
from psyche_core.options import Options
from psyche_distro.compression import clamp_topk
from psyche_distro.dct import ChunkGrid
from psyche_distro.groups import Group, Update, apply, build_groups, generate, lookahead
from psyche_distro.payload import PayloadLayout
from psyche_distro.plugin import MODES

_STATE_FORMAT = 1


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
    # Each rank compresses the shard it holds and exchanges with the ranks holding the same
    # shard in the other peers (as Psyche compresses local tensor-parallel shards). The state is
    # per rank: a sharded run resumes on the same layout.
    supports_sharding = True

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

        params: list[tuple[str, nn.Parameter, ChunkGrid]] = []
        for name, p in self.named_params:
            if p.numel() == 0:
                continue  # nothing to send or update
            if not p.is_contiguous():
                raise PsycheError(f"DisTrO needs contiguous parameters; {name!r} is not")
            grid = shard_grid(
                tuple(p.shape),
                self.global_shape(name, p),
                self.shard_offsets(name, p),
                self.chunk,
            )
            params.append((name, p, grid))
        self._names = [name for name, _, _ in params]
        self._params = [p for _, p, _ in params]
        self.layout = PayloadLayout(
            [(grid, clamp_topk(self.topk, grid.chunk_numel), p.dtype) for _, p, grid in params],
            one_bit=self.quantize_1bit,
        )
        self._groups: list[Group] = build_groups(params, self.topk, self.bf16_select)
        self._numel = sum(p.numel() for p in self._params)
        # This peer's last sent result per group, unquantized, subtracted from delta next step.
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
        return {m.name: g.delta_of(m).clone() for g in self._groups for m in g.members}

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
            self._snapshot = [torch.empty_like(g.delta, dtype=g.dtype) for g in self._groups]
        for group, saved in zip(self._groups, self._snapshot):
            lookahead(group, saved, ctx.prev_lr, self._work(group)[0])
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
        if stats:
            for name, p in zip(self._names, self._params):
                metrics[f"{name}.grad_energy"] = _l1(p.grad) if p.grad is not None else 0.0
        own_results: list[tuple[torch.Tensor, torch.Tensor]] = []
        wire: list[tuple[list[int], torch.Tensor, torch.Tensor]] = []
        for i, group in enumerate(self._groups):
            own = self._own[i] if self._own is not None else None
            idx, val = generate(
                group,
                lr,
                self.weight_decay,
                self.decay,
                saved=restore[i] if restore is not None else None,
                own=Update(group, *own, peers=1) if own is not None else None,
                update=pending[i] if pending is not None else None,
                buffers=self._work(group),
            )
            val = val.to(group.dtype)  # the values as every peer will see them (unless 1-bit)
            wire.append(([m.position for m in group.members], idx, val))
            if stats:
                for m in group.members:
                    metrics[f"{m.name}.delta_energy"] = _l1(group.delta_of(m))
            own_results.append((idx, val.to(group.delta.dtype)))
        self._own = own_results

        gathered = self._exchange(ctx.communicator, self.layout.serialize_groups(wire))
        if self.mode == "sync":
            for group, update in zip(self._groups, self._aggregate(gathered)):
                apply(group, update, lr, self._work(group))
        else:
            self._pending = gathered

        metrics["distro_payload_bytes"] = self.layout.nbytes
        metrics["distro_received_bytes"] = self.layout.nbytes * (gathered.shape[0] - 1)
        if stats:
            metrics["distro_coefficients"] = self.layout.coefficients
            metrics["distro_compression_ratio"] = 4.0 * self._numel / max(self.layout.nbytes, 1)
        return metrics

    def _aggregate(self, payloads: torch.Tensor) -> list[Update]:
        """Every group's scatter-mean over the peers' payloads, ready to decode."""
        groups = [
            ([m.position for m in g.members], g.delta.dtype, g.delta.device) for g in self._groups
        ]
        parsed = self.layout.parse_groups(payloads, groups)
        peers = payloads.shape[0]
        return [Update(g, idx, val, peers) for g, (idx, val) in zip(self._groups, parsed)]

    def _work(self, group: Group) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Three scratch buffers big enough for any block, per device and dtype."""
        key = (group.delta.device, group.delta.dtype)
        if key not in self._scratch:
            size = max(
                (l1 - l0) * g.grid.n1 * g.grid.width
                for g in self._groups
                if (g.delta.device, g.delta.dtype) == key
                for l0, l1 in g.blocks
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
        if len(payloads) == 1:  # one peer: its own fresh buffer, no copy
            return payloads[0].to(payload.device).unsqueeze(0)
        return torch.stack([other.to(payload.device) for other in payloads])

    def _fingerprint(self) -> tuple[Any, ...]:
        shapes = tuple(
            (name, tuple(p.shape), str(p.dtype)) for name, p in zip(self._names, self._params)
        )
        return (self.mode, self.chunk, self.topk, self.quantize_1bit, shapes)

    def _restore(self) -> None:
        """Undo the lookahead bit-exactly."""
        if not self._lookahead:
            return
        with torch.no_grad():
            for group, saved in zip(self._groups, self._snapshot or []):
                for m in group.members:
                    m.param.detach().view(-1, group.grid.width).copy_(saved[m.rows])
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
            state["own_idx"], state["own_val"] = {}, {}
            for group, (idx, val) in zip(self._groups, self._own):
                for m in group.members:
                    state["own_idx"][m.name] = idx[m.chunks].clone()
                    state["own_val"][m.name] = val[m.chunks].clone()
        if self._pending is not None:
            state["pending_payloads"] = self._pending.clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != _STATE_FORMAT:
            raise PsycheError(f"DisTrO: unknown optimizer state format {state.get('format')!r}")
        if sorted(state.get("delta", {})) != sorted(self._names):
            raise PsycheError("DisTrO: the optimizer state was saved for other parameters")
        for name, p in zip(self._names, self._params):
            saved = state["delta"][name]
            if tuple(saved.shape) != tuple(p.shape):
                raise PsycheError(
                    f"DisTrO: saved delta for {name!r} has shape {tuple(saved.shape)}, "
                    f"the parameter {tuple(p.shape)}"
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
        for group in self._groups:
            for m in group.members:
                group.delta_of(m).copy_(state["delta"][m.name])
        self._own = None
        if "own_idx" in state:
            self._own = [
                (
                    torch.cat([state["own_idx"][m.name] for m in g.members])
                    .to(g.delta.device, torch.int64)
                    .clone(),
                    torch.cat([state["own_val"][m.name] for m in g.members])
                    .to(g.delta.device, g.delta.dtype)
                    .clone(),
                )
                for g in self._groups
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


def shard_grid(
    shape: tuple[int, ...], full: tuple[int, ...], offsets: tuple[int, ...], chunk: int
) -> ChunkGrid:
    """The chunk grid of a parameter shard: the full tensor's chunks that fall in the shard when
    its boundaries lie on chunk boundaries (then the chunks, and so the top-k, are those of the
    unsharded run), else the shard's own grid."""
    own = ChunkGrid.for_shape(shape, chunk)
    if shape == full:
        return own
    whole = ChunkGrid.for_shape(full, chunk)
    if len(shape) <= 1:
        aligned = shape[0] % whole.n2 == 0 and offsets[0] % whole.n2 == 0
        return ChunkGrid(shape, 1, whole.n2, shape[0] // whole.n2, 1) if aligned else own
    rows, cols = shape[-2], shape[-1]
    aligned = (
        rows % whole.n1 == 0
        and cols % whole.n2 == 0
        and offsets[-2] % whole.n1 == 0
        and offsets[-1] % whole.n2 == 0
    )
    if not aligned:
        return own
    lead = math.prod(shape[:-2]) * (rows // whole.n1)
    return ChunkGrid(shape, whole.n1, whole.n2, lead, cols // whole.n2)


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
