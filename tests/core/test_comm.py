import threading

import pytest
import torch

from psyche_core.comm import LocalGroup, PeerFailure, run_local_peers


def test_all_reduce_mean_all_gather_and_broadcast():
    def peer(comm):
        t = torch.full((3,), float(comm.rank + 1))
        comm.all_reduce_mean_([t])
        payload = torch.arange(comm.rank + 2, dtype=torch.uint8)  # lengths differ per peer
        gathered = comm.all_gather_bytes(payload)
        weights = [torch.full((2,), float(comm.rank))]
        comm.broadcast_(weights, src=2)
        names = comm.all_gather_object(f"peer{comm.rank}")
        comm.barrier()
        return t, gathered, weights[0], names, comm.bytes_sent

    results = run_local_peers(3, peer)
    for rank, (t, gathered, w, names, sent) in enumerate(results):
        assert torch.equal(t, torch.full((3,), 2.0))
        assert [g.tolist() for g in gathered] == [[0, 1], [0, 1, 2], [0, 1, 2, 3]]
        assert torch.equal(w, torch.full((2,), 2.0))
        assert names == ["peer0", "peer1", "peer2"]
        assert sent == 3 * 4 + rank + 2  # fp32 all-reduce payload + own gathered bytes


def test_single_peer_counts_payload_without_communicating():
    comm = LocalGroup(1).communicator(0)
    t = torch.ones(5, dtype=torch.bfloat16)
    comm.all_reduce_mean_([t])
    assert comm.bytes_sent == 20 and torch.equal(t, torch.ones(5, dtype=torch.bfloat16))
    assert [p.tolist() for p in comm.all_gather_bytes(torch.zeros(7, dtype=torch.uint8))] == [
        [0] * 7
    ]
    assert comm.bytes_sent == 27


def test_a_failing_peer_releases_the_others_and_its_error_surfaces():
    def peer(comm):
        if comm.rank == 1:
            raise ValueError("boom on peer 1")
        comm.barrier()
        return comm.rank

    with pytest.raises(ValueError, match="boom on peer 1"):
        run_local_peers(3, peer, timeout=30)


def test_a_hung_peer_times_out_instead_of_hanging():
    release = threading.Event()

    def peer(comm):
        if comm.rank == 1:
            release.wait(5)  # never reaches the barrier in time
            return None
        comm.barrier()

    with pytest.raises(PeerFailure, match="timed out"):
        run_local_peers(2, peer, timeout=0.3)
    release.set()


def test_all_gather_bytes_rejects_non_bytes():
    comm = LocalGroup(1).communicator(0)
    with pytest.raises(TypeError):
        comm.all_gather_bytes(torch.zeros(3))
