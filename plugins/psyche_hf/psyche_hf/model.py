"""Any ``transformers`` causal LM as a psyche :class:`~psyche_core.model.CausalLM`.

:class:`HfCausalLM` wraps the model ``transformers.AutoModelForCausalLM`` builds and *adopts its
children*: the transformers model's submodules (``model``, ``lm_head``, ``transformer`` ...) are
registered directly on the wrapper, so parameter names, the state dict and the module tree are
transformers' own (``model.layers.0.self_attn.q_proj.weight``) and optimizer state, checkpoints
and the native psyche plugins all speak the same names. ``forward`` calls the transformers model
itself; the loss is computed here, in float32, with psyche's contract (mean over labelled
positions).

Packed documents: recent transformers (``masking_utils``; 5.24 is tested) reads a row whose
``position_ids`` restart at 0 as several documents and masks attention between them, for eager
and sdpa alike, in every model that builds its mask with ``create_causal_mask(position_ids=...)``.
The wrapper turns ``sequence_lengths`` into such positions; the first time a model sees packed
documents (per attention implementation) a two-row probe checks that the second document's
logits do not depend on the first, and a model whose mask ignores the boundaries (bloom) is a
clear error.

References:
    - huggingface/transformers ``masking_utils.py`` (``find_packed_sequence_indices``,
      ``create_causal_mask``), ``modeling_utils.py`` (``set_attn_implementation``,
      ``save_pretrained``), ``models/auto`` (``AutoConfig.for_model``,
      ``AutoModelForCausalLM.from_config`` / ``from_pretrained``).
"""

from __future__ import annotations

import inspect
import logging
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from psyche_core import hf
from psyche_core.errors import InvalidInputError, PsycheError
from psyche_core.inputs import check_inputs, check_sequence_lengths
from psyche_core.losses import causal_lm_loss
from psyche_core.model import CausalLM, CausalLMOutput
from psyche_core.options import Options
from psyche_hf.building import (
    dtype_kwarg,
    hf_config,
    import_transformers,
    no_progress_bars,
    seeded_init,
)
from psyche_hf.tensor_parallel import dtensor_plan

logger = logging.getLogger(__name__)


# -- the model -----------------------------------------------------------------------------------


