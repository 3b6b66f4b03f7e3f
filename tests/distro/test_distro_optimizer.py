"""The DisTrO optimizer in isolation (design distro.md 1.8, 1.9; properties 13-20); its bytes,
stats, options and checkpoints are in test_distro_optimizer_state.py."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import psyche_distro.groups as groups_module
from psyche_core.comm import LocalGroup, run_local_peers
from psyche_core.errors import PsycheError
from psyche_distro.compression import compress, decompress
from psyche_distro.dct import ChunkGrid, decode_chunks, encode_chunks
from psyche_distro.optimizer import DistroOptimizer
from tests.distro.distro_helpers import (
    Tiny,
    assert_same,
    context,
    data_grads,
    distro,
    fixed_grads,
    lr_schedule,
    params_of,
    peer_training,
    train,
)

FULL = 10**6  # top-k above every chunk's T: every coefficient is sent


def zero_grads(model: Tiny, step: int) -> None:
    for p in model.parameters():
        p.grad = torch.zeros_like(p)


def sent_part(state: dict, model: nn.Module, chunk: int) -> dict[str, torch.Tensor]:
    """DCT^-1 of this peer's last sent result, with the dense reference functions."""
    out = {}
    for name, p in model.named_parameters():
        grid = ChunkGrid.for_shape(tuple(p.shape), chunk)
        dense = decompress(
            state["own_idx"][name], state["own_val"][name], (grid.num_chunks, grid.chunk_numel)
        )
        out[name] = decode_chunks(dense, grid)
    return out


# -- 13. error feedback -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["psyche", "sync"])
@pytest.mark.parametrize("topk", [2, FULL])
def test_error_feedback_identity(mode, topk):
    model = Tiny()
    opt = distro(model, topk=topk, decay=1.0, mode=mode)
    train(model, opt, range(1, 4), fixed_grads())
    before = opt.delta
    state = opt.state_dict()
    for name, p in model.named_parameters():  # what was sent is the top-k of DCT(delta)
        grid = ChunkGrid.for_shape(tuple(p.shape), 4)
        idx, val, _, _ = compress(encode_chunks(before[name], grid), topk)
        assert torch.equal(state["own_idx"][name], idx)
        assert torch.equal(state["own_val"][name], val)
    sent = sent_part(state, model, 4)
    train(model, opt, range(4, 5), zero_grads)  # decay 1, zero gradient: delta -= sent only
    after = opt.delta
    for name in before:
        torch.testing.assert_close(sent[name] + after[name], before[name], atol=1e-12, rtol=0)
        if topk == FULL:
            torch.testing.assert_close(
                after[name], torch.zeros_like(after[name]), atol=1e-12, rtol=0
            )
        else:
            assert after[name].abs().max() > 1e-3


# -- 14-16. sign-SGD equivalence ----------------------------------------------------------------


@pytest.mark.parametrize("decay", [0.0, 0.5, 0.999, 1.0])
def test_sync_one_peer_full_topk_is_sign_sgd(decay):
    model = Tiny()
    opt = distro(model, topk=FULL, decay=decay, mode="sync")
    grads = fixed_grads(seed=1)
    comm = LocalGroup(1).communicator(0)
    for step in range(1, 7):
        before = params_of(model)
        ctx = context(step, comm)
        opt.prepare_step(ctx)
        assert_same(params_of(model), before)  # no lookahead in sync mode
        grads(model, step)
        g = {n: p.grad.clone() for n, p in model.named_parameters()}
        opt.step(ctx)
        expected = {n: before[n].add(g[n].sign(), alpha=-ctx.lr) for n in before}
        assert_same(params_of(model), expected)


@pytest.mark.parametrize("decay", [0.0, 0.9, 1.0])
def test_psyche_one_peer_full_topk_applies_sign_of_previous_gradient(decay):
    model = Tiny()
    opt = distro(model, topk=FULL, decay=decay, mode="psyche")
    grads = fixed_grads(seed=2)
    comm = LocalGroup(1).communicator(0)
    previous_grad = None
    for step in range(1, 7):
        before = params_of(model)
        delta = opt.delta
        ctx = context(step, comm)
        opt.prepare_step(ctx)
        # the gradient is taken at theta - lr(t-1) * sign(delta_(t-1)); nothing at the first step
        looked = {n: before[n].add(delta[n].sign(), alpha=-ctx.prev_lr) for n in before}
        assert_same(params_of(model), before if step == 1 else looked)
        grads(model, step)
        g = {n: p.grad.clone() for n, p in model.named_parameters()}
        opt.step(ctx)
        if previous_grad is None:  # the first step sends but applies nothing: exact restore
            assert_same(params_of(model), before)
        else:
            expected = {n: before[n].add(previous_grad[n].sign(), alpha=-ctx.lr) for n in before}
            assert_same(params_of(model), expected)
        previous_grad = g


