"""Communicators: how data-parallel peers exchange gradients and optimizer payloads.

Every collective is called by all peers in the same order. Two implementations give the same
numbers: :class:`LocalCommunicator` (N peers as threads of one process, for tests and laptops)
and ``psyche_core.distributed.TorchDistributedCommunicator`` (``torch.distributed``: gloo on
CPU, NCCL on CUDA). Results are always combined in rank order, so every peer computes
bit-identical values.

``bytes_sent`` counts the payload this peer contributes to collectives (a tensor's bytes for an
all-reduce or an all-gather), whatever the algorithm underneath; a ring all-reduce moves about
twice that on the wire. Single-peer runs count it too, so AdamW and DisTrO can be compared
without starting a second peer.
"""

from __future__ import annotations

import contextlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch

from psyche_core.errors import PsycheError

T = TypeVar("T")


class PeerFailure(PsycheError):
    """Another peer failed or stopped answering; this peer cannot go on."""


class Communicator(ABC):
    """Collectives among ``world_size`` data-parallel peers; this one is ``rank``."""

    rank: int
    world_size: int

    def __init__(self) -> None:
        self.bytes_sent = 0

    def all_reduce_mean_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Replace each tensor, in place, by its mean over all peers (computed in float32)."""
        if not tensors:
            return
        self.bytes_sent += 4 * sum(t.numel() for t in tensors)
        if self.world_size == 1:
            return
        flat = torch.cat([t.detach().reshape(-1).float() for t in tensors])
        self._all_reduce_sum_(flat)
        flat /= self.world_size
        offset = 0
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset : offset + n].view_as(t))
            offset += n

    @contextlib.contextmanager
    def uncounted(self) -> Iterator[None]:
        """Collectives inside are bookkeeping (reported metrics, checkpoints), not training
        traffic: they leave ``bytes_sent`` as it was."""
        before = self.bytes_sent
        try:
            yield
        finally:
            self.bytes_sent = before

    def all_gather_bytes(self, payload: torch.Tensor) -> list[torch.Tensor]:
        """Every peer's 1-D uint8 payload (lengths may differ), in rank order."""
        if payload.dtype != torch.uint8 or payload.dim() != 1:
            raise TypeError("all_gather_bytes expects a 1-D uint8 tensor")
        self.bytes_sent += payload.numel()
        if self.world_size == 1:
            return [payload]
        return self._all_gather_bytes(payload)

    @abstractmethod
    def _all_reduce_sum_(self, flat: torch.Tensor) -> None: ...

    @abstractmethod
    def _all_gather_bytes(self, payload: torch.Tensor) -> list[torch.Tensor]: ...

    @abstractmethod
    def broadcast_(self, tensors: Sequence[torch.Tensor], src: int = 0) -> None:
        """Overwrite every peer's tensors with those of peer ``src`` (start-up weights)."""

    @abstractmethod
    def all_gather_object(self, obj: Any) -> list[Any]:
        """Small picklable objects from every peer, in rank order (hashes, flags)."""

    @abstractmethod
    def barrier(self) -> None: ...

    def close(self) -> None:
        """Leave the group."""


class LocalGroup:
    """Shared state of N in-process peers (threads)."""

    def __init__(self, world_size: int, timeout: float | None = None) -> None:
        if world_size < 1:
            raise PsycheError(f"data parallelism must be at least 1, got {world_size}")
        self.world_size = world_size
        self.timeout = timeout
        self._barrier = threading.Barrier(world_size, timeout=timeout)
        self._slots: list[Any] = [None] * world_size

    def communicator(self, rank: int) -> LocalCommunicator:
        return LocalCommunicator(self, rank)

    def abort(self) -> None:
        """Wake every waiting peer with :class:`PeerFailure`."""
        self._barrier.abort()


class LocalCommunicator(Communicator):
    def __init__(self, group: LocalGroup, rank: int) -> None:
        super().__init__()
        self.group = group
        self.rank = rank
        self.world_size = group.world_size

    def _wait(self) -> None:
        try:
            self.group._barrier.wait()
        except threading.BrokenBarrierError:
            raise PeerFailure(
                f"peer {self.rank}: another in-process peer failed or timed out "
                f"(timeout {self.group.timeout}s)"
            ) from None

    def _exchange(self, value: Any) -> list[Any]:
        if self.world_size == 1:
            return [value]
        self.group._slots[self.rank] = value
        self._wait()
        values = list(self.group._slots)
        self._wait()  # nobody overwrites a slot before everyone has read it
        return values

    def _all_reduce_sum_(self, flat: torch.Tensor) -> None:
        values = self._exchange(flat.clone())
        total = values[0].clone()
        for value in values[1:]:
            total += value
        flat.copy_(total)

    def _all_gather_bytes(self, payload: torch.Tensor) -> list[torch.Tensor]:
        return [v.clone() for v in self._exchange(payload)]

    def broadcast_(self, tensors: Sequence[torch.Tensor], src: int = 0) -> None:
        values = self._exchange([t.detach().clone() for t in tensors] if self.rank == src else None)
        if self.rank != src:
            with torch.no_grad():
                for t, v in zip(tensors, values[src], strict=True):
                    t.copy_(v)

    def all_gather_object(self, obj: Any) -> list[Any]:
        return self._exchange(obj)

    def barrier(self) -> None:
        if self.world_size > 1:
            self._wait()


def run_local_peers(
    world_size: int, fn: Callable[[Communicator], T], timeout: float | None = None
) -> list[T]:
    """Run ``fn(communicator)`` for N in-process peers (threads); results in rank order.

    When one peer raises, the others are woken with :class:`PeerFailure` and the first real
    error is re-raised here.
    """
    group = LocalGroup(world_size, timeout)
    return run_threads(world_size, lambda rank: fn(group.communicator(rank)), group.abort)


def run_threads(n: int, fn: Callable[[int], T], abort: Callable[[], None]) -> list[T]:
    """``fn(rank)`` for ranks ``0..n-1`` on threads; results in rank order. A rank that raises
    calls ``abort`` (waking the others with :class:`PeerFailure`); the first real error is
    re-raised here."""
    if n == 1:
        return [fn(0)]
    results: list[Any] = [None] * n
    errors: list[BaseException | None] = [None] * n

    def peer(rank: int) -> None:
        try:
            results[rank] = fn(rank)
        except BaseException as exc:
            errors[rank] = exc
            abort()

    threads = [
        threading.Thread(target=peer, args=(rank,), name=f"psyche-peer-{rank}", daemon=True)
        for rank in range(n)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(0.2)  # short joins keep the main thread responsive to signals
    real = [e for e in errors if e is not None and not isinstance(e, PeerFailure)]
    if real:
        raise real[0]
    failure = next((e for e in errors if e is not None), None)
    if failure is not None:
        raise failure
    return results
