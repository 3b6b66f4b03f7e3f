"""Training-step benchmark: psyche-llama against the strongest transformers baselines on CPU.

The ``20m`` preset, batch 4 x 256 by default; the sides, rounds and memory measurement are
``_train_step.py``'s (see its docstring).

    python benchmarks/llama_train_step.py --save
    python benchmarks/llama_train_step.py --rounds 4 --warmup 2 --sides psyche,psyche-bf16-mixed
    python benchmarks/llama_train_step.py --sides "" --memory psyche,psyche-ckpt-full \\
        --batch 8 --seq-len 2048 --name llama_train_step_checkpointing_8x2048 --save
"""

from __future__ import annotations

from typing import Any

import _train_step

PRESET = "20m"


def make_checkpoint(directory: str) -> int:
    from psyche_llama.model import LlamaForCausalLM
    from psyche_llama.presets import PRESETS

    model = LlamaForCausalLM.from_config(PRESETS[PRESET], seed=0)
    model.save_pretrained(directory)
    return model.num_parameters()


def load_psyche(checkpoint: str) -> Any:
    import torch

    from psyche_llama.model import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)


BENCH = _train_step.Bench(
    model=f"llama:{PRESET}",
    make_checkpoint=make_checkpoint,
    load_psyche=load_psyche,
    name="llama_train_step_speed",
    doc=__doc__,
)

if __name__ == "__main__":
    _train_step.main(BENCH)
