"""P peers x D replicas x T tensor-parallel ranks on one device mesh (gloo processes on CPU).

The equalities asserted, and why they must hold:

- ``T=2`` equals ``T=1`` (AdamW, fp32): column/row-parallel layers compute the same products,
  only the row-parallel partial sums are added in another order (float rounding).
- ``D=2`` equals ``D=1`` with the same total batch: each replica's loss is the mean over its
  half, and averaging the two gradients gives the gradient of the mean over the whole batch.
  ``--fsdp`` computes the same average with a reduce-scatter instead of an all-reduce.
- ``P=2 x D=2`` equals ``P=2`` (DisTrO): replicas average their gradients first, so each peer
  compresses the same gradient it would alone; only the peer link carries DisTrO's payload,
  once per peer.
- DisTrO at ``T=2`` equals ``T=1`` where every shard boundary falls on a chunk boundary
  (``--compression-chunk 16`` for the tiny Llama): the chunks, so the DCT and the top-k, are
  the same. Sign updates turn rounding differences of the inputs into rare flipped signs, so
  these runs agree to 1e-4 rather than 1e-5.
"""

from __future__ import annotations

import json

import pytest
import torch

import psyche_distro.plugin
import psyche_llama.plugin
from psyche_core.errors import PsycheError
from psyche_core.layout import Layout, resolve_layout
from psyche_core.plugins import Plugins
from tests import layouts
from tests.core.test_trainer import read_metrics
from tests.layouts import losses


@pytest.fixture(scope="module")
def plugins():
    return Plugins.load(entry_points=False, extra=[psyche_llama.plugin, psyche_distro.plugin])


def train(plugins, out, **overrides):
    return layouts.train(plugins, out, "llama:tiny", **overrides)


def test_tensor_parallel_llama_follows_the_unsharded_run(tmp_path, plugins):
    train(plugins, tmp_path / "t1")
    train(plugins, tmp_path / "t2", tensor_parallelism=2)
    assert losses(tmp_path / "t2") == pytest.approx(losses(tmp_path / "t1"), abs=1e-5, rel=0)


def test_replicas_and_fsdp_equal_one_rank_with_the_same_batch(tmp_path, plugins):
    # a held-out set of 5 sequences splits 3 + 2 over two replicas: the second runs one pass
    # more without counting it, so FSDP's gathers stay in step
    held_out = {"eval_every": 5, "eval_holdout": 5}
    train(plugins, tmp_path / "d1", **held_out)
    train(plugins, tmp_path / "d2", data_parallelism=2, **held_out)
    train(plugins, tmp_path / "fsdp", data_parallelism=2, fsdp=True, **held_out)
    one = losses(tmp_path / "d1")
    assert losses(tmp_path / "d2") == pytest.approx(one, abs=1e-5, rel=0)
    assert losses(tmp_path / "fsdp") == pytest.approx(losses(tmp_path / "d2"), abs=1e-6, rel=0)
    val = [
        read_metrics(tmp_path / n / "metrics.jsonl")[-1]["val_loss"] for n in ("d1", "d2", "fsdp")
    ]
    assert val[1] == pytest.approx(val[0], abs=1e-5) and val[2] == pytest.approx(val[0], abs=1e-5)
    rows = read_metrics(tmp_path / "d2" / "metrics.jsonl")
    # AdamW's mean gradient crosses the (one-peer) link once: replica 0 sends, replica 1 waits
    assert rows[0]["bytes_sent"] == read_metrics(tmp_path / "d1" / "metrics.jsonl")[0]["bytes_sent"]
    assert rows[0]["intra_peer_bytes"] > 0


def test_distro_peers_with_replicas_equal_peers_alone(tmp_path, plugins):
    flags = {"distro": True, "compression_chunk": 16}
    train(plugins, tmp_path / "p2", peers=2, **flags)
    train(plugins, tmp_path / "p2d2", peers=2, data_parallelism=2, **flags)
    assert losses(tmp_path / "p2d2") == pytest.approx(losses(tmp_path / "p2"), abs=1e-5, rel=0)
    a = read_metrics(tmp_path / "p2" / "metrics.jsonl")[0]
    b = read_metrics(tmp_path / "p2d2" / "metrics.jsonl")[0]
    assert a["bytes_sent"] == b["bytes_sent"] == a["distro_payload_bytes"]


