"""DeepSeek-V3 and DeepSeek-V2 causal LMs: multi-head latent attention + mixture of experts.

References:
- DeepSeek-V2 (MLA, DeepSeekMoE, YaRN): https://arxiv.org/abs/2405.04434
- DeepSeek-V3 (sigmoid routing, auxiliary-loss-free balancing): https://arxiv.org/abs/2412.19437
- transformers 5 ``modeling_deepseek_v3.py`` / ``modeling_deepseek_v2.py``: the class and
  attribute names (hence the state-dict keys) and the numerics reproduced here.

Multi-head latent attention compresses keys and values into one ``kv_lora_rank`` latent per
token (normalised by ``kv_a_layernorm``) plus one rotary key ``k_rot`` shared by all heads;
``kv_b_proj`` expands the latent into per-head ``k_nope`` and values. Queries go through their
own low-rank bottleneck (``q_a_proj`` -> ``q_a_layernorm`` -> ``q_b_proj``) unless
``q_lora_rank`` is null (V2-Lite: one ``q_proj``). Only the last ``qk_rope_head_dim`` dims of
each query / key head are rotated. Unlike Llama, ``head_dim`` in these configs is that rotary
size, not the attention head size.

The file reads as DeepSeek-V3 (cos / sin rotary tables, adjacent or rotate-half pairs per
``rope_interleave``); V2 is the same model but for its rotary embedding (one complex table,
adjacent pairs), in the last section. The MoE layers, shared by both, are in
:mod:`psyche_deepseek.moe`.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from psyche_core.comm import Communicator
from psyche_core.errors import PsycheError
from psyche_core.inputs import check_inputs, positions_and_mask
from psyche_core.losses import causal_lm_output
from psyche_core.model import CausalLM, CausalLMOutput
from psyche_core.options import Options
from psyche_core.recompute import run_layer
from psyche_deepseek.config import DeepseekV2Config, DeepseekV3Config
from psyche_deepseek.flops import deepseek_flops_per_token
from psyche_deepseek.functional import rms_norm
from psyche_deepseek.moe import (
    DeepseekV3Experts,
    DeepseekV3MLP,
    DeepseekV3MoE,
    DeepseekV3TopkRouter,
    balance_step,
)
from psyche_deepseek.tensor_parallel import tensor_parallel_plan

logger = logging.getLogger(__name__)

# Rotary tables: (cos, sin) for V3, one complex tensor for V2.
PositionEmbeddings = tuple[torch.Tensor, torch.Tensor] | torch.Tensor


class DeepseekV3RMSNorm(nn.Module):
    """RMSNorm in float32, cast back before the weight (both versions use this one)."""

    def __init__(self, size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


# -- rotary embedding ------------------------------------------------------------------------------


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def rope_frequencies(config: DeepseekV2Config) -> tuple[torch.Tensor, float]:
    """Inverse frequencies ``(qk_rope_head_dim / 2,)`` and the factor cos / sin are scaled by,
    for rope types default, linear and yarn (as transformers' ``modeling_rope_utils``)."""
    params, dim = config.rope_parameters, config.qk_rope_head_dim
    base = float(params["rope_theta"])
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)
    inv_freq = 1.0 / pos_freqs
    kind = params["rope_type"]
    if kind == "linear":
        return inv_freq / params["factor"], 1.0
    if kind == "default":
        return inv_freq, 1.0
    # YaRN: interpolate the low frequencies, keep the high ones, ramp in between.
    original = params["original_max_position_embeddings"]
    factor = params.get("factor") or config.max_position_embeddings / original
    attention_factor = params.get("attention_factor")
    mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim)
        else:
            attention_factor = _yarn_mscale(factor)
    beta_fast, beta_slow = params.get("beta_fast") or 32, params.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolation = 1 - ramp
    inv_freq = 1.0 / (factor * pos_freqs) * (1 - extrapolation) + inv_freq * extrapolation
    return inv_freq, float(attention_factor)


def softmax_scale(config: DeepseekV2Config) -> float:
    """``1/sqrt(qk_head_dim)``, times ``mscale(factor, mscale_all_dim)**2`` for scaled rope."""
    scale = config.qk_head_dim**-0.5
    params = config.rope_parameters
    if params["rope_type"] != "default" and params.get("mscale_all_dim"):
        factor = params.get("factor") or (
            config.max_position_embeddings / params["original_max_position_embeddings"]
        )
        scale *= _yarn_mscale(factor, params["mscale_all_dim"]) ** 2
    return scale


