"""HfCausalLM against the CausalLM contract and against transformers itself."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from psyche_core.errors import InvalidInputError, PsycheError
from psyche_core.testing import check_causal_lm
from psyche_hf.model import HfCausalLM
from tests.hf.helpers import TINY, VOCAB, tokens

transformers = pytest.importorskip("transformers")

PACKED = [[5, 7, 4], [16]]  # two rows of 16 tokens: three documents, then one


@pytest.mark.parametrize("arch", ["qwen2", "mistral", "gpt2"])
def test_conformance_kit(arch, tmp_path):
    check_causal_lm(HfCausalLM, TINY[arch], tmp_path)


def test_loss_and_logits_equal_transformers_own(tmp_path):
    model = HfCausalLM.from_config(TINY["qwen2"], seed=3)
    ids = tokens(2, 12)
    labels = ids.clone()
    labels[:, :4] = -100
    logits, loss = model(ids, labels=labels)
    theirs = model.hf_model(input_ids=ids, labels=labels)
    torch.testing.assert_close(logits, theirs.logits, rtol=0, atol=0)
    torch.testing.assert_close(loss, theirs.loss)
    assert model(ids, labels=torch.full_like(ids, -100)).loss.item() == 0.0


def _gradients(model: HfCausalLM, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("ignored", [False, True], ids=["all-labels", "ignored-labels"])
@pytest.mark.parametrize("arch", ["qwen2", "gpt2", "mixtral"])
def test_gradients_equal_transformers_own(arch, ignored):
    """psyche's loss path (shifted, chunk-ready cross entropy + router loss) against
    transformers' own loss on the same module: every gradient, within 1e-4 of its size."""
    model = HfCausalLM.from_config(TINY[arch], seed=3)
    ids = tokens(2, 12)
    labels = ids.clone()
    if ignored:
        labels[0, :4] = -100
        labels[1, 8:] = -100
    ours = _gradients(model, model(ids, labels=labels).loss)
    theirs = _gradients(model, model.hf_model(input_ids=ids, labels=labels).loss)
    assert ours.keys() == theirs.keys() and len(ours) > 5
    for name, expected in theirs.items():
        torch.testing.assert_close(ours[name], expected, rtol=1e-4, atol=1e-6, msg=name)
        assert (ours[name] - expected).norm() <= 1e-5 * expected.norm(), name


def test_moe_router_loss_is_added_as_transformers_does():
    model = HfCausalLM.from_config(TINY["mixtral"], seed=0)
    ids = tokens(2, 12)
    ours = model(ids, labels=ids).loss
    theirs = model.hf_model(input_ids=ids, labels=ids)
    assert theirs.aux_loss is not None
    torch.testing.assert_close(ours, theirs.loss)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ["qwen2", "mistral", "gpt2"])
def test_packed_documents_equal_separate_documents(arch, attn):
    model = HfCausalLM.from_config(TINY[arch], seed=1)
    model.set_attn_implementation(attn)
    model.eval()
    ids = tokens(2, 16, seed=2)
    with torch.no_grad():
        packed, loss = model(ids, labels=ids, sequence_lengths=PACKED)
        for row, docs in enumerate(PACKED):
            start = 0
            for n in docs:
                alone = model(ids[row : row + 1, start : start + n]).logits
                torch.testing.assert_close(
                    packed[row : row + 1, start : start + n], alone, rtol=1e-4, atol=1e-5
                )
                start += n
        # explicit positions that restart per document give the same logits
        restart = [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3]
        positions = torch.tensor([restart, list(range(16))])
        again = model(ids, position_ids=positions, sequence_lengths=PACKED).logits
    torch.testing.assert_close(again, packed, rtol=0, atol=0)
    assert torch.isfinite(loss)


def test_positions_without_documents_do_not_split_attention():
    """As in every psyche model: restarting positions alone change positions, not attention."""
    model = HfCausalLM.from_config(TINY["qwen2"], seed=1).eval()
    ids = tokens(1, 10, seed=4)
    positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4]])
    with torch.no_grad():
        shared = model(ids, position_ids=positions).logits
        split = model(ids, position_ids=positions, sequence_lengths=[[5, 5]]).logits
        alone = model(ids[:, 5:]).logits
    torch.testing.assert_close(shared[:, :5], split[:, :5])
    torch.testing.assert_close(split[:, 5:], alone, rtol=1e-4, atol=1e-5)
    assert (shared[:, 5:] - alone).abs().max() > 1e-3  # the second half saw the first


def test_positions_that_do_not_restart_at_documents_are_refused():
    model = HfCausalLM.from_config(TINY["qwen2"], seed=1)
    ids = tokens(1, 8)
    with pytest.raises(InvalidInputError, match="restart at every boundary"):
        model(ids, position_ids=torch.arange(8)[None], sequence_lengths=[[3, 5]])


def test_a_model_whose_mask_ignores_documents_is_a_clear_error():
    model = HfCausalLM.from_config(TINY["bloom"], seed=0)
    model.set_attn_implementation("eager")
    with pytest.raises(PsycheError, match=r"BloomForCausalLM \(model_type bloom\) cannot keep"):
        model(tokens(2, 16), sequence_lengths=PACKED)
    model(tokens(2, 16), sequence_lengths=[[16], [16]])  # one document per row is fine


