"""psyche's lm-eval adapter against lm-eval's own ``hf`` backend on the same checkpoint: the same
per-document log-likelihoods (1e-4), accuracy, rolling log-likelihoods and generations."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.eval.helpers import deepseek_checkpoint, llama_checkpoint, write_tasks

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("accelerate", reason="lm-eval's hf backend (the reference) needs accelerate")

from lm_eval.tasks import TaskManager  # noqa: E402
from psyche_eval.harness import evaluate  # noqa: E402
from psyche_eval.tokenizer import load_tokenizer  # noqa: E402

from psyche_core.plugins import Plugins  # noqa: E402
from psyche_core.resolve import resolve_model  # noqa: E402

TASKS = ["psyche_colors", "psyche_prose", "psyche_colors_gen"]


def run_both(checkpoint: Path, tasks_dir: Path, num_fewshot: int, batch_size: int):
    """(lm-eval hf results, psyche results), both with per-document samples."""
    manager = TaskManager(include_path=str(tasks_dir), include_defaults=False)
    common = dict(tasks=TASKS, num_fewshot=num_fewshot, batch_size=batch_size, log_samples=True)
    reference = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={checkpoint},dtype=float32",
        device="cpu",
        task_manager=manager,
        **common,
    )
    choice = resolve_model(Plugins.load(), str(checkpoint))
    model = choice.build(0)
    ours = evaluate(model, load_tokenizer(checkpoint, model), task_manager=manager, **common)
    return reference, ours


def assert_same(reference: dict, ours: dict) -> None:
    for task in TASKS:
        ref_docs = sorted(reference["samples"][task], key=lambda s: s["doc_id"])
        our_docs = sorted(ours["samples"][task], key=lambda s: s["doc_id"])
        assert len(ref_docs) == len(our_docs) > 0
        for ref, mine in zip(ref_docs, our_docs, strict=True):
            assert ref["arguments"] == mine["arguments"]  # the same prompts (few-shot included)
            for ref_resp, our_resp in zip(ref["resps"], mine["resps"], strict=True):
                ref_value, our_value = ref_resp[0], our_resp[0]
                if isinstance(ref_value, str):  # generate_until
                    assert ref_value == our_value
                elif isinstance(ref_value, tuple):  # loglikelihood: (logprob, is_greedy)
                    assert our_value[0] == pytest.approx(ref_value[0], abs=1e-4)
                    assert our_value[1] == ref_value[1]
                else:  # loglikelihood_rolling
                    assert our_value == pytest.approx(ref_value, abs=1e-4)
        for metric, value in reference["results"][task].items():
            if metric.endswith(",none") and "stderr" not in metric:
                assert ours["results"][task][metric] == pytest.approx(value, rel=1e-5), metric


def test_llama_adapter_matches_lm_eval_hf(tmp_path):
    # Six shots overflow the 24-position context: left truncation is exercised, and the prose
    # texts need several rolling windows.
    checkpoint = llama_checkpoint(tmp_path / "llama")
    reference, ours = run_both(checkpoint, write_tasks(tmp_path / "tasks"), 6, batch_size=3)
    assert_same(reference, ours)
    # A random model: log-likelihoods differ between choices, and accuracy is not trivially 0/1.
    assert 0 < ours["results"]["psyche_colors"]["acc,none"] < 1


def test_deepseek_v3_adapter_matches_lm_eval_hf(tmp_path):
    pytest.importorskip("psyche_deepseek")
    checkpoint = deepseek_checkpoint(tmp_path / "deepseek")
    tasks = write_tasks(tmp_path / "tasks", n_colors=12)
    reference, ours = run_both(checkpoint, tasks, 2, batch_size=4)
    assert_same(reference, ours)


def test_batch_size_does_not_change_scores(tmp_path):
    checkpoint = llama_checkpoint(tmp_path / "llama")
    tasks_dir = write_tasks(tmp_path / "tasks", n_colors=8)
    manager = TaskManager(include_path=str(tasks_dir), include_defaults=False)
    model = resolve_model(Plugins.load(), str(checkpoint)).build(0)
    tokenizer = load_tokenizer(checkpoint, model)
    one, five = (
        evaluate(
            model,
            tokenizer,
            ["psyche_colors"],
            batch_size=b,
            log_samples=True,
            task_manager=manager,
            num_fewshot=3,
        )
        for b in (1, 5)
    )
    for a, b in zip(one["samples"]["psyche_colors"], five["samples"]["psyche_colors"], strict=True):
        for ra, rb in zip(a["resps"], b["resps"], strict=True):
            assert ra[0][0] == pytest.approx(rb[0][0], abs=1e-5)
