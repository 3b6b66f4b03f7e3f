"""Logits, loss and every gradient equal transformers' LlamaForCausalLM on the same weights."""

from __future__ import annotations

import pytest
import torch

from tests.llama.helpers import close, tiny_config, tokens, twins

LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}

VARIANTS = {
    "mha": tiny_config(num_key_value_heads=4),
    "gqa": tiny_config(),
    "mqa": tiny_config(num_key_value_heads=1),
    "llama3-rope": tiny_config(rope_theta=500000.0, rope_scaling=LLAMA3),
    "linear-rope": tiny_config(rope_scaling={"type": "linear", "factor": 4.0}),
    "dynamic-rope": tiny_config(rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
    "tied": tiny_config(tie_word_embeddings=True),
    "bias": tiny_config(attention_bias=True, mlp_bias=True),
    "head-dim": tiny_config(head_dim=32),
    "pad-token": tiny_config(pad_token_id=0),
}


def ignoring_some(input_ids: torch.Tensor) -> torch.Tensor:
    """Labels with -100 (ignored) at the start of one row and the end of another."""
    labels = input_ids.clone()
    labels[0, : input_ids.shape[1] // 3] = -100
    labels[-1, input_ids.shape[1] * 2 // 3 :] = -100
    return labels


def close_gradient(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Relative as well as absolute: a gradient off by 1e-4 of its size fails, however small."""
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-6)
    assert (actual - expected).norm() <= 1e-5 * expected.norm()


def _check_parity(config, attn_implementation, input_ids, return_logits=True, labels=None):
    hf, ours = twins(config, attn_implementation)
    labels = input_ids if labels is None else labels
    expected = hf(input_ids=input_ids, labels=labels)
    expected.loss.backward()
    logits, loss = ours(input_ids, labels=labels, return_logits=return_logits)
    loss.backward()
    if return_logits:
        close(logits, expected.logits)
    else:
        assert logits is None
    close(loss, expected.loss)
    ours_params = dict(ours.named_parameters())
    assert set(ours_params) == {name for name, _ in hf.named_parameters()}
    for name, param in hf.named_parameters():
        close_gradient(ours_params[name].grad, param.grad)


@pytest.mark.parametrize("ignored", [False, True], ids=["all-labels", "ignored-labels"])
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_loss_and_gradients_match_transformers(variant, attn_implementation, ignored):
    input_ids = tokens(2, 24)
    labels = ignoring_some(input_ids) if ignored else None
    _check_parity(VARIANTS[variant], attn_implementation, input_ids, labels=labels)


@pytest.mark.parametrize("ignored", [False, True], ids=["all-labels", "ignored-labels"])
@pytest.mark.parametrize("variant", ["gqa", "tied", "bias"])
def test_chunked_loss_matches_transformers(variant, ignored, monkeypatch):
    """return_logits=False takes the chunked head + cross entropy; several chunks here."""
    import psyche_core.losses as loss_module

    monkeypatch.setattr(loss_module, "LOSS_CHUNK_ELEMENTS", 7 * 96)  # 7 rows per chunk
    input_ids = tokens(2, 24)
    labels = ignoring_some(input_ids) if ignored else None
    _check_parity(VARIANTS[variant], "sdpa", input_ids, return_logits=False, labels=labels)


def test_chunked_loss_under_no_grad_skips_gradient_work():
    hf, ours = twins(VARIANTS["gqa"])
    input_ids = tokens(2, 16)
    with torch.no_grad():
        expected = hf(input_ids=input_ids, labels=input_ids).loss
        logits, loss = ours(input_ids, labels=input_ids, return_logits=False)
    assert logits is None and not loss.requires_grad
    close(loss, expected)


def test_dynamic_rope_past_the_trained_context_matches_transformers():
    """Dynamic NTK scaling only changes anything beyond max_position_embeddings."""
    config = tiny_config(
        max_position_embeddings=16, rope_scaling={"type": "dynamic", "factor": 2.0}
    )
    _check_parity(config, "sdpa", tokens(2, 40))


def test_llama3_rope_past_original_context_matches_transformers():
    _check_parity(VARIANTS["llama3-rope"], "eager", tokens(1, 60))


def test_position_ids_match_transformers():
    hf, ours = twins(tiny_config())
    input_ids = tokens(2, 12)
    position_ids = torch.arange(12).repeat(2, 1) + torch.tensor([[3], [17]])
    with torch.no_grad():
        expected = hf(input_ids=input_ids, position_ids=position_ids).logits
        logits, _ = ours(input_ids, position_ids=position_ids)
    close(logits, expected)


def test_labels_with_ignored_positions_match_transformers():
    hf, ours = twins(tiny_config())
    input_ids = tokens(2, 16)
    labels = input_ids.clone()
    labels[0, :5] = -100
    labels[1, 9:] = -100
    expected = hf(input_ids=input_ids, labels=labels).loss
    for return_logits in (True, False):
        close(ours(input_ids, labels=labels, return_logits=return_logits).loss, expected)
