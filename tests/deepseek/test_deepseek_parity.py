"""psyche's DeepSeek-V2 / V3 against transformers' on the same weights: logits, loss, gradients."""

from __future__ import annotations

import pytest
import torch

from tests.deepseek.helpers import YARN, hf_and_psyche, tokens

CASES = {
    # DeepSeek-V3 routing: sigmoid scores, noaux_tc with group limit and correction bias.
    "v3-noaux-sigmoid": ("deepseek_v3", "sdpa", {"n_group": 4, "topk_group": 2}),
    "v3-eager": ("deepseek_v3", "eager", {"n_group": 4, "topk_group": 2}),
    "v3-yarn": ("deepseek_v3", "sdpa", {"n_group": 2, "topk_group": 1, "rope_scaling": YARN}),
    "v3-no-q-lora": ("deepseek_v3", "eager", {"q_lora_rank": None, "n_group": 1, "topk_group": 1}),
    "v3-rotate-half": (
        "deepseek_v3",
        "sdpa",
        {"rope_interleave": False, "n_group": 2, "topk_group": 1},
    ),
    "v3-dense-only": (
        "deepseek_v3",
        "sdpa",
        {"first_k_dense_replace": 3, "n_group": 2, "topk_group": 1},
    ),
    "v3-unnormalised-bias-tied": (
        "deepseek_v3",
        "eager",
        {
            "norm_topk_prob": False,
            "attention_bias": True,
            "tie_word_embeddings": True,
            "pad_token_id": 3,
            "n_group": 4,
            "topk_group": 3,
            "num_experts_per_tok": 3,
            "n_shared_experts": 2,
        },
    ),
    # DeepSeek-V2 routing: softmax scores, greedy or group-limited greedy.
    "v2-lite-greedy-softmax": ("deepseek_v2", "sdpa", {"q_lora_rank": None}),
    "v2-group-limited-greedy": (
        "deepseek_v2",
        "eager",
        {"topk_method": "group_limited_greedy", "n_group": 4, "topk_group": 2},
    ),
    "v2-yarn-scaled": (
        "deepseek_v2",
        "sdpa",
        {"rope_scaling": YARN, "routed_scaling_factor": 1.5, "mlp_bias": True},
    ),
}


def _grads(model) -> dict[str, torch.Tensor]:
    return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def _labels(ids: torch.Tensor, ignored: bool) -> torch.Tensor:
    """``ids`` as targets; with ``ignored``, some positions of each row are -100 (a prefix, as
    a prompt, and a tail, as padding)."""
    labels = ids.clone()
    if ignored:
        labels[0, :4] = -100
        labels[1, 9:] = -100
    return labels


def assert_grads_match(mine: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    """Every gradient transformers computes, matched element by element within 1e-4 relative
    plus 1e-5 of that tensor's largest entry. An absolute tolerance alone would pass anything
    for the small gradients here (some tensors' largest entry is ~1e-6)."""
    assert set(mine) == set(theirs)  # in-memory names match too (packed experts included)
    for name, grad in theirs.items():
        scale = grad.abs().max().item()
        torch.testing.assert_close(mine[name], grad, rtol=1e-4, atol=1e-5 * scale, msg=name)


@pytest.mark.parametrize("case", list(CASES))
def test_matches_transformers(case, tmp_path):
    kind, attn, overrides = CASES[case]
    hf, ours = hf_and_psyche(kind, tmp_path, attn, **overrides)
    hf.train()
    ours.train()
    ids = tokens()
    labels = _labels(ids, ignored=True)

    expected = hf(ids, labels=labels)
    expected.loss.backward()
    logits, loss = ours(ids, labels=labels)
    loss.backward()

    torch.testing.assert_close(logits, expected.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(loss, expected.loss, rtol=1e-6, atol=1e-5)
    assert_grads_match(_grads(ours), _grads(hf))


@pytest.mark.parametrize("ignored", [False, True], ids=["all-labels", "ignored-labels"])
@pytest.mark.parametrize("kind", ["deepseek_v3", "deepseek_v2"])
def test_fused_loss_matches_transformers(kind, ignored, tmp_path):
    """return_logits=False (the trainer's path) gives transformers' loss and gradients."""
    hf, ours = hf_and_psyche(kind, tmp_path, "sdpa", n_group=2, topk_group=1)
    ids = tokens(seed=3)
    labels = _labels(ids, ignored)
    expected = hf(ids, labels=labels)
    expected.loss.backward()
    logits, loss = ours(ids, labels=labels, return_logits=False)
    loss.backward()
    assert logits is None
    torch.testing.assert_close(loss, expected.loss, rtol=1e-6, atol=1e-5)
    assert_grads_match(_grads(ours), _grads(hf))
    assert set(_grads(ours)) == {name for name, _ in ours.named_parameters()}


def test_position_ids_and_logits_to_keep_match(tmp_path):
    hf, ours = hf_and_psyche(
        "deepseek_v3", tmp_path, "sdpa", n_group=2, topk_group=1, rope_scaling=YARN
    )
    ids = tokens(batch=2, length=9)
    positions = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12, 13], [0, 2, 4, 6, 8, 10, 12, 14, 16]])
    with torch.no_grad():
        expected = hf(ids, position_ids=positions, logits_to_keep=4).logits
        logits, loss = ours(ids, position_ids=positions, num_logits_to_keep=4)
    assert loss is None
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
