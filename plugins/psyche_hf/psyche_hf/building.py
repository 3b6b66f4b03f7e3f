"""Building transformers models for psyche: the lazy import, configs, seeded init.

Nothing here imports transformers at module level: :func:`import_transformers` does, and turns
its absence into a one-line error that says what to install.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from psyche_core.errors import PsycheError

MIN_TRANSFORMERS = (4, 45)
INSTALL_HINT = "pip install 'transformers>=4.45' (a dependency of psyche-hf)"
# Fields transformers writes that describe the file rather than the architecture.
_FILE_FIELDS = ("transformers_version", "_name_or_path")


# -- transformers, imported lazily -------------------------------------------------------------


def import_transformers() -> Any:
    """The ``transformers`` module, or a one-line error saying how to install it."""
    try:
        import transformers
    except ImportError as exc:
        raise PsycheError(
            f"the hf model needs the transformers package, which cannot be imported ({exc}); "
            f"{INSTALL_HINT}"
        ) from None
    if _version(transformers.__version__) < MIN_TRANSFORMERS:
        raise PsycheError(
            f"the hf model needs transformers >= 4.45, found {transformers.__version__}; "
            f"{INSTALL_HINT}"
        )
    return transformers


def _version(text: str) -> tuple[int, int]:
    major, minor = [*text.split("."), "0"][:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def dtype_kwarg(transformers: Any) -> str:
    """transformers 4.56 renamed ``torch_dtype`` to ``dtype``."""
    return "dtype" if _version(transformers.__version__) >= (4, 56) else "torch_dtype"


@contextlib.contextmanager
def no_progress_bars(transformers: Any) -> Iterator[None]:
    """transformers' tqdm bars ("Loading weights", "Writing model shards") would break psyche's
    console lines; the trainer reports progress itself."""
    logs = transformers.utils.logging
    enabled = logs.is_progress_bar_enabled()
    logs.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logs.enable_progress_bar()


def hf_config(config: Any) -> Any:
    """A transformers ``PretrainedConfig`` from a config.json dict (``model_type`` picks the
    class) or a ``PretrainedConfig``."""
    transformers = import_transformers()
    if isinstance(config, transformers.PretrainedConfig):
        return config
    if not isinstance(config, Mapping):
        raise PsycheError(f"hf: expected a config dict, got {type(config).__name__}")
    # deep copy: the presets are read-only and transformers edits rope dicts in place
    data = {k: _thaw(v) for k, v in config.items() if k not in _FILE_FIELDS}
    model_type = data.pop("model_type", None)
    if not model_type:
        raise PsycheError(
            "hf: the config has no model_type; it names the transformers architecture "
            '(e.g. "model_type": "qwen2")'
        )
    try:
        return transformers.AutoConfig.for_model(model_type, **data)
    except (ValueError, KeyError, TypeError) as exc:
        raise PsycheError(
            f"hf: transformers {transformers.__version__} cannot build a config for model_type "
            f"{model_type!r}: {exc}"
        ) from None


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_thaw(v) for v in value]
    return value


# -- seeded init ---------------------------------------------------------------------------------

# Tensor methods and torch functions that draw random numbers and take ``generator=``.
_RANDOM_OPS = frozenset(
    {
        "normal_", "uniform_", "random_", "bernoulli_", "exponential_", "geometric_",
        "log_normal_", "cauchy_", "rand", "randn", "randint", "randperm", "normal", "bernoulli",
        "multinomial", "poisson",
    }
)  # fmt: skip
_INIT_LOCK = threading.Lock()


@functools.cache
def _takes_generator(func: Any) -> bool:
    if getattr(func, "__name__", None) in _RANDOM_OPS:
        return True
    try:
        return "generator" in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


class _SeededDraws(TorchFunctionMode):
    """Hands ``generator`` to every random draw that names none.

    transformers' weight init (``_init_weights``, ``nn.init``) draws from the global RNG. Under
    this mode (thread-local, like every torch function mode) each draw uses our generator
    instead, so the weights depend on the seed alone, even while other threads (in-process
    data-parallel peers) use or reseed the global RNG.
    """

    def __init__(self, generator: torch.Generator) -> None:
        super().__init__()
        self.generator = generator

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        try:
            wants = kwargs.get("generator") is None and _takes_generator(func)
        except TypeError:  # an unhashable callable: not a random op
            wants = False
        if wants:
            kwargs = {**kwargs, "generator": self.generator}
        return func(*args, **kwargs)


@contextlib.contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Build a model on the CPU with every random draw seeded by ``seed``; the caller's global
    RNG state is left as it was."""
    generator = torch.Generator().manual_seed(int(seed))
    with _INIT_LOCK, torch.random.fork_rng(devices=[]), torch.device("cpu"):
        # draws the mode cannot reach still depend on the seed only
        torch.random.default_generator.manual_seed(int(seed))
        with _SeededDraws(generator):
            yield
