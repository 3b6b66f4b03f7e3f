"""Hand-written autograd functions: RMSNorm, and cross entropy fused with the LM head.

:func:`rms_norm` normalises in float32 as transformers does, with a backward of about half the
kernels autograd would run through the decomposed forward.

``F.cross_entropy(lm_head(h))`` keeps the logits, their float32 log-softmax and, in backward,
a gradient buffer of the same size: three ``(tokens, vocab)`` tensors and as many passes over
them. :func:`linear_cross_entropy` keeps one: the logits, exponentiated in place in forward and
turned into the gradient (``softmax - one_hot``) in place in backward. Past ``max_logits``
elements it keeps none: it goes through the rows in chunks and recomputes each chunk's logits in
backward (one extra LM-head matmul; a large memory saving for a 129k-token vocabulary).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


class _RMSNormFunction(torch.autograd.Function):
    """``weight * (x * rsqrt(mean(x**2) + eps)).to(x.dtype)``; keeps the normalised input."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:  # type: ignore[override]
        h = x.float()
        rstd = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
        normed = (h * rstd).to(x.dtype)
        ctx.save_for_backward(normed, weight, rstd)
        return weight * normed

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        normed, weight, rstd = ctx.saved_tensors
        scaled = grad * normed  # d out / d weight, per element
        grad_weight = scaled.sum(dim=tuple(range(grad.dim() - 1)))
        grad_x = None
        if ctx.needs_input_grad[0]:
            # d/dx of x * rstd(x) against g = grad * weight: rstd * (g - y * mean(g * y)), with
            # y the normalised input; mean(g * y) = (grad * y) @ weight / H.
            mean = (scaled.float() @ weight.float()).unsqueeze(-1) / normed.shape[-1]
            g = (grad * weight).float()
            grad_x = torch.addcmul(g, normed.float(), mean, value=-1).mul_(rstd)
            grad_x = grad_x.to(normed.dtype)
        return grad_x, grad_weight, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _RMSNormFunction.apply(x, weight, eps)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        rows: int,
    ) -> torch.Tensor:
        valid = targets != IGNORE_INDEX
        safe = targets.masked_fill(~valid, 0)
        lse, picked = [], []
        ctx.exp, ctx.sum = None, None
        for start in range(0, hidden.shape[0], rows):
            logits = F.linear(hidden[start : start + rows], weight).float()  # (rows, V)
            picked.append(logits.gather(1, safe[start : start + rows, None]).squeeze(1))
            top = logits.amax(dim=-1, keepdim=True)
            exp = logits.sub_(top).exp_()  # in place: the logits are ours
            total = exp.sum(dim=-1)
            lse.append(top.squeeze(1) + total.log())
            if rows >= hidden.shape[0]:  # one chunk: keep exp(logits - max) for backward
                ctx.exp, ctx.sum = exp, total
        lse_all = torch.cat(lse)
        losses = (lse_all - torch.cat(picked)).masked_fill(~valid, 0.0)
        ctx.save_for_backward(hidden, weight, safe, valid, lse_all)
        ctx.rows = rows
        return losses.sum()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        hidden, weight, safe, valid, lse = ctx.saved_tensors
        scale = valid.float() * grad  # d loss / d row loss
        chunks = range(0, hidden.shape[0], ctx.rows)
        grad_hidden, grad_weight = [], None
        for start in chunks:
            part = slice(start, start + ctx.rows)
            exp, ctx.exp = ctx.exp, None  # used up in place: a second backward recomputes
            if exp is not None:
                probs = exp.mul_((scale / ctx.sum)[:, None])  # softmax * scale, in place
            else:
                logits = F.linear(hidden[part], weight).float()
                probs = logits.sub_(lse[part, None]).exp_().mul_(scale[part, None])
            rows = torch.arange(probs.shape[0], device=probs.device)
            probs[rows, safe[part]] -= scale[part]  # minus the one-hot target
            probs = probs.to(weight.dtype)
            if ctx.needs_input_grad[0]:
                grad_hidden.append(probs @ weight)
            if ctx.needs_input_grad[1]:
                partial = probs.t() @ hidden[part]
                if len(chunks) == 1:
                    grad_weight = partial
                elif grad_weight is None:
                    grad_weight = partial.float()  # accumulate chunks in float32
                else:
                    grad_weight += partial
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        joined = torch.cat(grad_hidden) if grad_hidden else None
        return joined, grad_weight, None, None


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, max_logits: int
) -> torch.Tensor:
    """Summed cross entropy of ``hidden @ weight.T`` (``(N, H)``, ``(V, H)``) against
    ``targets`` ``(N,)`` (``-100`` = no loss), computed in float32."""
    rows = max(1, max_logits // weight.shape[0])
    return _LinearCrossEntropy.apply(hidden, weight, targets, rows)
