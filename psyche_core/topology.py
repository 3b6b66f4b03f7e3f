"""One rank's view of the run's layout: who it talks to, and over which link.

A :class:`Topology` holds three communicators (see :mod:`psyche_core.layout` for the layout):

- ``world``: every rank; for what all must agree on (stop, non-finite loss, metrics, the
  held-out score, a model's balancing state). Never counted as training traffic.
- ``link``: the **peer link** of this rank's shard: the ranks holding the same shard in every
  peer. The optimizer's exchange goes here and is what ``bytes_sent`` counts.
- ``replicas``: this peer's replicas of the same shard; gradients are averaged here when the
  replicas are plain copies (with ``--fsdp``, FSDP2 reduce-scatters them itself).

With plain replicas only replica 0 of a peer crosses the peer link; it hands the result to the
others inside the peer (:class:`ReplicatedPeerLink`), so a peer sends each byte once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from psyche_core.comm import Communicator, LocalGroup, run_threads
from psyche_core.layout import Layout

T = TypeVar("T")


@dataclass
class Topology:
    layout: Layout
    rank: int
    world: Communicator
    link: Communicator
    replicas: Communicator
    mesh: Any = None  # DeviceMesh ("peer", "replica", "tp") for DTensor layouts
    coordinates: tuple[int, int, int] = field(init=False)

    def __post_init__(self) -> None:
        self.coordinates = self.layout.coordinates(self.rank)

    @property
    def peer(self) -> int:
        return self.coordinates[0]

    @property
    def replica(self) -> int:
        return self.coordinates[1]

    @property
    def tp(self) -> int:
        return self.coordinates[2]

    @property
    def data_rank(self) -> int:
        """Which slice of each step's batch this rank reads (tensor-parallel ranks share one)."""
        return self.peer * self.layout.replicas + self.replica

    @classmethod
    def of_peers(cls, comm: Communicator) -> Topology:
        """Peers only (no replicas, no tensor parallelism): ``comm`` is both world and link."""
        return cls(Layout(peers=comm.world_size), comm.rank, comm, comm, _alone())


def _alone() -> Communicator:
    return LocalGroup(1).communicator(0)


class ReplicatedPeerLink(Communicator):
    """The peer link of a replica inside a peer of plain replicas: replica 0 exchanges with the
    other peers and broadcasts the result to its replicas, which send nothing themselves."""

    def __init__(self, link: Communicator, replicas: Communicator) -> None:
        super().__init__()
        self.link, self.replicas = link, replicas
        self.rank, self.world_size = link.rank, link.world_size
        self.leader = replicas.rank == 0

    def all_reduce_mean_(self, tensors: Sequence[torch.Tensor]) -> None:
        if not tensors:
            return
        if self.leader:
            self.bytes_sent += 4 * sum(t.numel() for t in tensors)
            self.link.all_reduce_mean_(tensors)
        if self.world_size > 1:  # one peer: the replicas hold the same tensors already
            self.replicas.broadcast_(tensors, src=0)

    def all_gather_bytes(self, payload: torch.Tensor) -> list[torch.Tensor]:
        if payload.dtype != torch.uint8 or payload.dim() != 1:
            raise TypeError("all_gather_bytes expects a 1-D uint8 tensor")
        lengths = torch.zeros(self.world_size, dtype=torch.int64)
        gathered: list[torch.Tensor] = []
        if self.leader:
            self.bytes_sent += payload.numel()
            gathered = self.link.all_gather_bytes(payload)
            lengths = torch.tensor([g.numel() for g in gathered], dtype=torch.int64)
        self.replicas.broadcast_([lengths], src=0)
        flat = (
            torch.cat(gathered)
            if self.leader
            else torch.empty(int(lengths.sum()), dtype=torch.uint8)
        )
        self.replicas.broadcast_([flat], src=0)
        return list(flat.split(lengths.tolist()))

    def _all_reduce_sum_(self, flat: torch.Tensor) -> None:  # pragma: no cover - not reached
        raise NotImplementedError

    def _all_gather_bytes(self, payload: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def broadcast_(self, tensors: Sequence[torch.Tensor], src: int = 0) -> None:
        if self.leader:
            self.link.broadcast_(tensors, src)
        self.replicas.broadcast_(tensors, src=0)

    def all_gather_object(self, obj: Any) -> list[Any]:
        gathered = self.link.all_gather_object(obj) if self.leader else None
        return self.replicas.all_gather_object(gathered)[0]

    def barrier(self) -> None:
        if self.leader:
            self.link.barrier()
        self.replicas.barrier()


def _link(layout: Layout, link: Communicator, replicas: Communicator) -> Communicator:
    if layout.replicas > 1 and not layout.fsdp:
        return ReplicatedPeerLink(link, replicas)
    return link


def run_local(layout: Layout, fn: Callable[[Topology], T], timeout: float | None = None) -> list[T]:
    """Run ``fn(topology)`` for every rank of ``layout`` as threads of this process (no DTensor
    layouts); results in rank order. One rank's error wakes the others (see run_threads)."""
    groups: list[LocalGroup] = []

    def group(size: int) -> LocalGroup:
        groups.append(LocalGroup(size, timeout))
        return groups[-1]

    world = group(layout.world_size)
    links = {
        (d, t): group(layout.peers) for d in range(layout.replicas) for t in range(layout.tensor)
    }
    replicas = {
        (p, t): group(layout.replicas) for p in range(layout.peers) for t in range(layout.tensor)
    }
    topologies = []
    for rank in range(layout.world_size):
        p, d, t = layout.coordinates(rank)
        replica_comm = replicas[(p, t)].communicator(d)
        link = _link(layout, links[(d, t)].communicator(p), replica_comm)
        topologies.append(Topology(layout, rank, world.communicator(rank), link, replica_comm))

    def abort() -> None:
        for g in groups:
            g.abort()

    return run_threads(layout.world_size, lambda rank: fn(topologies[rank]), abort)


def process_topology(layout: Layout, world: Communicator, device: torch.device) -> Topology:
    """This process's topology once the default process group is up (``world`` over it)."""
    from psyche_core.distributed import TorchDistributedCommunicator

    if layout.world_size == 1:
        return Topology(layout, 0, world, world, _alone())
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(
        device.type,
        (layout.peers, layout.replicas, layout.tensor),
        mesh_dim_names=("peer", "replica", "tp"),
    )
    timeout = getattr(world, "timeout", 1800.0)
    link = TorchDistributedCommunicator(device, timeout, mesh.get_group("peer"))
    replicas = TorchDistributedCommunicator(device, timeout, mesh.get_group("replica"))
    return Topology(layout, world.rank, world, _link(layout, link, replicas), replicas, mesh)