def test_attention_implementations_pass_through():
    model = HfCausalLM.from_config(TINY["qwen2"])
    assert model.attn_implementation == "sdpa"
    model.set_attn_implementation("eager")
    assert model.hf_model.config._attn_implementation == "eager"
    with pytest.raises(PsycheError, match="no attention implementation 'flash'"):
        model.set_attn_implementation("flash")
    bloom = HfCausalLM.from_config(TINY["bloom"])
    with pytest.raises(PsycheError, match="use --attn-implementation eager"):
        bloom.set_attn_implementation("sdpa")


@pytest.mark.parametrize(
    ("ids", "labels", "message"),
    [
        (torch.tensor([[1, VOCAB]]), None, f"token id {VOCAB} is outside the vocabulary"),
        (torch.tensor([[1, -1]]), None, "token id -1 is outside"),
        (torch.tensor([[1, 2]]), torch.tensor([[1, VOCAB + 3]]), f"label {VOCAB + 3} is outside"),
        (torch.zeros(1, 65, dtype=torch.long), None, "65 tokens is longer than the model's"),
        (torch.zeros(2, 3), None, "integer token ids"),
    ],
)
def test_invalid_inputs(ids, labels, message):
    model = HfCausalLM.from_config(TINY["gpt2"])
    with pytest.raises(InvalidInputError, match=message):
        model(ids, labels=labels)


def test_seeded_init_ignores_the_global_rng_and_other_threads():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    reference = HfCausalLM.from_config(TINY["gpt2"], seed=5).state_dict()
    assert torch.equal(torch.get_rng_state(), before), "from_config moved the global RNG"
    torch.manual_seed(456)
    again = HfCausalLM.from_config(TINY["gpt2"], seed=5).state_dict()
    assert all(torch.equal(value, again[key]) for key, value in reference.items())

    stop = threading.Event()

    def churn():  # another peer thread reseeding and drawing from the global RNG
        while not stop.is_set():
            torch.manual_seed(0)
            torch.randn(64)

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        built = [HfCausalLM.from_config(TINY["gpt2"], seed=5).state_dict() for _ in range(3)]
    finally:
        stop.set()
        thread.join()
    for state in built:
        for key, value in reference.items():
            assert torch.equal(state[key], value), key


def test_state_dict_is_transformers_own_and_saves_atomically(tmp_path):
    model = HfCausalLM.from_config(TINY["qwen2"], seed=0)
    assert list(model.state_dict()) == list(model.hf_model.state_dict())
    assert [n for n, _ in model.named_parameters()] == [
        n for n, _ in model.hf_model.named_parameters()
    ]
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    model.save_pretrained(target, extra_files={"run.json": "{}", "peer-00000.bin": b"\x01"})
    assert (target / "notes.txt").read_text() == "mine"  # a save never deletes others' files
    assert (target / "model.safetensors").is_file() and (target / "run.json").read_text() == "{}"
    assert (target / "peer-00000.bin").read_bytes() == b"\x01"
    assert json.loads((target / "config.json").read_text())["model_type"] == "qwen2"

    loaded = transformers.AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)
    ids = tokens(2, 10)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    model.hf_model.save_pretrained = broken_save
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(target)
    assert (target / "run.json").is_file()  # the previous checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no staging directory left


def test_sharded_save_and_load_hf_state_dict(tmp_path):
    model = HfCausalLM.from_config(TINY["qwen2"], seed=0)
    model.save_pretrained(tmp_path / "sharded", max_shard_size=20_000)
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    loaded = HfCausalLM.from_pretrained(tmp_path / "sharded")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key

    other = HfCausalLM.from_config(TINY["qwen2"], seed=1)
    state = dict(model.state_dict())  # tied: lm_head.weight is a copy of the embedding
    other.load_hf_state_dict(state)
    assert other.lm_head.weight.data_ptr() == other.model.embed_tokens.weight.data_ptr()
    assert torch.equal(other.lm_head.weight, model.lm_head.weight)
    state.pop("model.norm.weight")
    with pytest.raises(PsycheError, match="missing keys: model.norm.weight"):
        other.load_hf_state_dict(state)


def test_from_pretrained_loads_float32_and_checks_the_weights(tmp_path):
    hf = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.for_model(**TINY["mistral"]), dtype=torch.bfloat16
    )
    hf.save_pretrained(tmp_path / "bf16")
    model = HfCausalLM.from_pretrained(tmp_path / "bf16")
    assert next(model.parameters()).dtype == torch.float32
    assert type(model.hf_model).__name__ == "MistralForCausalLM"
    with pytest.raises(PsycheError, match="no config.json"):
        HfCausalLM.from_pretrained(tmp_path)


def test_missing_weights_and_unknown_sources_are_clear_errors(tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    HfCausalLM.from_config(TINY["gpt2"]).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["transformer.ln_f.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(PsycheError, match="missing keys: transformer.ln_f.weight"):
        HfCausalLM.from_pretrained(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PsycheError, match="not in the Hugging Face cache"):
        HfCausalLM.from_pretrained("psyche-tests/no-such-model")
    with pytest.raises(PsycheError, match="cannot build a config for model_type 'no_such'"):
        HfCausalLM.from_config({"model_type": "no_such"})
    with pytest.raises(PsycheError, match="the config has no model_type"):
        HfCausalLM.from_config({"vocab_size": 8})
