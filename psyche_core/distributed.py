"""Data-parallel peers on ``torch.distributed``: gloo on CPU, NCCL on CUDA.

Two ways in:

- **torchrun** (one process per peer, any number of machines): ``RANK``/``WORLD_SIZE`` are in
  the environment and ``psyche train`` joins the process group by itself.
- **``psyche train --data-parallelism N``**: psyche starts N worker processes on this machine,
  hosting their rendezvous store in the parent so no port can be taken between choosing and
  binding it.

A peer that dies breaks its connections and the others fail at their next collective; a peer that
hangs makes the others time out after ``--peer-timeout`` seconds. Either way every surviving peer
raises :class:`~psyche_core.comm.PeerFailure` instead of waiting forever.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import multiprocessing
import os
import pickle
import queue as queue_module
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist

from psyche_core.comm import Communicator, PeerFailure
from psyche_core.errors import PsycheError

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def default_backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


class TorchDistributedCommunicator(Communicator):
    """The communicator over an initialised process group: the default (world) group, or a
    subgroup of it (``group``; then ranks are the group's own)."""

    def __init__(self, device: torch.device, timeout: float, group: Any = None) -> None:
        super().__init__()
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.timeout = timeout
        # NCCL moves CUDA tensors only; gloo works on CPU tensors.
        self.device = device if dist.get_backend(group) == "nccl" else torch.device("cpu")

    @contextlib.contextmanager
    def _collective(self, what: str) -> Iterator[None]:
        try:
            yield
        except (RuntimeError, dist.DistError) as exc:
            raise PeerFailure(
                f"peer {self.rank}: {what} failed: another peer died or did not answer within "
                f"{self.timeout:g}s ({str(exc).splitlines()[0]})"
            ) from exc

    def _all_reduce_sum_(self, flat: torch.Tensor) -> None:
        with self._collective("all-reduce"):
            buffer = flat.to(self.device)
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM, group=self.group)
            flat.copy_(buffer)

    def _all_gather_bytes(self, payload: torch.Tensor) -> list[torch.Tensor]:
        with self._collective("all-gather"):
            size = torch.tensor([payload.numel()], dtype=torch.int64, device=self.device)
            sizes = [torch.zeros_like(size) for _ in range(self.world_size)]
            dist.all_gather(sizes, size, group=self.group)
            lengths = [int(s.item()) for s in sizes]
            longest = max(lengths)
            padded = torch.zeros(longest, dtype=torch.uint8, device=self.device)
            padded[: payload.numel()] = payload.to(self.device)
            gathered = [torch.empty_like(padded) for _ in range(self.world_size)]
            dist.all_gather(gathered, padded, group=self.group)
        return [g[:n].to(payload.device) for g, n in zip(gathered, lengths)]

    def broadcast_(self, tensors: Sequence[torch.Tensor], src: int = 0) -> None:
        with self._collective("broadcast"), torch.no_grad():
            for tensor in tensors:
                buffer = tensor.detach().to(self.device)
                dist.broadcast(buffer, group=self.group, group_src=src)
                if buffer is not tensor:
                    tensor.copy_(buffer)

    def all_gather_object(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        with self._collective("all-gather of objects"):
            dist.all_gather_object(out, obj, group=self.group)
        return out

    def barrier(self) -> None:
        with self._collective("barrier"):
            dist.barrier(group=self.group)

    def close(self) -> None:
        if self.group is None and dist.is_initialized():  # the world's owner leaves the group
            dist.destroy_process_group()


def join_from_environment(device: torch.device, timeout: float) -> TorchDistributedCommunicator:
    """Join the process group torchrun described in the environment."""
    backend = default_backend(device)
    if backend == "nccl":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout), device_id=None)
    return TorchDistributedCommunicator(device, timeout)


# -- psyche train --data-parallelism N: local worker processes ------------------------------------


def _worker(
    rank: int,
    world_size: int,
    port: int,
    backend: str,
    timeout: float,
    fn: Callable[[Communicator, Any], Any],
    payload: Any,
    results: Any,
    parent_pid: int | None = None,
) -> None:
    # The parent forwards SIGTERM; Ctrl-C reaches the whole process group and is handled by the
    # training loop, which stops every peer after the same step.
    if parent_pid is not None:
        die_with_parent(parent_pid)
    comm = None
    try:
        store = dist.TCPStore(
            "127.0.0.1",
            port,
            world_size,
            is_master=False,
            timeout=datetime.timedelta(seconds=timeout),
        )
        dist.init_process_group(
            backend,
            store=store,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout),
        )
        device = torch.device("cpu") if backend == "gloo" else torch.device("cuda", rank)
        comm = TorchDistributedCommunicator(device, timeout)
        result = fn(comm, payload)
        # Plain pickle copies tensor data into the message; the queue's own pickler would share
        # tensors through file descriptors that vanish when this worker exits.
        results.put(("ok", rank, pickle.dumps(result)))
    except PsycheError as exc:
        results.put(("psyche-error", rank, str(exc)))
        raise SystemExit(1) from None
    except BaseException as exc:
        import traceback

        results.put(("error", rank, "".join(traceback.format_exception(exc))))
        raise SystemExit(1) from None
    finally:
        if comm is not None:
            comm.close()


