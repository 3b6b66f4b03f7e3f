"""The psyche-llama plugin: registration, presets, and a light plugin module."""

from __future__ import annotations

import subprocess
import sys
from types import MappingProxyType

import pytest
import torch

from psyche_core.plugins import Plugins
from psyche_llama import plugin
from psyche_llama.model import LlamaConfig, LlamaForCausalLM
from psyche_llama.presets import PRESETS


def test_plugin_module_does_not_import_torch():
    code = "import sys, psyche_llama.plugin; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_registers_the_llama_model():
    plugins = Plugins.load(entry_points=False, extra=[plugin])
    spec = plugins.models.get("llama")
    assert spec.load() is LlamaForCausalLM
    assert spec.model_types == ("llama",)
    assert spec.architectures == ("LlamaForCausalLM",)
    assert spec.preset_for_default == "tiny"
    assert set(spec.presets) == {"tiny", "20m"}
    assert isinstance(spec.presets["tiny"], MappingProxyType)


def test_entry_point_is_installed(monkeypatch):
    monkeypatch.setenv("PSYCHE_LOAD_PLUGINS", "psyche_llama")
    plugins = Plugins.load()
    info = next(i for i in plugins.infos if i.name == "psyche_llama")
    assert info.error is None, info.error
    assert info.distribution == "psyche-llama"
    assert info.models == ["llama"]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_parse_and_match_their_description(name):
    config = LlamaConfig.from_dict(PRESETS[name])
    assert config.rope_scaling is None and not config.tie_word_embeddings
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    if name == "20m":
        assert config.head_dim == 32
        assert model.num_parameters() == 19_794_176
    else:
        assert config.num_key_value_heads == 2


def test_tiny_preset_trains():
    model = LlamaForCausalLM.from_config(PRESETS["tiny"], seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        loss = model(batch, labels=batch, return_logits=False).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0
