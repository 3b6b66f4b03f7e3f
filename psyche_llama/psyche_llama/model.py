"""Llama 2 and Llama 3 as a psyche :class:`~psyche_core.model.CausalLM`.

A pre-norm decoder: token embedding, ``num_hidden_layers`` blocks of (RMSNorm -> grouped-query
attention with rotary positions -> residual, RMSNorm -> SwiGLU MLP -> residual), a final RMSNorm
and a linear head. Attribute names and config.json fields are transformers' own, so the state
dict is ``transformers.LlamaForCausalLM``'s key for key and checkpoints load either way.

References:
    - Touvron et al., "LLaMA: Open and Efficient Foundation Language Models" (2023),
      https://arxiv.org/abs/2302.13971
    - Touvron et al., "Llama 2: Open Foundation and Fine-Tuned Chat Models" (2023),
      https://arxiv.org/abs/2307.09288
    - Grattafiori et al., "The Llama 3 Herd of Models" (2024), https://arxiv.org/abs/2407.21783
      (the ``llama3`` RoPE frequency scaling)
    - Su et al., "RoFormer: Enhanced Transformer with Rotary Position Embedding" (2021),
      https://arxiv.org/abs/2104.09864; Zhang & Sennrich, "Root Mean Square Layer
      Normalization" (2019); Shazeer, "GLU Variants Improve Transformer" (2020); Ainslie et al.,
      "GQA" (2023)
    - huggingface/transformers ``models/llama/modeling_llama.py`` and ``modeling_rope_utils.py``,
      whose numerics this file reproduces (RMSNorm in float32, rotate-half RoPE).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from psyche_core import parallel
from psyche_core.errors import PsycheError
from psyche_core.inputs import check_inputs, positions_and_mask
from psyche_core.losses import causal_lm_output
from psyche_core.model import CausalLM, CausalLMOutput, ModelConfig
from psyche_core.options import Options
from psyche_core.recompute import run_layer

ROPE_TYPES = ("default", "linear", "dynamic", "llama3")
_SDPA_HAS_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


# -- config ---------------------------------------------------------------------------------------


@dataclasses.dataclass(kw_only=True)
class LlamaConfig(ModelConfig):
    """transformers' ``LlamaConfig`` fields. Reads both config.json styles:

    - transformers 4.x: ``rope_theta`` plus ``rope_scaling`` (``{"type"|"rope_type": ...}``);
    - transformers 5.x: ``rope_parameters`` (``{"rope_type", "rope_theta", "factor", ...}``).

    Either way it keeps ``rope_theta`` and ``rope_scaling`` (``None`` for plain RoPE, else a dict
    with ``rope_type``) and writes the 4.x style, which both major versions load.
    """

    model_type: ClassVar[str] = "llama"
    architectures: ClassVar[tuple[str, ...]] = ("LlamaForCausalLM",)
    positive_fields: ClassVar[tuple[str, ...]] = (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "max_position_embeddings",
    )

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None: multi-head attention
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    attention_bias: bool = False
    attention_dropout: float = 0.0
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    pad_token_id: int | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2

    def __post_init__(self) -> None:
        # transformers 5.x keeps theta and scaling together in ``rope_parameters``.
        rope_parameters = self.extra.pop("rope_parameters", None)
        scaling = dict(self.rope_scaling or rope_parameters or {})
        self.rope_theta = float(scaling.pop("rope_theta", self.rope_theta))
        rope_type = scaling.pop("rope_type", scaling.pop("type", "default"))
        if rope_type not in ROPE_TYPES:
            raise PsycheError(
                f"llama config: rope scaling type {rope_type!r} is not supported; "
                f"supported: {', '.join(ROPE_TYPES)}"
            )
        required = {"linear": ["factor"], "dynamic": ["factor"]}.get(rope_type, [])
        if rope_type == "llama3":
            required = ["factor", "low_freq_factor", "high_freq_factor"]
            scaling.setdefault("original_max_position_embeddings", self.max_position_embeddings)
        missing = [key for key in required if scaling.get(key) is None]
        if missing:
            raise PsycheError(f"llama config: {rope_type} rope scaling needs {', '.join(missing)}")
        self.rope_scaling = None if rope_type == "default" else {"rope_type": rope_type, **scaling}

        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"hidden_size ({self.hidden_size}) must be a multiple of "
                    f"num_attention_heads ({self.num_attention_heads}), or give head_dim"
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise PsycheError(
                f"llama config: num_attention_heads ({self.num_attention_heads}) must be a "
                f"multiple of num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2:
            raise PsycheError(f"llama config: head_dim must be even for RoPE, got {self.head_dim}")
        if self.hidden_act != "silu":
            raise PsycheError(
                f"llama config: hidden_act {self.hidden_act!r} is not supported (Llama uses silu)"
            )

    def validate(self) -> str | None:
        for key in ("rms_norm_eps", "rope_theta"):
            if not getattr(self, key) > 0:
                return f"{key} must be > 0, got {getattr(self, key)}"
        return None

    @property
    def rope_type(self) -> str:
        return (self.rope_scaling or {}).get("rope_type", "default")


# -- normalisation and rotary embeddings ----------------------------------------------------------


class LlamaRMSNorm(nn.Module):
    """RMSNorm computed in float32 and cast back to the input dtype before the weight."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * normed.to(x.dtype)


