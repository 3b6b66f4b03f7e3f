import json
import shutil

import pytest
import torch

from psyche_core import hf
from psyche_core.errors import PsycheError
from tests.core.toy_plugin import ToyForCausalLM

TOY = {"vocab_size": 32, "hidden_size": 16}


@pytest.fixture
def model():
    return ToyForCausalLM.from_config(TOY, seed=1)


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_save_and_load_round_trip_keeps_config_and_weights(tmp_path, model):
    model.config.extra["bos_token_id"] = 1  # unknown fields survive the round trip
    model.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["model_type"] == "toy" and config["architectures"] == ["ToyForCausalLM"]
    assert config["torch_dtype"] == "float32" and config["bos_token_id"] == 1
    loaded = ToyForCausalLM.from_pretrained(tmp_path / "ckpt")
    assert same_weights(model, loaded) and loaded.bos_token_id == 1


def test_sharded_checkpoint_round_trip(tmp_path, model):
    model.save_pretrained(tmp_path / "ckpt", max_shard_size=1024)
    index = json.loads((tmp_path / "ckpt" / hf.WEIGHTS_INDEX_NAME).read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert not (tmp_path / "ckpt" / hf.WEIGHTS_NAME).exists()
    assert same_weights(model, ToyForCausalLM.from_pretrained(tmp_path / "ckpt"))


def test_load_with_dtype(tmp_path, model):
    model.save_pretrained(tmp_path / "ckpt")
    loaded = ToyForCausalLM.from_pretrained(tmp_path / "ckpt", dtype="bfloat16")
    assert next(loaded.parameters()).dtype == torch.bfloat16


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, model, monkeypatch):
    target = tmp_path / "ckpt"
    model.save_pretrained(target)
    other = ToyForCausalLM.from_config(TOY, seed=2)

    import safetensors.torch

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        other.save_pretrained(target)
    monkeypatch.undo()
    assert same_weights(model, ToyForCausalLM.from_pretrained(target))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary left behind


def test_missing_config(tmp_path):
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(PsycheError, match="no config.json"):
        ToyForCausalLM.from_pretrained(tmp_path / "ckpt")


def test_missing_weights_and_pickle_only(tmp_path, model):
    model.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / hf.WEIGHTS_NAME).unlink()
    with pytest.raises(PsycheError, match="no model.safetensors"):
        ToyForCausalLM.from_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(PsycheError, match="only pickle weights"):
        ToyForCausalLM.from_pretrained(tmp_path / "ckpt")


def test_index_naming_a_missing_shard(tmp_path, model):
    model.save_pretrained(tmp_path / "ckpt", max_shard_size=1024)
    next((tmp_path / "ckpt").glob("model-00002-*")).unlink()
    with pytest.raises(PsycheError, match="shards listed in .* are missing"):
        ToyForCausalLM.from_pretrained(tmp_path / "ckpt")


def test_damaged_safetensors_file(tmp_path, model):
    model.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / hf.WEIGHTS_NAME).write_bytes(b"not a safetensors file")
    with pytest.raises(PsycheError, match="cannot read safetensors"):
        ToyForCausalLM.from_pretrained(tmp_path / "ckpt")


def test_key_and_shape_errors_are_named(tmp_path, model):
    model.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    config["hidden_size"] = 8
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    with pytest.raises(PsycheError) as excinfo:
        ToyForCausalLM.from_pretrained(tmp_path / "ckpt")
    assert (
        "shape mismatch for embed_tokens.weight: checkpoint has (32, 16), model expects (32, 8)"
        in str(excinfo.value)
    )
    expected = {"a": torch.zeros(1), "b": torch.zeros(1)}
    with pytest.raises(PsycheError, match="missing keys: b; unexpected keys: c"):
        hf.check_state_dict(expected, {"a": torch.zeros(1), "c": torch.zeros(1)}, "x")


def test_hub_repo_id_is_found_in_the_offline_cache(tmp_path, model, monkeypatch):
    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--toy" / "snapshots" / ("a" * 40)
    model.save_pretrained(snapshot)
    (cache / "models--someone--toy" / "refs").mkdir()
    (cache / "models--someone--toy" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    loaded = ToyForCausalLM.from_pretrained("someone/toy")
    assert same_weights(model, loaded)
    with pytest.raises(PsycheError, match="someone/other: not a local directory, and not in the"):
        ToyForCausalLM.from_pretrained("someone/other")


def test_not_a_directory_or_repo_id(tmp_path):
    with pytest.raises(PsycheError, match="no such directory"):
        hf.resolve_checkpoint(str(tmp_path / "a" / "b" / "c"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(PsycheError, match="expected a checkpoint directory, found a file"):
        hf.resolve_checkpoint(tmp_path / "file")
    shutil.rmtree(tmp_path)


def test_a_checkpoint_of_another_model_type_is_refused(tmp_path, model):
    model.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(PsycheError, match="config has model_type 'gpt2'; ToyConfig loads 'toy'"):
        ToyForCausalLM.from_pretrained(tmp_path / "ckpt")
