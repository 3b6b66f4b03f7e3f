"""``--eval-tasks``: lm-eval tasks scored during training, at every ``--eval-every`` step.

The factory runs before step 1 on every peer: it loads the tokenizer and builds the tasks (so a
misspelled task or a dataset that cannot be read is one line then, not after hours of
training), and returns the evaluator the trainer calls with the model as it is at that step.
Scores go into the step's metrics as ``eval/TASK/METRIC`` (standard errors left out).
"""

from __future__ import annotations

from typing import Any

from psyche_core.errors import PsycheError
from psyche_core.model import CausalLM
from psyche_eval import harness
from psyche_eval.tokenizer import load_tokenizer


class TaskEvaluator:
    """lm-eval ``tasks`` on the training model, ``limit`` documents each."""

    def __init__(self, tokenizer: Any, tasks: list[Any], manager: Any, options: Any) -> None:
        self.tokenizer = tokenizer
        self.tasks = tasks
        self.manager = manager
        self.limit = options.eval_tasks_limit
        self.num_fewshot = options.eval_tasks_fewshot
        self.batch_size = options.micro_batch or 8

    def __call__(self, model: CausalLM, step: int) -> dict[str, float]:
        results = harness.evaluate(
            model,
            self.tokenizer,
            self.tasks,
            limit=self.limit,
            num_fewshot=self.num_fewshot,
            batch_size=self.batch_size,
            bootstrap_iters=0,
            seed=0,
            task_manager=self.manager,
        )
        return scores(results)


def scores(results: dict[str, Any]) -> dict[str, float]:
    """``eval/TASK/METRIC`` for every numeric metric lm-eval reports (``acc,none`` -> ``acc``)."""
    out: dict[str, float] = {}
    for task, metrics in results.get("results", {}).items():
        for key, value in metrics.items():
            name, _, _filter = key.partition(",")
            if name.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            if isinstance(value, bool):
                continue
            out[f"eval/{task}/{name}"] = float(value)
    return out


def build_task_evaluator(options: Any, model: CausalLM) -> TaskEvaluator:
    """Factory of the ``lm_eval`` evaluator (``register_evaluators``)."""
    harness.require_lm_eval()
    names = [name.strip() for name in options.eval_tasks.split(",") if name.strip()]
    if not names:
        raise PsycheError("--eval-tasks names no task")
    if not options.eval_tokenizer:
        raise PsycheError(
            "--eval-tasks needs --eval-tokenizer (a tokenizer.json, a tokenizer folder or a hub "
            "id) to turn the tasks' text into the model's token ids"
        )
    tokenizer = load_tokenizer(options.eval_tokenizer, model)
    include = options.eval_include_path
    manager = harness.make_task_manager(include)
    tasks = harness.load_tasks(manager, names)
    return TaskEvaluator(tokenizer, tasks, manager, options)
