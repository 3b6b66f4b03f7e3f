"""The DisTrO optimizer's bookkeeping (design distro.md property 23): payload bytes against the
formula, per-step stats, options and their errors, checkpoints that resume bit for bit."""

from __future__ import annotations

import io
import json

import pytest
import torch
from torch import nn

from psyche_core.comm import LocalGroup, run_local_peers
from psyche_core.errors import PsycheError
from psyche_core.options import Options
from psyche_distro.compression import payload_nbytes
from psyche_distro.optimizer import DistroOptimizer, build_distro
from tests.distro.distro_helpers import (
    Tiny,
    assert_same,
    context,
    data_grads,
    distro,
    fixed_grads,
    params_of,
    train,
)

# -- 23. bytes ----------------------------------------------------------------------------------


def one_param_model(shape, dtype) -> nn.Module:
    model = nn.Module()
    model.w = nn.Parameter(torch.randn(shape).to(dtype))
    return model


@pytest.mark.parametrize(
    ("shape", "dtype", "one_bit", "nbytes"),
    [
        ((64, 64), torch.bfloat16, False, 16),
        ((64, 64), torch.float32, False, 24),
        ((64, 64), torch.bfloat16, True, 9),
        ((256,), torch.bfloat16, False, 48),
        ((256,), torch.bfloat16, True, 16 + 2),
    ],
)
def test_payload_bytes_equal_the_formula(shape, dtype, one_bit, nbytes):
    model = one_param_model(shape, dtype)
    opt = DistroOptimizer(model, chunk=64, topk=4, quantize_1bit=one_bit)
    comm = LocalGroup(1).communicator(0)
    metrics = train(model, opt, range(1, 3), fixed_grads(), communicator=comm)
    assert metrics[-1]["distro_payload_bytes"] == nbytes
    assert comm.bytes_sent == 2 * nbytes
    value_bits = 1 if one_bit else 8 * torch.empty((), dtype=dtype).element_size()
    assert payload_nbytes(shape, 64, 4, value_bits) == nbytes


LLAMA_20M_SHAPES = [("embed_tokens", (32000, 256)), ("lm_head", (32000, 256)), ("norm", (256,))] + [
    (f"layers.{i}.{name}", shape)
    for i in range(4)
    for name, shape in [
        ("q_proj", (256, 256)),
        ("k_proj", (256, 256)),
        ("v_proj", (256, 256)),
        ("o_proj", (256, 256)),
        ("gate_proj", (768, 256)),
        ("up_proj", (768, 256)),
        ("down_proj", (256, 768)),
        ("input_layernorm", (256,)),
        ("post_attention_layernorm", (256,)),
    ]
]


@pytest.mark.parametrize(
    ("dtype", "one_bit", "nbytes"),
    [(torch.bfloat16, False, 77744), (torch.float32, False, 116688), (torch.bfloat16, True, 41234)],
)
def test_llama_20m_payload(dtype, one_bit, nbytes):
    params = [
        (name, nn.Parameter(torch.zeros(shape, dtype=dtype))) for name, shape in LLAMA_20M_SHAPES
    ]
    assert sum(p.numel() for _, p in params) == 19794176
    opt = DistroOptimizer(params, chunk=64, topk=4, quantize_1bit=one_bit)
    assert opt.payload_nbytes == nbytes
    assert opt.layout.coefficients == 19472
    if dtype == torch.bfloat16 and not one_bit:  # one real step on the real shapes
        comm = LocalGroup(1).communicator(0)
        metrics = opt.step(context(1, comm, collect_stats=True))
        assert comm.bytes_sent == nbytes
        assert metrics["distro_compression_ratio"] == pytest.approx(79176704 / 77744)


# -- stats --------------------------------------------------------------------------------------


def test_stats_are_flat_numbers():
    model = Tiny()
    opt = distro(model)
    plain = train(model, opt, range(1, 2), data_grads())[0]
    assert set(plain) == {"distro_payload_bytes", "distro_received_bytes"}
    metrics = train(model, opt, range(2, 3), data_grads(), collect_stats=True)[0]
    json.dumps(metrics)
    for name, p in model.named_parameters():
        assert metrics[f"{name}.grad_energy"] == pytest.approx(float(p.grad.abs().sum()))
        assert metrics[f"{name}.delta_energy"] == pytest.approx(float(opt.delta[name].abs().sum()))
    numel = sum(p.numel() for p in model.parameters())
    assert metrics["distro_compression_ratio"] == pytest.approx(4 * numel / opt.payload_nbytes)
    assert metrics["distro_coefficients"] == opt.layout.coefficients