class DeepseekV3RotaryEmbedding(nn.Module):
    """Rotation tables from a non-persistent float32 ``inv_freq`` (kept float32 through dtype
    casts by the model's ``keep_in_fp32``)."""

    def __init__(self, config: DeepseekV2Config) -> None:
        super().__init__()
        self.config = config
        inv_freq, self.attention_scaling = rope_frequencies(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def reset_buffers(self) -> None:
        device = "cpu" if self.inv_freq.is_meta else self.inv_freq.device
        self.inv_freq = rope_frequencies(self.config)[0].to(device)

    def angles(self, positions: torch.Tensor) -> torch.Tensor:
        """``positions`` ``(B|1, T)`` -> float32 angles ``(B|1, 1, T, rope_dim / 2)``."""
        return (positions[..., None].float() * self.inv_freq.float()).unsqueeze(1)

    def forward(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin ``(B|1, 1, T, rope_dim / 2)``, scaled, in ``dtype`` (transformers keeps
        them duplicated to ``rope_dim``; each half is written once here)."""
        angles = self.angles(positions)
        cos = (angles.cos() * self.attention_scaling).to(dtype)
        sin = (angles.sin() * self.attention_scaling).to(dtype)
        return cos, sin


def apply_rotary_pos_emb(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate-half RoPE on ``x`` ``(..., T, rope_dim)``: pairs (x_i, x_{i + d/2}), as Llama."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def apply_rotary_emb(x: Tensor, freqs_cis: Tensor) -> Tensor:
    """Adjacent pairs (x[2i], x[2i+1]) of ``x`` ``(..., T, rope_dim)`` rotated as complex
    numbers in float32 and laid out as they came: transformers' V2 ``apply_rotary_emb``."""
    pairs = x.float().unflatten(-1, (-1, 2))  # (..., rope_dim / 2, 2)
    # view_as_complex needs whole complex numbers; compiled (--compile), copy without asking,
    # since dynamo cannot trace storage_offset()
    misaligned = torch.compiler.is_compiling() or pairs.storage_offset() % 2
    if misaligned or any(stride % 2 for stride in pairs.stride()[:-1]):
        pairs = pairs.contiguous()
    turned = torch.view_as_complex(pairs) * freqs_cis
    return torch.view_as_real(turned).flatten(-2).to(x.dtype)


# -- attention -----------------------------------------------------------------------------------


class DeepseekV3Attention(nn.Module):
    """Multi-head latent attention (eager or sdpa)."""

    def __init__(self, config: DeepseekV2Config) -> None:
        super().__init__()
        hidden, heads, bias = config.hidden_size, config.num_attention_heads, config.attention_bias
        self.num_heads = heads
        self.nope_dim, self.rope_dim = config.qk_nope_head_dim, config.qk_rope_head_dim
        self.v_head_dim, self.kv_lora_rank = config.v_head_dim, config.kv_lora_rank
        self.qk_head_dim = config.qk_head_dim
        self.dropout = config.attention_dropout
        self.scaling = softmax_scale(config)
        self.rope_interleave = config.rope_interleaved
        if config.q_lora_rank is None:
            self.q_proj = nn.Linear(hidden, heads * self.qk_head_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(hidden, config.q_lora_rank, bias=bias)
            self.q_a_layernorm = DeepseekV3RMSNorm(config.q_lora_rank)
            self.q_b_proj = nn.Linear(config.q_lora_rank, heads * self.qk_head_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(hidden, self.kv_lora_rank + self.rope_dim, bias=bias)
        self.kv_a_layernorm = DeepseekV3RMSNorm(self.kv_lora_rank)
        self.kv_b_proj = nn.Linear(
            self.kv_lora_rank, heads * (self.nope_dim + self.v_head_dim), bias=False
        )
        self.o_proj = nn.Linear(heads * self.v_head_dim, hidden, bias=bias)

    def forward(
        self,
        x: torch.Tensor,
        position_embeddings: PositionEmbeddings,
        mask: torch.Tensor | None,
        implementation: str,
    ) -> torch.Tensor:
        batch, length, _ = x.shape
        if hasattr(self, "q_proj"):
            q = self.q_proj(x)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        # -1: this rank's heads (all of them without tensor parallelism)
        q = q.view(batch, length, -1, self.qk_head_dim).transpose(1, 2)  # (B, h, T, dq)
        q_nope, q_rot = q.split([self.nope_dim, self.rope_dim], dim=-1)

        latent, k_rot = self.kv_a_proj_with_mqa(x).split([self.kv_lora_rank, self.rope_dim], -1)
        kv = self.kv_b_proj(self.kv_a_layernorm(latent))  # (B, T, h * (nope + v))
        # (B, h, T, nope + v)
        kv = kv.view(batch, length, -1, self.nope_dim + self.v_head_dim).transpose(1, 2)
        k_nope, v = kv.split([self.nope_dim, self.v_head_dim], dim=-1)

        # one rotary key (B, 1, T, rope), shared by every head
        q_rot, k_rot = self.rotate(q_rot, k_rot.unsqueeze(1), position_embeddings)
        q = torch.cat([q_nope, q_rot], dim=-1)  # (B, h, T, dq)
        k = torch.cat([k_nope, k_rot.expand(-1, q.shape[1], -1, -1)], dim=-1)

        dropout = self.dropout if self.training else 0.0
        if implementation == "sdpa":
            out = sdpa_attention(q, k, v, mask, self.scaling, dropout)
        else:
            out = eager_attention(q, k, v, mask, self.scaling, dropout)
        out = out.transpose(1, 2).reshape(batch, length, -1)  # (B, T, h * v)
        return self.o_proj(out)

    def rotate(
        self, q: torch.Tensor, k: torch.Tensor, position_embeddings: PositionEmbeddings
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = position_embeddings
        if self.rope_interleave:
            # DeepSeek's adjacent pairs. transformers' V3 rotates them with strided even / odd
            # slices in the model dtype and lays them out evens then odds; one complex multiply
            # in float32 is the same rotation (more precise under bfloat16), 3x faster on the
            # CPU, and the layout changes no query-key product.
            freqs_cis = torch.complex(cos.float(), sin.float())
            return apply_rotary_emb(q, freqs_cis), apply_rotary_emb(k, freqs_cis)
        return apply_rotary_pos_emb(q, cos, sin), apply_rotary_pos_emb(k, cos, sin)


def sdpa_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float, dropout: float
) -> Tensor:
    """torch's fused attention. MLA's value heads are narrower than its query / key heads;
    zero-padding them to one width lets torch pick its flash kernel instead of the math one,
    and changes neither the scores nor the output."""
    qk_dim, v_dim = q.shape[-1], v.shape[-1]
    if qk_dim < v_dim:
        q, k = F.pad(q, (0, v_dim - qk_dim)), F.pad(k, (0, v_dim - qk_dim))
    elif v_dim < qk_dim:
        v = F.pad(v, (0, qk_dim - v_dim))
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=mask is None, scale=scale
    )
    return out[..., :v_dim]


def eager_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float, dropout: float
) -> Tensor:
    """Reference attention: softmax in float32; ``mask`` is boolean (True = may attend)."""
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale  # (B, h, T, T)
    if mask is None:
        length = q.shape[-2]
        mask = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    probs = F.dropout(probs, p=dropout, training=dropout > 0)
    return torch.matmul(probs, v)


# -- blocks and model ----------------------------------------------------------------------------


class DeepseekV3DecoderLayer(nn.Module):
    attention_class: ClassVar[type[DeepseekV3Attention]] = DeepseekV3Attention

    def __init__(self, config: DeepseekV2Config, index: int) -> None:
        super().__init__()
        self.self_attn = self.attention_class(config)
        if config.is_moe_layer(index):
            self.mlp: nn.Module = DeepseekV3MoE(config)
        else:
            self.mlp = DeepseekV3MLP(config, config.intermediate_size)
        self.input_layernorm = DeepseekV3RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = DeepseekV3RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        position_embeddings: PositionEmbeddings,
        mask: torch.Tensor | None,
        implementation: str,
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), position_embeddings, mask, implementation)
        return x + self.mlp(self.post_attention_layernorm(x))


