"""Shared by the parallel-layout tests: a 5-step run of a tiny model, and its losses."""

from __future__ import annotations

from psyche_core import plan, run
from psyche_core.options import all_option_specs
from tests.core.test_trainer import read_metrics


def train(plugins, out, model: str, **overrides):
    values = {
        "model": model,
        "sequence_length": 32,
        "total_batch": 4,
        "total_steps": 5,
        "warmup_steps": 1,
        "learning_rate": 1e-3,
        "seed": 3,
        "metrics": str(out / "metrics.jsonl"),
        **overrides,
    }
    return run.train(plan.resolve_run_options(all_option_specs(plugins), values, None), plugins)


def losses(out):
    return [row["loss"] for row in read_metrics(out / "metrics.jsonl")]
