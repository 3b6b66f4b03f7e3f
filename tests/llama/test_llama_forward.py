"""The CausalLM forward contract: packing, logits to keep, loss scale, errors, init."""

from __future__ import annotations

import re

import pytest
import torch

from psyche_core.errors import InvalidInputError, PsycheError
from psyche_core.losses import linear_cross_entropy
from psyche_llama.model import LlamaForCausalLM
from tests.llama.helpers import close, hf_logits, tiny_config, tokens, twins


@pytest.fixture(scope="module")
def pair():
    return twins(tiny_config())


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_packed_documents_get_the_logits_they_get_alone(pair, attn_implementation):
    hf, ours = pair
    ours.set_attn_implementation(attn_implementation)
    docs = [tokens(1, n, seed=n) for n in (5, 11, 16, 7, 9)]
    rows = [torch.cat(docs[:2], 1), docs[2], torch.cat(docs[3:], 1)]
    input_ids = torch.cat(rows)  # (3, 16)
    with torch.no_grad():
        logits, _ = ours(input_ids, sequence_lengths=[[5, 11], [16], [7, 9]])
        single, _ = ours(input_ids, sequence_lengths=[[16]] * 3)
        plain, _ = ours(input_ids)
    close(single, plain)
    offsets = [(0, 0), (0, 5), (1, 0), (2, 0), (2, 7)]
    for doc, (row, start) in zip(docs, offsets):
        alone = hf_logits(hf, doc)[0]
        close(logits[row, start : start + doc.shape[1]], alone)
    ours.set_attn_implementation("sdpa")


def test_packed_loss_equals_the_loss_over_the_separate_documents(pair):
    _, ours = pair
    a, b = tokens(1, 6, seed=1), tokens(1, 10, seed=2)
    packed = torch.cat([a, b], 1)
    labels = packed.clone()
    labels[0, 6] = -100  # the last token of the first document predicts nothing across
    loss = ours(packed, labels=labels, sequence_lengths=[[6, 10]], return_logits=False).loss
    sum_a = ours(a, labels=a).loss * 5
    sum_b = ours(b, labels=b).loss * 9
    close(loss, (sum_a + sum_b) / 14)


def test_explicit_position_ids_override_the_per_document_restart(pair):
    _, ours = pair
    input_ids = tokens(1, 12)
    spread = torch.arange(8)[None] * 2
    positions = torch.cat([torch.arange(4)[None], spread], 1)
    with torch.no_grad():
        restarted, _ = ours(input_ids, sequence_lengths=[[4, 8]])
        given, _ = ours(input_ids, sequence_lengths=[[4, 8]], position_ids=positions)
        doc2_alone, _ = ours(input_ids[:, 4:])
        doc2_spread, _ = ours(input_ids[:, 4:], position_ids=spread)
    close(restarted[:, 4:], doc2_alone)
    close(given[:, 4:], doc2_spread)
    assert not torch.allclose(doc2_spread, doc2_alone, atol=1e-3)


def test_num_logits_to_keep(pair):
    _, ours = pair
    input_ids = tokens(2, 10)
    with torch.no_grad():
        full, _ = ours(input_ids)
        last, _ = ours(input_ids, num_logits_to_keep=1)
        three, loss = ours(input_ids, labels=input_ids, num_logits_to_keep=3)
        _, full_loss = ours(input_ids, labels=input_ids)
    assert last.shape == (2, 1, 96) and three.shape == (2, 3, 96)
    close(last, full[:, -1:])
    close(three, full[:, -3:])
    close(loss, full_loss)  # the loss still covers every position


def test_loss_is_float32_mean_and_zero_without_targets(pair):
    _, ours = pair
    input_ids = tokens(2, 8)
    loss = ours(input_ids, labels=input_ids).loss
    assert loss.dtype == torch.float32 and loss.dim() == 0
    nothing = torch.full_like(input_ids, -100)
    for return_logits in (True, False):
        assert ours(input_ids, labels=nothing, return_logits=return_logits).loss.item() == 0.0


def test_chunked_loss_is_exact_when_a_target_probability_underflows():
    hidden = torch.tensor([[30.0, 0.0], [0.0, 1.0]], requires_grad=True)
    weight = torch.tensor([[4.0, 0.0], [-4.0, 0.0], [0.0, 1.0]], requires_grad=True)
    targets = torch.tensor([1, 2])
    loss = linear_cross_entropy(hidden, weight, targets)
    expected = torch.nn.functional.cross_entropy(hidden @ weight.t(), targets)
    close(loss, expected)
    assert loss.item() > 100  # exp(-240) underflows float32; the exact path was taken
    (grad_h, grad_w) = torch.autograd.grad(loss, (hidden, weight))
    (want_h, want_w) = torch.autograd.grad(expected, (hidden, weight))
    close(grad_h, want_h)
    close(grad_w, want_w)


