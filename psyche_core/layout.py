"""The parallel layout of a run: ``P`` peers x ``D`` replicas x ``T`` tensor-parallel ranks.

::

    world rank = (peer * D + replica) * T + tp

    peer 0                          peer 1
    +-----------------------+       +-----------------------+
    | replica 0: tp0  tp1   |       | replica 0: tp0  tp1   |
    | replica 1: tp0  tp1   |  <->  | replica 1: tp0  tp1   |
    +-----------------------+       +-----------------------+
      gradients averaged (or          only the optimizer's exchange crosses
      FSDP-sharded) inside a peer     the peer link: the bytes psyche counts

- **peers** (``--peers``) are the decentralised clients being simulated. Between peers only the
  optimizer's exchange travels: DisTrO's compressed payload, or AdamW's mean gradient.
- **replicas** (``--data-parallelism``) split a peer's share of the batch and average their
  gradients, as in Psyche's train example; ``--fsdp`` shards their parameters, gradients and
  optimizer state with FSDP2 instead of keeping D full copies.
- **tensor-parallel ranks** (``--tensor-parallelism``) split every layer's matrices with the
  model plugin's plan (DTensor ``parallelize_module``).

Under ``torchrun`` degrees the command line leaves out are inferred the way a cluster is shaped:
one peer per node, ``replicas = ranks per node / T``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from psyche_core.errors import PsycheError


@dataclass(frozen=True)
class Layout:
    """How many peers, replicas and tensor-parallel ranks a run has."""

    peers: int = 1
    replicas: int = 1
    tensor: int = 1
    fsdp: bool = False

    @property
    def world_size(self) -> int:
        return self.peers * self.replicas * self.tensor

    @property
    def data_ranks(self) -> int:
        """Ranks that read distinct samples: every replica of every peer."""
        return self.peers * self.replicas

    @property
    def needs_mesh(self) -> bool:
        """DTensor layouts (tensor parallelism, FSDP) need torch.distributed process groups."""
        return self.tensor > 1 or self.fsdp

    def coordinates(self, rank: int) -> tuple[int, int, int]:
        """``(peer, replica, tp)`` of world ``rank``."""
        peer, rest = divmod(rank, self.replicas * self.tensor)
        replica, tp = divmod(rest, self.tensor)
        return peer, replica, tp

    def rank_of(self, peer: int, replica: int, tp: int) -> int:
        return (peer * self.replicas + replica) * self.tensor + tp

    def peer_group(self, replica: int, tp: int) -> list[int]:
        """The ranks holding the same shard in every peer: the peer link of one shard."""
        return [self.rank_of(p, replica, tp) for p in range(self.peers)]

    def replica_group(self, peer: int, tp: int) -> list[int]:
        """The replicas of one peer that hold the same tensor-parallel shard."""
        return [self.rank_of(peer, d, tp) for d in range(self.replicas)]

    def describe(self) -> str:
        parts = [f"{self.peers} peer{'s' if self.peers != 1 else ''}"]
        if self.replicas > 1:
            kind = "FSDP shards" if self.fsdp else "replicas"
            parts.append(f"{self.replicas} {kind}")
        if self.tensor > 1:
            parts.append(f"{self.tensor} tensor-parallel ranks")
        text = " x ".join(parts)
        return text if self.world_size == 1 else f"{text} ({self.world_size} ranks)"


def torchrun_shape() -> tuple[int, int] | None:
    """``(world size, ranks per node)`` under torchrun, else None."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    world = int(os.environ["WORLD_SIZE"])
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    return world, per_node


def resolve_layout(
    peers: int | None,
    data_parallelism: int | None,
    tensor_parallelism: int,
    fsdp: bool,
    torchrun: tuple[int, int] | None = None,
) -> Layout:
    """The layout from the flags (``None``: not given) and, under torchrun, its world shape."""
    tensor = tensor_parallelism
    if torchrun is None:
        layout = Layout(peers or 1, data_parallelism or 1, tensor, fsdp)
    else:
        world, per_node = torchrun
        nodes = max(1, world // per_node) if per_node else 1
        if peers is None:
            peers = nodes if data_parallelism is None else world // (data_parallelism * tensor)
        if data_parallelism is None:
            data_parallelism = world // (peers * tensor) if peers * tensor <= world else 0
        layout = Layout(peers, data_parallelism, tensor, fsdp)
        if layout.world_size != world or min(peers, data_parallelism) < 1:
            raise PsycheError(
                f"--peers {peers} x --data-parallelism {data_parallelism} x "
                f"--tensor-parallelism {tensor} = {peers * data_parallelism * tensor} ranks, but "
                f"torchrun started {world}; give degrees whose product is {world}"
            )
    if fsdp and layout.replicas == 1:
        raise PsycheError(
            "--fsdp shards the replicas of a peer, and this run has one (--data-parallelism 1); "
            "add --data-parallelism 2 or more, or leave out --fsdp"
        )
    return layout
