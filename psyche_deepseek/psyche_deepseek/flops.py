"""Training FLOPs per token of a DeepSeek model: only the experts a token is routed to count."""

from __future__ import annotations

from typing import Any

from torch import nn

from psyche_core.flops import matmul_parameters


def deepseek_flops_per_token(model: nn.Module, config: Any, sequence_length: int) -> float:
    """``6 *`` (dense matmul weights + per MoE layer the router and ``top_k`` routed experts)
    plus multi-head latent attention's products (``q.k`` over ``qk_head_dim`` and ``p.v`` over
    ``v_head_dim``, forward and backward: ``6 * T * heads * (qk + v)`` per layer).

    The routed experts are packed parameters, not ``nn.Linear``, so ``matmul_parameters``
    already leaves them out; shared experts and dense layers are ``nn.Linear`` and count.
    """
    layers = config.num_hidden_layers
    moe_layers = sum(1 for i in range(layers) if config.is_moe_layer(i))
    hidden = config.hidden_size
    active = 0
    if moe_layers:
        expert = 3 * hidden * config.moe_intermediate_size  # gate, up and down
        router = config.n_routed_experts * hidden
        active = moe_layers * (config.num_experts_per_tok * expert + router)
    heads = config.num_attention_heads
    attention = 6 * layers * sequence_length * heads * (config.qk_head_dim + config.v_head_dim)
    return 6.0 * (matmul_parameters(model) + active) + attention