def test_bad_inputs_raise_clear_errors(pair):
    _, ours = pair
    good = tokens(1, 8)
    cases = [
        (dict(input_ids=torch.tensor([[1, 96]])), "token id 96 is outside the vocabulary"),
        (dict(input_ids=torch.tensor([[-1, 3]])), "token id -1 is outside the vocabulary"),
        (dict(input_ids=tokens(1, 65)), "longer than the model's context"),
        (dict(input_ids=good[0]), "must be (batch, seq_len)"),
        (dict(input_ids=good, labels=good[:, :4]), "labels shape"),
        (dict(input_ids=good, labels=good * 0 + 96), "label 96 is outside"),
        (dict(input_ids=good, sequence_lengths=[[3, 4]]), "summing to 8"),
        (dict(input_ids=good, sequence_lengths=[[4, 4], [8]]), "2 rows for a batch of 1"),
        (dict(input_ids=good, position_ids=torch.arange(7)), "position_ids shape"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InvalidInputError, match=re.escape(message)):
            ours(**kwargs)
    assert issubclass(InvalidInputError, ValueError)


def test_unknown_attention_implementation_is_an_error(pair):
    with pytest.raises(PsycheError, match="choose from sdpa, eager"):
        pair[1].set_attn_implementation("flash_attention_2")


def test_from_config_is_seeded():
    config = tiny_config(pad_token_id=0)
    a = LlamaForCausalLM.from_config(config, seed=7).state_dict()
    b = LlamaForCausalLM.from_config(config, seed=7).state_dict()
    c = LlamaForCausalLM.from_config(config, seed=8).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(
        a["model.layers.0.self_attn.q_proj.weight"], c["model.layers.0.self_attn.q_proj.weight"]
    )


def test_init_follows_transformers():
    config = tiny_config(pad_token_id=0, attention_bias=True, initializer_range=0.05)
    model = LlamaForCausalLM.from_config(config, seed=0)
    state = model.state_dict()
    std = state["model.layers.0.mlp.up_proj.weight"].std().item()
    assert 0.045 < std < 0.055
    assert torch.all(state["model.layers.1.self_attn.q_proj.bias"] == 0)
    assert torch.all(state["model.norm.weight"] == 1)
    assert torch.all(state["model.embed_tokens.weight"][0] == 0)  # the padding row
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32
    assert not any("inv_freq" in key for key in state)  # a non-persistent buffer


def test_tied_embeddings_share_one_parameter():
    model = LlamaForCausalLM.from_config(tiny_config(tie_word_embeddings=True), seed=0)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert "lm_head.weight" not in model.hf_state_dict()


def test_rope_frequencies_stay_float32_in_bfloat16():
    model = LlamaForCausalLM.from_config(tiny_config(), seed=0, dtype="bfloat16")
    inv_freq = model.model.rotary_emb.inv_freq
    assert inv_freq.dtype == torch.float32
    reference = LlamaForCausalLM.from_config(tiny_config(), seed=0).model.rotary_emb.inv_freq
    assert torch.equal(inv_freq, reference)
    input_ids = tokens(1, 8)
    logits, loss = model(input_ids, labels=input_ids, return_logits=False)
    assert logits is None and loss.dtype == torch.float32 and torch.isfinite(loss)


def test_config_errors():
    with pytest.raises(PsycheError, match="'yarn' is not supported; supported: default, linear"):
        LlamaForCausalLM.from_config(tiny_config(rope_scaling={"rope_type": "yarn", "factor": 2}))
    with pytest.raises(PsycheError, match="linear rope scaling needs factor"):
        LlamaForCausalLM.from_config(tiny_config(rope_scaling={"type": "linear"}))
    with pytest.raises(PsycheError, match="multiple of num_key_value_heads"):
        LlamaForCausalLM.from_config(tiny_config(num_key_value_heads=3))
    with pytest.raises(PsycheError, match="hidden_act 'gelu'"):
        LlamaForCausalLM.from_config(tiny_config(hidden_act="gelu"))


def test_chunked_loss_in_bfloat16_tracks_the_plain_loss(monkeypatch):
    import psyche_core.losses as loss_module

    monkeypatch.setattr(loss_module, "LOSS_CHUNK_ELEMENTS", 5 * 96)  # several chunks
    model = LlamaForCausalLM.from_config(tiny_config(), seed=0, dtype="bfloat16")
    input_ids = tokens(2, 16)
    results = []
    for return_logits in (True, False):
        model.zero_grad()
        loss = model(input_ids, labels=input_ids, return_logits=return_logits).loss
        loss.backward()
        assert {p.grad.dtype for p in model.parameters()} == {torch.bfloat16}
        grads = {n: p.grad.float() for n, p in model.named_parameters()}
        results.append((loss, grads))
    (plain, plain_grads), (chunked, chunked_grads) = results
    assert chunked.dtype == torch.float32
    close(chunked, plain, atol=2e-2)
    for name, grad in plain_grads.items():
        close(chunked_grads[name], grad, atol=2e-2 * grad.abs().max().item() + 1e-6)
