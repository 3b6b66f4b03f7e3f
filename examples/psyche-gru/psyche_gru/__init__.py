"""psyche-gru: a GRU causal language model plugin for psyche."""

__version__ = "0.1.0"
