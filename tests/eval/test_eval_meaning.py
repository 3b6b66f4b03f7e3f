"""The scores mean something: a model trained to memorise a task's answers scores 1.0 on it, a
random one scores near chance; and ``evaluate`` can run between training steps."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("lm_eval")

from lm_eval.tasks import TaskManager
from psyche_eval.harness import evaluate, load_tasks

from psyche_llama.model import LlamaForCausalLM
from tests.eval.helpers import COLORS, color_docs, llama_config, train_tokenizer, write_tasks


def memorise(model: LlamaForCausalLM, tokenizer, steps: int = 40) -> float:
    """Train on ``item qN is <answer></s>`` for every document; returns the final loss."""
    texts = [f"{d['question']} {COLORS[d['answer']]}" for d in color_docs()]
    # Equal lengths (4 words); the EOS teaches a generation where to stop.
    ids = torch.tensor([[*tokenizer.encode(t), tokenizer.eos_token_id] for t in texts])
    labels = ids.clone()
    labels[:, :3] = -100  # learn the answer and the EOS after it, not the random item numbers
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(ids, labels=labels)[1]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def test_memorised_task_scores_one_and_random_scores_near_chance(tmp_path):
    tokenizer = train_tokenizer(tmp_path / "tokenizer")
    manager = TaskManager(include_path=str(write_tasks(tmp_path / "tasks")), include_defaults=False)
    config = llama_config(len(tokenizer), max_position_embeddings=64)

    # Built once and reused, as a trainer evaluating every N steps would.
    tasks = load_tasks(manager, ["psyche_colors", "psyche_colors_gen"])
    random_model = LlamaForCausalLM.from_config(config, seed=0)
    chance = evaluate(random_model, tokenizer, tasks[:1], task_manager=manager)
    random_acc = chance["results"]["psyche_colors"]["acc,none"]
    assert abs(random_acc - 1 / len(COLORS)) <= 0.15  # 24 documents, four choices

    trained = LlamaForCausalLM.from_config(config, seed=0)
    assert memorise(trained, tokenizer) < 0.05
    torch.manual_seed(123)
    rng_before = torch.random.get_rng_state()
    results = evaluate(trained, tokenizer, tasks, task_manager=manager)
    assert results["results"]["psyche_colors"]["acc,none"] == 1.0
    # Greedy generation recalls every answer too (the generative metric lm-eval defines).
    assert results["results"]["psyche_colors_gen"]["exact_match,none"] == 1.0
    # A trainer can call evaluate between steps: its mode and RNG stream are left as they were.
    assert trained.training
    assert torch.equal(torch.random.get_rng_state(), rng_before)
