"""--activation-checkpointing and FLOPs per token on DeepSeek-V3."""

import pytest
import torch

from psyche_core.comm import LocalGroup
from psyche_core.compiling import compile_regions, compiler_problem
from psyche_core.options import Options
from psyche_core.testing import check_activation_checkpointing
from psyche_deepseek import moe as moe_module
from psyche_deepseek.model import DeepseekV3ForCausalLM
from psyche_deepseek.presets import V3_PRESETS

TINY = dict(V3_PRESETS["tiny"])


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_activation_checkpointing_keeps_loss_and_gradients(mode):
    model = DeepseekV3ForCausalLM.from_config(TINY, seed=1)
    check_activation_checkpointing(model, mode, model.model.layers[-1])


def test_recomputed_routing_leaves_the_bias_update_and_load_metrics_unchanged():
    ids = torch.randint(0, TINY["vocab_size"], (4, 32), generator=torch.Generator().manual_seed(0))
    results = []
    for mode in ("none", "full"):
        model = DeepseekV3ForCausalLM.from_config(
            TINY, seed=1, options=Options({"moe_bias_update_rate": 0.01})
        )
        model.set_activation_checkpointing(mode)
        model.train()
        model(ids, labels=ids, return_logits=False).loss.backward()
        metrics = model.step_end(LocalGroup(1).communicator(0))
        biases = [r.e_score_correction_bias.clone() for _, r in model.moe_routers()]
        results.append((metrics, biases))
    (plain_metrics, plain_biases), (metrics, biases) = results
    assert metrics == pytest.approx(plain_metrics)
    assert all(torch.equal(a, b) for a, b in zip(biases, plain_biases))


def test_flops_per_token_counts_only_active_experts():
    model = DeepseekV3ForCausalLM.from_config(TINY)
    config = model.config
    wider = DeepseekV3ForCausalLM.from_config(
        {**TINY, "n_routed_experts": 2 * TINY["n_routed_experts"]}
    )
    # more experts add parameters but, at the same top-k, only router FLOPs
    moe_layers = sum(config.is_moe_layer(i) for i in range(config.num_hidden_layers))
    extra_router = 6 * moe_layers * config.n_routed_experts * config.hidden_size
    assert wider.num_parameters() > model.num_parameters()
    assert wider.flops_per_token(64) - model.flops_per_token(64) == extra_router
    more_active = DeepseekV3ForCausalLM.from_config(
        {**TINY, "num_experts_per_tok": TINY["num_experts_per_tok"] + 1}
    )
    expert = 3 * config.hidden_size * config.moe_intermediate_size
    assert more_active.flops_per_token(64) - model.flops_per_token(64) == 6 * moe_layers * expert


@pytest.mark.slow
@pytest.mark.skipif(compiler_problem(torch.device("cpu")) is not None, reason="no compiler")
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "bf16-true"])
def test_compiled_layers_train_like_eager_and_keep_state_dict_keys(precision, monkeypatch):
    """--compile on DeepSeek-V3: dense and MoE layers compiled, same losses, same state-dict
    keys, and no recompiles once the first step has compiled. Float32 experts (every precision
    on the CPU) run their grouped matmuls eager between graphs; bfloat16 experts (bf16-true
    off the CPU, tested here by taking the CPU off the float32 list) are traced whole."""
    from torch._dynamo.utils import counters

    if precision == "bf16-true":
        monkeypatch.setattr(moe_module, "FLOAT32_EXPERTS", set())

    ids = torch.randint(0, TINY["vocab_size"], (2, 16), generator=torch.Generator().manual_seed(0))
    dtype = torch.bfloat16 if precision == "bf16-true" else torch.float32
    losses = []
    for compiled in (False, True):
        torch._dynamo.reset()
        counters.clear()
        model = DeepseekV3ForCausalLM.from_config(TINY, seed=1, dtype=dtype)
        keys = list(model.state_dict())
        if compiled:
            assert compile_regions(model) == TINY["num_hidden_layers"]
        assert list(model.state_dict()) == keys
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for step in range(3):
            if step == 1:
                graphs = counters["stats"]["unique_graphs"]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
                loss = model(ids, labels=ids, return_logits=False).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            model.step_end(LocalGroup(1).communicator(0))
        losses.append(loss.item())
        assert counters["stats"]["unique_graphs"] == graphs
        if compiled:
            breaks = sum(counters["graph_break"].values())
            traced = precision == "bf16-true"
            assert (breaks == 0) if traced else (breaks > 0), dict(counters["graph_break"])
    assert losses[1] == pytest.approx(losses[0], rel=1e-4 if precision == "32-true" else 2e-2)
