"""Starting the peers of a run: threads of this process, local worker processes (gloo or
NCCL), or this process as one rank of a ``torchrun`` job. Each peer runs
:func:`psyche_core.peer.run_peer` on the same :class:`~psyche_core.plan.RunPlan`."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import torch
from rich.console import Console

from psyche_core.comm import Communicator, run_local_peers
from psyche_core.distributed import (
    TorchDistributedCommunicator,
    default_backend,
    join_from_environment,
    launched_by_torchrun,
    spawn_peers,
)
from psyche_core.errors import PsycheError
from psyche_core.options import Options
from psyche_core.peer import run_peer
from psyche_core.plan import RunPlan
from psyche_core.plugins import Plugins
from psyche_core.signals import stop_on_signals


def world_size(options: Options) -> int:
    """How many peers the run has: torchrun's world, else ``--data-parallelism``."""
    if not launched_by_torchrun():
        return options.data_parallelism
    world = int(os.environ["WORLD_SIZE"])
    if options.data_parallelism not in (1, world):
        raise PsycheError(
            f"--data-parallelism {options.data_parallelism} disagrees with torchrun's "
            f"world size {world}; leave it out under torchrun"
        )
    return world


def launch(
    plan: RunPlan, plugins: Plugins, console: Console, stop: threading.Event | None
) -> tuple[dict[str, Any], int]:
    """Run every peer this process is responsible for; returns ``(summary, rank)`` of the one
    whose summary this process reports (peer 0, or this torchrun rank)."""
    if launched_by_torchrun():
        device = _local_device(plan.device)
        comm = join_from_environment(device, plan.options.peer_timeout)
        try:
            return run_peer(comm, plan, plugins, console, stop, device), comm.rank
        finally:
            comm.close()
    world = plan.world_size
    backend = plan.options.dp_backend
    if backend == "auto":
        backend = default_backend(plan.device)
    if world == 1 or backend == "threads":
        with _intra_op_threads(threads_per_local_peer(world)):
            summaries = run_local_peers(
                world,
                lambda comm: run_peer(comm, plan, plugins, console, stop),
                timeout=plan.options.peer_timeout,
            )
        return summaries[0], 0
    if backend == "nccl" and torch.cuda.device_count() < world:
        raise PsycheError(
            f"--data-parallelism {world} with NCCL needs {world} GPUs; "
            f"{torch.cuda.device_count()} present"
        )
    summaries = spawn_peers(world, backend, plan.options.peer_timeout, _process_peer, plan, stop)
    return summaries[0], 0


def threads_per_local_peer(world: int) -> int | None:
    """Intra-op threads for each of ``world`` peers sharing this machine: its cores split evenly
    (more threads than cores slows every peer down), the same for thread and process peers so
    both compute alike. ``None`` (leave torch's choice) for one peer or when OMP_NUM_THREADS is
    set. Note a matmul may round differently with another thread count, so N peers match one
    process to float rounding, not bit for bit; set OMP_NUM_THREADS for equal counts."""
    if world == 1 or "OMP_NUM_THREADS" in os.environ:
        return None
    return max(1, (os.cpu_count() or 1) // world)


@contextlib.contextmanager
def _intra_op_threads(threads: int | None) -> Iterator[None]:
    """Thread peers share one process, so the setting is process-wide for the run's duration."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _local_device(device: torch.device) -> torch.device:
    if device.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def _process_peer(comm: Communicator, plan: RunPlan) -> dict[str, Any]:
    """Entry point of a worker process started by ``spawn_peers``."""
    # The plan names every spec to build; the registries are loaded again only because a data
    # provider may be built from others (a weighted mixture).
    plugins = Plugins.reload(plan.plugin_load_args)
    threads = threads_per_local_peer(comm.world_size)
    if threads is not None:
        torch.set_num_threads(threads)
    # Ctrl-C reaches every process of the terminal's group; only the parent handles it (and
    # forwards SIGTERM), so every worker stops after the same step.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    device = comm.device if isinstance(comm, TorchDistributedCommunicator) else None
    with stop_on_signals((signal.SIGTERM,), quiet=True) as stop:
        return run_peer(comm, plan, plugins, Console(stderr=True, soft_wrap=True), stop, device)
