"""--activation-checkpointing and --compile on the Llama (equal results; speed is measured in
benchmarks/)."""

import pytest
import torch

from psyche_core.compiling import compile_regions, compiler_problem
from psyche_core.errors import PsycheError
from psyche_core.testing import check_activation_checkpointing
from psyche_llama.model import LlamaForCausalLM
from tests.llama.helpers import tiny_config, tokens


@pytest.mark.parametrize("mode", ["full", "selective"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_activation_checkpointing_keeps_loss_and_gradients(mode, attn):
    model = LlamaForCausalLM.from_config(tiny_config(), seed=0, attn_implementation=attn)
    check_activation_checkpointing(model, mode, model.model.layers[0])


def test_unknown_checkpointing_mode_is_one_line():
    model = LlamaForCausalLM.from_config(tiny_config())
    with pytest.raises(PsycheError, match="does not support --activation-checkpointing some"):
        model.set_activation_checkpointing("some")


@pytest.mark.slow
@pytest.mark.skipif(compiler_problem(torch.device("cpu")) is not None, reason="no compiler")
def test_compiled_layers_train_like_eager_and_keep_state_dict_keys():
    eager = LlamaForCausalLM.from_config(tiny_config(), seed=0)
    compiled = LlamaForCausalLM.from_config(tiny_config(), seed=0)
    keys = list(compiled.state_dict())
    assert compile_regions(compiled) == 2
    assert list(compiled.state_dict()) == keys
    ids = tokens(2, 16)
    losses = []
    for model in (eager, compiled):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(2):
            loss = model(ids, labels=ids, return_logits=False).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
