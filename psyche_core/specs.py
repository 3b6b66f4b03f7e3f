"""Frozen spec objects that plugins hand to ``register``.

A spec names what a plugin provides and where its code lives, as a lazy ``"module:attr"``
import string, so registering costs nothing and a heavy import (torch, transformers) happens
only when a run actually uses the thing.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from psyche_core.errors import PsycheError


def load_object(target: str) -> Any:
    """Import ``"package.module:attribute"`` and return the attribute."""
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise PsycheError(f"bad import string {target!r}: expected 'package.module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PsycheError(f"cannot import {module_name!r} (needed for {target!r}): {exc}") from exc
    obj = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PsycheError(f"{module_name!r} has no attribute {attribute!r}") from None
    return obj


def _frozen_mapping(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(value))


def _thawed(value: Any) -> Any:
    """Read-only mappings as plain dicts (``MappingProxyType`` does not pickle)."""
    if isinstance(value, Mapping):
        return {k: _thawed(v) for k, v in value.items()}
    return value


class _Picklable:
    """Specs travel inside the run plan to worker processes: pickle them by their fields."""

    def __reduce__(self) -> tuple[Any, ...]:
        fields = {f.name: _thawed(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return (_rebuild, (type(self), fields))


def _rebuild(cls: type, fields: dict[str, Any]) -> Any:
    return cls(**fields)


@dataclass(frozen=True)
class OptionSpec:
    """An extra ``psyche train`` option a registration needs.

    ``name`` is the flag without its dashes (``"compression-chunk"``); it becomes
    ``--compression-chunk`` on the command line, ``compression-chunk`` (or
    ``compression_chunk``) in a run TOML, and ``options.compression_chunk`` in the factory.
    ``type`` is ``int``, ``float``, ``str``, ``bool`` (a ``--flag/--no-flag`` switch) or a
    tuple of allowed strings. ``cli=False`` makes
    an option that only a TOML file can set (for lists and tables). ``flag_value``: what the
    flag means given without a value (``--compile`` alone is ``--compile on``).

    ``min`` / ``max`` bound a number (inclusive); ``above`` / ``below`` are exclusive bounds
    (a timeout or learning rate must be > 0, a beta < 1). Numbers are always checked for
    finiteness, and ints for fitting in 63 bits, by
    :func:`psyche_core.options.check_bounds`, before step 1.

    ``presets`` makes a preset option (its ``type`` is the tuple of preset names): choosing
    one fills in other options, ``{"small": {"compression_chunk": 16, ...}}``, wherever the
    user did not set them (a flag or a TOML key always wins).
    """

    name: str
    type: Any = str
    default: Any = None
    help: str = ""
    cli: bool = True
    flag_value: Any = None
    min: float | None = None
    max: float | None = None
    above: float | None = None
    below: float | None = None
    presets: Mapping[str, Mapping[str, Any]] | None = field(default=None, hash=False)

    @property
    def key(self) -> str:
        """The option's name as a Python identifier (``compression_chunk``)."""
        return self.name.replace("-", "_")


