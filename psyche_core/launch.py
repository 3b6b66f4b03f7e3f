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

from psyche_core.comm import Communicator
from psyche_core.distributed import (
    TorchDistributedCommunicator,
    default_backend,
    join_from_environment,
    launched_by_torchrun,
    spawn_peers,
)
from psyche_core.peer import run_peer
from psyche_core.plan import RunPlan
from psyche_core.plugins import Plugins
from psyche_core.signals import stop_on_signals
from psyche_core.topology import process_topology, run_local


def launch(
    plan: RunPlan, plugins: Plugins, console: Console, stop: threading.Event | None
) -> tuple[dict[str, Any], int]:
    """Run every rank this process is responsible for; returns ``(summary, rank)`` of the one
    whose summary this process reports (rank 0, or this torchrun rank)."""
    layout = plan.layout
    if launched_by_torchrun():
        device = _local_device(plan.device)
        world = join_from_environment(device, plan.options.peer_timeout)
        try:
            topology = process_topology(layout, world, device)
            return run_peer(topology, plan, plugins, console, stop, device), world.rank
        finally:
            world.close()
    backend = plan.options.dp_backend
    if backend == "auto":
        backend = default_backend(plan.device)
    if layout.world_size == 1 or (backend == "threads" and not layout.needs_mesh):
        with _intra_op_threads(threads_per_local_peer(layout.world_size)):
            summaries = run_local(
                layout,
                lambda topology: run_peer(topology, plan, plugins, console, stop),
                timeout=plan.options.peer_timeout,
            )
        return summaries[0], 0
    summaries = spawn_peers(
        layout.world_size, backend, plan.options.peer_timeout, _process_peer, plan, stop
    )
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
    device = comm.device if isinstance(comm, TorchDistributedCommunicator) else plan.device
    topology = process_topology(plan.layout, comm, device)
    with stop_on_signals((signal.SIGTERM,), quiet=True) as stop:
        return run_peer(topology, plan, plugins, Console(stderr=True, soft_wrap=True), stop, device)
