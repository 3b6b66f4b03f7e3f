"""DeepSeek mixture of experts: router, routed experts, shared experts, load balancing.

The classes carry transformers' DeepSeek-V3 names and serve V2 as well: the router implements
both versions' ``topk_method`` s (transformers' ``DeepseekV2TopkRouter`` /
``DeepseekV3TopkRouter``), picked by the config. Numerics follow transformers 5 (those routers
and the ``grouped_mm`` experts path): router logits and routing weights in float32, expert
outputs weighted in float32 and summed per token in slot order.

Routed experts are kept packed in memory, as transformers 5 does (``experts.gate_up_proj``
``(E, 2I, H)``, ``experts.down_proj`` ``(E, H, I)``), and dispatched without a Python loop over
tokens: token slots are sorted by expert and every expert runs as one group of a grouped matmul
(``torch.nn.functional.grouped_mm``; one loop over experts on older torch). On disk the experts
are per-expert linear layers (``experts.{i}.gate_proj.weight`` ...);
:meth:`DeepseekV3Experts.unpack` and ``DeepseekV3Experts._load_from_state_dict`` convert.

Auxiliary-loss-free balancing (DeepSeek-V3 paper, section 2.1.2): the router adds a bias to the
scores it *chooses* experts by (never to the weights it mixes them with); after each optimizer
step :func:`balance_step` moves each bias by ``rate * sign(mean load - load)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from psyche_core.comm import Communicator
from psyche_deepseek.config import DeepseekV2Config

# Devices where index_add sums duplicate indices in a fixed order (CUDA uses atomics).
DETERMINISTIC_INDEX_ADD = {"cpu"}
# Devices where the routed experts compute in float32 whatever the precision (bf16-true's
# bfloat16 weights are upcast for their two grouped matmuls; autocast is turned off there). On
# the CPU oneDNN builds and keeps a bfloat16 kernel for every new matrix shape, and routed row
# counts change every step: with bfloat16 experts the tiny DeepSeek-V3's resident memory grew
# by ~870 MiB over 40 steps and the step was no faster (benchmarks/deepseek_expert_precision.py).
# Elsewhere bf16-mixed casts them to the autocast dtype itself: autocast casts no grouped_mm.
FLOAT32_EXPERTS = {"cpu"}

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "relu": F.relu,
}


class DeepseekV3MLP(nn.Module):
    """SwiGLU feed-forward: the dense layers and the shared experts."""

    def __init__(self, config: DeepseekV2Config, intermediate_size: int) -> None:
        super().__init__()
        hidden, bias = config.hidden_size, config.mlp_bias
        self.gate_proj = nn.Linear(hidden, intermediate_size, bias=bias)
        self.up_proj = nn.Linear(hidden, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden, bias=bias)
        self.act_fn = ACTIVATIONS[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class DeepseekV3TopkRouter(nn.Module):
    """Scores experts per token and picks ``num_experts_per_tok`` of them.

    ``weight``, ``e_score_correction_bias`` and ``expert_load`` stay float32 whatever the model
    dtype (the model's ``keep_in_fp32``, as transformers keeps the first two); ``expert_load``
    counts the token slots routed to each expert in training forwards since the last
    :func:`balance_step`.
    """

    def __init__(self, config: DeepseekV2Config) -> None:
        super().__init__()
        self.num_experts = config.n_routed_experts
        self.top_k = config.num_experts_per_tok
        self.scoring_func = config.scoring_func
        self.topk_method = config.topk_method
        self.n_group = config.n_group or 1
        self.topk_group = config.topk_group or self.n_group
        self.norm_topk_prob = config.norm_topk_prob
        self.routed_scaling_factor = config.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(self.num_experts, config.hidden_size))
        bias = torch.zeros(self.num_experts) if self.topk_method == "noaux_tc" else None
        self.register_buffer("e_score_correction_bias", bias)
        self.register_buffer("expert_load", torch.zeros(self.num_experts), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``(N, H)`` -> float32 routing weights and expert indices, both ``(N, top_k)``."""
        logits = F.linear(x.float(), self.weight.float())  # (N, E)
        scores = logits.softmax(dim=-1) if self.scoring_func == "softmax" else logits.sigmoid()
        if self.topk_method == "greedy":
            weights, indices = scores.topk(self.top_k, dim=-1, sorted=False)
        elif self.topk_method == "group_limited_greedy":  # DeepSeek-V2: best groups by max score
            masked = self._mask_groups(scores, fill=0.0)
            weights, indices = masked.topk(self.top_k, dim=-1, sorted=False)
        else:  # noaux_tc, DeepSeek-V3: choose with the bias, weight without it
            choice = scores + self.e_score_correction_bias
            choice = self._mask_groups(choice, fill=float("-inf"))
            indices = choice.topk(self.top_k, dim=-1, sorted=False).indices
            weights = scores.gather(1, indices)
        if self.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights * self.routed_scaling_factor, indices

    def _mask_groups(self, scores: torch.Tensor, fill: float) -> torch.Tensor:
        """Keep only the experts of each token's ``topk_group`` best groups."""
        if self.topk_group == self.n_group:
            return scores
        grouped = scores.view(scores.shape[0], self.n_group, -1)  # (N, groups, E / groups)
        if self.topk_method == "noaux_tc":
            group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)
        else:
            group_scores = grouped.amax(dim=-1)
        best = group_scores.topk(self.topk_group, dim=-1, sorted=False).indices
        keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, best, True)
        return grouped.masked_fill(~keep.unsqueeze(-1), fill).view_as(scores)

    def reset_buffers(self) -> None:
        device = self.weight.device
        self.expert_load = torch.zeros(self.num_experts, device=device)