@dataclass(frozen=True)
class ModelSpec(_Picklable):
    """A causal LM a plugin provides.

    Attributes:
        name: what users type after ``--model`` (``"llama"``).
        cls: lazy import string of the :class:`psyche_core.model.CausalLM` subclass.
        model_types: HF ``config.json`` ``model_type`` values this class loads (``"llama"``).
        architectures: HF ``architectures`` entries it loads (``"LlamaForCausalLM"``).
        presets: named configs (plain dicts of HF config.json fields) that train from random
            init; ``--model llama:tiny`` picks one.
        default_preset: the preset ``--model llama`` means; the first preset if not given.
        options: extra ``psyche train`` options the model reads; the model's constructor
            receives them as ``options.<key>``.
        description: one line for ``psyche list-plugins``.
        fallback: load any HF checkpoint or config whose ``model_type`` and ``architectures``
            no other installed model claims (psyche-hf wraps transformers this way). Consulted
            only after every native match; ``model_types`` still lists what it is tested on.
        default_priority: offer ``NAME:default_preset`` as the model ``psyche train`` trains
            when ``--model`` is not given; the installed model with the highest priority wins
            (``None``: never the default).
        checkpoint_option / config_option: keys of this model's own options naming a checkpoint
            to load / a config.json to initialise, for ``--model NAME`` without a preset
            (psyche-hf: ``--hf-model`` / ``--hf-config``).
    """

    name: str
    cls: str
    model_types: tuple[str, ...] = ()
    architectures: tuple[str, ...] = ()
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    default_preset: str | None = None
    options: tuple[OptionSpec, ...] = ()
    description: str = ""
    fallback: bool = False
    default_priority: int | None = None
    checkpoint_option: str | None = None
    config_option: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_types", tuple(self.model_types))
        object.__setattr__(self, "architectures", tuple(self.architectures))
        object.__setattr__(self, "options", tuple(self.options))
        presets = {k: _frozen_mapping(v) for k, v in self.presets.items()}
        object.__setattr__(self, "presets", MappingProxyType(presets))
        if self.default_preset is not None and self.default_preset not in presets:
            raise PsycheError(
                f"model {self.name!r}: default_preset {self.default_preset!r} is not one of its "
                f"presets ({', '.join(presets) or 'none'})"
            )
        declared = {option.key for option in self.options}
        for key in (self.checkpoint_option, self.config_option):
            if key is not None and key not in declared:
                raise PsycheError(f"model {self.name!r}: {key!r} is not one of its options")

    @property
    def preset_for_default(self) -> str | None:
        if self.default_preset is not None:
            return self.default_preset
        return next(iter(self.presets), None)

    def load(self) -> type:
        """Import and return the model class."""
        return load_object(self.cls)


@dataclass(frozen=True)
class _FactorySpec(_Picklable):
    """A name, a lazy ``"module:function"`` factory and the options it reads.

    ``implied_by``: an option key whose value, when set, chooses this registration where the
    user did not name one (``data_path`` chooses the local provider, ``distro`` the DisTrO
    optimizer). ``default_priority``: the registration used when nothing names or implies one;
    the highest installed priority wins (``None``: never the default).
    """

    name: str
    factory: str
    options: tuple[OptionSpec, ...] = ()
    description: str = ""
    implied_by: str | None = None
    default_priority: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", tuple(self.options))

    def load(self) -> Callable[..., Any]:
        """Import and return the factory."""
        return load_object(self.factory)


@dataclass(frozen=True)
class DataProviderSpec(_FactorySpec):
    """A data provider: ``factory(options, providers) -> DataProvider``.

    ``options`` is a :class:`psyche_core.options.Options` holding every resolved ``psyche train``
    option (``options.data_path``, ``options.sequence_length``, ``options.seed`` ...);
    ``providers`` is the registry of installed data providers, for a provider built from
    others (a weighted mixture).
    """


@dataclass(frozen=True)
class OptimizerSpec(_FactorySpec):
    """An optimizer: ``factory(model, options) -> Optimizer``."""


@dataclass(frozen=True)
class EvaluatorSpec(_FactorySpec):
    """An evaluation during training: ``factory(options, model) -> evaluate``, where
    ``evaluate(model, step) -> dict[str, float]`` adds its scores to that step's metrics.

    It runs when its ``implied_by`` option is set (``--eval-tasks``), at every ``--eval-every``
    step, on every peer (the peers' models are replicas, so they stay in step and agree); the
    factory runs before step 1, so it can refuse bad input then.
    """


@dataclass(frozen=True)
class ReporterSpec(_FactorySpec):
    """Where metrics go: ``factory(options, run) -> Reporter | None`` on peer 0.

    ``run`` is a :class:`psyche_core.reporting.RunInfo` (console, first and last step, the run
    record); the factory returns ``None`` when its options leave it off (no ``--metrics``).
    Every registered reporter is asked, in name order.
    """
