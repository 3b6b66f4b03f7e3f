"""psyche-hf under ``--tensor-parallelism``: transformers' own plan, mapped to DTensor styles.

A tiny random Llama-architecture config goes through ``--model hf --hf-config``: at ``T=2``
it follows ``T=1`` within 1e-5 (AdamW, fp32; only row-parallel partial sums are added in
another order), and the model it saves is an ordinary transformers checkpoint whose logits are
the ``T=1`` run's (full weights gathered by core, handed to transformers' ``save_pretrained``).
"""

from __future__ import annotations

import json

import pytest
import torch

from psyche_core import run
from psyche_core.errors import PsycheError
from psyche_hf.model import HfCausalLM
from tests.hf.helpers import TINY, load_plugins, losses, options

transformers = pytest.importorskip("transformers")

#: Llama architecture, vocab 512 (the sample data), untied: the vocabulary is split too
LLAMA = {**TINY["llama"], "vocab_size": 512, "max_position_embeddings": 128}
LLAMA["tie_word_embeddings"] = False


@pytest.fixture(scope="module")
def plugins():
    return load_plugins()


def test_llama_config_at_t2_follows_t1_and_saves_a_plain_hf_checkpoint(plugins, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(LLAMA))
    flags = {"model": "hf", "hf_config": str(config)}
    for degree in (1, 2):
        out = tmp_path / f"t{degree}"
        run.train(
            options(plugins, out, tensor_parallelism=degree, save_path=str(out / "model"), **flags),
            plugins,
        )
    assert losses(tmp_path / "t2") == pytest.approx(losses(tmp_path / "t1"), abs=1e-5, rel=0)
    one, info = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "t1" / "model", output_loading_info=True
    )
    two, info = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "t2" / "model", output_loading_info=True
    )
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"])
    assert two.model.layers[0].self_attn.q_proj.weight.shape == (32, 32)  # whole, not a shard
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        # AdamW's normalised steps turn 1e-7 gradient differences into ~1e-5 weight ones
        torch.testing.assert_close(two(ids).logits, one(ids).logits, rtol=0, atol=1e-4)


# -- the plan itself (no processes) ------------------------------------------------------------


def test_transformers_plan_maps_to_column_and_row_parallel_styles():
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    plan = HfCausalLM.from_config(LLAMA).tensor_parallel_plan(2)
    layer = "model.layers.*."
    assert {k: type(v) for k, v in plan.items()} == {
        **{layer + f"self_attn.{p}_proj": ColwiseParallel for p in "qkv"},
        layer + "self_attn.o_proj": RowwiseParallel,
        layer + "mlp.gate_proj": ColwiseParallel,
        layer + "mlp.up_proj": ColwiseParallel,
        layer + "mlp.down_proj": RowwiseParallel,
        "model.embed_tokens": RowwiseParallel,
        "lm_head": ColwiseParallel,
    }
    assert plan["lm_head"].output_layouts == (Replicate(),)  # logits gathered for the loss
    # tied embeddings (qwen2-tiny) keep the vocabulary whole: one weight, one layout
    tied = HfCausalLM.from_config(TINY["qwen2"]).tensor_parallel_plan(2)
    assert "lm_head" not in tied and "model.embed_tokens" not in tied
    assert "model.layers.*.self_attn.q_proj" in tied


def test_no_plan_unknown_styles_and_undivided_fields():
    assert HfCausalLM.from_config(TINY["gpt2"]).tensor_parallel_plan(2) is None
    with pytest.raises(PsycheError, match="plan uses moe_tp_experts, packed_colwise, which psyche"):
        HfCausalLM.from_config(TINY["mixtral"]).tensor_parallel_plan(2)
    model = HfCausalLM.from_config(LLAMA)
    with pytest.raises(PsycheError, match=r"must divide the model's num_attention_heads \(4\)"):
        model.tensor_parallel_plan(3)
    with pytest.raises(PsycheError, match=r"must divide the model's num_key_value_heads \(2\)"):
        model.tensor_parallel_plan(4)
