"""Every model_type the hf plugin claims: builds, trains, round-trips, and handles packed
documents and attention implementations as docs/models/hf.md says."""

from __future__ import annotations

import pytest
import torch

from psyche_core.errors import PsycheError
from psyche_hf.model import HfCausalLM
from psyche_hf.presets import TESTED_MODEL_TYPES
from tests.hf.helpers import TINY, tokens

pytest.importorskip("transformers")

#: transformers 5.24 builds these masks without position_ids: packed documents are an error
NO_PACKING = {"opt", "bloom"}
#: the one attention implementation transformers gives these
ONLY_ATTENTION = {"gemma2": "eager", "falcon": "sdpa", "bloom": "eager"}
LENGTHS = [[5, 7, 4], [16]]


def test_every_claimed_model_type_is_tested():
    assert set(TESTED_MODEL_TYPES) <= set(TINY)


@pytest.mark.parametrize("arch", TESTED_MODEL_TYPES)
def test_trains_and_round_trips(arch, tmp_path):
    model = HfCausalLM.from_config(TINY[arch], seed=0)
    assert model.model_type == arch
    ids = tokens(2, 16)
    loss = model(ids, labels=ids, return_logits=False).loss
    loss.backward()
    assert torch.isfinite(loss) and all(
        p.grad is not None for n, p in model.named_parameters() if "router" not in n
    )
    model.save_pretrained(tmp_path)
    loaded = HfCausalLM.from_pretrained(tmp_path).eval()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", TESTED_MODEL_TYPES)
def test_packed_documents_and_attention(arch, attn):
    model = HfCausalLM.from_config(TINY[arch], seed=0).eval()
    if ONLY_ATTENTION.get(arch, attn) != attn:
        with pytest.raises(PsycheError, match=f"attention.*{ONLY_ATTENTION[arch]}"):
            model.set_attn_implementation(attn)
        return
    model.set_attn_implementation(attn)
    ids = tokens(2, 16, seed=1)
    if arch in NO_PACKING:
        with pytest.raises(PsycheError, match=f"model_type {arch}\\) cannot keep packed"):
            model(ids, sequence_lengths=LENGTHS)
        return
    with torch.no_grad():
        packed = model(ids, sequence_lengths=LENGTHS).logits
        alone = model(ids[:1, 5:12]).logits
    torch.testing.assert_close(packed[:1, 5:12], alone, rtol=1e-4, atol=1e-5)
