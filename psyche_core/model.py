"""The :class:`CausalLM` contract every model plugin implements.

A CausalLM is a ``torch.nn.Module`` whose state-dict keys and config fields are transformers'
own, so a checkpoint moves between psyche and ``transformers`` without a key map. The base class
gives every model ``from_config`` (seeded random init), ``from_pretrained`` (local directory or
hub repo id, single or sharded safetensors) and ``save_pretrained`` (HF layout, atomic); a model
implements ``forward`` and, if its init differs from the HF default, ``init_weights``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple, TypeVar

import torch
from torch import nn

from psyche_core import hf, parallel
from psyche_core.comm import Communicator
from psyche_core.errors import PsycheError
from psyche_core.options import Options

ConfigT = TypeVar("ConfigT", bound="ModelConfig")
ModelT = TypeVar("ModelT", bound="CausalLM")

# Fields transformers writes that describe the file rather than the architecture.
_FILE_FIELDS = frozenset({"transformers_version", "_name_or_path", "torch_dtype", "dtype"})


@dataclasses.dataclass(kw_only=True)
class ModelConfig:
    """Base for model configs: a dataclass whose fields are HF ``config.json`` names.

    ``from_dict`` fills the declared fields and keeps every other key in ``extra``, so
    ``to_dict`` writes back what it read (tokenizer ids, fields of newer transformers).
    Subclasses set ``model_type`` and ``architectures`` and may normalise fields in
    ``__post_init__``.
    """

    model_type: ClassVar[str] = ""
    architectures: ClassVar[tuple[str, ...]] = ()
    # Sizes that must be integers >= 1 (checked before ``__post_init__`` divides by them).
    positive_fields: ClassVar[tuple[str, ...]] = ()

    extra: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls: type[ConfigT], data: Mapping[str, Any]) -> ConfigT:
        found = data.get("model_type")
        if cls.model_type and found and found != cls.model_type:
            raise PsycheError(
                f"config has model_type {found!r}; {cls.__name__} loads {cls.model_type!r}"
            )
        names = {f.name for f in dataclasses.fields(cls) if f.init and f.name != "extra"}
        known = {k: v for k, v in data.items() if k in names}
        extra = {
            k: v
            for k, v in data.items()
            if k not in names and k not in _FILE_FIELDS and k not in ("model_type", "architectures")
        }
        name = cls.model_type or cls.__name__
        problem = cls.check_values(known)
        if problem is not None:
            raise PsycheError(f"invalid {name} config: {problem}")
        try:
            config = cls(**known, extra=extra)
            problem = config.validate()
        except (TypeError, ValueError, ZeroDivisionError) as exc:
            raise PsycheError(f"invalid {name} config: {exc}") from None
        if problem is not None:
            raise PsycheError(f"invalid {name} config: {problem}")
        return config

    @classmethod
    def check_values(cls, values: Mapping[str, Any]) -> str | None:
        """The first field-level mistake in ``values`` (declared fields only): a non-finite
        number, or a size in ``positive_fields`` that is not an integer >= 1."""
        for key, value in values.items():
            if isinstance(value, float) and not math.isfinite(value):
                return f"{key} must be a finite number, got {value}"
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        for key in cls.positive_fields:
            value = values.get(key, defaults.get(key))
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                return f"{key} must be an integer >= 1, got {value!r}"
        return None

    def validate(self) -> str | None:
        """What transformers would refuse in this config, as one line naming the field (the
        relations between fields); ``None`` when it is fine. Psyche never writes a checkpoint
        transformers cannot load, so models override this with their architecture's rules."""
        return None

    def __getattr__(self, name: str) -> Any:
        # Fields a subclass does not declare (bos_token_id, tokenizer ids, newer HF fields) are
        # still readable as attributes, from ``extra``.
        if name.startswith("__") or name == "extra":
            raise AttributeError(name)
        try:
            return self.__dict__["extra"][name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}") from None

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name != "extra" and f.init:
                data[f.name] = getattr(self, f.name)
        data["model_type"] = self.model_type
        data["architectures"] = list(self.architectures)
        return data