def test_delta_before_compression_is_identical_in_both_modes():
    deltas = {}
    for mode in ("psyche", "sync"):
        model = Tiny()
        opt = distro(model, topk=2, decay=0.95, weight_decay=0.1, mode=mode)
        history = []
        grads = fixed_grads(seed=3)
        for step in range(1, 7):
            train(model, opt, range(step, step + 1), grads)
            history.append(opt.delta)  # delta as compressed at this step
        deltas[mode] = history
    for a, b in zip(deltas["psyche"], deltas["sync"]):
        assert_same(a, b)


# -- 17, 18. weight decay, decay edge cases -----------------------------------------------------


@pytest.mark.parametrize("mode", ["psyche", "sync"])
def test_weight_decay_alone(mode):
    model = Tiny()
    opt = distro(model, weight_decay=0.5, mode=mode)
    comm = LocalGroup(1).communicator(0)
    for step in range(1, 5):
        before = params_of(model)
        ctx = context(step, comm)
        opt.prepare_step(ctx)
        zero_grads(model, step)
        opt.step(ctx)
        expected = {n: torch.mul(before[n], 1.0 - ctx.lr * 0.5) for n in before}
        assert_same(params_of(model), expected)  # no sign update: sign(0) = 0
        assert all(d.abs().max() == 0 for d in opt.delta.values())


