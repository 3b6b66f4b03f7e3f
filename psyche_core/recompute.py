"""``--activation-checkpointing``: recompute a decoder layer's activations in backward.

``full`` keeps only each layer's input and recomputes the whole layer; ``selective`` keeps the
outputs of the expensive ops (matmuls and attention) and recomputes the cheap elementwise rest
(norms, activations, rotary), which hold most of the memory for a fraction of the FLOPs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)

_ATTENTION_KERNELS = (
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
)
# Outputs worth keeping: recomputing them costs real FLOPs.
_SAVED_OPS = frozenset(
    [torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default]
    + [getattr(torch.ops.aten, k).default for k in _ATTENTION_KERNELS if hasattr(torch.ops.aten, k)]
)


def _keep_matmuls(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    if op in _SAVED_OPS:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def run_layer(layer: Callable[..., Any], mode: str, *args: Any) -> Any:
    """``layer(*args)``, with its activations recomputed in backward as ``mode`` says
    (``none``, ``full`` or ``selective``); a plain call when no gradient is being taken."""
    if mode == "none" or not torch.is_grad_enabled():
        return layer(*args)
    if mode == "full":
        return checkpoint(layer, *args, use_reentrant=False)
    context = functools.partial(create_selective_checkpoint_contexts, _keep_matmuls)
    return checkpoint(layer, *args, use_reentrant=False, context_fn=context)