def test_distro_on_tensor_parallel_and_fsdp_shards_aligned_with_chunks(tmp_path, plugins):
    flags = {"distro": True, "compression_chunk": 16, "peers": 2}
    train(plugins, tmp_path / "t1", **flags)
    train(plugins, tmp_path / "t2", tensor_parallelism=2, **flags)
    train(plugins, tmp_path / "fsdp", data_parallelism=2, fsdp=True, **flags)
    one = losses(tmp_path / "t1")
    assert losses(tmp_path / "t2") == pytest.approx(one, abs=1e-4, rel=0)
    assert losses(tmp_path / "fsdp") == pytest.approx(one, abs=1e-4, rel=0)
    # each peer's shards together send what the unsharded peer sends, plus the replicated
    # norm weights once more per extra tensor-parallel rank
    sent = {
        name: read_metrics(tmp_path / name / "metrics.jsonl")[0]["bytes_sent"]
        for name in ("t1", "t2", "fsdp")
    }
    assert sent["fsdp"] == sent["t1"] < sent["t2"] < 1.05 * sent["t1"]


def test_a_tensor_parallel_checkpoint_is_a_plain_hf_checkpoint_and_resumes_at_t1(tmp_path, plugins):
    transformers = pytest.importorskip("transformers")
    train(plugins, tmp_path / "full")  # T=1, uninterrupted
    train(
        plugins,
        tmp_path / "t2",
        tensor_parallelism=2,
        save_path=str(tmp_path / "t2" / "run"),
        checkpoint_every=3,
    )
    saved = tmp_path / "t2" / "run"
    # transformers reads the final model of the sharded run; its logits are psyche's
    from psyche_llama.model import LlamaForCausalLM

    ours = LlamaForCausalLM.from_pretrained(saved)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(saved)
    ids = torch.randint(0, 512, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, rtol=1e-4, atol=1e-4)
    # saved at T=2, resumed at T=1: AdamW's moments were saved whole
    train(plugins, tmp_path / "resumed", resume=str(saved / "step-000003"), tensor_parallelism=1)
    expected = losses(tmp_path / "full")[3:]
    assert losses(tmp_path / "resumed") == pytest.approx(expected, abs=1e-5, rel=0)
    trainer = json.loads((saved / "step-000003" / "trainer.json").read_text())
    assert trainer["layout"]["tensor"] == 2 and trainer["states"] == "peer"


def test_a_sharded_distro_checkpoint_resumes_on_its_own_layout_only(tmp_path, plugins):
    flags = {"distro": True, "compression_chunk": 16, "tensor_parallelism": 2}
    train(plugins, tmp_path / "full", **flags)
    part = tmp_path / "part"
    train(plugins, part, save_path=str(part / "run"), checkpoint_every=3, **flags)
    step3 = str(part / "run" / "step-000003")
    train(plugins, tmp_path / "same", resume=step3)
    assert losses(tmp_path / "same") == losses(tmp_path / "full")[3:]  # bit for bit
    with pytest.raises(PsycheError, match="resume it with the checkpoint's layout"):
        train(plugins, tmp_path / "other", resume=step3, tensor_parallelism=1)


# -- the layout itself and its bad inputs ------------------------------------------------------


def test_ranks_are_peer_major_then_replica_then_tensor():
    layout = Layout(peers=2, replicas=2, tensor=2)
    assert [layout.coordinates(r) for r in (0, 1, 2, 5, 7)] == [
        (0, 0, 0),
        (0, 0, 1),
        (0, 1, 0),
        (1, 0, 1),
        (1, 1, 1),
    ]
    assert layout.peer_group(1, 0) == [2, 6] and layout.replica_group(1, 1) == [5, 7]


def test_torchrun_degrees_follow_the_cluster_shape():
    # two nodes of four: one peer per node, replicas = ranks per node / T
    assert resolve_layout(None, None, 1, False, (8, 4)) == Layout(2, 4, 1)
    assert resolve_layout(None, None, 2, False, (8, 4)) == Layout(2, 2, 2)
    # a single node of N processes is N replicas of one peer ...
    assert resolve_layout(None, None, 1, False, (4, 4)) == Layout(1, 4, 1)
    # ... and flags override
    assert resolve_layout(4, None, 1, False, (4, 4)) == Layout(4, 1, 1)
    with pytest.raises(PsycheError, match="= 6 ranks, but torchrun started 8"):
        resolve_layout(3, 2, 1, False, (8, 4))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"fsdp": True}, "this run has one (--data-parallelism 1)"),
        ({"tensor_parallelism": 2, "dp_backend": "threads"}, "leave out --dp-backend threads"),
        ({"dp_backend": "nccl", "peers": 2}, "needs CUDA GPUs and this machine has none"),
        ({"tensor_parallelism": 3}, "must divide the model's num_attention_heads (4)"),
    ],
)
def test_bad_layouts_get_one_clear_line(tmp_path, plugins, flags, message):
    if "nccl" in str(flags) and torch.cuda.is_available():
        pytest.skip("this machine has GPUs")
    with pytest.raises(PsycheError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train(plugins, tmp_path, **flags)
