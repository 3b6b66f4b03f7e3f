"""Peers as real processes on torch.distributed (gloo on 127.0.0.1)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from psyche_core import run
from psyche_core.comm import PeerFailure
from psyche_core.distributed import spawn_peers
from psyche_core.errors import PsycheError
from tests.core import peer_functions
from tests.core.test_trainer import options, read_metrics
from tests.core.toy_plugin import ToyForCausalLM

ROOT = Path(__file__).resolve().parents[2]


def test_gloo_collectives_match_the_in_process_ones():
    results = spawn_peers(2, "gloo", 30, peer_functions.gather_ranks, None)
    assert results == [
        (0, [0.5, 0.5], [[0], [0, 1]]),
        (1, [0.5, 0.5], [[0], [0, 1]]),
    ]


def test_threads_and_gloo_processes_train_the_same(tmp_path, plugins):
    losses, weights = {}, {}
    for backend in ("threads", "gloo"):
        out = tmp_path / backend
        run.train(options(out, peers=2, micro_batch=2, dp_backend=backend), plugins)
        losses[backend] = [r["loss"] for r in read_metrics(out / "metrics.jsonl")]
        weights[backend] = ToyForCausalLM.from_pretrained(out / "model").state_dict()
    assert losses["threads"] == pytest.approx(losses["gloo"], abs=1e-6)
    for key, value in weights["threads"].items():
        torch.testing.assert_close(value, weights["gloo"][key], rtol=0, atol=1e-6)


def test_a_peer_with_another_config_is_refused_at_start_up():
    with pytest.raises(
        PsycheError,
        match=r"peer 1 was started with a different configuration "
        r"than peer 0 \(differs in: learning_rate\)",
    ):
        spawn_peers(2, "gloo", 30, peer_functions.mismatched_config, None)


def test_a_dead_peer_stops_the_run_with_a_clear_error():
    with pytest.raises(PeerFailure, match="peer 1 of 2 died"):
        spawn_peers(2, "gloo", 20, peer_functions.one_peer_dies, None)


def test_a_hung_peer_times_out(tmp_path):
    with pytest.raises((PeerFailure, PsycheError), match="did not answer within 2s"):
        spawn_peers(2, "gloo", 2, peer_functions.one_peer_hangs, None)


@pytest.mark.parametrize(
    ("flags", "layout"),
    [
        # one node of two processes: one peer of two replicas (torchrun's cluster shape)
        ((), "over 1 peer x 2 replicas (2 ranks)"),
        # a flag overrides the inferred degree
        (("--peers", "2"), "over 2 peers (2 ranks)"),
    ],
)
def test_torchrun_joins_the_process_group_by_itself(tmp_path, flags, layout):
    metrics = tmp_path / "m.jsonl"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--standalone",
            str(ROOT / "tests" / "core" / "torchrun_entry.py"),
            "train",
            "--model",
            "toy",
            "--data-provider",
            "toy",
            "--sequence-length",
            "8",
            "--total-batch",
            "4",
            "--total-steps",
            "3",
            "--warmup-steps",
            "1",
            "--metrics",
            str(metrics),
            *flags,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]  # rank 0 alone writes metrics
    assert result.stderr.count("psyche train  model toy") == 1  # and alone logs
    assert layout in result.stderr


def test_a_model_without_a_tensor_parallel_plan_is_refused_at_t2(tmp_path, plugins):
    with pytest.raises(PsycheError, match="declares no tensor-parallel plan; run it with"):
        run.train(options(tmp_path, tensor_parallelism=2, micro_batch=None), plugins)


def test_an_optimizer_that_cannot_update_shards_is_refused(tmp_path, plugins):
    with pytest.raises(PsycheError, match="cannot update sharded parameters"):
        run.train(options(tmp_path, optimizer="toy-sgd", data_parallelism=2, fsdp=True), plugins)