class CausalLMOutput(NamedTuple):
    """``(logits, loss)``: logits ``(B, T', vocab)``; loss a scalar when labels were given."""

    logits: torch.Tensor | None
    loss: torch.Tensor | None


class CausalLM(nn.Module, ABC):
    """A causal language model psyche can train, load and save.

    Subclasses set ``config_class`` and implement :meth:`forward`. The config object is
    available as ``self.config``.
    """

    config_class: ClassVar[type[ModelConfig]]
    #: attention kernels the model implements; the first is the default.
    attn_implementations: ClassVar[tuple[str, ...]] = ("sdpa", "eager")
    #: name suffixes of parameters and buffers that stay float32 whatever dtype the model is cast
    #: to (``.to(torch.bfloat16)``) or loaded from, as transformers' ``_keep_in_fp32_modules``:
    #: rotary frequencies, router weights. ``"rotary_emb.inv_freq"`` matches
    #: ``model.rotary_emb.inv_freq``, not ``model.my_rotary_emb.inv_freq``.
    keep_in_fp32: ClassVar[tuple[str, ...]] = ()
    #: ``--activation-checkpointing`` modes the model implements (see psyche_core.recompute).
    activation_checkpointing_modes: ClassVar[tuple[str, ...]] = ("none",)

    def __init__(self, config: ModelConfig, options: Options | None = None) -> None:
        """``options``: the run's resolved options, for a model that declares its own
        (``ModelSpec.options``); ``None`` outside a run, meaning those options' defaults."""
        super().__init__()
        self.config = config
        self.attn_implementation = self.attn_implementations[0]
        self.activation_checkpointing = "none"

    def set_attn_implementation(self, name: str) -> None:
        """Choose the attention kernel (``--attn-implementation``)."""
        if name not in self.attn_implementations:
            raise PsycheError(
                f"{type(self).__name__} has no attention implementation {name!r}; "
                f"choose from {', '.join(self.attn_implementations)}"
            )
        self.attn_implementation = name

    def keeps_in_fp32(self, name: str) -> bool:
        """Whether the parameter or buffer ``name`` is one of :attr:`keep_in_fp32`."""
        return any(name == s or name.endswith("." + s) for s in self.keep_in_fp32)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Any:
        # Every dtype / device conversion (.to, .half, .cuda ...) goes through here. Tensors of
        # ``keep_in_fp32`` (and their gradients) are moved, never cast: a cast to bfloat16 and
        # back would lose the bits of a learned router weight.
        kept = {
            id(t)
            for name, p in [*self.named_parameters(), *self.named_buffers()]
            if self.keeps_in_fp32(name)
            for t in (p, getattr(p, "grad", None))
            if t is not None and t.dtype == torch.float32
        }
        if not kept:
            return super()._apply(fn, recurse)

        def convert(t: torch.Tensor) -> torch.Tensor:
            out = fn(t)
            if id(t) in kept and out.is_floating_point() and out.dtype != torch.float32:
                return t.to(device=out.device)
            return out

        return super()._apply(convert, recurse)

    def set_activation_checkpointing(self, mode: str) -> None:
        """Recompute activations in backward (``--activation-checkpointing``); a model that
        supports it lists the mode in ``activation_checkpointing_modes`` and reads
        ``self.activation_checkpointing`` in ``forward``."""
        if mode not in self.activation_checkpointing_modes:
            raise PsycheError(
                f"{type(self).__name__} does not support --activation-checkpointing {mode}; "
                f"choose from {', '.join(self.activation_checkpointing_modes)}"
            )
        self.activation_checkpointing = mode

    def flops_per_token(self, sequence_length: int) -> float:
        """Training FLOPs (forward + backward) per token at ``sequence_length``, for model
        TFLOP/s and MFU: 6 per matmul weight plus attention (psyche_core.flops). A model
        whose cost differs (a mixture of experts counts only its active experts) overrides."""
        from psyche_core.flops import default_flops_per_token

        return default_flops_per_token(self, self.config, sequence_length)

    # -- the training contract -----------------------------------------------------------------

    @abstractmethod
    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        sequence_lengths: Sequence[Sequence[int]] | None = None,
        num_logits_to_keep: int | None = None,
        return_logits: bool = True,
    ) -> CausalLMOutput:
        """Run the model.

        Args:
            input_ids: ``(B, T)`` token ids.
            labels: ``(B, T)`` targets, shifted inside (position t predicts label t+1) as in
                transformers; ``-100`` marks positions without a loss. Usually ``input_ids``.
            position_ids: ``(B, T)`` rotary positions; default ``0..T-1`` (restarting per
                document when ``sequence_lengths`` is given).
            sequence_lengths: per row, the lengths of the packed documents it holds (summing to
                T); attention never crosses a document boundary.
            num_logits_to_keep: compute logits only for the last this many positions.
            return_logits: the trainer passes False when it needs only the loss, so a model
                may skip materialising ``(B, T, vocab)`` logits (chunked cross entropy); the
                returned logits may then be ``None``.

        Returns:
            :class:`CausalLMOutput` ``(logits, loss)``; loss is the mean cross entropy over
            labelled positions, in float32, or ``None`` without labels.
        """

    def init_weights(self, generator: torch.Generator) -> None:
        """Random init, transformers' default: N(0, initializer_range) for linear and embedding
        weights, zero biases, norm weights one. Override when a model differs."""
        std = float(getattr(self.config, "initializer_range", 0.02))
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std, generator=generator)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif hasattr(module, "weight") and module.__class__.__name__.endswith("Norm"):
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def tensor_parallel_plan(self, degree: int) -> dict[str, Any] | None:
        """How ``--tensor-parallelism degree`` splits this model: module-name patterns (``*``
        matches one name) to DTensor ``ParallelStyle`` objects, for ``parallelize_module``
        (``ColwiseParallel`` for q/k/v/gate/up, ``RowwiseParallel`` for o/down, as torchtitan
        and transformers' ``tp_plan``). ``None`` (the default): the model has no plan and runs
        only at degree 1. Raise :class:`PsycheError` naming the config field when ``degree``
        does not divide the heads, key/value heads, intermediate size or experts.

        Forward code must not assume full head counts: reshape with ``-1`` (local heads)."""
        return None

    # -- hooks the trainer calls ----------------------------------------------------------------

    def step_end(self, communicator: Communicator) -> dict[str, float]:
        """Called on every peer after each optimizer step, in lockstep.

        A model with state outside its parameters (DeepSeek-V3's expert-bias balancing) updates
        it here, reducing what it needs over ``communicator`` so that peers stay identical, and
        returns per-step metrics to log (``{"moe/max_load": ...}``).
        """
        return {}

    # -- facts the trainer and generation need ------------------------------------------------

    @property
    def bos_token_id(self) -> int | None:
        return getattr(self.config, "bos_token_id", None)

    @property
    def eos_token_ids(self) -> list[int]:
        eos = getattr(self.config, "eos_token_id", None)
        if eos is None:
            return []
        return [int(e) for e in eos] if isinstance(eos, (list, tuple)) else [int(eos)]

    @property
    def max_context_length(self) -> int:
        return int(self.config.max_position_embeddings)

    @property
    def vocab_size(self) -> int:
        return int(self.config.vocab_size)

    # -- construction and I/O -------------------------------------------------------------------

    @classmethod
    def parse_config(cls, config: ModelConfig | Mapping[str, Any]) -> ModelConfig:
        if isinstance(config, cls.config_class):
            return config
        if isinstance(config, Mapping):
            return cls.config_class.from_dict(config)
        raise PsycheError(f"{cls.__name__}: expected a config dict, got {type(config).__name__}")

    @classmethod
    def from_config(
        cls: type[ModelT],
        config: ModelConfig | Mapping[str, Any],
        *,
        seed: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        attn_implementation: str | None = None,
        options: Options | None = None,
    ) -> ModelT:
        """A randomly initialised model; the same seed gives the same weights on every machine
        (init runs on the CPU in float32, then moves to ``device`` / ``dtype``).
        ``attn_implementation`` picks the attention kernel (default: the model's first);
        ``options`` reach the model's constructor (see :meth:`__init__`)."""
        parsed = cls.parse_config(config)
        with torch.device("cpu"):
            model = cls(parsed, options)
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        with torch.no_grad():
            model.init_weights(generator)
        model = model.to(device=device, dtype=hf.parse_dtype(dtype))
        if attn_implementation is not None:
            model.set_attn_implementation(attn_implementation)
        return model

    @classmethod
    def from_pretrained(
        cls: type[ModelT],
        source: str | os.PathLike[str],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        revision: str | None = None,
        attn_implementation: str | None = None,
        options: Options | None = None,
    ) -> ModelT:
        """Load a Hugging Face checkpoint: a local directory or a hub repo id.

        ``dtype`` defaults to float32 (the checkpoint's own dtype is ignored, as training wants
        a known precision); ``attn_implementation`` and ``options`` as in :meth:`from_config`.
        """
        directory = hf.resolve_checkpoint(source, revision)
        config = cls.parse_config(hf.read_config(directory))
        with torch.device("meta"):
            model = cls(config, options)
        state = hf.load_safetensors(directory)
        model.load_hf_state_dict(state, source=str(source), device=device)
        model = model.to(device=device, dtype=hf.parse_dtype(dtype) or torch.float32)
        if attn_implementation is not None:
            model.set_attn_implementation(attn_implementation)
        return model

    def save_pretrained(
        self,
        directory: str | os.PathLike[str],
        *,
        max_shard_size: int | None = None,
        extra_files: Mapping[str, str | bytes] | None = None,
    ) -> None:
        """Write config.json + safetensors that ``transformers`` loads (atomically), plus any
        ``extra_files`` (name -> content) in the same directory."""
        config = self.config.to_dict()
        dtype = next(self.parameters()).dtype
        config["torch_dtype"] = hf.dtype_name(dtype)
        hf.save_checkpoint(directory, config, self.hf_state_dict(), max_shard_size, extra_files)

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict as it goes to disk; tied weights are written once (under the input
        embedding's key), as transformers does."""
        seen: set[int] = set()
        out: dict[str, torch.Tensor] = {}
        for key, tensor in self.state_dict(keep_vars=True).items():
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            out[key] = parallel.unsharded(self, tensor).detach()
        return out

    def load_hf_state_dict(
        self,
        state: Mapping[str, torch.Tensor],
        *,
        source: str = "state dict",
        device: torch.device | str | None = None,
    ) -> None:
        """Load an on-disk state dict, checking keys and shapes first (one clear error)."""
        expected = self.hf_state_dict_shapes()
        hf.check_state_dict(expected, state, source)
        # assign=True takes the checkpoint's dtype; keep_in_fp32 tensors are float32 regardless.
        state = {
            key: tensor.float() if self.keeps_in_fp32(key) else tensor
            for key, tensor in state.items()
        }
        self.load_state_dict(state, strict=False, assign=True)
        self.tie_weights()
        # Models built on the meta device still hold meta buffers (rotary tables); every module
        # that owns such buffers recomputes them in ``reset_buffers``.
        for module in self.modules():
            if hasattr(module, "reset_buffers"):
                module.reset_buffers()
        leftover = [n for n, t in [*self.named_parameters(), *self.named_buffers()] if t.is_meta]
        if leftover:
            raise PsycheError(f"{source}: nothing loaded for {hf.summarize_keys(leftover)}")

    def hf_state_dict_shapes(self) -> dict[str, torch.Tensor]:
        """Keys and shapes (tensors, possibly on the meta device) the checkpoint must hold."""
        return self.hf_state_dict()

    def tie_weights(self) -> None:
        """With ``config.tie_word_embeddings``, share the input embedding's weight with the LM
        head, in transformers' layout (``model.embed_tokens``, ``lm_head``); called after loading.
        A model laid out otherwise overrides this."""
        if getattr(self.config, "tie_word_embeddings", False):
            self.lm_head.weight = self.get_submodule("model.embed_tokens").weight

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