def test_decay_one_keeps_the_full_residual():
    model = Tiny()
    opt = distro(model, topk=2, decay=1.0, mode="sync")
    grads = fixed_grads(seed=4)
    train(model, opt, range(1, 3), grads)
    before, state = opt.delta, opt.state_dict()
    sent = sent_part(state, model, 4)
    train(model, opt, range(3, 4), grads)
    g = {}
    grads(model, 3)
    for name, p in model.named_parameters():
        g[name] = p.grad
    for name, d in opt.delta.items():
        expected = before[name] - sent[name] + lr_schedule(3) * g[name]
        torch.testing.assert_close(d, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("mode", ["psyche", "sync"])
def test_decay_zero_forgets_the_history(mode):
    model = Tiny()
    opt = distro(model, topk=2, decay=0.0, mode=mode)
    grads = fixed_grads(seed=5)
    for step in range(1, 5):
        train(model, opt, range(step, step + 1), grads)
        grads(model, step)
        for name, p in model.named_parameters():
            assert torch.equal(opt.delta[name], p.grad * lr_schedule(step))


# -- 19, 20. peers ------------------------------------------------------------------------------


def peer_run(world: int, mode: str, same_data: bool, steps: int = 6, **kwargs):
    def peer(comm):
        model = Tiny()
        opt = distro(model, mode=mode, weight_decay=0.1, **kwargs)
        grads = data_grads(rank=0 if same_data else comm.rank)
        metrics = train(model, opt, range(1, steps + 1), grads, communicator=comm)
        return params_of(model), metrics, comm.bytes_sent, opt.payload_nbytes

    return run_local_peers(world, peer, timeout=60)


@pytest.mark.parametrize("mode", ["psyche", "sync"])
@pytest.mark.parametrize("one_bit", [False, True])
def test_identical_peers_equal_one_peer(mode, one_bit):
    ((single, _, _, _),) = peer_run(1, mode, True, quantize_1bit=one_bit)
    for params, _, _, _ in peer_run(3, mode, True, quantize_1bit=one_bit):
        assert_same(params, single)
    assert not torch.equal(single["weight"], Tiny().weight)  # it did train


@pytest.mark.parametrize("mode", ["psyche", "sync"])
@pytest.mark.parametrize("one_bit", [False, True])
def test_peers_with_different_data_stay_bit_identical(mode, one_bit):
    runs = peer_run(3, mode, False, quantize_1bit=one_bit)
    for params, metrics, sent, nbytes in runs:
        assert_same(params, runs[0][0])
        assert sent == 6 * nbytes  # bytes_sent counts exactly the payloads
        assert all(m["distro_payload_bytes"] == nbytes for m in metrics)
        assert all(m["distro_received_bytes"] == 2 * nbytes for m in metrics)
    ((single, _, _, _),) = peer_run(1, mode, False, quantize_1bit=one_bit)
    assert not torch.equal(single["weight"], runs[0][0]["weight"])  # the peers mattered


def test_two_peers_apply_the_scatter_mean_of_both_results():
    """sync mode, one step from delta = 0: the update is -lr * sign(D^-1(scatter_mean)), computed
    here with the dense reference functions."""
    lr = lr_schedule(1)

    def peer(comm):
        model = Tiny()
        opt = distro(model, topk=3, mode="sync")
        grads = data_grads(rank=comm.rank)
        train(model, opt, range(1, 2), grads, communicator=comm)
        grads(Tiny(), 1)  # same data again, on a fresh copy, for the reference
        own = opt.state_dict()
        return params_of(model), own["own_idx"], own["own_val"]

    runs = run_local_peers(2, peer, timeout=60)
    start = params_of(Tiny())
    for name, theta in start.items():
        grid = ChunkGrid.for_shape(tuple(theta.shape), 4)
        dense = decompress(
            torch.cat([r[1][name] for r in runs], -1),
            torch.cat([r[2][name] for r in runs], -1),
            (grid.num_chunks, grid.chunk_numel),
        )
        update = decode_chunks(dense, grid)
        clear = update.abs() > 1e-9  # rounding can only matter where the update is ~0
        expected = theta - lr * update.sign()
        assert clear.float().mean() > 0.5
        for params, _, _ in runs:
            torch.testing.assert_close(params[name][clear], expected[clear], atol=1e-15, rtol=0)


class Wide(nn.Module):
    """One parameter of 2 x 3 chunks of 64 x 64 and a vector of 2 chunks of 64."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(128, 192, generator=g, dtype=torch.float64))
        self.bias = nn.Parameter(torch.randn(128, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("mode", ["psyche", "sync"])
@pytest.mark.parametrize(("chunk", "topk"), [(64, 40), (8, FULL)])
def test_dense_and_sparse_decoding_agree(mode, chunk, topk, monkeypatch):
    """Above 32 coefficients per chunk the aggregate and this peer's sent part are decoded
    densely (no cliff in k; with every coefficient sent, without reading indices); forcing the
    sparse route gives the same training."""

    def run() -> list[dict[str, torch.Tensor]]:
        def peer(comm):
            model = Wide()
            opt = DistroOptimizer(model, chunk=chunk, topk=topk, decay=0.9, mode=mode)
            train(model, opt, range(1, 5), fixed_grads(seed=comm.rank), communicator=comm)
            return {**params_of(model), **{f"delta.{n}": d for n, d in opt.delta.items()}}

        return run_local_peers(2, peer, timeout=60)

    dense = run()
    monkeypatch.setattr(groups_module, "_SPARSE_MAX", 10**9)
    sparse = run()
    for a, b in zip(dense, sparse):
        for name in a:
            torch.testing.assert_close(a[name], b[name], atol=1e-12, rtol=0)
    assert not torch.equal(dense[0]["weight"], Wide().weight)


class Layers(nn.Module):
    """Small parameters sharing chunk layouts (stacked into groups), interleaved with others,
    and one without a gradient."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        for i in range(3):
            setattr(self, f"a{i}", nn.Parameter(torch.randn(8, 12, generator=g).double()))
            setattr(self, f"b{i}", nn.Parameter(torch.randn(12, generator=g).double()))
            setattr(self, f"c{i}", nn.Parameter(torch.randn(4, 12, generator=g).double()))
        self.frozen_grad = nn.Parameter(torch.randn(16, 12, generator=g).double())


def layers_grads(model: nn.Module, step: int) -> None:
    fixed_grads(seed=step)(model, step)
    model.frozen_grad.grad = None  # a parameter whose gradient is missing this step


@pytest.mark.parametrize("mode", ["psyche", "sync"])
def test_stacked_groups_equal_one_parameter_at_a_time(mode, monkeypatch):
    """Small parameters of one chunk layout are processed as one stacked group; the payload,
    delta and weights are those of processing each parameter on its own."""

    def run(peers_payloads: list) -> tuple[dict, dict]:
        model = Layers()
        opt = distro(model, topk=3, mode=mode, weight_decay=0.1)
        comm = LocalGroup(1).communicator(0)
        for step in range(1, 5):
            ctx = context(step, comm)
            opt.prepare_step(ctx)
            layers_grads(model, step)
            opt.step(ctx)
            peers_payloads.append(opt.state_dict()["own_idx"])
        return params_of(model), opt.state_dict()

    stacked_idx, single_idx = [], []
    stacked = run(stacked_idx)
    assert len(distro(Layers())._groups) == 2  # the 4 x 4-chunk matrices; the vectors
    monkeypatch.setattr(groups_module, "_STACK_MAX", 0)
    single = run(single_idx)
    for a, b in zip(stacked_idx, single_idx):
        assert_same(a, b)
    for name in stacked[0]:
        torch.testing.assert_close(stacked[0][name], single[0][name], atol=1e-12, rtol=0)
        torch.testing.assert_close(
            stacked[1]["delta"][name], single[1]["delta"][name], atol=1e-12, rtol=0
        )


def test_bf16_selection_trains_like_the_exact_selection():
    """--distro-bf16-select on a model with 64 x 64 chunks sends the same indices as the exact
    route here and values equal to float32 rounding."""
    results = {}
    for bf16 in (False, True):
        model = Wide().float()
        opt = DistroOptimizer(model, chunk=64, topk=4, decay=0.9, bf16_select=bf16)
        train(model, opt, range(1, 4), fixed_grads(seed=1))
        results[bf16] = (params_of(model), opt.state_dict())
    (p_exact, s_exact), (p_bf16, s_bf16) = results[False], results[True]
    for name in s_exact["own_idx"]:
        assert torch.equal(s_exact["own_idx"][name], s_bf16["own_idx"][name])
        torch.testing.assert_close(s_exact["own_val"][name], s_bf16["own_val"][name])
    for name in p_exact:
        torch.testing.assert_close(p_exact[name], p_bf16[name])


def test_peers_with_other_options_are_refused():
    def peer(comm):
        model = Tiny()
        opt = distro(model, topk=2 + comm.rank)
        train(model, opt, range(1, 2), data_grads(comm.rank), communicator=comm)

    with pytest.raises(PsycheError, match="disagree"):
        run_local_peers(2, peer, timeout=60)


# -- lookahead restore ----------------------------------------------------------------------------


def test_abort_restores_the_lookahead_exactly():
    model = Tiny(dtype=torch.float32)
    opt = distro(model, mode="psyche", weight_decay=0.1)
    comm = LocalGroup(1).communicator(0)
    train(model, opt, range(1, 3), data_grads(), communicator=comm)
    before = params_of(model)
    ctx = context(3, comm)
    opt.prepare_step(ctx)
    assert not torch.equal(model.weight, before["weight"])
    opt.abort_step(ctx)
    assert_same(params_of(model), before)
    opt.prepare_step(ctx)
    opt.prepare_step(ctx)  # twice: still one lookahead
    opt.abort_step(ctx)
    assert_same(params_of(model), before)
    train(model, opt, range(3, 4), data_grads(), communicator=comm)


def test_bfloat16_parameters_keep_float32_delta():
    model = Tiny(dtype=torch.bfloat16)
    opt = distro(model, mode="psyche", weight_decay=0.1)
    metrics = train(model, opt, range(1, 5), data_grads(), collect_stats=True)
    assert all(d.dtype == torch.float32 for d in opt.delta.values())
    assert model.weight.dtype == torch.bfloat16
    assert all(math.isfinite(v) for m in metrics for v in m.values())


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["psyche", "sync"])
def test_gloo_processes_and_in_process_peers_agree_bitwise(mode):
    from psyche_core.distributed import spawn_peers

    job = {"steps": 5, "options": {"mode": mode, "quantize_1bit": mode == "sync"}}
    threads = run_local_peers(2, lambda comm: peer_training(comm, job), timeout=60)
    processes = spawn_peers(2, "gloo", 60, peer_training, job)
    assert threads[0] == threads[1]
    assert processes[0] == processes[1]
    assert processes[0] == threads[0]  # bitwise: raw bytes of every parameter
