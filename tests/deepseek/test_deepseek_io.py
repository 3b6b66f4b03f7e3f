"""Checkpoints: transformers <-> psyche round trips, both config styles, clear errors."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from psyche_core.errors import InvalidInputError, PsycheError
from psyche_core.testing import check_causal_lm
from psyche_deepseek.model import DeepseekV2ForCausalLM, DeepseekV3ForCausalLM
from psyche_deepseek.presets import V2_PRESETS, V3_PRESETS
from tests.deepseek.helpers import BASE, PSYCHE, YARN, build_hf, save_hf, tokens, transformers

V3_ROUTING = {"n_group": 4, "topk_group": 2}


def _logits(model, ids):
    model.eval()
    with torch.no_grad():
        out = model(ids)
    return out.logits if hasattr(out, "logits") else out[0]


@pytest.mark.parametrize("kind", ["deepseek_v3", "deepseek_v2"])
def test_psyche_checkpoint_loads_in_transformers(kind, tmp_path):
    ours = PSYCHE[kind].from_config({**BASE, **V3_ROUTING, "rope_scaling": YARN}, seed=3)
    ours.save_pretrained(tmp_path / "ours")
    keys = set(load_file(tmp_path / "ours" / "model.safetensors"))
    assert "model.layers.1.mlp.experts.7.up_proj.weight" in keys  # per-expert on disk
    assert not any(k.endswith("gate_up_proj") for k in keys)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "ours", dtype=torch.float32
    )
    assert type(theirs).__name__ == PSYCHE[kind].__name__
    ids = tokens()
    torch.testing.assert_close(_logits(theirs, ids), _logits(ours, ids), rtol=0, atol=1e-5)
    # Reloaded in psyche, the saved checkpoint gives the same model again.
    again = PSYCHE[kind].from_pretrained(tmp_path / "ours")
    assert again.config.to_dict() == ours.config.to_dict()
    torch.testing.assert_close(_logits(again, ids), _logits(ours, ids), rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["deepseek_v3", "deepseek_v2"])
def test_transformers_checkpoint_round_trips_through_psyche(kind, tmp_path):
    hf = build_hf(kind, **V3_ROUTING)
    ours = PSYCHE[kind].from_pretrained(save_hf(hf, tmp_path / "hf"))
    ours.save_pretrained(tmp_path / "ours", max_shard_size=20_000)  # sharded, with an index
    assert (tmp_path / "ours" / "model.safetensors.index.json").is_file()
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours", dtype=torch.float32)
    ids = tokens()
    expected = _logits(hf, ids)
    torch.testing.assert_close(_logits(ours, ids), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(_logits(back, ids), expected, rtol=0, atol=1e-5)
    for name, value in hf.state_dict().items():
        torch.testing.assert_close(back.state_dict()[name], value, rtol=0, atol=0, msg=name)


def test_transformers_4_config_style_loads(tmp_path):
    """Published DeepSeek configs: top-level rope_theta + rope_scaling, extra routing fields."""
    hf = build_hf("deepseek_v3", **V3_ROUTING, rope_scaling=YARN)
    directory = save_hf(hf, tmp_path / "hf")
    config = json.loads((directory / "config.json").read_text())
    params = config.pop("rope_parameters")
    config["rope_theta"] = params.pop("rope_theta")
    config["rope_scaling"] = {k: v for k, v in params.items() if k != "rope_type"}
    config.update(scoring_func="sigmoid", topk_method="noaux_tc", moe_layer_freq=1, ep_size=1)
    (directory / "config.json").write_text(json.dumps(config))
    ours = DeepseekV3ForCausalLM.from_pretrained(directory)
    assert ours.config.rope_parameters["rope_type"] == "yarn"
    ids = tokens()
    torch.testing.assert_close(_logits(ours, ids), _logits(hf, ids), rtol=0, atol=1e-5)
    # psyche writes both styles; transformers reads the same rope setup back.
    ours.save_pretrained(tmp_path / "ours")
    written = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert written["rope_scaling"]["type"] == "yarn" and written["rope_theta"] == 10000.0
    assert written["rope_parameters"]["rope_type"] == "yarn" and written["ep_size"] == 1
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours", dtype=torch.float32)
    assert back.config.rope_parameters["factor"] == 4.0
    torch.testing.assert_close(_logits(back, ids), _logits(hf, ids), rtol=0, atol=1e-5)


def test_multi_token_prediction_weights_are_ignored(tmp_path):
    hf = build_hf("deepseek_v3", **V3_ROUTING)
    directory = save_hf(hf, tmp_path / "hf")
    assert hf.config.num_nextn_predict_layers == 1
    state = load_file(directory / "model.safetensors")
    layers = hf.config.num_hidden_layers
    extra = {
        f"model.layers.{layers}.enorm.weight": torch.ones(BASE["hidden_size"]),
        f"model.layers.{layers}.eh_proj.weight": torch.zeros(2, 2),
    }
    save_file({**state, **extra}, directory / "model.safetensors", metadata={"format": "pt"})
    ours = DeepseekV3ForCausalLM.from_pretrained(directory)
    torch.testing.assert_close(_logits(ours, tokens()), _logits(hf, tokens()), rtol=0, atol=1e-5)
    # A layer beyond the MTP layers is still an unexpected key.
    extra = {f"model.layers.{layers + 1}.enorm.weight": torch.ones(4)}
    save_file({**state, **extra}, directory / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(PsycheError, match=rf"unexpected keys: model\.layers\.{layers + 1}\."):
        DeepseekV3ForCausalLM.from_pretrained(directory)


def _checkpoint(tmp_path, **overrides):
    model = DeepseekV3ForCausalLM.from_config({**BASE, **V3_ROUTING, **overrides})
    model.save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def test_weight_errors_name_the_problem(tmp_path):
    directory = _checkpoint(tmp_path)
    state = load_file(directory / "model.safetensors")
    missing = dict(state)
    del missing["model.layers.2.mlp.experts.5.down_proj.weight"]
    missing["model.layers.0.self_attn.extra.weight"] = torch.zeros(1)
    shaped = dict(state)
    shaped["model.layers.1.mlp.gate.weight"] = torch.zeros(7, BASE["hidden_size"])
    cases = [
        (missing, r"missing keys: model\.layers\.2\.mlp\.experts\.5\.down_proj\.weight"),
        (missing, r"unexpected keys: model\.layers\.0\.self_attn\.extra\.weight"),
        (
            shaped,
            r"model\.layers\.1\.mlp\.gate\.weight: checkpoint has \(7, 48\), model expects "
            r"\(8, 48\)",
        ),
    ]
    for weights, pattern in cases:
        save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})
        with pytest.raises(PsycheError, match=pattern):
            DeepseekV3ForCausalLM.from_pretrained(directory)
    (directory / "model.safetensors").unlink()
    with pytest.raises(PsycheError, match="no model.safetensors"):
        DeepseekV3ForCausalLM.from_pretrained(directory)
    (directory / "config.json").unlink()
    with pytest.raises(PsycheError, match="no config.json"):
        DeepseekV3ForCausalLM.from_pretrained(directory)


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({"rope_scaling": {"type": "longrope", "factor": 2.0}}, "unsupported rope type 'longrope'"),
        ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0}}, "rope type 'dynamic'"),
        ({"topk_method": "top_p"}, "unsupported topk_method 'top_p'"),
        ({"scoring_func": "sparsemax"}, "unsupported scoring_func 'sparsemax'"),
        ({"hidden_act": "mish"}, "unsupported hidden_act 'mish'"),
        ({"n_group": 3}, r"n_routed_experts \(8\) must be a multiple of n_group \(3\)"),
        ({"num_experts_per_tok": 9}, "num_experts_per_tok must be in 1..8"),
        ({"quantization_config": {"quant_method": "fp8"}}, "fp8 checkpoints are not supported"),
    ],
)
def test_config_errors_name_the_field(overrides, pattern):
    with pytest.raises(PsycheError, match=pattern):
        DeepseekV3ForCausalLM.from_config({**BASE, **V3_ROUTING, **overrides})


def test_invalid_inputs():
    model = DeepseekV3ForCausalLM.from_config({**BASE, **V3_ROUTING})
    with pytest.raises(InvalidInputError, match=f"token id {BASE['vocab_size']} is outside"):
        model(torch.tensor([[1, BASE["vocab_size"]]]))
    with pytest.raises(InvalidInputError, match="token id -1"):
        model(torch.tensor([[-1, 2]]))
    with pytest.raises(InvalidInputError, match="longer than the model's context"):
        model(torch.zeros(1, BASE["max_position_embeddings"] + 1, dtype=torch.long))
    with pytest.raises(InvalidInputError, match="summing to 6"):
        model(torch.zeros(1, 6, dtype=torch.long), sequence_lengths=[[2, 3]])
    assert isinstance(InvalidInputError("x"), ValueError)


def test_dtype_cast_keeps_routing_in_float32(tmp_path):
    model = DeepseekV3ForCausalLM.from_config({**BASE, **V3_ROUTING}, dtype="bfloat16")
    gate = model.model.layers[1].mlp.gate
    assert model.lm_head.weight.dtype == torch.bfloat16
    assert gate.weight.dtype == gate.e_score_correction_bias.dtype == torch.float32
    model.save_pretrained(tmp_path / "bf16")
    loaded = DeepseekV3ForCausalLM.from_pretrained(tmp_path / "bf16", dtype="bfloat16")
    assert loaded.model.layers[1].mlp.gate.weight.dtype == torch.float32
    logits, loss = loaded(tokens(), labels=tokens())
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    loaded(tokens(), labels=tokens(), return_logits=False).loss.backward()
    assert loaded.model.layers[1].mlp.gate.weight.grad.dtype == torch.float32
    assert loaded.model.layers[1].mlp.experts.gate_up_proj.grad.dtype == torch.bfloat16


def test_keep_in_fp32_survives_casts_and_low_precision_checkpoints(tmp_path):
    """Router weights, correction biases, load counters and rotary frequencies are moved, never
    cast (``keep_in_fp32``): a bfloat16 round trip keeps their bits, and a checkpoint storing the
    router in bfloat16 (as the published DeepSeek-V3 one does) loads it as float32."""
    model = DeepseekV3ForCausalLM.from_config({**BASE, **V3_ROUTING, "rope_scaling": YARN})
    gate = model.model.layers[1].mlp.gate
    weight, inv_freq = gate.weight.detach().clone(), model.model.rotary_emb.inv_freq.clone()
    model.to(torch.bfloat16).to(torch.float32)
    assert torch.equal(gate.weight, weight)
    assert torch.equal(model.model.rotary_emb.inv_freq, inv_freq)
    model.to(torch.bfloat16)
    for tensor in (gate.weight, gate.e_score_correction_bias, gate.expert_load, inv_freq):
        assert tensor.dtype == torch.float32
    assert model.model.layers[1].mlp.experts.down_proj.dtype == torch.bfloat16

    model.save_pretrained(tmp_path / "bf16")
    path = tmp_path / "bf16" / "model.safetensors"
    state = load_file(path)
    state["model.layers.1.mlp.gate.weight"] = state["model.layers.1.mlp.gate.weight"].bfloat16()
    save_file(state, path, metadata={"format": "pt"})
    loaded = DeepseekV3ForCausalLM.from_pretrained(tmp_path / "bf16", dtype="bfloat16")
    assert loaded.model.layers[1].mlp.gate.weight.dtype == torch.float32
    assert loaded.model.rotary_emb.inv_freq.dtype == torch.float32


def test_seeded_init_follows_transformers_scheme():
    config = {**BASE, **V3_ROUTING, "initializer_range": 0.05}
    a = DeepseekV3ForCausalLM.from_config(config, seed=7)
    b = DeepseekV3ForCausalLM.from_config(config, seed=7)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    moe = a.model.layers[2].mlp
    for weight in (moe.gate.weight, moe.experts.gate_up_proj, moe.experts.down_proj):
        assert abs(weight.std().item() - 0.05) < 0.01
    assert torch.equal(moe.gate.e_score_correction_bias, torch.zeros(8))
    assert torch.equal(a.model.layers[0].self_attn.kv_a_layernorm.weight, torch.ones(12))


@pytest.mark.parametrize(
    ("cls", "preset"),
    [(DeepseekV3ForCausalLM, V3_PRESETS["tiny"]), (DeepseekV2ForCausalLM, V2_PRESETS["tiny"])],
)
def test_conformance_kit(cls, preset, tmp_path):
    check_causal_lm(cls, preset, tmp_path)


def test_head_dim_is_the_rotary_size():
    config = DeepseekV3ForCausalLM.parse_config({**BASE, **V3_ROUTING, "head_dim": 999})
    assert config.head_dim == BASE["qk_rope_head_dim"]
    assert config.qk_head_dim == BASE["qk_nope_head_dim"] + BASE["qk_rope_head_dim"]
    assert re.search('"head_dim": 8', json.dumps(config.to_dict()))
