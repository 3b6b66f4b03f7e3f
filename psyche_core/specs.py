"""Frozen spec objects that plugins hand to ``register``.

A spec names what a plugin provides and where its code lives, as a lazy ``"module:attr"``
import string, so registering costs nothing and a heavy import (torch, transformers) happens
only when a run actually uses the thing.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class OptionSpec:
    """An extra ``psyche train`` option a registration needs.

    ``name`` is the flag without its dashes (``"compression-chunk"``); it becomes
    ``--compression-chunk`` on the command line, ``compression-chunk`` (or
    ``compression_chunk``) in a run TOML, and ``options.compression_chunk`` in the factory.
    ``type`` is ``int``, ``float``, ``str``, ``bool`` (a ``--flag/--no-flag`` switch) or a
    tuple of allowed strings. ``cli=False`` makes
    an option that only a TOML file can set (for lists and tables).
    """

    name: str
    type: Any = str
    default: Any = None
    help: str = ""
    cli: bool = True

    @property
    def key(self) -> str:
        """The option's name as a Python identifier (``compression_chunk``)."""
        return self.name.replace("-", "_")


@dataclass(frozen=True)
class ModelSpec:
    """A causal LM a plugin provides.

    Attributes:
        name: what users type after ``--model`` (``"llama"``).
        cls: lazy import string of the :class:`psyche_core.model.CausalLM` subclass.
        model_types: HF ``config.json`` ``model_type`` values this class loads (``"llama"``).
        architectures: HF ``architectures`` entries it loads (``"LlamaForCausalLM"``).
        presets: named configs (plain dicts of HF config.json fields) that train from random
            init; ``--model llama:tiny`` picks one.
        default_preset: the preset ``--model llama`` means; the first preset if not given.
        options: extra ``psyche train`` options the model reads.
        description: one line for ``psyche list-plugins``.
        fallback: load any HF checkpoint or config whose ``model_type`` and ``architectures``
            no other installed model claims (psyche-hf wraps transformers this way). Consulted
            only after every native match; ``model_types`` still lists what it is tested on.
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

    @property
    def preset_for_default(self) -> str | None:
        if self.default_preset is not None:
            return self.default_preset
        return next(iter(self.presets), None)

    def load(self) -> type:
        """Import and return the model class."""
        return load_object(self.cls)


@dataclass(frozen=True)
class _FactorySpec:
    """A name, a lazy ``"module:function"`` factory and the options it reads."""

    name: str
    factory: str
    options: tuple[OptionSpec, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", tuple(self.options))

    def load(self) -> Callable[..., Any]:
        """Import and return the factory."""
        return load_object(self.factory)


@dataclass(frozen=True)
class DataProviderSpec(_FactorySpec):
    """A data provider: ``factory(options) -> DataProvider``.

    ``options`` is a :class:`psyche_core.options.Options` holding every resolved ``psyche train``
    option (``options.data_path``, ``options.sequence_length``, ``options.seed`` ...).
    """


@dataclass(frozen=True)
class OptimizerSpec(_FactorySpec):
    """An optimizer: ``factory(model, options) -> Optimizer``."""
