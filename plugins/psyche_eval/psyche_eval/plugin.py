"""psyche-eval's hook implementations: the ``psyche eval`` command and ``--eval-tasks`` during
training (click and spec objects only; lm-eval and torch load when used, so
``psyche list-plugins`` stays fast)."""

from __future__ import annotations

from psyche_core.hookspecs import hookimpl
from psyche_core.specs import EvaluatorSpec, OptionSpec

TRAINING_OPTIONS = (
    OptionSpec(
        "eval-tasks",
        str,
        None,
        "lm-eval tasks to score at every --eval-every step (comma-separated names or task "
        "YAML paths); scores go into the metrics as eval/TASK/METRIC.",
    ),
    OptionSpec(
        "eval-tasks-limit",
        int,
        None,
        "Documents per task for --eval-tasks (default: all).",
        min=1,
    ),
    OptionSpec("eval-tasks-fewshot", int, None, "Few-shot examples for --eval-tasks.", min=0),
    OptionSpec(
        "eval-tokenizer",
        str,
        None,
        "Tokenizer for --eval-tasks: a tokenizer.json, a tokenizer folder or a hub id.",
    ),
    OptionSpec("eval-include-path", str, None, "A folder of extra task YAMLs for --eval-tasks."),
)


@hookimpl
def register_commands(cli):
    from psyche_eval.cli import make_eval_command

    cli.add_command(make_eval_command())


@hookimpl
def register_evaluators(register):
    register(
        EvaluatorSpec(
            name="lm_eval",
            factory="psyche_eval.during_training:build_task_evaluator",
            options=TRAINING_OPTIONS,
            implied_by="eval_tasks",
            description="lm-evaluation-harness tasks during training (--eval-tasks)",
        )
    )