def _use_grouped_mm(x: torch.Tensor, weight: torch.Tensor) -> bool:
    if not hasattr(F, "grouped_mm"):
        return False
    if x.device.type == "cpu":  # the CPU kernel wants 16-byte aligned operands
        return x.data_ptr() % 16 == 0 and weight.data_ptr() % 16 == 0
    return _bf16_grouped_mm(x, weight)


def _bf16_grouped_mm(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether grouped_mm has a bf16 kernel for these operands: on the CPU, or CUDA SM80+."""
    if not x.dtype == weight.dtype == torch.bfloat16:
        return False
    if x.device.type == "cpu":
        return True
    if x.device.type != "cuda":
        return False
    return torch.cuda.get_device_capability(x.device) >= (8, 0)  # the CUDA kernel: bf16, SM80+


def grouped_linear(x: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` sorted by group, ``counts[e]`` rows for group ``e``; row r of group e is
    multiplied by ``weight[e].T`` (``weight`` ``(E, out, in)``)."""
    # Under --compile grouped_mm is traced in bf16 only (its shape check wants bf16 on every
    # device; compiled buffers are aligned). Otherwise this one call runs eager: dynamo can
    # neither read data pointers nor split by row counts that change every step.
    compiling = torch.compiler.is_compiling() and hasattr(F, "grouped_mm")
    if compiling and _bf16_grouped_mm(x, weight):
        return _grouped_mm(x, weight, counts)
    return _grouped_linear_eager(x, weight, counts)


def _grouped_mm(x: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    offsets = counts.cumsum(0, dtype=torch.int32)
    return F.grouped_mm(x, weight.transpose(-2, -1), offs=offsets)


@torch.compiler.disable
def _grouped_linear_eager(
    x: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor
) -> torch.Tensor:
    if _use_grouped_mm(x, weight):
        return _grouped_mm(x, weight, counts)
    chunks = x.split(counts.tolist())
    return torch.cat([F.linear(chunk, weight[e]) for e, chunk in enumerate(chunks)])


class DeepseekV3Experts(nn.Module):
    """The routed experts, packed: ``gate_up_proj`` ``(E, 2I, H)``, ``down_proj`` ``(E, H, I)``."""

    def __init__(self, config: DeepseekV2Config) -> None:
        super().__init__()
        self.num_experts = config.n_routed_experts
        experts, hidden, inner = self.num_experts, config.hidden_size, config.moe_intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(experts, 2 * inner, hidden))
        self.down_proj = nn.Parameter(torch.empty(experts, hidden, inner))
        self.act_fn = ACTIVATIONS[config.hidden_act]

    def forward(
        self, x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor, counts: torch.Tensor
    ) -> torch.Tensor:
        """``x`` ``(N, H)``; ``indices`` / ``weights`` ``(N, k)``; ``counts`` slots per expert."""
        n_tokens, top_k = indices.shape
        order = indices.view(-1).argsort(stable=True)  # (N*k,) slots grouped by expert
        tokens = order // top_k
        experts = (x, self.gate_up_proj, self.down_proj)
        device_type = x.device.type
        autocast = torch.is_autocast_enabled(device_type)
        precision = contextlib.nullcontext()
        if device_type in FLOAT32_EXPERTS:  # on every path (autocast would cast F.linear)
            precision = torch.autocast(device_type, enabled=False) if autocast else precision
            experts = tuple(t.float() if t.element_size() < 4 else t for t in experts)
        elif autocast:
            experts = tuple(t.to(torch.get_autocast_dtype(device_type)) for t in experts)
        inputs, gate_up_proj, down_proj = experts
        with precision:
            h = inputs.index_select(0, tokens)  # (N*k, H) tokens by expert; backward: index_add
            h = grouped_linear(h, gate_up_proj, counts)  # (N*k, 2I)
            gate, up = h.chunk(2, dim=-1)
            h = grouped_linear(self.act_fn(gate) * up, down_proj, counts)  # (N*k, H)
        h = h * weights.view(-1)[order].unsqueeze(-1)  # float32 routing weights
        # Summed per token in float32, as transformers does. index_add is deterministic on the
        # CPU only, and eager only (compiled it becomes atomic adds); elsewhere un-sort the
        # slots (order is a permutation) and sum.
        if h.device.type in DETERMINISTIC_INDEX_ADD and not torch.compiler.is_compiling():
            out = h.new_zeros(n_tokens, h.shape[-1]).index_add(0, tokens, h)
        else:
            out = h.new_empty(h.shape).index_copy(0, order, h).view(n_tokens, top_k, -1).sum(1)
        return out.to(x.dtype)

    @staticmethod
    def unpack(prefix: str, gate_up: torch.Tensor, down: torch.Tensor) -> dict[str, torch.Tensor]:
        """The on-disk per-expert keys of one layer's packed experts."""
        inner = down.shape[-1]
        out = {}
        for i in range(gate_up.shape[0]):
            out[f"{prefix}{i}.gate_proj.weight"] = gate_up[i, :inner]
            out[f"{prefix}{i}.up_proj.weight"] = gate_up[i, inner:]
            out[f"{prefix}{i}.down_proj.weight"] = down[i]
        return out

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        if f"{prefix}0.gate_proj.weight" in state_dict:  # on-disk layout: pack it
            gate_up, down = [], []
            for i in range(self.num_experts):
                gate = state_dict.pop(f"{prefix}{i}.gate_proj.weight")
                up = state_dict.pop(f"{prefix}{i}.up_proj.weight")
                gate_up.append(torch.cat([gate, up]))
                down.append(state_dict.pop(f"{prefix}{i}.down_proj.weight"))
            state_dict[prefix + "gate_up_proj"] = torch.stack(gate_up)
            state_dict[prefix + "down_proj"] = torch.stack(down)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class DeepseekV3MoE(nn.Module):
    """Routed experts plus always-on shared experts."""

    def __init__(self, config: DeepseekV2Config) -> None:
        super().__init__()
        self.gate = DeepseekV3TopkRouter(config)
        self.experts = DeepseekV3Experts(config)
        shared = config.n_shared_experts or 0
        self.shared_experts = (
            DeepseekV3MLP(config, config.moe_intermediate_size * shared) if shared else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])  # (N, H)
        weights, indices = self.gate(flat)
        slots = indices.view(-1)  # counted into a fixed size, which --compile can trace
        counts = slots.new_zeros(self.gate.num_experts).scatter_add_(
            0, slots, torch.ones_like(slots)
        )
        if self.training and torch.is_grad_enabled():
            self.gate.expert_load += counts
        out = self.experts(flat, indices, weights, counts)
        if self.shared_experts is not None:
            out = out + self.shared_experts(flat)
        return out.view_as(x)


