from psyche_core.testing import check_causal_lm
from psyche_gru.model import GruForCausalLM


def test_gru_passes_the_psyche_conformance_kit(tmp_path):
    check_causal_lm(GruForCausalLM, {"vocab_size": 64, "hidden_size": 32}, tmp_path)
