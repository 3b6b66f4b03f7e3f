"""DeepSeek-V2 / V3 configs: transformers' ``config.json`` field names, validated on creation.

Both config styles load: transformers 4.x (``rope_theta`` + ``rope_scaling``, as the published
DeepSeek checkpoints are written) and 5.x (``rope_parameters``). Either way the parsed config
holds one normalised ``rope_parameters`` dict, and ``to_dict`` writes both styles so that old
and new transformers read the same rotary setup back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from psyche_core.errors import PsycheError
from psyche_core.model import ModelConfig

ROPE_TYPES = ("default", "linear", "yarn")
TOPK_METHODS = ("greedy", "group_limited_greedy", "noaux_tc")
SCORING_FUNCS = ("softmax", "sigmoid")
HIDDEN_ACTS = ("silu", "swish", "gelu", "relu")


@dataclasses.dataclass(kw_only=True)
class DeepseekV2Config(ModelConfig):
    """DeepSeek-V2 (defaults: transformers' ``DeepseekV2Config``)."""

    model_type: ClassVar[str] = "deepseek_v2"
    architectures: ClassVar[tuple[str, ...]] = ("DeepseekV2ForCausalLM",)
    positive_fields: ClassVar[tuple[str, ...]] = (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "kv_lora_rank",
        "qk_rope_head_dim",
        "v_head_dim",
        "moe_intermediate_size",
        "max_position_embeddings",
    )

    vocab_size: int = 102400
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # kept for round trips; MLA has one latent KV
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    attention_dropout: float = 0.0
    mlp_bias: bool = False
    # Multi-head latent attention.
    q_lora_rank: int | None = 1536
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 128
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128
    # Rotary embedding (4.x and 5.x styles; normalised into rope_parameters).
    rope_theta: float | None = None
    rope_scaling: dict[str, Any] | None = None
    rope_parameters: dict[str, Any] | None = None
    # Mixture of experts.
    n_routed_experts: int | None = 64
    n_shared_experts: int | None = 2
    num_experts_per_tok: int | None = None
    moe_intermediate_size: int = 1407
    first_k_dense_replace: int = 0
    moe_layer_freq: int = 1
    routed_scaling_factor: float = 1.0
    norm_topk_prob: bool = False
    scoring_func: str = "softmax"
    topk_method: str = "greedy"
    n_group: int | None = None
    topk_group: int | None = None
    num_nextn_predict_layers: int = 0  # multi-token prediction layers; their weights are ignored
    # Derived (written for transformers, recomputed on load): head_dim is the *rotary* size.
    head_dim: int | None = None
    qk_head_dim: int | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeepseekV2Config:  # type: ignore[override]
        if data.get("quantization_config"):
            kind = dict(data["quantization_config"]).get("quant_method", "quantized")
            raise PsycheError(
                f"{cls.model_type}: {kind} checkpoints are not supported; load a bfloat16 or "
                "float32 copy (e.g. dequantise the FP8 weights first)"
            )
        return super().from_dict(data)

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        self.head_dim = self.qk_rope_head_dim
        self.qk_head_dim = self.qk_nope_head_dim + self.qk_rope_head_dim
        self.rope_parameters = self._normalise_rope()
        self.rope_theta = float(self.rope_parameters["rope_theta"])
        is_default = self.rope_parameters["rope_type"] == "default"
        self.rope_scaling = None if is_default else dict(self.rope_parameters)
        if self.n_routed_experts and self.topk_method != "greedy":
            self.n_group = self.n_group or 1
            self.topk_group = self.topk_group or self.n_group
        self._validate()

    def _normalise_rope(self) -> dict[str, Any]:
        # transformers' precedence: rope_scaling over rope_parameters; a theta inside the dict
        # over the top-level rope_theta.
        params = dict(self.rope_scaling or self.rope_parameters or {})
        params.setdefault("rope_theta", self.rope_theta if self.rope_theta is not None else 1e4)
        params["rope_type"] = params.get("rope_type", params.get("type", "default"))
        if params["rope_type"] == "yarn":
            params.setdefault("original_max_position_embeddings", self.max_position_embeddings)
        return params

    def _validate(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        rope_type = self.rope_parameters["rope_type"]
        need(
            rope_type in ROPE_TYPES,
            f"unsupported rope type {rope_type!r} (psyche supports {', '.join(ROPE_TYPES)})",
        )
        if rope_type in ("linear", "yarn"):
            need(
                self.rope_parameters.get("factor") is not None or rope_type == "yarn",
                f"rope type {rope_type!r} needs a 'factor'",
            )
        need(
            self.hidden_act in HIDDEN_ACTS,
            f"unsupported hidden_act {self.hidden_act!r} (choose from {', '.join(HIDDEN_ACTS)})",
        )
        need(self.qk_rope_head_dim % 2 == 0, "qk_rope_head_dim must be even")
        need(self.q_lora_rank is None or self.q_lora_rank > 0, "q_lora_rank must be > 0 or null")
        need(self.moe_layer_freq >= 1, "moe_layer_freq must be >= 1")
        need(
            self.pad_token_id is None or 0 <= self.pad_token_id < self.vocab_size,
            f"pad_token_id {self.pad_token_id} is outside the vocabulary ({self.vocab_size})",
        )
        if not self.n_routed_experts:
            return
        need(
            self.topk_method in TOPK_METHODS,
            f"unsupported topk_method {self.topk_method!r} (choose from {', '.join(TOPK_METHODS)})",
        )
        need(
            self.scoring_func in SCORING_FUNCS,
            f"unsupported scoring_func {self.scoring_func!r} "
            f"(choose from {', '.join(SCORING_FUNCS)})",
        )
        experts, top_k = self.n_routed_experts, self.num_experts_per_tok
        need(
            top_k is not None and 1 <= top_k <= experts,
            f"num_experts_per_tok must be in 1..{experts} (n_routed_experts), got {top_k}",
        )
        if self.topk_method != "greedy":
            groups, chosen = self.n_group, self.topk_group
            need(
                experts % groups == 0,
                f"n_routed_experts ({experts}) must be a multiple of n_group ({groups})",
            )
            need(1 <= chosen <= groups, f"topk_group must be in 1..{groups}, got {chosen}")
            need(
                top_k <= chosen * experts // groups,
                f"num_experts_per_tok ({top_k}) exceeds the experts in topk_group groups",
            )
            need(
                self.topk_method != "noaux_tc" or experts // groups >= 2,
                "noaux_tc scores a group by its top-2 experts: n_group must leave >= 2 per group",
            )

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["rope_parameters"] = dict(self.rope_parameters)
        return data

    # -- helpers the model uses -----------------------------------------------------------------

    def is_moe_layer(self, index: int) -> bool:
        """The original DeepSeek rule (transformers ignores ``moe_layer_freq``; it is 1 in every
        published config, where both rules agree)."""
        return (
            bool(self.n_routed_experts)
            and index >= self.first_k_dense_replace
            and index % self.moe_layer_freq == 0
        )

    @property
    def rope_interleaved(self) -> bool:
        """DeepSeek's rotary pairs are adjacent dims (x0, x1), (x2, x3), ...; transformers'
        V2 always uses them, V3 unless ``rope_interleave`` is false."""
        return True


@dataclasses.dataclass(kw_only=True)
class DeepseekV3Config(DeepseekV2Config):
    """DeepSeek-V3 (defaults: transformers' ``DeepseekV3Config`` plus the routing fields of
    the published config: sigmoid scores, ``noaux_tc`` with a correction bias)."""

    model_type: ClassVar[str] = "deepseek_v3"
    architectures: ClassVar[tuple[str, ...]] = ("DeepseekV3ForCausalLM",)

    vocab_size: int = 129280
    hidden_size: int = 7168
    intermediate_size: int = 18432
    num_hidden_layers: int = 61
    num_attention_heads: int = 128
    num_key_value_heads: int | None = 128
    max_position_embeddings: int = 4096
    bos_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 1
    n_routed_experts: int | None = 256
    n_shared_experts: int | None = 1
    num_experts_per_tok: int | None = 8
    moe_intermediate_size: int = 2048
    first_k_dense_replace: int = 3
    routed_scaling_factor: float = 2.5
    norm_topk_prob: bool = True
    scoring_func: str = "sigmoid"
    topk_method: str = "noaux_tc"
    n_group: int | None = 8
    topk_group: int | None = 4
    num_nextn_predict_layers: int = 1
    rope_interleave: bool = True

    @property
    def rope_interleaved(self) -> bool:
        return bool(self.rope_interleave)
