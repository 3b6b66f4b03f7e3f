"""The psyche-hf plugin: registration, a light plugin module, and life without transformers."""

from __future__ import annotations

import json
import subprocess
import sys
from types import MappingProxyType

import pytest
from click.testing import CliRunner

from psyche_core import run
from psyche_core.cli import make_cli
from psyche_core.errors import PsycheError
from psyche_core.plugins import Plugins
from psyche_hf import plugin
from psyche_hf.model import HfCausalLM
from psyche_hf.presets import PRESETS
from tests.hf.helpers import load_plugins, options


def test_plugin_module_imports_neither_torch_nor_transformers():
    code = (
        "import sys, psyche_hf.plugin; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "assert 'transformers' not in sys.modules, 'transformers imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_registers_the_hf_model():
    plugins = Plugins.load(entry_points=False, extra=[plugin])
    spec = plugins.models.get("hf")
    assert spec.load() is HfCausalLM
    assert spec.default_preset is None  # --model hf alone names its model with --hf-model
    assert set(spec.presets) == {"qwen2-tiny", "mistral-tiny", "gpt2-tiny"}
    assert (spec.checkpoint_option, spec.config_option) == ("hf_model", "hf_config")
    assert isinstance(spec.presets["qwen2-tiny"], MappingProxyType)
    assert [o.name for o in spec.options] == ["hf-model", "hf-config"]
    # the native plugins' model types stay theirs
    assert "llama" not in spec.model_types and "qwen2" in spec.model_types


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_train_on_the_sample_vocabulary(name):
    preset = PRESETS[name]
    assert preset["vocab_size"] == 512 and preset["bos_token_id"] == 1
    model = HfCausalLM.from_config(preset, seed=0)
    assert model.model_type == preset["model_type"]
    assert 0.5e6 < model.num_parameters() < 1.5e6


def test_entry_point_is_installed(monkeypatch):
    monkeypatch.setenv("PSYCHE_LOAD_PLUGINS", "psyche_hf")
    plugins = Plugins.load()
    info = next(i for i in plugins.infos if i.name == "psyche_hf")
    assert info.error is None, info.error
    assert info.distribution == "psyche-hf" and info.models == ["hf"]


def test_without_transformers_the_plugin_lists_and_training_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now fails
    monkeypatch.setenv("PSYCHE_LOAD_PLUGINS", "psyche_hf,psyche_data")
    plugins = Plugins.load()
    listing = CliRunner().invoke(make_cli(plugins), ["list-plugins", "--json"])
    record = {p["name"]: p for p in json.loads(listing.output)["plugins"]}["psyche_hf"]
    assert record["ok"] and record["models"][0]["name"] == "hf"

    with pytest.raises(PsycheError, match=r"pip install 'transformers>=4.45'"):
        HfCausalLM.from_config(PRESETS["qwen2-tiny"])
    with pytest.raises(PsycheError, match=r"needs the transformers package"):
        run.train(options(plugins, tmp_path, total_steps=2), plugins)


def test_model_hf_alone_says_what_it_needs(tmp_path):
    plugins = load_plugins()
    with pytest.raises(PsycheError) as excinfo:
        run.train(options(plugins, tmp_path, model="hf"), plugins)
    assert str(excinfo.value) == (
        "--model hf trains the model named by --hf-model or --hf-config; its presets: "
        "hf:qwen2-tiny, hf:mistral-tiny, hf:gpt2-tiny"
    )


def test_hf_model_with_a_preset_or_with_hf_config_is_refused(tmp_path):
    plugins = load_plugins()
    config = tmp_path / "config.json"
    config.write_text(json.dumps(dict(PRESETS["gpt2-tiny"])))
    with pytest.raises(PsycheError, match="go with --model hf; --model hf:qwen2-tiny already"):
        run.train(options(plugins, tmp_path, hf_config=str(config)), plugins)
    with pytest.raises(PsycheError, match="not both"):
        run.train(
            options(plugins, tmp_path, model="hf", hf_config=str(config), hf_model=str(tmp_path)),
            plugins,
        )