class DeepseekV3Model(nn.Module):
    """Embedding, decoder layers, final norm and the rotary tables they share."""

    layer_class: ClassVar[type[DeepseekV3DecoderLayer]] = DeepseekV3DecoderLayer
    rotary_class: ClassVar[type[DeepseekV3RotaryEmbedding]] = DeepseekV3RotaryEmbedding

    def __init__(self, config: DeepseekV2Config) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.layers = nn.ModuleList(
            self.layer_class(config, i) for i in range(config.num_hidden_layers)
        )
        self.norm = DeepseekV3RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = self.rotary_class(config)
        self.activation_checkpointing = "none"  # set by the CausalLM

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor | None,
        implementation: str,
    ) -> torch.Tensor:
        x = self.embed_tokens(input_ids)  # (B, T, hidden)
        position_embeddings = self.rotary_emb(positions, x.dtype)
        for layer in self.layers:
            # Recomputation routes the same tokens again, so every MoE layer's expert-load
            # counter doubles uniformly: the balancing sign rule and the load fractions are
            # unchanged (tests/deepseek checks the biases bit for bit).
            x = run_layer(
                layer, self.activation_checkpointing, x, position_embeddings, mask, implementation
            )
        return self.norm(x)


class DeepseekV3ForCausalLM(CausalLM):
    """DeepSeek-V3 with its LM head; ``forward`` follows the CausalLM contract."""

    config_class = DeepseekV3Config
    config: DeepseekV2Config
    model_class: ClassVar[type[DeepseekV3Model]] = DeepseekV3Model
    # transformers keeps the router in float32 too; the rest is psyche's (rotary frequencies,
    # the load counters of --moe-bias-update-rate).
    keep_in_fp32 = (
        "rotary_emb.inv_freq",
        "mlp.gate.weight",
        "mlp.gate.e_score_correction_bias",
        "mlp.gate.expert_load",
    )
    activation_checkpointing_modes = ("none", "full", "selective")

    def __init__(self, config: DeepseekV2Config, options: Options | None = None) -> None:
        super().__init__(config, options)
        self.model = self.model_class(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()
        rate = 0.0 if options is None else options.moe_bias_update_rate
        self.bias_update_rate = self._checked_bias_update_rate(rate)

    def set_activation_checkpointing(self, mode: str) -> None:
        super().set_activation_checkpointing(mode)
        self.model.activation_checkpointing = mode

    def flops_per_token(self, sequence_length: int) -> float:
        return deepseek_flops_per_token(self, self.config, sequence_length)

    # -- forward -------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        sequence_lengths: Sequence[Sequence[int]] | None = None,
        num_logits_to_keep: int | None = None,
        return_logits: bool = True,
    ) -> CausalLMOutput:
        check_inputs(
            input_ids,
            labels,
            position_ids,
            vocab_size=self.vocab_size,
            max_length=self.max_context_length,
        )
        positions, mask = positions_and_mask(input_ids, position_ids, sequence_lengths)
        hidden = self.model(input_ids, positions, mask, self.attn_implementation)
        return causal_lm_output(hidden, self.lm_head, labels, num_logits_to_keep, return_logits)

    # -- init and weights ------------------------------------------------------------------------

    def init_weights(self, generator: torch.Generator) -> None:
        """transformers' init: N(0, initializer_range) for linear, embedding, router and expert
        weights; zero biases (and correction biases); norms one; the padding row zero."""
        super().init_weights(generator)
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, DeepseekV3TopkRouter):
                nn.init.normal_(module.weight, mean=0.0, std=std, generator=generator)
                if module.e_score_correction_bias is not None:
                    module.e_score_correction_bias.zero_()
            elif isinstance(module, DeepseekV3Experts):
                nn.init.normal_(module.gate_up_proj, mean=0.0, std=std, generator=generator)
                nn.init.normal_(module.down_proj, mean=0.0, std=std, generator=generator)
        embed = self.model.embed_tokens
        if embed.padding_idx is not None:
            embed.weight[embed.padding_idx].zero_()
        self.tie_weights()

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """On-disk layout: routed experts as per-expert ``gate_proj`` / ``up_proj`` /
        ``down_proj`` linears, as transformers writes them."""
        state = super().hf_state_dict()
        out: dict[str, torch.Tensor] = {}
        for key, tensor in state.items():
            if key.endswith("mlp.experts.gate_up_proj"):
                prefix = key.removesuffix("gate_up_proj")
                out.update(DeepseekV3Experts.unpack(prefix, tensor, state[prefix + "down_proj"]))
            elif not key.endswith("mlp.experts.down_proj"):
                out[key] = tensor
        return out

    def load_hf_state_dict(
        self,
        state: Mapping[str, torch.Tensor],
        *,
        source: str = "state dict",
        device: torch.device | str | None = None,
    ) -> None:
        """As the base class, ignoring the multi-token-prediction layers DeepSeek-V3 checkpoints
        may carry (``model.layers.{num_hidden_layers + i}.*``); psyche does not train them."""
        layers, extra = self.config.num_hidden_layers, self.config.num_nextn_predict_layers
        mtp = re.compile(r"model\.layers\.(\d+)\.")

        def is_mtp(key: str) -> bool:
            match = mtp.match(key)
            return match is not None and layers <= int(match.group(1)) < layers + extra

        ignored = [key for key in state if is_mtp(key)]
        if ignored:
            logger.info("%s: ignoring %d multi-token-prediction weights", source, len(ignored))
            state = {k: v for k, v in state.items() if not is_mtp(k)}
        super().load_hf_state_dict(state, source=source, device=device)

    # -- trainer hooks ---------------------------------------------------------------------------

    def tensor_parallel_plan(self, degree: int) -> dict[str, Any]:
        """MLA's query and key/value expansions column-parallel by heads, ``o_proj``
        row-parallel; dense MLPs and shared experts Megatron-style; the low-rank
        down-projections, routed experts and router replicated; see
        :mod:`psyche_deepseek.tensor_parallel` for why."""
        return tensor_parallel_plan(self.config, degree)

    def moe_routers(self) -> list[tuple[int, DeepseekV3TopkRouter]]:
        """``(layer index, router)`` of every MoE layer."""
        return [
            (i, layer.mlp.gate)
            for i, layer in enumerate(self.model.layers)
            if isinstance(layer.mlp, DeepseekV3MoE)
        ]

    def _checked_bias_update_rate(self, rate: float) -> float:
        """``--moe-bias-update-rate``: auxiliary-loss-free balancing step size (0 = off)."""
        rate = float(rate)
        if rate < 0:
            raise PsycheError(f"--moe-bias-update-rate must be >= 0, got {rate}")
        routers = self.moe_routers()
        if rate > 0 and not any(r.e_score_correction_bias is not None for _, r in routers):
            raise PsycheError(
                "--moe-bias-update-rate needs MoE layers routed with topk_method 'noaux_tc' "
                f"(this model: {self.config.topk_method}, {len(routers)} MoE layers)"
            )
        return rate

    def step_end(self, communicator: Communicator) -> dict[str, float]:
        """Sum the step's expert loads over peers, apply the bias update (if on) and return the
        load metrics (see :func:`psyche_deepseek.moe.load_metrics`)."""
        return balance_step(self.moe_routers(), communicator, self.bias_update_rate)


