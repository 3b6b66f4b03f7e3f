"""psyche-llama: Llama 2 / Llama 3 for psyche.

``from psyche_llama import LlamaForCausalLM`` works, but importing the package itself stays
light (no torch), so ``psyche list-plugins`` can load the plugin module cheaply.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["PRESETS", "LlamaConfig", "LlamaForCausalLM", "__version__"]

from psyche_llama.presets import PRESETS


def __getattr__(name: str) -> Any:
    if name in ("LlamaConfig", "LlamaForCausalLM"):
        from psyche_llama import model

        return getattr(model, name)
    raise AttributeError(f"module 'psyche_llama' has no attribute {name!r}")
