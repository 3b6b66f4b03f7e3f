import json
import threading

import pytest
import torch

from psyche_core import run
from psyche_core.adamw import AdamW
from psyche_core.comm import run_local_peers
from psyche_core.errors import PsycheError
from psyche_core.optim import Optimizer, clip_grad_norm_, grad_norm
from psyche_core.options import all_option_specs, resolve
from psyche_core.plugins import Plugins
from psyche_core.schedule import ConstantLR
from psyche_core.trainer import Trainer, TrainerConfig, plan_batches
from tests.core.toy_plugin import PatternData, ToyForCausalLM

TOY = {"vocab_size": 32, "hidden_size": 16}

# core's options and its built-in plugins' (the reporters declare --metrics)
CORE_AND_BUILTIN = all_option_specs(Plugins.load(entry_points=False))


class CaptureGrads(Optimizer):
    """Plain SGD that keeps a copy of the gradients it was given."""

    def __init__(self, model):
        super().__init__(model.named_parameters())
        self.seen = []

    def step(self, ctx):
        self.seen.append([p.grad.clone() for p in self.params])
        with torch.no_grad():
            for p in self.params:
                p -= ctx.lr * p.grad
        return {}


def make_trainer(micro_batch, total_batch=8, optimizer=None, steps=3, comm=None, data=None, **kw):
    model = ToyForCausalLM.from_config(TOY, seed=0)
    config = TrainerConfig(
        total_batch=total_batch, total_steps=steps, micro_batch=micro_batch, **kw
    )
    optimizer = optimizer(model) if optimizer else CaptureGrads(model)
    data = data or PatternData(sequence_length=12)
    return Trainer(model, data, optimizer, ConstantLR(0.1), config, comm)


def test_one_batch_of_8_equals_4_micro_batches_of_2():
    whole = make_trainer(micro_batch=8)
    split = make_trainer(micro_batch=2)
    for step in (1, 2, 3):
        a = whole.train_step(step)
        b = split.train_step(step)
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
    for ga, gb in zip(whole.optimizer.seen[-1], split.optimizer.seen[-1]):
        torch.testing.assert_close(ga, gb, rtol=0, atol=1e-6)
    for pa, pb in zip(whole.model.parameters(), split.model.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-6)


def test_step_takes_the_global_sample_range_and_peers_split_it():
    datas = [PatternData(sequence_length=8), PatternData(sequence_length=8)]

    def peer(comm):
        trainer = make_trainer(micro_batch=1, total_batch=4, comm=comm, data=datas[comm.rank])
        trainer.train_step(2)
        return trainer

    run_local_peers(2, peer)
    assert datas[0].requests[0] == [4, 5] and datas[1].requests[0] == [6, 7]


def test_sample_ids_wrap_past_the_end_of_the_data():
    trainer = make_trainer(micro_batch=4, total_batch=48)  # 64 sequences
    assert list(trainer.sample_ids(2)) == [*range(48, 64), *range(0, 32)]


def test_the_next_steps_batch_is_prefetched():
    data = PatternData(sequence_length=8)
    trainer = make_trainer(micro_batch=2, total_batch=4, data=data, steps=5)
    trainer.train_step(1)
    assert data.requests == [[0, 1, 2, 3], [4, 5, 6, 7]]
    trainer._prefetch.close()


@pytest.mark.parametrize(
    "total, micro, world, message",
    [
        (10, 4, 1, "multiple of --micro-batch 4"),
        (9, None, 2, "cannot be split evenly over 2"),
        (0, None, 1, "at least 1"),
    ],
)
def test_impossible_batch_settings_are_clear_errors(total, micro, world, message):
    with pytest.raises(PsycheError, match=message):
        plan_batches(total, micro, world)


def test_clip_grad_norm_follows_psyche():
    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.tensor([3.0, 4.0, 0.0, 0.0])
    assert clip_grad_norm_([p], 10.0) == pytest.approx(5.0)
    assert torch.equal(p.grad, torch.tensor([3.0, 4.0, 0.0, 0.0]))  # under the limit: untouched
    assert clip_grad_norm_([p], 0.0) == pytest.approx(5.0)  # 0 disables
    assert torch.equal(p.grad, torch.tensor([3.0, 4.0, 0.0, 0.0]))
    clip_grad_norm_([p], 1.0)
    assert float(grad_norm([p])) == pytest.approx(5.0 / (5.0 + 1e-6), rel=1e-6)


def test_fp32_accumulation_with_bfloat16_parameters():
    model = ToyForCausalLM.from_config(TOY, seed=0, dtype=torch.bfloat16)
    config = TrainerConfig(total_batch=8, total_steps=2, micro_batch=2, grad_accum_in_fp32=True)
    trainer = Trainer(model, PatternData(12), CaptureGrads(model), ConstantLR(0.1), config)
    metrics = trainer.train_step(1)
    assert all(g.dtype == torch.bfloat16 for g in trainer.optimizer.seen[0])
    assert metrics["loss"] == pytest.approx(float(torch.log(torch.tensor(32.0))), abs=0.05)


