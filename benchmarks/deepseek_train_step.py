"""Training-step benchmark: psyche-deepseek against the strongest transformers baselines on CPU.

A tiny DeepSeek-V3 (hidden 256, 4 layers, the first dense, then 8 routed experts top-2 and one
shared; ~5.9M parameters), batch 4 x 256 by default; the sides, rounds and memory measurement
are ``_train_step.py``'s (see its docstring). psyche's side ends each step with the model's
``step_end`` (the router's load-balancing bias update), as its trainer does.

    python benchmarks/deepseek_train_step.py --save
    python benchmarks/deepseek_train_step.py --rounds 4 --sides psyche,hf-compile --memory ""
"""

from __future__ import annotations

from typing import Any

import _train_step

CONFIG: dict[str, Any] = {
    "vocab_size": 4096,
    "hidden_size": 256,
    "intermediate_size": 768,
    "moe_intermediate_size": 128,
    "num_hidden_layers": 4,
    "first_k_dense_replace": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "q_lora_rank": 128,
    "kv_lora_rank": 64,
    "qk_nope_head_dim": 32,
    "qk_rope_head_dim": 16,
    "v_head_dim": 32,
    "n_routed_experts": 8,
    "num_experts_per_tok": 2,
    "n_shared_experts": 1,
    "n_group": 4,
    "topk_group": 2,
    "routed_scaling_factor": 2.5,
    "norm_topk_prob": True,
    "max_position_embeddings": 1024,
    "rope_theta": 10000.0,
}


def make_checkpoint(directory: str) -> int:
    import torch

    from psyche_deepseek.model import DeepseekV3ForCausalLM

    model = DeepseekV3ForCausalLM.from_config(CONFIG, seed=0)
    with torch.no_grad():  # a trained-looking router: a non-zero correction bias
        for _, router in model.moe_routers():
            router.e_score_correction_bias.normal_(0, 0.01)
    model.save_pretrained(directory)
    return model.num_parameters()


def load_psyche(checkpoint: str) -> Any:
    import torch

    from psyche_deepseek.model import DeepseekV3ForCausalLM

    return DeepseekV3ForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)


BENCH = _train_step.Bench(
    model="deepseek_v3 (tiny)",
    make_checkpoint=make_checkpoint,
    load_psyche=load_psyche,
    name="deepseek_train_step_speed",
    doc=__doc__,
)

if __name__ == "__main__":
    _train_step.main(BENCH)
