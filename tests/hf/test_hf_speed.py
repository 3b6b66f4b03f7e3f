"""--activation-checkpointing through transformers' gradient checkpointing; regional compile
finds the decoder layers."""

import pytest

from psyche_core.compiling import repeated_blocks
from psyche_core.errors import PsycheError
from psyche_core.testing import check_activation_checkpointing
from psyche_hf.model import HfCausalLM
from tests.hf.helpers import TINY


@pytest.mark.parametrize("arch", ["qwen2", "mixtral"])
def test_full_activation_checkpointing_keeps_loss_and_gradients(arch):
    model = HfCausalLM.from_config(TINY[arch], seed=1)
    check_activation_checkpointing(model, "full", model.model.layers[0])
    assert not any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


def test_selective_is_refused_in_one_line():
    model = HfCausalLM.from_config(TINY["qwen2"], seed=1)
    with pytest.raises(PsycheError, match="choose from none, full"):
        model.set_activation_checkpointing("selective")


def test_repeated_blocks_are_the_transformers_decoder_layers():
    model = HfCausalLM.from_config(TINY["qwen2"], seed=1)
    assert repeated_blocks(model) == list(model.model.layers)
