"""DeepSeek-V2 / V3 under ``--tensor-parallelism 2`` (gloo processes on CPU).

``T=2`` must follow ``T=1`` (AdamW, fp32): the column/row-parallel layers compute the same
products and only add the row-parallel partial sums in another order. Two things that would
break it are covered by these runs: the rotary key every head shares (its gradient is partial
on each rank until :class:`SharedRopeKey` sums it; without that the curves part at 1e-3), and
the expert-bias updates (``--moe-bias-update-rate``), which must be identical on every rank
because each rank routes the same tokens with its own copy of the router.
"""

from __future__ import annotations

import pytest
import torch

import psyche_deepseek.plugin
from psyche_core.errors import PsycheError
from psyche_core.plugins import Plugins
from psyche_deepseek.model import DeepseekV3ForCausalLM
from psyche_deepseek.presets import V2_PRESETS, V3_PRESETS
from psyche_deepseek.tensor_parallel import tensor_parallel_plan
from tests import layouts
from tests.core.test_trainer import read_metrics
from tests.layouts import losses


@pytest.fixture(scope="module")
def plugins():
    return Plugins.load(entry_points=False, extra=[psyche_deepseek.plugin])


def train(plugins, out, **overrides):
    return layouts.train(plugins, out, overrides.pop("model", "deepseek_v3:tiny"), **overrides)


def test_v3_at_t2_follows_t1_and_saves_a_plain_hf_checkpoint(tmp_path, plugins):
    transformers = pytest.importorskip("transformers")
    flags = {"moe_bias_update_rate": 0.01}
    train(plugins, tmp_path / "t1", **flags)
    saved = tmp_path / "t2" / "model"
    train(plugins, tmp_path / "t2", tensor_parallelism=2, save_path=str(saved), **flags)
    assert losses(tmp_path / "t2") == pytest.approx(losses(tmp_path / "t1"), abs=1e-5, rel=0)
    one, two = (
        read_metrics(tmp_path / "t1" / "metrics.jsonl"),
        read_metrics(tmp_path / "t2" / "metrics.jsonl"),
    )
    assert two[-1]["moe/load_cv"] == pytest.approx(one[-1]["moe/load_cv"], abs=1e-6)
    # the full weights, experts per-expert as transformers writes them; its logits are psyche's
    ours = DeepseekV3ForCausalLM.from_pretrained(saved)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(saved)
    assert ours.model.layers[0].self_attn.q_b_proj.weight.shape == (4 * 48, 64)
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = theirs(ids).logits
        torch.testing.assert_close(ours(ids).logits, expected, rtol=1e-4, atol=1e-4)
    # the trained correction biases were saved (they moved from zero, identically on each rank)
    bias = ours.model.layers[1].mlp.gate.e_score_correction_bias
    assert bias.abs().sum() > 0


def test_v2_full_rank_queries_and_eager_attention_at_t2_follow_t1(tmp_path, plugins):
    flags = {"model": "deepseek_v2:tiny", "attn_implementation": "eager"}
    train(plugins, tmp_path / "t1", **flags)
    train(plugins, tmp_path / "t2", tensor_parallelism=2, **flags)
    assert losses(tmp_path / "t2") == pytest.approx(losses(tmp_path / "t1"), abs=1e-5, rel=0)


def test_a_degree_that_does_not_divide_the_heads_is_one_line(tmp_path, plugins):
    with pytest.raises(PsycheError, match=r"must divide the model's num_attention_heads \(4\)"):
        train(plugins, tmp_path, tensor_parallelism=3, total_steps=2)


# -- the plan itself (no processes) ------------------------------------------------------------


def _config(**fields):
    return DeepseekV3ForCausalLM.parse_config({**V3_PRESETS["tiny"], **fields})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"num_attention_heads": 6}, "num_attention_heads (6)"),
        ({"intermediate_size": 250}, "intermediate_size (250)"),
        ({"moe_intermediate_size": 63}, "moe_intermediate_size x n_shared_experts 1 (63)"),
    ],
)
def test_each_divided_field_is_named(fields, message):
    with pytest.raises(PsycheError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tensor_parallel_plan(_config(**fields), 4)


def test_the_plan_splits_heads_and_mlps_and_keeps_experts_and_latents_whole():
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    plan = tensor_parallel_plan(_config(), 2)
    attn = "model.layers.*.self_attn."
    assert isinstance(plan[attn + "q_b_proj"], ColwiseParallel)
    assert isinstance(plan[attn + "kv_b_proj"], ColwiseParallel)
    assert isinstance(plan[attn + "o_proj"], RowwiseParallel)
    assert type(plan[attn + "kv_a_proj_with_mqa"]).__name__ == "SharedRopeKey"
    # layer 0 is dense, layers 1-2 MoE: their shared experts split, routed experts and router not
    assert isinstance(plan["model.layers.0.mlp.gate_proj"], ColwiseParallel)
    assert isinstance(plan["model.layers.2.mlp.shared_experts.down_proj"], RowwiseParallel)
    assert not [k for k in plan if "experts.gate_up" in k or "q_a_" in k or k.endswith("gate")]
    assert "lm_head" in plan and "model.embed_tokens" in plan
    # V2-Lite's full-rank queries; tied embeddings and an odd vocabulary stay whole
    v2 = tensor_parallel_plan(DeepseekV3ForCausalLM.parse_config(V2_PRESETS["tiny"]), 2)
    assert attn + "q_proj" in v2 and attn + "q_b_proj" not in v2
    assert "lm_head" not in tensor_parallel_plan(_config(tie_word_embeddings=True), 2)
    assert "lm_head" not in tensor_parallel_plan(_config(vocab_size=511), 2)