def die_with_parent(parent_pid: int) -> None:
    """End this worker the moment its launcher is gone (even by ``kill -9``), so no orphan goes
    on training and writes a model the user no longer expects.

    Linux delivers SIGKILL on the parent's death (``PR_SET_PDEATHSIG``); elsewhere a watchdog
    thread polls the parent pid. Either way the check below covers a parent that died before
    this process got here."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            _start_parent_watchdog(parent_pid)
    else:
        _start_parent_watchdog(parent_pid)
    if os.getppid() != parent_pid:
        os._exit(1)


def parent_alive(parent_pid: int) -> bool:
    return os.getppid() == parent_pid


def _start_parent_watchdog(parent_pid: int) -> None:
    def watch() -> None:
        while parent_alive(parent_pid):
            time.sleep(0.2)
        os._exit(1)  # no cleanup, no final save: the run's owner is gone

    threading.Thread(target=watch, name="psyche-parent-watchdog", daemon=True).start()


def spawn_peers(
    world_size: int,
    backend: str,
    timeout: float,
    fn: Callable[[Communicator, Any], Any],
    payload: Any,
    stop: threading.Event | None = None,
) -> list[Any]:
    """Run ``fn(communicator, payload)`` in ``world_size`` local processes; results by rank.

    ``fn`` and ``payload`` must be picklable (a module-level function and plain data). When
    ``stop`` is set (by the parent's signal handler) every worker gets one SIGTERM, which asks
    it to stop after the current step.
    """
    ctx = multiprocessing.get_context("spawn")
    store = dist.TCPStore(
        "127.0.0.1",
        0,
        world_size,
        is_master=True,
        wait_for_workers=False,
        timeout=datetime.timedelta(seconds=timeout),
    )
    results = ctx.Queue()
    processes = [
        ctx.Process(
            target=_worker,
            args=(
                rank,
                world_size,
                store.port,
                backend,
                timeout,
                fn,
                payload,
                results,
                os.getpid(),
            ),
            name=f"psyche-peer-{rank}",
        )
        for rank in range(world_size)
    ]
    for process in processes:
        process.start()
    try:
        outcomes = _collect(processes, results, timeout, stop)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join(5)
    return _unpack(outcomes, world_size)


def _forward(processes: list[Any], signum: int) -> None:
    for process in processes:
        if process.is_alive():
            os.kill(process.pid, signum)


def _collect(
    processes: list[Any], results: Any, timeout: float, stop: threading.Event | None
) -> dict[int, tuple[str, Any]]:
    """Each rank's outcome: ("ok", result), an error report, ("died", exit code) or
    ("hung", None) for a peer still silent ``timeout`` + 5 s after another one failed."""
    outcomes: dict[int, tuple[str, Any]] = {}
    trouble_since: float | None = None
    forwarded = False
    while len(outcomes) < len(processes):
        if stop is not None and stop.is_set() and not forwarded:
            _forward(processes, signal.SIGTERM)
            forwarded = True
        try:
            kind, rank, value = results.get(timeout=0.2)
            outcomes[rank] = (kind, value)
            if kind != "ok" and trouble_since is None:
                trouble_since = time.monotonic()
            continue
        except queue_module.Empty:
            pass
        for rank, process in enumerate(processes):
            if not process.is_alive() and rank not in outcomes:
                time.sleep(0.2)  # its last message may still be in the queue
                if _drain(results, outcomes) and rank in outcomes:
                    continue
                outcomes[rank] = ("died", process.exitcode)
                trouble_since = trouble_since or time.monotonic()
        # Survivors of a failed peer fail at their next collective within the peer timeout;
        # after that (plus a margin) whoever is still silent is hung.
        if trouble_since is not None and time.monotonic() - trouble_since > timeout + 5:
            for rank in range(len(processes)):
                outcomes.setdefault(rank, ("hung", None))
    return outcomes


def _drain(results: Any, outcomes: dict[int, tuple[str, Any]]) -> bool:
    got = False
    while True:
        try:
            kind, rank, value = results.get_nowait()
        except queue_module.Empty:
            return got
        outcomes[rank] = (kind, value)
        got = True


def _unpack(outcomes: dict[int, tuple[str, Any]], world: int) -> list[Any]:
    died = [(r, v) for r, (k, v) in sorted(outcomes.items()) if k == "died"]
    hung = [r for r, (k, _) in sorted(outcomes.items()) if k == "hung"]
    psyche_errors = [(r, v) for r, (k, v) in sorted(outcomes.items()) if k == "psyche-error"]
    crashes = [(r, v) for r, (k, v) in sorted(outcomes.items()) if k == "error"]
    # Lines after a survivor's error line say where its emergency checkpoint went.
    notes = list(dict.fromkeys(line for _, text in psyche_errors for line in text.splitlines()[1:]))
    tail = "".join(f"\n{note}" for note in notes)
    if crashes:
        rank, text = crashes[0]
        raise RuntimeError(f"peer {rank} crashed:\n{text}{tail}")
    if died:
        rank, code = died[0]
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        raise PeerFailure(f"peer {rank} of {world} died ({how}); the run stopped{tail}")
    if hung and not psyche_errors:
        raise PeerFailure(f"peer {hung[0]} of {world} stopped answering; the run stopped")
    if psyche_errors:
        # Prefer the root cause over the survivors' "another peer failed" reports.
        own = [e for e in psyche_errors if "another peer" not in e[1]]
        raise PsycheError((own or psyche_errors)[0][1])
    return [pickle.loads(outcomes[rank][1]) for rank in range(world)]
