"""DisTrO through `psyche train`: peers as threads or gloo processes, and exact resume."""

import pytest
import torch

import psyche_distro.plugin
from psyche_core import plan, run
from psyche_core.options import all_option_specs
from psyche_core.plugins import Plugins
from tests.core import toy_plugin
from tests.core.test_trainer import read_metrics
from tests.core.toy_plugin import ToyForCausalLM


@pytest.fixture
def plugins():
    return Plugins.load(entry_points=False, extra=[toy_plugin, psyche_distro.plugin])


def train(plugins, out, **overrides):

    values = {
        "model": "toy",
        "data_provider": "toy",
        "sequence_length": 12,
        "total_batch": 8,
        "micro_batch": 2,
        "total_steps": 8,
        "warmup_steps": 2,
        "learning_rate": 1e-2,
        "compression_chunk": 8,
        "distro": True,
        "seed": 5,
        "metrics": str(out / "metrics.jsonl"),
        "save_path": str(out / "run"),
        **overrides,
    }
    specs = all_option_specs(plugins)
    return run.train(plan.resolve_run_options(specs, values, None), plugins)


def weights(path):
    return ToyForCausalLM.from_pretrained(path).state_dict()


@pytest.mark.parametrize("mode", ["psyche", "sync"])
def test_threads_and_gloo_processes_give_the_same_distro_run(tmp_path, plugins, mode):
    results = {}
    for backend in ("threads", "gloo"):
        out = tmp_path / backend
        train(plugins, out, peers=2, dp_backend=backend, distro_mode=mode)
        results[backend] = (read_metrics(out / "metrics.jsonl"), weights(out / "run"))
    (rows_t, w_t), (rows_g, w_g) = results["threads"], results["gloo"]
    assert [r["loss"] for r in rows_t] == pytest.approx([r["loss"] for r in rows_g], abs=1e-6)
    for key in w_t:
        torch.testing.assert_close(w_t[key], w_g[key], rtol=0, atol=1e-6)
    # each peer sends exactly its compressed payload, the same on both backends
    assert rows_t[0]["bytes_sent"] == rows_g[0]["bytes_sent"] == rows_t[0]["distro_payload_bytes"]
    assert rows_t[-1]["loss"] < rows_t[0]["loss"]


@pytest.mark.parametrize("quantize", [False, True])
def test_resumed_distro_run_equals_the_uninterrupted_one_bit_for_bit(tmp_path, plugins, quantize):
    full, part = tmp_path / "full", tmp_path / "part"
    train(plugins, full, distro_quantization=quantize, peers=2, dp_backend="threads")
    train(
        plugins,
        part,
        distro_quantization=quantize,
        peers=2,
        dp_backend="threads",
        checkpoint_every=3,
    )
    resumed = tmp_path / "resumed"
    train(plugins, resumed, resume=str(part / "run" / "step-000003"))
    expected = [r["loss"] for r in read_metrics(full / "metrics.jsonl")]
    got = [r["loss"] for r in read_metrics(resumed / "metrics.jsonl")]
    assert got == expected[3:]
    a, b = weights(full / "run"), weights(resumed / "run")
    assert all(torch.equal(a[k], b[k]) for k in a)
