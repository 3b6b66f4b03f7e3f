"""Training behaviour: packed documents, the loss contract, expert-bias balancing, plugin."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest
import torch

from psyche_core.comm import LocalGroup, run_local_peers
from psyche_core.errors import PsycheError
from psyche_core.options import Options
from psyche_deepseek import moe as moe_module
from psyche_deepseek.model import DeepseekV2ForCausalLM, DeepseekV3ForCausalLM
from psyche_deepseek.presets import V2_PRESETS, V3_PRESETS

TINY = dict(V3_PRESETS["tiny"])


def _ids(batch: int, length: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, TINY["vocab_size"], (batch, length), generator=generator)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_documents_equal_separate_documents(attn):
    model = DeepseekV3ForCausalLM.from_config(TINY, seed=1)
    model.set_attn_implementation(attn)
    model.eval()
    lengths = [[5, 8, 3], [16]]
    ids = _ids(2, 16, seed=2)
    with torch.no_grad():
        packed, loss = model(ids, labels=ids, sequence_lengths=lengths)
        for row, docs in enumerate(lengths):
            start = 0
            for n in docs:
                alone = model(ids[row : row + 1, start : start + n])[0]
                torch.testing.assert_close(
                    packed[row : row + 1, start : start + n], alone, rtol=1e-4, atol=1e-5
                )
                start += n
        # Explicit positions that restart per document give the same result.
        positions = torch.tensor(
            [[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2], list(range(16))]
        )
        again = model(ids, position_ids=positions, sequence_lengths=lengths)[0]
    torch.testing.assert_close(again, packed, rtol=0, atol=0)
    assert torch.isfinite(loss)


def test_loss_contract():
    model = DeepseekV3ForCausalLM.from_config(TINY, seed=1)
    ids = _ids(2, 12, seed=3)
    labels = ids.clone()
    labels[:, :6] = -100
    logits, loss = model(ids, labels=labels)
    manual = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, TINY["vocab_size"]), labels[:, 1:].reshape(-1)
    )
    torch.testing.assert_close(loss, manual)
    lean_logits, lean = model(ids, labels=labels, return_logits=False)
    assert lean_logits is None
    torch.testing.assert_close(lean, loss)
    kept = model(ids, labels=labels, num_logits_to_keep=2)[0]
    torch.testing.assert_close(kept, logits[:, -2:])
    assert model(ids, labels=torch.full_like(ids, -100))[1].item() == 0.0


def test_chunked_fused_loss_matches(monkeypatch):
    """The shared fused loss (psyche_core.losses) split into several chunks: same numbers."""
    model = DeepseekV3ForCausalLM.from_config(TINY, seed=1)
    ids = _ids(2, 12, seed=4)

    def loss_and_grads():
        model.zero_grad()
        loss = model(ids, labels=ids, return_logits=False)[1]
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    whole, whole_grads = loss_and_grads()
    monkeypatch.setattr("psyche_core.losses.LOSS_CHUNK_ELEMENTS", TINY["vocab_size"] * 5)
    chunked, chunked_grads = loss_and_grads()
    torch.testing.assert_close(chunked, whole)
    for a, b in zip(chunked_grads, whole_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def rate_options(rate: float) -> Options:
    return Options({"moe_bias_update_rate": rate})


def _train_forward(model, seed: int) -> None:
    model.train()
    ids = _ids(4, 32, seed)
    model(ids, labels=ids, return_logits=False)[1].backward()


def test_bias_update_follows_the_sign_rule():
    model = DeepseekV3ForCausalLM.from_config(TINY, seed=1, options=rate_options(0.01))
    routers = model.moe_routers()
    assert [i for i, _ in routers] == [1, 2]
    _train_forward(model, seed=5)
    _train_forward(model, seed=6)  # loads add up over micro-batches
    loads = [router.expert_load.clone() for _, router in routers]
    before = [router.e_score_correction_bias.clone() for _, router in routers]
    assert all(load.sum() == 2 * 4 * 32 * TINY["num_experts_per_tok"] for load in loads)

    metrics = model.step_end(LocalGroup(1).communicator(0))

    for (_, router), load, old in zip(routers, loads, before):
        change = router.e_score_correction_bias - old
        torch.testing.assert_close(change, 0.01 * torch.sign(load.mean() - load))
        busiest, idlest = load.argmax(), load.argmin()
        assert change[busiest] < 0 < change[idlest]  # overloaded down, underloaded up
        assert router.expert_load.sum() == 0  # counters reset for the next step
    for key in ("moe/max_load_frac", "moe/min_load_frac", "moe/load_cv", "moe/dead_experts"):
        assert key in metrics
    first = loads[0] / loads[0].sum()
    assert metrics["moe/max_load_frac"] >= first.max().item()
    cv = (loads[0].std(correction=0) / loads[0].mean()).item()
    assert metrics["moe/layer1/load_cv"] == pytest.approx(cv)


def test_metrics_without_bias_update_and_eval_is_not_counted():
    model = DeepseekV3ForCausalLM.from_config(TINY, seed=1)
    bias = model.moe_routers()[0][1].e_score_correction_bias.clone()
    comm = LocalGroup(1).communicator(0)
    model.eval()
    model(_ids(2, 8, seed=1))
    assert model.step_end(comm) == {}  # nothing routed in training mode
    _train_forward(model, seed=7)
    sent = comm.bytes_sent
    metrics = model.step_end(comm)
    assert metrics["moe/load_cv"] >= 0 and 0 <= metrics["moe/dead_experts"] <= 16
    assert torch.equal(model.moe_routers()[0][1].e_score_correction_bias, bias)
    assert comm.bytes_sent == sent  # metrics-only reduction is not training traffic


def test_bias_update_is_identical_on_peers():
    """Two in-process peers see different data; both apply the update of the summed load."""
    rate = 0.003

    def peer(comm):
        model = DeepseekV3ForCausalLM.from_config(TINY, seed=1, options=rate_options(rate))
        _train_forward(model, seed=10 + comm.rank)
        loads = [r.expert_load.clone() for _, r in model.moe_routers()]
        metrics = model.step_end(comm)
        return loads, [r.e_score_correction_bias.clone() for _, r in model.moe_routers()], metrics

    (loads0, bias0, m0), (loads1, bias1, m1) = run_local_peers(2, peer)
    assert any(not torch.equal(a, b) for a, b in zip(loads0, loads1))  # different data
    assert m0 == m1
    for a, b, load_a, load_b in zip(bias0, bias1, loads0, loads1):
        assert torch.equal(a, b)
        total = load_a + load_b
        torch.testing.assert_close(a, rate * torch.sign(total.mean() - total))


def test_bias_update_balances_a_collapsed_router():
    """With the bias update on, a router rigged to prefer two experts spreads its load out."""
    config = {**TINY, "num_hidden_layers": 2}
    model = DeepseekV3ForCausalLM.from_config(config, seed=1, options=rate_options(0.02))
    gate = model.moe_routers()[0][1]
    with torch.no_grad():
        gate.e_score_correction_bias.copy_(torch.tensor([0.3, 0.3, 0, 0, 0, 0, 0, 0]))
    comm = LocalGroup(1).communicator(0)
    cvs = []
    for step in range(30):  # no optimizer: only the bias moves
        _train_forward(model, seed=step)
        model.zero_grad()
        cvs.append(model.step_end(comm)["moe/load_cv"])
    assert cvs[-1] < 0.5 * cvs[0]


def test_bias_update_rate_errors():
    with pytest.raises(PsycheError, match="must be >= 0"):
        DeepseekV3ForCausalLM.from_config(TINY, options=rate_options(-1.0))
    with pytest.raises(PsycheError, match="needs MoE layers routed with topk_method 'noaux_tc'"):
        DeepseekV2ForCausalLM.from_config(V2_PRESETS["tiny"], options=rate_options(0.001))


@pytest.mark.parametrize(
    ("cls", "preset"), [(DeepseekV3ForCausalLM, TINY), (DeepseekV2ForCausalLM, V2_PRESETS["tiny"])]
)
def test_generic_training_loop(cls, preset):
    """forward with labels + backward + AdamW step + step_end, as the trainer runs it."""
    rate = 0.001 if cls is DeepseekV3ForCausalLM else 0.0
    model = cls.from_config(preset, seed=0, options=rate_options(rate))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    comm = LocalGroup(1).communicator(0)
    ids = _ids(4, 32, seed=0)
    losses = []
    for _ in range(15):
        model.train()
        for half in (ids[:2], ids[2:]):  # two micro-batches
            loss = model(half, labels=half, return_logits=False)[1]
            (loss / 2).backward()
            losses.append(loss.item())
        optimizer.step()
        optimizer.zero_grad()
        metrics = model.step_end(comm)
        assert all(isinstance(v, float) for v in metrics.values())
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("path", ["loop over experts", "un-sort and sum"])
def test_dispatch_fallbacks_match(path, monkeypatch):
    """The paths taken on older torch / on GPUs give the CPU path's numbers."""
    model = DeepseekV3ForCausalLM.from_config({**TINY, "num_experts_per_tok": 3}, seed=2)
    ids = _ids(2, 16, seed=1)
    expected = model(ids, labels=ids)
    expected.loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    if path == "loop over experts":
        monkeypatch.setattr(moe_module, "_use_grouped_mm", lambda x, w: False)
    else:
        monkeypatch.setattr(moe_module, "DETERMINISTIC_INDEX_ADD", set())
    got = model(ids, labels=ids)
    got.loss.backward()
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, model.parameters()):
        torch.testing.assert_close(b.grad, a, rtol=1e-5, atol=1e-6)