# -- options ------------------------------------------------------------------------------------


def options(**changes) -> Options:
    values = {
        "compression_chunk": 64,
        "compression_topk": 4,
        "compression_decay": 0.999,
        "distro_quantization": False,
        "distro_mode": "psyche",
        "distro_bf16_select": False,
        "weight_decay": 0.1,
    }
    return Options({**values, **changes})


def test_build_distro_reads_the_options():
    opt = build_distro(Tiny(), options(compression_chunk=4, compression_topk=3, distro_mode="sync"))
    assert (opt.chunk, opt.topk, opt.decay, opt.weight_decay) == (4, 3, 0.999, 0.1)
    assert opt.mode == "sync" and not opt.quantize_1bit and not opt.bf16_select
    assert opt.averages_gradients is False
    assert build_distro(Tiny(), options(distro_bf16_select=True)).bf16_select


@pytest.mark.parametrize(
    ("change", "flag"),
    [
        ({"compression_chunk": 0}, "--compression-chunk"),
        ({"compression_topk": 0}, "--compression-topk"),
        ({"compression_topk": -3}, "--compression-topk"),
        ({"compression_decay": -0.1}, "--compression-decay"),
        ({"compression_decay": 1.5}, "--compression-decay"),
        ({"compression_decay": float("nan")}, "--compression-decay"),
        ({"weight_decay": -0.01}, "--weight-decay"),
        ({"distro_mode": "async"}, "--distro-mode"),
    ],
)
def test_invalid_options_raise_one_line_errors(change, flag):
    with pytest.raises(PsycheError, match=flag) as info:
        build_distro(Tiny(), options(**change))
    assert "\n" not in str(info.value)


# -- checkpoints --------------------------------------------------------------------------------


def save_load(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)  # tensors and plain values only


@pytest.mark.parametrize("mode", ["psyche", "sync"])
@pytest.mark.parametrize("one_bit", [False, True])
def test_state_dict_resumes_bit_exactly(mode, one_bit):
    kwargs = {"mode": mode, "quantize_1bit": one_bit, "weight_decay": 0.1}

    def peer(comm, split: bool):
        model = Tiny(dtype=torch.float32)
        opt = distro(model, **kwargs)
        grads = data_grads(comm.rank)
        if not split:
            train(model, opt, range(1, 7), grads, communicator=comm)
            return params_of(model), opt.state_dict()
        train(model, opt, range(1, 4), grads, communicator=comm)
        saved_model, saved_opt = save_load(params_of(model)), save_load(opt.state_dict())
        model = Tiny(dtype=torch.float32, seed=99)  # different weights, then loaded
        model.load_state_dict(saved_model)
        opt = distro(model, **kwargs)
        opt.load_state_dict(saved_opt)
        train(model, opt, range(4, 7), grads, communicator=comm)
        return params_of(model), opt.state_dict()

    straight = run_local_peers(2, lambda comm: peer(comm, False), timeout=60)
    resumed = run_local_peers(2, lambda comm: peer(comm, True), timeout=60)
    for (p1, s1), (p2, s2) in zip(straight, resumed):
        assert_same(p1, p2)
        assert_same(s1["delta"], s2["delta"])
        assert ("pending_payloads" in s1) == (mode == "psyche")
        if mode == "psyche":
            assert torch.equal(s1["pending_payloads"], s2["pending_payloads"])


def test_load_state_dict_refuses_mismatches():
    model = Tiny()
    opt = distro(model, mode="psyche")
    train(model, opt, range(1, 3), data_grads())
    state = opt.state_dict()
    with pytest.raises(PsycheError, match="psyche"):
        distro(Tiny(), mode="sync").load_state_dict(state)
    with pytest.raises(PsycheError, match="compression"):
        distro(Tiny(), topk=3).load_state_dict(state)
    other = nn.Module()
    other.weight = nn.Parameter(torch.zeros(8, 12, dtype=torch.float64))
    with pytest.raises(PsycheError, match="other parameters"):
        distro(other).load_state_dict(state)
    ctx = context(3, LocalGroup(1).communicator(0))
    opt.prepare_step(ctx)
    with pytest.raises(PsycheError, match="prepare_step"):
        opt.state_dict()
    opt.abort_step(ctx)
