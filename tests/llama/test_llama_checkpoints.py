"""Checkpoints move between psyche and transformers, both ways, with clear errors otherwise."""

from __future__ import annotations

import json

import pytest
import torch

from psyche_core import hf as hf_io
from psyche_core.errors import PsycheError
from psyche_llama.model import LlamaForCausalLM
from tests.llama.helpers import close, hf_logits, hf_model, tiny_config, tokens, transformers

LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}
CONFIGS = {
    "gqa": tiny_config(),
    "tied": tiny_config(tie_word_embeddings=True),
    "llama3": tiny_config(rope_theta=500000.0, rope_scaling=LLAMA3),
    "linear-bias-head-dim": tiny_config(
        rope_scaling={"type": "linear", "factor": 2.0}, attention_bias=True, head_dim=32
    ),
}


def _logits(model: LlamaForCausalLM, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids).logits


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_transformers_checkpoint_loads_in_psyche(name, tmp_path):
    hf = hf_model(CONFIGS[name])
    hf.save_pretrained(tmp_path)
    ours = LlamaForCausalLM.from_pretrained(tmp_path)
    input_ids = tokens(2, 20)
    close(_logits(ours, input_ids), hf_logits(hf, input_ids))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_psyche_checkpoint_loads_in_transformers(name, tmp_path):
    hf = hf_model(CONFIGS[name])
    ours = LlamaForCausalLM.from_config(CONFIGS[name])
    ours.load_hf_state_dict(hf.state_dict())
    ours.save_pretrained(tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    assert type(loaded).__name__ == "LlamaForCausalLM"
    input_ids = tokens(2, 20)
    close(hf_logits(loaded, input_ids), _logits(ours, input_ids))
    if CONFIGS[name].get("tie_word_embeddings"):
        assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()


def test_sharded_checkpoints_both_ways(tmp_path):
    hf = hf_model(tiny_config())
    hf.save_pretrained(tmp_path / "from-hf", max_shard_size="40KB")
    assert (tmp_path / "from-hf" / hf_io.WEIGHTS_INDEX_NAME).is_file()
    ours = LlamaForCausalLM.from_pretrained(tmp_path / "from-hf")
    input_ids = tokens(1, 16)
    close(_logits(ours, input_ids), hf_logits(hf, input_ids))

    ours.save_pretrained(tmp_path / "from-psyche", max_shard_size=40_000)
    assert len(list((tmp_path / "from-psyche").glob("model-*.safetensors"))) > 2
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "from-psyche", dtype=torch.float32
    )
    close(hf_logits(loaded, input_ids), hf_logits(hf, input_ids))


def test_saved_config_uses_the_portable_field_style(tmp_path):
    LlamaForCausalLM.from_config(CONFIGS["llama3"]).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["rope_theta"] == 500000.0
    assert config["rope_scaling"] == LLAMA3
    assert config["torch_dtype"] == "float32"
    assert "rope_parameters" not in config


@pytest.mark.parametrize(
    "style",
    ["4.x-type", "4.x-rope_type", "5.x"],
)
def test_both_config_styles_load(style, tmp_path):
    """The same rope written as transformers 4.x and 5.x write it gives the same model."""
    hf = hf_model(tiny_config(rope_theta=20000.0, rope_scaling={"type": "linear", "factor": 3.0}))
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for key in ("rope_parameters", "rope_scaling", "rope_theta", "dtype", "torch_dtype"):
        config.pop(key, None)
    if style == "5.x":
        config["rope_parameters"] = {"rope_type": "linear", "factor": 3.0, "rope_theta": 20000.0}
        config["dtype"] = "float32"
    else:
        kind = "type" if style == "4.x-type" else "rope_type"
        config["rope_scaling"] = {kind: "linear", "factor": 3.0}
        config["rope_theta"] = 20000.0
        config["torch_dtype"] = "float32"
    (tmp_path / "config.json").write_text(json.dumps(config))
    ours = LlamaForCausalLM.from_pretrained(tmp_path)
    assert ours.config.rope_theta == 20000.0
    assert ours.config.rope_scaling == {"rope_type": "linear", "factor": 3.0}
    input_ids = tokens(1, 24)
    close(_logits(ours, input_ids), hf_logits(hf, input_ids))
    # transformers reads the file the same way
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    close(hf_logits(reloaded, input_ids), hf_logits(hf, input_ids))