class HfCausalLM(CausalLM):
    """A transformers ``AutoModelForCausalLM`` model behind psyche's CausalLM contract.

    ``self.hf_model`` is the transformers model; ``self.config`` its ``PretrainedConfig``.
    ``--model hf --hf-model DIR`` / ``--hf-config config.json`` name the model to wrap (core
    resolves them through the spec's ``checkpoint_option`` / ``config_option``).
    """

    hf_model: Any

    def __init__(self, model: Any, options: Options | None = None) -> None:
        super().__init__(model.config, options)
        self._packing: dict[str, bool] = {}  # attention implementation -> packed docs work
        self._forward_params: frozenset[str] = frozenset()
        self._adopt(model)

    def _adopt(self, model: Any) -> None:
        """Take over ``model``'s submodules (and any top-level parameters or buffers)."""
        for name in list(self._modules):
            delattr(self, name)
        object.__setattr__(self, "hf_model", model)  # a plain attribute, not a submodule
        for name, child in model.named_children():
            self.add_module(name, child)
        for name, param in model._parameters.items():
            self.register_parameter(name, param)
        for name, buffer in model._buffers.items():
            persistent = name not in model._non_persistent_buffers_set
            self.register_buffer(name, buffer, persistent=persistent)
        model.train(self.training)
        self.config = model.config
        self.attn_implementation = model.config._attn_implementation
        self._packing.clear()
        self._forward_params = frozenset(inspect.signature(model.forward).parameters)

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # .to() / .float() reach the adopted children through this module; top-level tensors of
        # the transformers model (rare) are re-pointed at the converted ones.
        super()._apply(fn, recurse)
        model = self.__dict__.get("hf_model")
        if model is not None:
            model._parameters.update({k: self._parameters[k] for k in model._parameters})
            model._buffers.update({k: self._buffers[k] for k in model._buffers})
        return self

    def train(self, mode: bool = True) -> HfCausalLM:
        super().train(mode)
        model = self.__dict__.get("hf_model")
        if model is not None:
            model.training = mode
        return self

    @property
    def model_type(self) -> str:
        return str(getattr(self.config, "model_type", "?"))

    def _describe(self) -> str:
        return f"transformers' {type(self.hf_model).__name__} (model_type {self.model_type})"

    # -- construction and I/O -------------------------------------------------------------------

    @classmethod
    def parse_config(cls, config: Any) -> Any:
        return hf_config(config)

    @classmethod
    def from_config(
        cls,
        config: Any,
        *,
        seed: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        attn_implementation: str | None = None,
        options: Options | None = None,
    ) -> HfCausalLM:
        """``AutoModelForCausalLM.from_config`` with transformers' own init, seeded: the same
        seed gives the same weights whatever the global RNG state (init runs on the CPU in
        float32, then moves to ``device`` / ``dtype``)."""
        transformers = import_transformers()
        parsed = hf_config(config)
        with seeded_init(seed):
            try:
                model = transformers.AutoModelForCausalLM.from_config(
                    parsed, **{dtype_kwarg(transformers): torch.float32}
                )
            except ValueError as exc:
                raise PsycheError(
                    f"hf: transformers has no causal LM for model_type {parsed.model_type!r}: {exc}"
                ) from None
        return cls(model, options)._finish(device, hf.parse_dtype(dtype), attn_implementation)

    @classmethod
    def from_pretrained(
        cls,
        source: Any,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        revision: str | None = None,
        attn_implementation: str | None = None,
        options: Options | None = None,
    ) -> HfCausalLM:
        """``AutoModelForCausalLM.from_pretrained`` on a local directory or a hub repo id
        (resolved by psyche: ``HF_HUB_OFFLINE=1`` and the cache are honoured). ``dtype``
        defaults to float32, whatever the checkpoint holds; missing weights are an error."""
        transformers = import_transformers()
        directory = hf.resolve_checkpoint(source, revision)
        hf.read_config(directory)  # a clear error when there is no config.json
        kwargs = {dtype_kwarg(transformers): hf.parse_dtype(dtype) or torch.float32}
        try:
            with no_progress_bars(transformers):
                model, info = transformers.AutoModelForCausalLM.from_pretrained(
                    directory, output_loading_info=True, **kwargs
                )
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise PsycheError(
                f"{source}: transformers cannot load it as a causal LM: {exc}"
            ) from None
        missing = sorted(info.get("missing_keys") or ())
        mismatched = info.get("mismatched_keys") or ()
        if missing or mismatched:
            problems = [f"missing keys: {hf.summarize_keys(missing)}"] if missing else []
            if mismatched:
                problems.append(
                    f"shape mismatches: {hf.summarize_keys([str(m[0]) for m in mismatched])}"
                )
            raise PsycheError(f"{source}: weights do not match the config ({'; '.join(problems)})")
        if info.get("unexpected_keys"):
            logger.warning(
                "%s: ignored weights %s", source, hf.summarize_keys(info["unexpected_keys"])
            )
        return cls(model, options)._finish(device, None, attn_implementation)

    def _finish(self, device: Any, dtype: Any, attn_implementation: str | None) -> HfCausalLM:
        self.to(device=device, dtype=dtype)
        if attn_implementation is not None:
            self.set_attn_implementation(attn_implementation)
        return self

    def save_pretrained(
        self,
        directory: Any,
        *,
        max_shard_size: int | None = None,
        extra_files: Mapping[str, str | bytes] | None = None,
    ) -> None:
        """transformers' own ``save_pretrained`` (config.json + safetensors), written to a
        temporary sibling directory that replaces ``directory`` only when complete, plus any
        ``extra_files`` (name -> content), as :func:`psyche_core.hf.save_checkpoint` does."""
        model = self.hf_model
        target = Path(directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
            with no_progress_bars(import_transformers()):
                # psyche's state dict: under tensor parallelism it holds the full weights every
                # rank gathered in psyche_core.parallel.full_weights; the model's own would hold
                # DTensor shards, which only rank 0 (the writer) would try to gather
                model.save_pretrained(staging, state_dict=self.hf_state_dict(), **kwargs)
            for name, content in (extra_files or {}).items():
                mode = "wb" if isinstance(content, bytes) else "w"
                with open(staging / name, mode) as f:
                    f.write(content)
            hf.replace_directory(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def load_hf_state_dict(
        self,
        state: Mapping[str, torch.Tensor],
        *,
        source: str = "state dict",
        device: torch.device | str | None = None,
    ) -> None:
        """Copy a state dict with transformers' keys into the model, checking keys and shapes
        first; a tied copy (``lm_head.weight`` of tied embeddings) is ignored, as transformers
        does."""
        model = self.hf_model
        expected = self.hf_state_dict_shapes()
        tied = set(self.state_dict()) - set(expected)
        state = {k: v for k, v in state.items() if k not in tied}
        hf.check_state_dict(expected, state, source)
        with torch.no_grad():
            model.load_state_dict(state, strict=False)

    def tensor_parallel_plan(self, degree: int) -> dict[str, Any] | None:
        """transformers' own plan (``config.base_model_tp_plan`` and the head's ``_tp_plan``)
        as DTensor styles; None for an architecture without one. See
        :mod:`psyche_hf.tensor_parallel`."""
        return dtensor_plan(self.hf_model, degree, self._describe())

    # -- options and attention ------------------------------------------------------------------

    def set_attn_implementation(self, name: str) -> None:
        """``eager`` or ``sdpa``, through transformers' ``set_attn_implementation``."""
        if name not in self.attn_implementations:
            super().set_attn_implementation(name)  # raises, listing the choices
        model = self.hf_model
        try:
            if hasattr(model, "set_attn_implementation"):
                model.set_attn_implementation(name)
            else:  # transformers < 4.48
                model.config._attn_implementation = name
        except (ValueError, ImportError) as exc:
            reason = str(exc).split(". ")[0]  # transformers' first sentence says it
            raise PsycheError(
                f"{self._describe()} cannot use {name} attention ({reason}); use "
                f"--attn-implementation {model.config._attn_implementation}"
            ) from None
        actual = model.config._attn_implementation
        if actual != name:
            raise PsycheError(
                f"transformers cannot switch {type(model).__name__} (model_type "
                f"{self.model_type}) to {name} attention (it runs {actual}); use "
                f"--attn-implementation {actual}"
            )
        self.attn_implementation = name

    activation_checkpointing_modes = ("none", "full")

    def set_activation_checkpointing(self, mode: str) -> None:
        """``full``: transformers' own gradient checkpointing (each decoder layer recomputed,
        non-reentrant); transformers has no selective mode."""
        super().set_activation_checkpointing(mode)
        model = self.hf_model
        # transformers 5 renamed gradient_* to activation_checkpointing_* (the old names warn)
        renamed = hasattr(model, "activation_checkpointing_enable")
        if mode == "none":
            if renamed:
                model.activation_checkpointing_disable()
            else:
                model.gradient_checkpointing_disable()
            return
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise PsycheError(
                f"{self._describe()} does not support gradient checkpointing; use "
                "--activation-checkpointing none"
            )
        kwargs = {"use_reentrant": False}
        if renamed:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    # -- facts ----------------------------------------------------------------------------------

    @property
    def max_context_length(self) -> int:
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(self.config, name, None)
            if isinstance(value, int):
                return value
        raise PsycheError(f"{self._describe()}: its config names no maximum context length")

    def _context_limit(self) -> int | None:
        try:
            return self.max_context_length
        except PsycheError:
            return None

    # -- forward ----------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        sequence_lengths: Sequence[Sequence[int]] | None = None,
        num_logits_to_keep: int | None = None,
        return_logits: bool = True,
    ) -> CausalLMOutput:
        model = self.hf_model
        self._check_inputs(input_ids, labels, position_ids)
        position_ids, attention_mask = self._document_inputs(
            input_ids, position_ids, sequence_lengths
        )
        kwargs: dict[str, Any] = {"use_cache": False}
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        keep = num_logits_to_keep or 0
        keep_kwarg = self._keep_kwarg()
        if labels is None and keep and keep_kwarg:
            kwargs[keep_kwarg] = keep
        output = model(input_ids=input_ids, **kwargs)
        logits = output.logits
        if keep and logits.shape[1] > keep:
            logits = logits[:, -keep:]
        if labels is None:
            return CausalLMOutput(logits, None)
        loss = causal_lm_loss(output.logits, labels)
        aux = getattr(output, "aux_loss", None)  # MoE load balancing, as transformers adds it
        if aux is not None:
            loss = loss + float(getattr(self.config, "router_aux_loss_coef", 0.0)) * aux.float()
        return CausalLMOutput(logits if return_logits else None, loss)

    def _keep_kwarg(self) -> str | None:
        """transformers 4.50 renamed ``num_logits_to_keep`` to ``logits_to_keep``."""
        for name in ("logits_to_keep", "num_logits_to_keep"):
            if name in self._forward_params:
                return name
        return None

    def _check_inputs(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None,
        position_ids: torch.Tensor | None,
    ) -> None:
        """Clear errors instead of index errors deep inside transformers."""
        check_inputs(
            input_ids,
            labels,
            position_ids,
            vocab_size=self.vocab_size,
            max_length=self._context_limit(),
        )
        if position_ids is not None and "position_ids" not in self._forward_params:
            raise InvalidInputError(f"{self._describe()} takes no position_ids")

    def _document_inputs(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None,
        sequence_lengths: Sequence[Sequence[int]] | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(position_ids, attention_mask)`` for transformers.

        Packed documents become positions that restart at 0 per document (transformers' packed
        format). Explicit positions without documents get an all-ones 2-D mask, so attention
        spans the whole row as in every psyche model (without a mask transformers would read a
        restart as a document boundary).
        """
        B, T = input_ids.shape
        device = input_ids.device
        if position_ids is not None:
            position_ids = position_ids.to(device=device, dtype=torch.long).view(-1, T)
        if sequence_lengths is None or all(len(row) == 1 for row in sequence_lengths):
            if sequence_lengths is not None:
                check_sequence_lengths(sequence_lengths, B, T)
            if position_ids is None:
                return None, None
            return position_ids, torch.ones(B, T, dtype=torch.long, device=device)
        lengths = check_sequence_lengths(sequence_lengths, B, T)
        self._require_packing()
        sizes = torch.tensor(lengths, device=device)
        first = torch.cumsum(sizes, 0) - sizes  # flat index where each document starts
        starts = torch.zeros(B * T, dtype=torch.bool, device=device)
        starts[first] = True
        starts = starts.view(B, T)
        if position_ids is None:
            doc = torch.repeat_interleave(torch.arange(len(lengths), device=device), sizes)
            return (torch.arange(B * T, device=device) - first[doc]).view(B, T), None
        full = position_ids.expand(B, T)
        breaks = torch.ones_like(starts)
        breaks[:, 1:] = full[:, 1:] - full[:, :-1] != 1
        if not torch.equal(breaks, starts):
            raise InvalidInputError(
                "with packed documents, position_ids must count up by one inside each document "
                "and restart at every boundary (transformers' packed-sequence format); leave "
                "them out to have them computed from sequence_lengths"
            )
        return position_ids, None

    def _require_packing(self) -> None:
        implementation = self.attn_implementation
        if implementation not in self._packing:
            self._packing[implementation] = self._probe_packing()
        if not self._packing[implementation]:
            raise PsycheError(
                f"{self._describe()} cannot keep packed documents apart with {implementation} "
                "attention: its attention mask ignores where documents start (transformers marks "
                "them by position_ids restarting at 0). Train it on one document per row (no "
                "sequence_lengths); docs/models/hf.md lists the architectures that support it"
            )

    def _probe_packing(self) -> bool:
        """Whether a second packed document's logits are independent of the first one's.

        Two rows hold different first documents and the same second one; where attention stops
        at the boundary the second document's logits agree to rounding (exactly, in practice).
        Runs without gradients, in eval mode, once per attention implementation.
        """
        model = self.hf_model
        if "position_ids" not in self._forward_params:
            return False
        device = next(self.parameters()).device
        generator = torch.Generator().manual_seed(0)
        firsts = torch.randint(0, self.vocab_size, (2, 6), generator=generator)
        second = torch.randint(0, self.vocab_size, (1, 4), generator=generator).expand(2, 4)
        ids = torch.cat([firsts, second], dim=1).to(device)
        positions = torch.cat([torch.arange(6), torch.arange(4)]).expand(2, 10).to(device)
        training = self.training
        self.eval()
        try:
            with torch.no_grad():
                out = model(input_ids=ids, position_ids=positions, use_cache=False)
        finally:
            self.train(training)
        logits = out.logits[:, 6:].float()
        leak = (logits[0] - logits[1]).abs().max().item()
        return leak <= 1e-4 * max(1.0, logits.abs().max().item())
