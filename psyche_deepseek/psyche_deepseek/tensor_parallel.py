"""DeepSeek-V2 / V3 under ``--tensor-parallelism``: the DTensor plan and its one extra style.

The split follows Megatron (and transformers' DeepSeek ``base_model_tp_plan``):

- **MLA.** ``q_b_proj`` (or V2-Lite's ``q_proj``) and ``kv_b_proj`` are column-parallel by
  heads: each rank expands the shared latents into its own query, key and value heads.
  ``o_proj`` is row-parallel (partial sums all-reduced). The low-rank down-projections
  ``q_a_proj`` and ``kv_a_proj_with_mqa`` and the norms on their outputs stay **replicated**:
  their outputs (the latents, ``q_lora_rank`` and ``kv_lora_rank`` wide) are what every head
  reads, and they are norm-ed over their whole width, so splitting them would need a gather
  before the norm and saves little (they are small matrices; MLA's point is that the latents
  are narrow).
- **The shared rotary key.** ``kv_a_proj_with_mqa`` also emits ``k_rot``, one rotary key that
  every head uses. Each rank uses it only for its own heads, so its gradient there is a partial
  sum: :class:`SharedRopeKey` sums it over the tensor-parallel ranks in the backward pass
  (transformers' ``mla_kv_a_proj`` style does the same). The latent part already gets its whole
  gradient from ``kv_b_proj``'s column-parallel backward.
- **Dense MLPs and shared experts** (``DeepseekV3MLP``): gate / up column-parallel, down
  row-parallel.
- **Routed experts stay replicated.** They are packed 3-D parameters
  (``gate_up_proj`` ``(E, 2I, H)``, ``down_proj`` ``(E, H, I)``) run by one grouped matmul.
  Splitting their inner size would need gate and up interleaved per rank (``Shard(1)`` of the
  packed ``[gate; up]`` gives one rank all gates) and DTensor-aware grouped matmuls; expert
  parallelism needs a token dispatch (all-to-all, or masked slots plus an all-reduce) inside
  the grouped forward. Both change the experts' forward; replicated, every rank computes every
  expert on the same tokens (redundant work, identical results) and the forward is untouched.
- **The router and its correction bias** stay replicated. Every rank routes the same (all-
  reduced) hidden states, so it counts the same expert loads; the trainer's ``step_end`` sums
  the loads over every rank, so each applies the identical bias update.
- **Embedding and LM head** split by vocabulary, as Llama's plan: the embedding by rows, the
  head by columns with its logits gathered. Tied embeddings stay whole.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from psyche_core import parallel
from psyche_deepseek.config import DeepseekV2Config


def _rope_key_style(rope_dim: int) -> Any:
    from torch.distributed.tensor import DTensor, Partial, Replicate
    from torch.distributed.tensor.parallel import ParallelStyle

    class SharedRopeKey(ParallelStyle):
        """Keep ``kv_a_proj_with_mqa`` replicated; sum the gradient of its last ``rope_dim``
        outputs (the rotary key every head shares) over the tensor-parallel ranks.

        Forward: the identity. The rotary key goes through a replicated DTensor whose gradient
        is declared partial (``to_local(grad_placements=[Partial()])``), so DTensor's own
        backward all-reduces it."""

        def _apply(self, module: nn.Module, device_mesh: Any) -> nn.Module:
            def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
                latent, k_rot = output.split([output.shape[-1] - rope_dim, rope_dim], dim=-1)
                shared = DTensor.from_local(k_rot, device_mesh, [Replicate()], run_check=False)
                k_rot = shared.to_local(grad_placements=[Partial()])
                return torch.cat([latent, k_rot], dim=-1)

            module.register_forward_hook(hook)
            return module

    return SharedRopeKey()


def tensor_parallel_plan(config: DeepseekV2Config, degree: int) -> dict[str, Any]:
    """The ``parallelize_module`` plan of a DeepSeek causal LM at ``degree`` ranks."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    moe = [config.is_moe_layer(i) for i in range(config.num_hidden_layers)]
    shared = config.n_shared_experts or 0
    sizes = {"num_attention_heads": config.num_attention_heads}
    if not all(moe):
        sizes["intermediate_size"] = config.intermediate_size
    if shared and any(moe):  # the shared experts are one MLP this wide
        width = config.moe_intermediate_size * shared
        sizes[f"moe_intermediate_size x n_shared_experts {shared}"] = width
    parallel.require_divisible(degree, sizes)
    attn = "model.layers.*.self_attn."
    plan: dict[str, Any] = {
        attn + ("q_proj" if config.q_lora_rank is None else "q_b_proj"): ColwiseParallel(),
        attn + "kv_a_proj_with_mqa": _rope_key_style(config.qk_rope_head_dim),
        attn + "kv_b_proj": ColwiseParallel(),
        attn + "o_proj": RowwiseParallel(),
    }

    def mlp(prefix: str) -> None:
        plan[prefix + "gate_proj"] = ColwiseParallel()
        plan[prefix + "up_proj"] = ColwiseParallel()
        plan[prefix + "down_proj"] = RowwiseParallel()

    # per layer: a dense layer's MLP and a MoE layer's shared experts sit at different paths
    for i, is_moe in enumerate(moe):
        if not is_moe:
            mlp(f"model.layers.{i}.mlp.")
        elif shared:
            mlp(f"model.layers.{i}.mlp.shared_experts.")
    return {**plan, **parallel.vocab_parallel_plan(config, degree)}