def test_dtype_and_device(tmp_path):
    LlamaForCausalLM.from_config(tiny_config(), seed=3).save_pretrained(tmp_path)
    model = LlamaForCausalLM.from_pretrained(tmp_path, dtype="bfloat16", device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    default = LlamaForCausalLM.from_pretrained(tmp_path)
    assert {p.dtype for p in default.parameters()} == {torch.float32}


def test_hub_repo_id_from_an_offline_cache(tmp_path, monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--psyche-test--tiny-llama"
    source = LlamaForCausalLM.from_config(tiny_config(), seed=5)
    source.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    model = LlamaForCausalLM.from_pretrained("psyche-test/tiny-llama")
    input_ids = tokens(1, 8)
    close(_logits(model, input_ids), _logits(source, input_ids))
    with pytest.raises(PsycheError, match="psyche-test/absent"):
        LlamaForCausalLM.from_pretrained("psyche-test/absent")


# -- errors ---------------------------------------------------------------------------------------


@pytest.fixture
def checkpoint(tmp_path):
    directory = tmp_path / "ckpt"
    model = LlamaForCausalLM.from_config(tiny_config(), seed=0)
    model.save_pretrained(directory)
    return directory, model


def _rewrite_weights(directory, change) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(directory / hf_io.WEIGHTS_NAME)
    change(state)
    save_file(state, directory / hf_io.WEIGHTS_NAME)


def test_missing_files_are_clear_errors(checkpoint):
    directory, _ = checkpoint
    (directory / hf_io.WEIGHTS_NAME).unlink()
    with pytest.raises(PsycheError, match=r"no model\.safetensors"):
        LlamaForCausalLM.from_pretrained(directory)
    (directory / "config.json").unlink()
    with pytest.raises(PsycheError, match=r"no config\.json"):
        LlamaForCausalLM.from_pretrained(directory)


def test_missing_and_unexpected_keys_are_named(checkpoint):
    directory, _ = checkpoint

    def change(state):
        del state["model.layers.1.mlp.up_proj.weight"]
        state["model.layers.1.mlp.extra.weight"] = torch.zeros(2)

    _rewrite_weights(directory, change)
    with pytest.raises(PsycheError) as error:
        LlamaForCausalLM.from_pretrained(directory)
    message = str(error.value)
    assert "missing keys: model.layers.1.mlp.up_proj.weight" in message
    assert "unexpected keys: model.layers.1.mlp.extra.weight" in message


def test_shape_mismatch_names_both_shapes(checkpoint):
    directory, _ = checkpoint

    def change(state):
        state["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(64, 64)

    _rewrite_weights(directory, change)
    with pytest.raises(
        PsycheError, match=r"k_proj.weight: checkpoint has \(64, 64\), model expects"
    ):
        LlamaForCausalLM.from_pretrained(directory)


def test_tied_checkpoint_with_a_redundant_lm_head_loads(tmp_path):
    model = LlamaForCausalLM.from_config(tiny_config(tie_word_embeddings=True), seed=0)
    state = model.hf_state_dict()
    state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    hf_io.save_checkpoint(tmp_path, model.config.to_dict(), state)
    loaded = LlamaForCausalLM.from_pretrained(tmp_path)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    input_ids = tokens(1, 8)
    close(_logits(loaded, input_ids), _logits(model, input_ids))


def test_untied_checkpoint_without_lm_head_is_an_error(tmp_path):
    model = LlamaForCausalLM.from_config(tiny_config(tie_word_embeddings=True), seed=0)
    config = {**model.config.to_dict(), "tie_word_embeddings": False}
    hf_io.save_checkpoint(tmp_path, config, model.hf_state_dict())
    with pytest.raises(PsycheError, match=r"missing keys: lm_head\.weight"):
        LlamaForCausalLM.from_pretrained(tmp_path)


def test_unsupported_rope_type_in_config_json(checkpoint):
    directory, _ = checkpoint
    config = json.loads((directory / "config.json").read_text())
    config["rope_scaling"] = {"rope_type": "longrope", "factor": 4.0}
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(PsycheError, match="'longrope' is not supported; supported: default, lin"):
        LlamaForCausalLM.from_pretrained(directory)