def _experts_case(seed: int = 3, dtype: torch.dtype = torch.float32):
    model = DeepseekV3ForCausalLM.from_config(TINY, seed=seed, dtype=dtype)
    moe = model.model.layers[-1].mlp
    x = torch.randn(64, TINY["hidden_size"], generator=torch.Generator().manual_seed(4))
    weights, indices = moe.gate(x.to(dtype))
    counts = torch.bincount(indices.view(-1), minlength=moe.gate.num_experts)
    return model, moe.experts, x.to(dtype), (indices, weights, counts)


@pytest.mark.parametrize("bf16_experts", [False, True], ids=["cpu: float32", "cuda: bfloat16"])
@pytest.mark.parametrize("path", ["grouped_mm", "loop over experts"])
def test_routed_experts_precision_under_autocast(path, bf16_experts, monkeypatch):
    """bf16-mixed: autocast casts no grouped_mm, so the experts pick their precision. On the
    CPU they stay float32 (equal to no autocast) on every dispatch path. Where they run in
    bfloat16 (CUDA; tested here by taking the CPU off the float32 list), their output matches
    the experts run on bfloat16 copies of input and weights, with a bfloat16-sized gap to
    float32 math. Either way the parameters' gradients are float32."""
    if path == "loop over experts":
        monkeypatch.setattr(moe_module, "_use_grouped_mm", lambda x, w: False)
    if bf16_experts:
        monkeypatch.setattr(moe_module, "FLOAT32_EXPERTS", set())
    model, experts, x, routing = _experts_case()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = experts(x, *routing)
    exact = experts(x, *routing)
    assert mixed.dtype == torch.float32
    if not bf16_experts:
        assert torch.equal(mixed, exact)
    else:
        bf16 = moe_module.DeepseekV3Experts(model.config)
        bf16.load_state_dict(experts.state_dict())
        want = bf16.to(torch.bfloat16)(x.bfloat16(), *routing).float()
        torch.testing.assert_close(mixed, want, rtol=1e-2, atol=1e-3)
        error = ((mixed - exact).norm() / exact.norm()).item()
        assert 1e-4 < error < 3e-2, error
    mixed.square().sum().backward()
    assert experts.gate_up_proj.grad.dtype == experts.down_proj.grad.dtype == torch.float32


