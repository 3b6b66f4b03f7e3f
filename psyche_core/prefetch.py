"""Fetching the next step's samples on a background thread while this step computes."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from psyche_core.data import DataProvider, TokenizedData
from psyche_core.errors import PsycheError


class Prefetcher:
    """Fetches the next step's samples on a background thread while this step computes."""

    def __init__(self, data: DataProvider, ids_for: Callable[[int], Sequence[int]]) -> None:
        self._data = data
        self._ids_for = ids_for
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="psyche-prefetch")
        self._pending: tuple[int, Future[list[TokenizedData]]] | None = None

    def _fetch(self, step: int) -> list[TokenizedData]:
        ids = self._ids_for(step)
        samples = self._data.get_samples(ids)
        if len(samples) != len(ids):
            raise PsycheError(
                f"data provider returned {len(samples)} samples for {len(ids)} ids at step {step}"
            )
        return samples

    def get(self, step: int, last_step: int) -> tuple[list[TokenizedData], float]:
        waited = time.perf_counter()
        if self._pending is not None and self._pending[0] == step:
            samples = self._pending[1].result()
        else:
            if self._pending is not None:
                self._pending[1].cancel()
            samples = self._fetch(step)
        self._pending = None
        wait = time.perf_counter() - waited
        if step < last_step:
            self._pending = (step + 1, self._pool.submit(self._fetch, step + 1))
        return samples, wait

    def close(self) -> None:
        if self._pending is not None:
            self._pending[1].cancel()
            self._pending = None
        self._pool.shutdown(wait=True, cancel_futures=True)
