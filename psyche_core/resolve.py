"""From the names a user types to the things a run uses: ``--model``, the data provider, the
optimizer, ``--device`` and ``--dtype``.

Core names no plugin here: defaults come from what the installed plugins declare
(``default_priority``, ``implied_by``, a model's ``checkpoint_option``), so any set of plugins
trains out of the box with the defaults they offer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from psyche_core import hf
from psyche_core.errors import PsycheError, UnknownNameError
from psyche_core.model import CausalLM
from psyche_core.options import Options
from psyche_core.plugins import INSTALL_HINT, Plugins
from psyche_core.registry import Registry
from psyche_core.specs import ModelSpec

SpecT = TypeVar("SpecT")


@dataclass(frozen=True)
class ModelChoice:
    """What ``--model`` resolved to: a spec plus a preset config or a checkpoint directory."""

    spec: ModelSpec
    label: str
    config: Mapping[str, Any] | None = None
    checkpoint: Path | None = None
    note: str = ""  # one console line, e.g. which fallback plugin loads the model

    def build(
        self,
        seed: int,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        options: Options | None = None,
    ) -> CausalLM:
        """The model in one step: weights, device, dtype, attention kernel and its options."""
        cls = self.spec.load()
        attention = None if options is None else options.attn_implementation
        if self.checkpoint is not None:
            model = cls.from_pretrained(
                self.checkpoint,
                device=device,
                dtype=dtype,
                attn_implementation=attention,
                options=options,
            )
        else:
            assert self.config is not None
            model = cls.from_config(
                self.config,
                seed=seed,
                device=device,
                dtype=dtype,
                attn_implementation=attention,
                options=options,
            )
        if options is not None:
            model.set_activation_checkpointing(options.activation_checkpointing)
        return model


# -- the model ----------------------------------------------------------------------------------


def resolve_model(plugins: Plugins, ref: str | None, options: Options | None = None) -> ModelChoice:
    """``llama`` | ``llama:20m`` | ``config.json`` | checkpoint directory | hub repo id; with
    no ``ref``, the default model the installed plugins offer."""
    if ref is None:
        ref = default_model(plugins)
    name, _, preset = ref.partition(":")
    if name in plugins.models:
        choice = _registered_model(plugins.models.get(name), name, preset, options)
    else:
        choice = _model_from_path(plugins, ref)
    if options is not None:
        bare = name in plugins.models and not preset
        _check_model_options(plugins, choice if bare else None, ref, options)
    return choice


def default_model(plugins: Plugins) -> str:
    """``NAME:PRESET`` of the installed model with the highest ``default_priority``."""
    spec = _highest_priority(plugins.models)
    if spec is None or spec.preset_for_default is None:
        raise PsycheError(
            "no model plugin that offers a default model is installed; "
            f"{INSTALL_HINT}, or pass --model (psyche list-plugins shows what is installed)"
        )
    return f"{spec.name}:{spec.preset_for_default}"


def _registered_model(
    spec: ModelSpec, name: str, preset: str, options: Options | None
) -> ModelChoice:
    if not preset and options is not None:
        if spec.checkpoint_option and options[spec.checkpoint_option]:
            if spec.config_option and options[spec.config_option]:
                raise PsycheError(
                    f"give --{_flag(spec.checkpoint_option)} (a checkpoint) or "
                    f"--{_flag(spec.config_option)} (random init), not both"
                )
            source = str(options[spec.checkpoint_option])
            return ModelChoice(spec, source, checkpoint=hf.resolve_checkpoint(source))
        if spec.config_option and options[spec.config_option]:
            path = str(options[spec.config_option])
            return ModelChoice(spec, path, config=hf.read_config_file(path))
    sources = [f"--{_flag(k)}" for k in (spec.checkpoint_option, spec.config_option) if k]
    # a model that names its source with options has a default preset only if it says so
    default = spec.default_preset if sources else spec.preset_for_default
    preset = preset or default or ""
    if preset not in spec.presets:
        if preset:
            message = f"model {name!r} has no preset {preset!r}"
        elif sources:
            message = f"--model {name} trains the model named by {' or '.join(sources)}"
        else:
            message = f"model {name!r} has no presets; pass a checkpoint or a config.json"
        known = ", ".join(f"{name}:{p}" for p in spec.presets)
        raise PsycheError(f"{message}; its presets: {known or 'none'}")
    return ModelChoice(spec, f"{name}:{preset}", config=dict(spec.presets[preset]))


def _model_from_path(plugins: Plugins, ref: str) -> ModelChoice:
    path = Path(ref).expanduser()
    if path.is_file() and path.suffix == ".json":
        config = hf.read_config_file(path)
        spec = spec_for_config(plugins, config, ref)
        return ModelChoice(spec, ref, config=config, note=fallback_note(spec, config))
    if path.is_dir() or (ref.count("/") == 1 and not path.exists()):
        directory = hf.resolve_checkpoint(ref)
        config = hf.read_config(directory)
        spec = spec_for_config(plugins, config, ref)
        return ModelChoice(spec, ref, checkpoint=directory, note=fallback_note(spec, config))
    name = ref.partition(":")[0]
    if ":" in ref:
        raise UnknownNameError("model", name, plugins.models.names(), plugins.models.install_hint)
    raise UnknownNameError(
        "model",
        ref,
        plugins.models.names(),
        "Pass a registered name, NAME:PRESET, a config.json, a checkpoint directory or a "
        "Hugging Face repo id.",
    )


def _check_model_options(
    plugins: Plugins, bare: ModelChoice | None, ref: str, options: Options
) -> None:
    """A model's source options (``--hf-model``) go only with that model's bare name
    (``--model hf``); ``bare`` is the choice when ``ref`` was such a name."""
    for name, spec, _ in plugins.models.items():
        if bare is not None and spec is bare.spec:
            continue
        for key in (spec.checkpoint_option, spec.config_option):
            if key and key in options and options[key]:
                raise PsycheError(
                    f"--{_flag(key)} goes with --model {name}; --model {ref} already names "
                    "the model"
                )


def spec_for_config(plugins: Plugins, config: Mapping[str, Any], source: str) -> ModelSpec:
    """The registered model that loads this HF config: a native one by model_type, then by
    architectures; else a fallback model, the first by name if several."""
    model_type = config.get("model_type")
    architectures = set(config.get("architectures") or ())
    specs = [spec for _, spec, _ in plugins.models.items()]
    native = [spec for spec in specs if not spec.fallback]
    for spec in native:
        if model_type and model_type in spec.model_types:
            return spec
    for spec in native:
        if architectures & set(spec.architectures):
            return spec
    for spec in specs:
        if spec.fallback:
            return spec
    loaders = [f"{n} ({', '.join(s.model_types) or '-'})" for n, s, _ in plugins.models.items()]
    raise PsycheError(
        f"{source}: no installed model plugin loads model_type {model_type!r} "
        f"(installed: {'; '.join(loaders) or 'none'}). Install a plugin that does; a fallback "
        "model plugin (`psyche list-plugins`) loads any transformers architecture"
    )


def fallback_note(spec: ModelSpec, config: Mapping[str, Any]) -> str:
    """The console line saying a fallback model loads this config, or ``""``."""
    if not spec.fallback:
        return ""
    return (
        f"using {spec.name} for model_type {config.get('model_type')!r} "
        "(no native model plugin claims it)"
    )


# -- data provider and optimizer --------------------------------------------------------------


def choose(registry: Registry[SpecT], named: str | None, options: Options, flag: str) -> SpecT:
    """The registration a run uses: the one named by ``--FLAG``; else the one an option the
    user set implies (``--data-path`` -> local, ``--distro`` -> distro); else the installed
    default. A switch that implies another registration than the named one is a conflict."""
    implied = [
        spec
        for _, spec, _ in registry.items()
        if spec.implied_by and spec.implied_by in options and options[spec.implied_by]
    ]
    if named:
        for spec in implied:
            if spec.name != named and options[spec.implied_by] is True:
                raise PsycheError(f"--{_flag(spec.implied_by)} conflicts with --{flag} {named}")
        return registry.get(named)
    if implied:
        return implied[0]
    default = _highest_priority(registry)
    if default is None:
        raise PsycheError(
            f"no {registry.kind} is installed and --{flag} names none; {registry.install_hint}"
        )
    return default


def _highest_priority(registry: Registry[SpecT]) -> SpecT | None:
    """The registration with the highest ``default_priority`` (ties: the first by name)."""
    ranked = sorted(
        ((-spec.default_priority, name), spec)
        for name, spec, _ in registry.items()
        if spec.default_priority is not None
    )
    return ranked[0][1] if ranked else None


# -- device and dtype ---------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PsycheError(
            f"--device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise PsycheError(
                f"--device {name}: CUDA is not available here (no GPU, or torch built "
                "without CUDA); use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise PsycheError(
                f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise PsycheError(f"--device {name}: MPS is not available here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise PsycheError(f"--device {name}: unsupported device type; use cpu, cuda or mps")
    return device


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    if name is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    dtype = hf.parse_dtype(name)
    assert dtype is not None
    return dtype


def _flag(key: str) -> str:
    return key.replace("_", "-")