def test_bfloat16_experts_compute_in_float32_on_the_cpu():
    """bf16-true on the CPU: the bfloat16 expert weights are upcast for the grouped matmuls
    (no bfloat16 kernel per row count), the result comes back in bfloat16 and the gradients
    stay bfloat16."""
    model, experts, x, routing = _experts_case(dtype=torch.bfloat16)
    got = experts(x, *routing)
    upcast = moe_module.DeepseekV3Experts(model.config)
    upcast.load_state_dict({k: v.float() for k, v in experts.state_dict().items()})
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, upcast(x.float(), *routing).to(torch.bfloat16))
    got.float().square().sum().backward()
    assert experts.gate_up_proj.grad.dtype == experts.down_proj.grad.dtype == torch.bfloat16


def test_plugin_registers_both_models_without_importing_torch():
    code = (
        "import sys, psyche_deepseek.plugin as p; specs = []; p.register_models(specs.append); "
        "print('torch' in sys.modules, [(s.name, s.architectures, s.preset_for_default, "
        "[o.name for o in s.options]) for s in specs])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == (
        "False [('deepseek_v3', ('DeepseekV3ForCausalLM',), 'tiny', ['moe-bias-update-rate']), "
        "('deepseek_v2', ('DeepseekV2ForCausalLM',), 'tiny', ['moe-bias-update-rate'])]"
    )
    points = importlib.metadata.entry_points(group="psyche")
    assert any(
        ep.name == "psyche_deepseek" and ep.value == "psyche_deepseek.plugin" for ep in points
    )
    from psyche_deepseek import plugin

    specs = []
    plugin.register_models(specs.append)
    assert specs[0].load() is DeepseekV3ForCausalLM and specs[1].load() is DeepseekV2ForCausalLM
