"""The language-model head and cross entropy in one chunked pass (``return_logits=False``).

Training only needs the loss and its gradients, not the ``(tokens, vocab)`` logits. For a small
model with a large vocabulary (the 20m preset: 32000 x 256) those logits, their log-softmax and
the gradient of each are the largest tensors of a step. ``linear_cross_entropy`` computes the
same mean cross entropy a chunk of rows at a time, and the gradients with it, so none of them
exists in full. Model plugins use it for their ``return_logits=False`` path.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from psyche_core import parallel
from psyche_core.data import IGNORE_INDEX
from psyche_core.model import CausalLMOutput

# At most this many logits (rows x vocab) exist at a time: 32 MiB in float32.
LOSS_CHUNK_ELEMENTS = 1 << 23
# Below float32, the gradient rows of up to this many chunks are kept for one weight-gradient
# product (see _LinearCrossEntropy.forward): 64 MiB of bfloat16 logits gradients at most.
LOSS_BLOCK_CHUNKS = 4

# LM heads whose chunked loss runs its softmax pass compiled (``--compile``: compile_loss).
_COMPILED_HEADS: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()


def compile_loss(head: torch.nn.Module) -> None:
    """Run the chunked loss of ``head`` (an LM head passed to ``causal_lm_output``) with its
    per-chunk softmax, loss and gradient fused by ``torch.compile``; the head itself, its
    parameters and state-dict keys are untouched."""
    _COMPILED_HEADS.add(head)


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, compiled: bool = False
) -> torch.Tensor:
    """Mean cross entropy of ``hidden @ weight.T`` against ``targets`` (``-100`` skipped),
    without ever holding the full ``(N, vocab)`` logits: equal to ``lm_head`` + cross entropy.

    Under autograd the gradients are computed during this call (see ``_LinearCrossEntropy``).
    ``compiled`` runs each chunk's softmax, loss and ``softmax - one_hot`` as one
    ``torch.compile``d kernel (``--compile``) instead of four eager passes over the logits.
    """
    if not torch.is_grad_enabled():  # no_grad: skip the eager gradient work
        hidden, weight = hidden.detach(), weight.detach()
    return _LinearCrossEntropy.apply(hidden, weight, targets, compiled)


def _softmax_grad_(logits: Tensor, target: Tensor) -> Tensor:
    """Row losses ``(rows, 1)`` of ``(rows, vocab)`` logits, which are overwritten in place by
    their gradient ``softmax - one_hot`` (float32 math, stored in the logits' dtype)."""
    x = logits.float()
    lse = torch.logsumexp(x, dim=-1, keepdim=True)
    loss = lse - x.gather(1, target)
    columns = torch.arange(x.shape[-1], device=x.device)
    logits.copy_(torch.exp(x - lse) - (columns == target).float())
    return loss


_compiled_softmax_grad: Any = None


def _fused_softmax_grad_(logits: Tensor, target: Tensor) -> Tensor:
    global _compiled_softmax_grad
    if _compiled_softmax_grad is None:
        _compiled_softmax_grad = torch.compile(_softmax_grad_)
    return _compiled_softmax_grad(logits, target)


class _LinearCrossEntropy(torch.autograd.Function):
    """The head and the loss, a chunk of rows at a time.

    Each chunk's logits become their own gradient (softmax - one-hot) in place, and the
    gradients of ``hidden`` and ``weight`` are accumulated right away (per chunk in float32,
    per block of ``LOSS_BLOCK_CHUNKS`` chunks below it), so backward only scales them: the same
    three matmuls as head + loss + backward, but no logits tensor, no log-softmax copy and
    nothing vocabulary-sized saved for backward. The buffers are allocated once per call, not
    once per chunk: each is a fresh mapping of tens of MiB that the CPU would otherwise fault
    in page by page for every chunk.
    """

    @staticmethod
    def forward(
        ctx: Any, hidden: Tensor, weight: Tensor, targets: Tensor, compiled: bool
    ) -> Tensor:
        need_hidden, need_weight = ctx.needs_input_grad[:2]
        # Under autocast (bf16-mixed) all three head matmuls run in the autocast dtype, as
        # they would for nn.Linear + cross entropy: autocast alone would only cast the forward
        # product, because the two gradient products write into float32 buffers (out=).
        out_hidden, out_weight = hidden.dtype, weight.dtype
        device_type = hidden.device.type
        mixed = torch.is_autocast_enabled(device_type)
        if mixed:
            compute = torch.get_autocast_dtype(device_type)
            hidden, weight = hidden.to(compute), weight.to(compute)
        valid = targets != IGNORE_INDEX
        scale = 1.0 / valid.sum().clamp(min=1).float()
        grad_hidden = torch.empty_like(hidden, dtype=out_hidden) if need_hidden else None
        grad_weight = None  # float32 sum over blocks
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        n_rows, vocab = hidden.shape[0], weight.shape[0]
        rows = min(max(1, LOSS_CHUNK_ELEMENTS // vocab), n_rows)  # logits rows per softmax
        # Products in a lower precision than their float32 weight-gradient sum: the gradient
        # rows of several chunks are kept and multiplied once, so that sum (a full
        # (vocab, hidden) pass with a conversion) is updated once per block, not per chunk.
        block = rows if hidden.dtype == torch.float32 else rows * LOSS_BLOCK_CHUNKS
        block = min(block, n_rows)
        logits_buffer = hidden.new_empty(block, vocab)
        # eager softmax runs in float32: a float32 copy of lower-precision logits
        probs_buffer = None
        if not compiled and hidden.dtype != torch.float32:
            probs_buffer = torch.empty((rows, vocab), dtype=torch.float32, device=hidden.device)
        part_buffer = None  # (vocab, hidden) weight-gradient product in the compute dtype
        for first in range(0, n_rows, block):
            span = slice(first, min(first + block, n_rows))
            grads = logits_buffer[: span.stop - first]
            for start in range(first, span.stop, rows):
                h = hidden[start : min(start + rows, span.stop)]
                target = targets[start : start + len(h)].clamp(min=0)[:, None]
                logits = torch.mm(h, weight.t(), out=grads[start - first :][: len(h)])
                if compiled:
                    loss = _fused_softmax_grad_(logits, target)
                else:
                    loss = _softmax_grad_eager_(logits, target, probs_buffer, h, weight)
                total += (loss * valid[start : start + len(h), None]).sum()
            if not (need_hidden or need_weight):
                continue
            h, keep = hidden[span], valid[span, None]
            if mixed:
                # the row scale stays float32 (1/N rounded to bfloat16 would bias every
                # gradient alike); only the matmul operands are in the compute dtype
                row_scale = keep * scale
                if need_hidden:
                    torch.mul(grads @ weight, row_scale, out=grad_hidden[span])
                if need_weight:
                    if part_buffer is None:
                        part_buffer = weight.new_empty(weight.shape)
                    part = torch.mm(grads.t(), (h * row_scale).to(h.dtype), out=part_buffer)
                    grad_weight = part.float() if grad_weight is None else grad_weight.add_(part)
                continue
            row_scale = (keep * scale).to(h.dtype)  # (rows, 1)
            if need_hidden:
                torch.mm(grads, weight, out=grad_hidden[span])
                grad_hidden[span] *= row_scale
            if need_weight and grad_weight is None:
                grad_weight = (grads.t() @ (h * row_scale)).float()  # (vocab, hidden)
            elif need_weight and grad_weight.dtype == h.dtype:
                grad_weight.addmm_(grads.t(), h * row_scale)
            elif need_weight:
                grad_weight += (grads.t() @ (h * row_scale)).float()
        ctx.grads = (grad_hidden, None if grad_weight is None else grad_weight.to(out_weight))
        return total * scale

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        grad_hidden, grad_weight = ctx.grads
        del ctx.grads
        if grad_output.device.type != "cpu" or float(grad_output) != 1.0:
            grad_hidden = None if grad_hidden is None else grad_hidden.mul_(grad_output)
            grad_weight = None if grad_weight is None else grad_weight.mul_(grad_output)
        return grad_hidden, grad_weight, None, None


def _softmax_grad_eager_(
    logits: Tensor, target: Tensor, probs_buffer: Tensor | None, h: Tensor, weight: Tensor
) -> Tensor:
    """Eager ``_softmax_grad_``: row losses ``(rows, 1)``; ``logits`` are overwritten by
    ``softmax - one_hot`` in their dtype, the softmax done in place in float32."""
    picked = logits.gather(1, target).float()
    probs = logits if probs_buffer is None else probs_buffer[: logits.shape[0]]
    torch.softmax(logits, dim=-1, dtype=probs.dtype, out=probs)  # float32 math, one pass
    loss = -probs.gather(1, target).log()
    # A target probability below float32's normal range (a loss of ~87 nats) loses
    # precision; such rows, if any, get an exact log-sum-exp from their logits.
    far = (loss > 60).flatten().nonzero().flatten()
    if len(far):
        loss[far] = torch.logsumexp((h[far] @ weight.t()).float(), -1, True) - picked[far]
    minus_one = torch.full(target.shape, -1.0, device=target.device)
    probs.scatter_add_(1, target, minus_one)
    if probs_buffer is not None:
        logits.copy_(probs)
    return loss


def shifted_targets(labels: Tensor) -> Tensor:
    """Position t predicts label t + 1; the last position predicts nothing (``-100``)."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def causal_lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross entropy of ``(B, T, vocab)`` logits against shifted labels, in float32."""
    targets = shifted_targets(labels).flatten().to(logits.device)
    total = F.cross_entropy(
        logits.flatten(0, 1).float(), targets, ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return total / (targets != IGNORE_INDEX).sum().clamp(min=1)


def causal_lm_output(
    hidden: Tensor,
    head: torch.nn.Linear,
    labels: Tensor | None = None,
    num_logits_to_keep: int | None = None,
    return_logits: bool = True,
) -> CausalLMOutput:
    """The end of every decoder's ``forward``: the LM head on ``(B, T, hidden)`` states and the
    loss, following the CausalLM contract (``return_logits=False`` takes the chunked path)."""
    keep = num_logits_to_keep or 0
    if labels is None:
        return CausalLMOutput(head(hidden[:, -keep:]), None)
    logits = None
    if return_logits or parallel.is_sharded(head.weight):
        # a tensor-parallel head gathers its logits (the chunked path needs the whole weight)
        logits = head(hidden)
        loss = causal_lm_loss(logits, labels)
        logits = logits[:, -keep:] if return_logits else None
    else:
        if head.bias is not None:
            raise ValueError("the chunked loss path supports LM heads without a bias")
        targets = shifted_targets(labels).flatten()
        compiled = head in _COMPILED_HEADS
        loss = linear_cross_entropy(hidden.flatten(0, 1), head.weight, targets, compiled)
    return CausalLMOutput(logits, loss)
