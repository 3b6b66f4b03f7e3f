"""psyche-deepseek: DeepSeek-V2 and DeepSeek-V3 causal LMs for psyche.

The model classes live in :mod:`psyche_deepseek.model` (imported lazily by the plugin)."""

__version__ = "0.1.0"
