"""psyche-data: data providers (local, http, weighted, sample, preprocessed) and the
``psyche data`` commands (serve, inspect). See docs/data.md."""

__version__ = "0.1.0"
