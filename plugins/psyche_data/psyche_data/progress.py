"""A progress bar for the ``psyche data`` commands: documents, tokens and MB/s, on stderr."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


class TokenProgress:
    """``with TokenProgress() as p: ... p.update(documents, tokens, text_bytes)``."""

    def __init__(self, what: str = "tokenizing") -> None:
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._what = what
        self._task = self._progress.add_task(what)
        self._started = time.perf_counter()
        self._last = 0.0

    def update(self, documents: int, tokens: int, text_bytes: int) -> None:
        now = time.perf_counter()
        if now - self._last < 0.1:  # redrawing costs more than a batch
            return
        self._last = now
        rate = text_bytes / 1e6 / max(now - self._started, 1e-9)
        self._progress.update(
            self._task,
            description=f"{self._what}: {documents:,} documents, {tokens:,} tokens, "
            f"{rate:,.1f} MB/s",
        )

    def __enter__(self) -> TokenProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()