def test_non_finite_loss_stops_with_a_clear_error():
    trainer = make_trainer(micro_batch=8)
    with torch.no_grad():
        trainer.model.lm_head.weight.fill_(float("nan"))
    with pytest.raises(PsycheError, match="loss is nan at step 1"):
        trainer.train_step(1)


def test_stop_event_ends_every_peer_after_the_same_step():
    stop = threading.Event()

    def peer(comm):
        trainer = make_trainer(micro_batch=1, total_batch=2, comm=comm, steps=50)
        if comm.rank == 1:
            stop.set()  # only one peer sees the signal
        return trainer.train(stop if comm.rank == 1 else None)

    summaries = run_local_peers(2, peer)
    assert [s["last_step"] for s in summaries] == [1, 1]
    assert all(s["stopped"] for s in summaries)


def options(tmp_path, **overrides):
    values = {
        "model": "toy",
        "data_provider": "toy",
        "sequence_length": 12,
        "total_batch": 8,
        "micro_batch": 2,
        "total_steps": 12,
        "warmup_steps": 2,
        "learning_rate": 3e-2,
        "metrics": str(tmp_path / "metrics.jsonl"),
        "save_path": str(tmp_path / "model"),
        **overrides,
    }
    return resolve(CORE_AND_BUILTIN, values)


def read_metrics(path):
    return [json.loads(line) for line in open(path)]


def test_run_writes_metrics_saves_the_model_and_the_loss_falls(tmp_path, plugins):
    summary = run.train(options(tmp_path), plugins)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 13))
    for key in ("loss", "lr", "tokens_per_s", "grad_norm", "bytes_sent", "data_wait_s"):
        assert key in rows[0]
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.1
    assert rows[0]["bytes_sent"] == 4 * sum(
        p.numel() for p in ToyForCausalLM.from_config(TOY).parameters()
    )
    loaded = ToyForCausalLM.from_pretrained(tmp_path / "model")
    assert loaded.num_parameters() > 0 and summary["saved"] == str(tmp_path / "model")


def test_a_seeded_run_repeats_bit_for_bit(tmp_path, plugins):
    first, second = tmp_path / "a", tmp_path / "b"
    run.train(options(first, seed=7), plugins)
    run.train(options(second, seed=7), plugins)
    losses = [[r["loss"] for r in read_metrics(d / "metrics.jsonl")] for d in (first, second)]
    assert losses[0] == losses[1]
    a = ToyForCausalLM.from_pretrained(first / "model").state_dict()
    b = ToyForCausalLM.from_pretrained(second / "model").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    third = tmp_path / "c"
    run.train(options(third, seed=8), plugins)
    c = ToyForCausalLM.from_pretrained(third / "model").state_dict()
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_two_in_process_peers_equal_one_process_with_adamw(tmp_path, plugins):
    one, two = tmp_path / "one", tmp_path / "two"
    run.train(options(one), plugins)
    run.train(options(two, peers=2, micro_batch=1, dp_backend="threads"), plugins)
    la = [r["loss"] for r in read_metrics(one / "metrics.jsonl")]
    lb = [r["loss"] for r in read_metrics(two / "metrics.jsonl")]
    assert la == pytest.approx(lb, abs=1e-6)
    a = ToyForCausalLM.from_pretrained(one / "model").state_dict()
    b = ToyForCausalLM.from_pretrained(two / "model").state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


def test_adamw_takes_betas_eps_and_weight_decay_from_the_flags(tmp_path):
    opts = options(tmp_path, beta1=0.8, beta2=0.9, eps=1e-6, weight_decay=0.05)
    from psyche_core.adamw import build_adamw

    optimizer = build_adamw(ToyForCausalLM.from_config(TOY), opts)
    group = optimizer.torch_optimizer.param_groups[0]
    assert (group["betas"], group["eps"], group["weight_decay"]) == ((0.8, 0.9), 1e-6, 0.05)
    with pytest.raises(PsycheError, match="--beta1 must be in"):
        AdamW(ToyForCausalLM.from_config(TOY), betas=(1.0, 0.9))


def test_a_fallback_model_loads_what_no_native_plugin_claims(plugins, tmp_path):
    from psyche_core import ModelSpec
    from psyche_core.resolve import resolve_model, spec_for_config

    plugins.models.add(
        "anything",
        ModelSpec(name="anything", cls="tests.core.toy_plugin:ToyForCausalLM", fallback=True),
        plugins.infos[-1].owner,
    )
    assert spec_for_config(plugins, {"model_type": "toy"}, "x").name == "toy"  # native first
    assert spec_for_config(plugins, {"model_type": "qwen9"}, "x").name == "anything"
    ToyForCausalLM.from_config(TOY).save_pretrained(tmp_path / "ckpt")
    config = (tmp_path / "ckpt" / "config.json").read_text()
    config = config.replace('"toy"', '"qwen9"').replace("ToyForCausalLM", "Qwen9ForCausalLM")
    (tmp_path / "ckpt" / "config.json").write_text(config)
    choice = resolve_model(plugins, str(tmp_path / "ckpt"))
    assert choice.spec.name == "anything"
    assert choice.note == "using anything for model_type 'qwen9' (no native model plugin claims it)"
