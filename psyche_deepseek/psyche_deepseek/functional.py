"""A hand-written RMSNorm autograd function.

:func:`rms_norm` normalises in float32 as transformers does, with a backward of about half the
kernels autograd would run through the decomposed forward. (The LM head fused with the cross
entropy is shared with the other models: ``psyche_core.losses``.)
"""

from __future__ import annotations

from typing import Any

import torch


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
