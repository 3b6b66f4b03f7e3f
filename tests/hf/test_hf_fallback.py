"""The resolution fallback: a checkpoint whose model_type no native plugin claims goes to hf.

These tests need psyche-core's fallback model specs (``ModelSpec.fallback``, proposed with
psyche-hf; see docs/models/hf.md) and are skipped on a core without them. What works on any core
(model types psyche-hf lists resolve to it) is tested in test_hf_training.py.
"""

from __future__ import annotations

import dataclasses
import io

import pytest
import torch
from rich.console import Console

import psyche_data.plugin
import psyche_hf.plugin
from psyche_core import checkpoint, plan, resolve, run
from psyche_core.options import all_option_specs
from psyche_core.plugins import Plugins
from psyche_core.specs import ModelSpec
from psyche_hf.model import HfCausalLM
from psyche_llama.model import LlamaForCausalLM
from tests.hf.helpers import LLAMA_512, load_plugins, losses, options

pytest.importorskip("transformers")
pytestmark = pytest.mark.skipif(
    "fallback" not in {f.name for f in dataclasses.fields(ModelSpec)},
    reason="psyche-core without fallback model specs",
)


@pytest.fixture
def llama_checkpoint(tmp_path):
    path = tmp_path / "llama"
    LlamaForCausalLM.from_config(LLAMA_512, seed=7).save_pretrained(path)
    return path


def test_hf_is_the_fallback_and_says_so(llama_checkpoint, tmp_path):
    assert load_plugins().models.get("hf").fallback
    # without psyche-llama installed, a Llama checkpoint trains through transformers
    plugins = Plugins.load(entry_points=False, extra=[psyche_hf.plugin, psyche_data.plugin])
    choice = resolve.resolve_model(plugins, str(llama_checkpoint))
    assert choice.spec.name == "hf"
    assert choice.note == "using hf for model_type 'llama' (no native model plugin claims it)"
    out = io.StringIO()
    run.train(
        options(plugins, tmp_path, model=str(llama_checkpoint), total_steps=2),
        plugins,
        console=Console(file=out, width=200),
    )
    assert "using hf for model_type 'llama'" in out.getvalue()


def test_native_plugins_win_over_the_fallback(llama_checkpoint, tmp_path):
    plugins = load_plugins()
    assert resolve.resolve_model(plugins, str(llama_checkpoint)).spec.name == "llama"
    qwen2 = tmp_path / "qwen2"
    HfCausalLM.from_config(dict(plugins.models.get("hf").presets["qwen2-tiny"])).save_pretrained(
        qwen2
    )
    assert resolve.resolve_model(plugins, str(qwen2)).note.startswith("using hf for model_type")


def test_a_run_resumes_with_the_model_plugin_it_was_trained_with(llama_checkpoint, tmp_path):
    """A Llama trained through hf resumes through hf, not the native plugin."""
    plugins = load_plugins()
    specs = all_option_specs(plugins)
    full, part, resumed = tmp_path / "full", tmp_path / "part", tmp_path / "resumed"
    common = {"model": "hf", "hf_model": str(llama_checkpoint), "total_steps": 4}
    for out in (full, part):
        run_flags = {"save_path": str(out / "run"), "checkpoint_every": 2, **common}
        flags = dict(options(plugins, out, **run_flags))
        run.train(plan.resolve_run_options(specs, flags, None), plugins)
    step2 = part / "run" / "step-000002"
    assert checkpoint.read(step2).run["model"]["spec"] == "hf"
    flags = {"resume": str(step2), "metrics": str(resumed / "metrics.jsonl")}
    options_ = plan.resolve_run_options(specs, flags, None)
    assert plan.make_plan(options_, plugins).model.spec.name == "hf"
    run.train(options_, plugins)
    assert losses(resumed) == losses(full)[2:]
    assert torch.isfinite(torch.tensor(losses(resumed))).all()