# -- load statistics and auxiliary-loss-free balancing -------------------------------------------


def balance_step(
    routers: Sequence[tuple[int, DeepseekV3TopkRouter]], communicator: Communicator, rate: float
) -> dict[str, float]:
    """Sum the step's expert loads over data-parallel peers, update the correction biases by
    ``rate * sign(mean load - load)`` when ``rate > 0``, reset the counters and return load
    metrics (``{}`` when nothing was routed in training mode since the last call).

    ``routers`` pairs each MoE layer index with its router. Every peer must call this in
    lockstep; all of them apply the identical update.
    """
    if not routers:
        return {}
    counts = torch.stack([router.expert_load for _, router in routers]).float()  # (L, E)
    for _, router in routers:
        router.expert_load.zero_()
    # The mean over peers is proportional to the sum, which is all the sign rule and the
    # fractions need. Metrics-only traffic is not counted as training traffic.
    sent = communicator.bytes_sent
    communicator.all_reduce_mean_([counts])
    if rate <= 0:
        communicator.bytes_sent = sent
    totals = counts.sum(dim=-1, keepdim=True)
    if not bool((totals > 0).all()):
        return {}
    if rate > 0:
        with torch.no_grad():
            for (_, router), load in zip(routers, counts):
                bias = router.e_score_correction_bias
                if bias is None:  # not routed with noaux_tc: nothing to balance
                    continue
                step = torch.sign(load.mean() - load) * rate
                bias += step.to(device=bias.device, dtype=bias.dtype)
    return load_metrics(counts, [index for index, _ in routers])


def load_metrics(counts: torch.Tensor, layers: Sequence[int]) -> dict[str, float]:
    """Per-step routing statistics from expert loads ``counts`` ``(L, E)``.

    ``moe/max_load_frac`` / ``moe/min_load_frac``: the largest / smallest share of a layer's
    routed slots one expert got (1/E everywhere is perfect balance); ``moe/load_cv``: the
    coefficient of variation (std / mean) of the loads, averaged over layers (0 is balanced);
    ``moe/dead_experts``: experts that got no token this step, over all layers; and
    ``moe/layer{N}/load_cv`` per layer.
    """
    fractions = counts / counts.sum(dim=-1, keepdim=True)
    cv = counts.std(dim=-1, correction=0) / counts.mean(dim=-1)
    metrics = {
        "moe/max_load_frac": float(fractions.max()),
        "moe/min_load_frac": float(fractions.min()),
        "moe/load_cv": float(cv.mean()),
        "moe/dead_experts": float((counts == 0).sum()),
    }
    for layer, value in zip(layers, cv.tolist()):
        metrics[f"moe/layer{layer}/load_cv"] = value
    return metrics