def rope_inv_freq(config: LlamaConfig, seq_len: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse RoPE frequencies ``(head_dim // 2,)`` in float32 for the config's rope type.

    ``seq_len`` (a tensor) is only read by ``dynamic`` NTK scaling, which raises the base once
    a sequence runs past ``max_position_embeddings``.
    """
    dim = config.head_dim
    scaling = config.rope_scaling or {}
    base: float | torch.Tensor = config.rope_theta
    if config.rope_type == "dynamic" and seq_len is not None:
        factor, limit = scaling["factor"], config.max_position_embeddings
        seq_len = torch.clamp(seq_len, min=limit)
        base = base * ((factor * seq_len / limit) - (factor - 1)) ** (dim / (dim - 2))
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device=getattr(seq_len, "device", None))
    inv_freq = 1.0 / (base ** (exponents.float() / dim))
    if config.rope_type == "linear":
        inv_freq = inv_freq / scaling["factor"]
    elif config.rope_type == "llama3":
        inv_freq = _llama3_scaled(inv_freq, scaling)
    return inv_freq


def _llama3_scaled(inv_freq: torch.Tensor, scaling: Mapping[str, Any]) -> torch.Tensor:
    """Llama 3.1: keep high frequencies, divide low ones by ``factor``, blend in between."""
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_context = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_context / high) * ~(wavelen > old_context / low)
    return torch.where(medium, smoothed, scaled)


class LlamaRotaryEmbedding(nn.Module):
    """cos/sin tables for rotate-half RoPE, from a non-persistent float32 ``inv_freq``."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("inv_freq", rope_inv_freq(config), persistent=False)

    def reset_buffers(self) -> None:
        """Recompute ``inv_freq`` after a meta-device build. (It stays float32 through dtype
        casts: ``LlamaForCausalLM.keep_in_fp32``.)"""
        device = self.inv_freq.device
        inv_freq = rope_inv_freq(self.config)
        self.inv_freq = inv_freq if device.type == "meta" else inv_freq.to(device)

    def forward(
        self, position_ids: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B|1, T)`` positions -> cos, sin ``(B|1, T, 1, head_dim // 2)`` in ``dtype``."""
        inv_freq = self.inv_freq
        if self.config.rope_type == "dynamic":
            seq_len = position_ids.max() + 1
            if seq_len > self.config.max_position_embeddings:
                inv_freq = rope_inv_freq(self.config, seq_len)
        freqs = position_ids[..., None].float() * inv_freq  # (B|1, T, head_dim // 2)
        return freqs.cos().to(dtype)[:, :, None], freqs.sin().to(dtype)[:, :, None]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on ``(B, T, heads, head_dim)``: the same arithmetic as transformers'
    ``x * cos + rotate_half(x) * sin`` with the duplicated halves of cos/sin written once."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


# -- attention, MLP, block ------------------------------------------------------------------------


class LlamaAttention(nn.Module):
    """Grouped-query attention: ``num_key_value_heads`` key/value heads shared by groups of
    query heads."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = config.attention_dropout
        bias, hidden = config.attention_bias, config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=bias)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        implementation: str,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q = apply_rotary(self.q_proj(x).view(B, T, -1, self.head_dim), cos, sin)
        k = apply_rotary(self.k_proj(x).view(B, T, -1, self.head_dim), cos, sin)
        v = self.v_proj(x).view(B, T, -1, self.head_dim)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, hd)
        dropout = self.dropout if self.training else 0.0
        if implementation == "sdpa":
            out = self._sdpa(q, k, v, mask, dropout)
        else:
            out = self._eager(q, k, v, mask, dropout)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))  # (B, T, heads * hd)

    def _sdpa(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout: float) -> Tensor:
        groups = self.num_heads // self.num_kv_heads
        kwargs: dict[str, Any] = {}
        if groups > 1 and _SDPA_HAS_GQA:
            kwargs["enable_gqa"] = True
        elif groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=mask is None,
            scale=self.scaling, **kwargs,
        )  # fmt: skip

    def _eager(
        self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout: float
    ) -> Tensor:
        """Reference attention: softmax in float32; each key/value head serves its group of
        query heads through a reshape instead of copying keys and values per head."""
        B, H, T, hd = q.shape
        kv = k.shape[1]  # this rank's key/value heads (all of them without tensor parallelism)
        grouped_q = q.reshape(B, kv, (H // kv) * T, hd)  # (B, kv, group * T, hd)
        scores = (grouped_q @ k.transpose(2, 3)).view(B, H, T, T) * self.scaling
        if mask is None:
            mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        if dropout:
            probs = F.dropout(probs, p=dropout)
        return (probs.view(B, kv, -1, T) @ v).view(B, H, T, hd)


class LlamaMLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        hidden, inner, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(hidden, inner, bias=bias)
        self.up_proj = nn.Linear(hidden, inner, bias=bias)
        self.down_proj = nn.Linear(inner, hidden, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(config)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, implementation: str
    ) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, implementation)
        return x + self.mlp(self.post_attention_layernorm(x))


# -- the model ------------------------------------------------------------------------------------


class LlamaModel(nn.Module):
    """Embedding, decoder layers and final norm (transformers' ``LlamaModel``)."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config) for _ in range(config.num_hidden_layers)
        )
        self.norm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config)
        self.activation_checkpointing = "none"  # set by LlamaForCausalLM

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        mask: torch.Tensor | None,
        implementation: str,
    ) -> torch.Tensor:
        x = self.embed_tokens(input_ids)  # (B, T, hidden)
        cos, sin = self.rotary_emb(position_ids, x.dtype)
        for layer in self.layers:
            x = run_layer(layer, self.activation_checkpointing, x, cos, sin, mask, implementation)
        return self.norm(x)


class LlamaForCausalLM(CausalLM):
    """Llama with a language-model head; ``forward`` follows the CausalLM contract."""

    config_class = LlamaConfig
    config: LlamaConfig
    keep_in_fp32 = ("rotary_emb.inv_freq",)
    activation_checkpointing_modes = ("none", "full", "selective")

    def __init__(self, config: LlamaConfig, options: Options | None = None) -> None:
        super().__init__(config, options)
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()

    def set_activation_checkpointing(self, mode: str) -> None:
        super().set_activation_checkpointing(mode)
        self.model.activation_checkpointing = mode

    def init_weights(self, generator: torch.Generator) -> None:
        """transformers' init: N(0, initializer_range), zero biases, norms one, and a zero
        embedding row for ``pad_token_id``."""
        super().init_weights(generator)
        if self.config.pad_token_id is not None:
            self.model.embed_tokens.weight[self.config.pad_token_id].zero_()

    def tensor_parallel_plan(self, degree: int) -> dict[str, Any]:
        """Megatron's split, as torchtitan and transformers' ``tp_plan``: q/k/v and gate/up
        column-parallel (each rank its heads and its part of the intermediate size), o and down
        row-parallel (partial sums all-reduced). The vocabulary is split too: the embedding by
        rows and the LM head by columns, its logits gathered for the loss. Tied embeddings
        stay whole on every rank (one parameter cannot take two layouts)."""
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

        config = self.config
        fields = ("num_attention_heads", "num_key_value_heads", "intermediate_size")
        parallel.require_divisible(degree, {field: getattr(config, field) for field in fields})
        layer = "model.layers.*."
        plan: dict[str, Any] = {
            layer + "self_attn.q_proj": ColwiseParallel(),
            layer + "self_attn.k_proj": ColwiseParallel(),
            layer + "self_attn.v_proj": ColwiseParallel(),
            layer + "self_attn.o_proj": RowwiseParallel(),
            layer + "mlp.gate_proj": ColwiseParallel(),
            layer + "mlp.up_proj": ColwiseParallel(),
            layer + "mlp.down_proj": RowwiseParallel(),
        }
        return {**plan, **parallel.vocab_parallel_plan(config, degree)}

    def load_hf_state_dict(self, state: Mapping[str, torch.Tensor], **kwargs: Any) -> None:
        # A tied checkpoint may still carry lm_head.weight; transformers ignores it, so do we.
        if self.config.tie_word_embeddings and "lm_head.weight" in state:
            state = {k: v for k, v in state.items() if k != "lm_head.weight"}
        super().load_hf_state_dict(state, **kwargs)

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        sequence_lengths: Sequence[Sequence[int]] | None = None,
        num_logits_to_keep: int | None = None,
        return_logits: bool = True,
    ) -> CausalLMOutput:
        self._check_inputs(input_ids, labels, position_ids)
        position_ids, mask = positions_and_mask(input_ids, position_ids, sequence_lengths)
        hidden = self.model(input_ids, position_ids, mask, self.attn_implementation)
        return causal_lm_output(hidden, self.lm_head, labels, num_logits_to_keep, return_logits)

    def _check_inputs(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None,
        position_ids: torch.Tensor | None,
    ) -> None:
        # dynamic NTK scaling exists to run past the trained context; the others do not
        dynamic = self.config.rope_type == "dynamic"
        check_inputs(
            input_ids,
            labels,
            position_ids,
            vocab_size=self.config.vocab_size,
            max_length=None if dynamic else self.config.max_position_embeddings,
        )
