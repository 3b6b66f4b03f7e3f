"""--eval-tasks: lm-eval tasks scored during training, through the register_evaluators hook."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("lm_eval")

import psyche_eval.plugin
from psyche_eval.during_training import scores

import psyche_llama.plugin
from psyche_core import run
from psyche_core.errors import PsycheError
from psyche_core.options import all_option_specs, resolve
from psyche_core.plugins import Plugins
from tests.eval.helpers import llama_config, train_tokenizer, write_tasks


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-during-training")
    train_tokenizer(root / "tokenizer")
    config = root / "config.json"
    # the embedded sample data's vocabulary (512) holds the task tokenizer's few words
    config.write_text(
        json.dumps({"model_type": "llama", **llama_config(512, max_position_embeddings=64)})
    )
    plugins = Plugins.load(entry_points=False, extra=[psyche_llama.plugin, psyche_eval.plugin])
    return root, config, plugins


def flags(root, config, **overrides):
    return {
        "model": str(config),
        "sequence_length": 32,
        "total_batch": 4,
        "total_steps": 4,
        "warmup_steps": 1,
        "eval_every": 2,
        "eval_tasks": "psyche_colors",
        "eval_tasks_limit": 8,
        "eval_tokenizer": str(root / "tokenizer"),
        "eval_include_path": str(write_tasks(root / "tasks")),
        "metrics": str(root / "metrics.jsonl"),
        **overrides,
    }


def test_task_scores_land_in_the_metrics_at_every_eval_step(setup):
    root, config, plugins = setup
    run.train(resolve(all_option_specs(plugins), flags(root, config)), plugins)
    rows = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]
    scored = {r["step"]: r["eval/psyche_colors/acc"] for r in rows if "eval/psyche_colors/acc" in r}
    assert list(scored) == [2, 4]
    # 8 documents of four choices: the accuracy is a multiple of 1/8
    assert all(0 <= acc <= 1 and (acc * 8).is_integer() for acc in scored.values())


def test_an_unknown_task_is_one_line_before_step_1(setup):
    root, config, plugins = setup
    options = resolve(all_option_specs(plugins), flags(root, config, eval_tasks="psyche_colrs"))
    with pytest.raises(PsycheError, match="psyche_colrs"):
        run.train(options, plugins)


def test_eval_tasks_need_eval_every(setup):
    root, config, plugins = setup
    options = resolve(all_option_specs(plugins), flags(root, config, eval_every=0))
    with pytest.raises(PsycheError, match="--eval-tasks is scored every --eval-every N steps"):
        run.train(options, plugins)


def test_scores_keep_metrics_and_drop_standard_errors():
    results = {"results": {"t": {"acc,none": 0.5, "acc_stderr,none": 0.1, "alias": "t"}}}
    assert scores(results) == {"eval/t/acc": 0.5}