# -- DeepSeek-V2: the same model with a complex rotary table --------------------------------------


class DeepseekV2RotaryEmbedding(DeepseekV3RotaryEmbedding):
    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:  # type: ignore[override]
        """``scaling * e^(i angle)``, complex64 ``(B|1, 1, T, rope_dim / 2)`` (``dtype`` unused:
        V2 rotates in float32 whatever the model dtype)."""
        angles = self.angles(positions)
        return torch.polar(torch.full_like(angles, self.attention_scaling), angles)


class DeepseekV2Attention(DeepseekV3Attention):
    def rotate(  # type: ignore[override]
        self, q: torch.Tensor, k: torch.Tensor, freqs_cis: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return apply_rotary_emb(q, freqs_cis), apply_rotary_emb(k, freqs_cis)


class DeepseekV2DecoderLayer(DeepseekV3DecoderLayer):
    attention_class = DeepseekV2Attention


class DeepseekV2Model(DeepseekV3Model):
    layer_class = DeepseekV2DecoderLayer
    rotary_class = DeepseekV2RotaryEmbedding


class DeepseekV2ForCausalLM(DeepseekV3ForCausalLM):
    """DeepSeek-V2 / V2-Lite (defaults and routing from :class:`DeepseekV2Config`)."""

    config_class = DeepseekV2Config
    model_class = DeepseekV2Model
