"""psyche's trainer on transformers models: optimizers, checkpoints, resume, data parallelism,
parity with the native Llama plugin and how ``--model`` finds the hf plugin."""

from __future__ import annotations

import json
import math

import pytest
import torch

from psyche_core import plan, resolve, run
from psyche_core.options import all_option_specs
from psyche_hf.model import HfCausalLM
from psyche_hf.presets import PRESETS
from psyche_llama.model import LlamaForCausalLM
from tests.hf.helpers import LLAMA_512, load_plugins, losses, options

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def plugins():
    return load_plugins()


@pytest.fixture(scope="module")
def qwen2_checkpoint(tmp_path_factory):
    """A random qwen2-tiny saved by psyche-hf (a model_type no native plugin claims)."""
    path = tmp_path_factory.mktemp("qwen2") / "ckpt"
    HfCausalLM.from_config(PRESETS["qwen2-tiny"], seed=11).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def llama_checkpoint(tmp_path_factory):
    """A random Llama written by the native psyche-llama plugin."""
    path = tmp_path_factory.mktemp("llama") / "ckpt"
    LlamaForCausalLM.from_config(LLAMA_512, seed=7).save_pretrained(path)
    return path


@pytest.mark.parametrize("optimizer", ["adamw", "distro"])
@pytest.mark.parametrize("preset", ["qwen2-tiny", "mistral-tiny", "gpt2-tiny"])
def test_presets_train_with_adamw_and_distro(preset, optimizer, plugins, tmp_path):
    summary = run.train(
        options(plugins, tmp_path, model=f"hf:{preset}", optimizer=optimizer, total_steps=6),
        plugins,
    )
    curve = losses(tmp_path)
    assert len(curve) == 6 and all(math.isfinite(x) for x in curve)
    assert curve[0] == pytest.approx(math.log(512), abs=0.3)  # random init
    assert curve[-1] < curve[0] - 0.05, curve
    assert summary["last_step"] == 6


def test_hf_wrapper_matches_the_native_llama_plugin(plugins, llama_checkpoint, tmp_path):
    """Same checkpoint, data and options: the loss curves agree to 1e-5 over 5 AdamW steps."""
    native, wrapped = tmp_path / "native", tmp_path / "hf"
    choice = resolve.resolve_model(plugins, str(llama_checkpoint))
    assert choice.spec.name == "llama"
    source = str(llama_checkpoint)
    run.train(options(plugins, native, model=source, save_path=str(native / "m")), plugins)
    run.train(
        options(plugins, wrapped, model="hf", hf_model=source, save_path=str(wrapped / "m")),
        plugins,
    )
    expected, got = losses(native), losses(wrapped)
    assert len(got) == 5 and got == pytest.approx(expected, abs=1e-5, rel=0)
    a = LlamaForCausalLM.from_pretrained(native / "m").state_dict()
    b = LlamaForCausalLM.from_pretrained(wrapped / "m").state_dict()  # hf's save, native load
    for key, value in a.items():
        torch.testing.assert_close(b[key], value, rtol=0, atol=1e-5, msg=key)


def test_checkpoints_resume_exactly(plugins, qwen2_checkpoint, tmp_path):
    specs = all_option_specs(plugins)
    full, part, resumed = tmp_path / "full", tmp_path / "part", tmp_path / "resumed"
    common = {"model": "hf", "hf_model": str(qwen2_checkpoint), "total_steps": 6}
    for out in (full, part):
        run_flags = {"save_path": str(out / "run"), "checkpoint_every": 3, **common}
        flags = dict(options(plugins, out, **run_flags))
        run.train(plan.resolve_run_options(specs, flags, None), plugins)
    step3 = part / "run" / "step-000003"
    assert sorted(p.name for p in step3.iterdir()) == [
        "config.json",
        "generation_config.json",
        "manifest.json",
        "model.safetensors",
        "peer-00000.safetensors",
        "run.json",
        "trainer.json",
    ]
    flags = {
        "resume": str(step3),
        "metrics": str(resumed / "metrics.jsonl"),
        "save_path": str(resumed / "run"),
    }
    run.train(plan.resolve_run_options(specs, flags, None), plugins)
    assert losses(resumed) == losses(full)[3:]
    a = HfCausalLM.from_pretrained(full / "run").state_dict()
    b = HfCausalLM.from_pretrained(resumed / "run").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_data_parallel_peers_as_threads_and_processes_train_alike(plugins, tmp_path):
    one, threads, gloo = tmp_path / "one", tmp_path / "threads", tmp_path / "gloo"
    common = {"model": "hf:gpt2-tiny", "total_steps": 3, "micro_batch": 2}
    run.train(options(plugins, one, save_path=str(one / "m"), **common), plugins)
    for out, backend in ((threads, "threads"), (gloo, "gloo")):
        peers = {"peers": 2, "dp_backend": backend, "save_path": str(out / "m")}
        run.train(options(plugins, out, **peers, **common), plugins)
    # Two peers see exactly the samples of one process (the losses agree), and thread and
    # process peers compute alike (same threads per peer: launch.threads_per_local_peer)
    assert losses(threads) == pytest.approx(losses(one), abs=1e-6, rel=0)
    assert losses(gloo) == pytest.approx(losses(threads), abs=1e-6, rel=0)
    a = HfCausalLM.from_pretrained(threads / "m").state_dict()
    b = HfCausalLM.from_pretrained(gloo / "m").state_dict()
    for key, value in a.items():
        torch.testing.assert_close(b[key], value, rtol=0, atol=1e-6, msg=key)


def test_distro_flag_with_two_thread_peers(plugins, tmp_path):
    flags = {"model": "hf:mistral-tiny", "distro": True, "total_steps": 3}
    run.train(options(plugins, tmp_path, peers=2, dp_backend="threads", **flags), plugins)
    assert all(math.isfinite(x) for x in losses(tmp_path))


def test_hf_config_trains_from_seeded_random_init(plugins, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(dict(PRESETS["gpt2-tiny"])))
    flags = {"model": "hf", "hf_config": str(config), "seed": 4, "learning_rate": 1e-9}
    run.train(
        options(plugins, tmp_path, total_steps=2, save_path=str(tmp_path / "m"), **flags), plugins
    )
    trained = HfCausalLM.from_pretrained(tmp_path / "m").state_dict()
    fresh = HfCausalLM.from_config(PRESETS["gpt2-tiny"], seed=4).state_dict()
    for key, value in fresh.items():
        torch.testing.assert_close(trained[key], value, rtol=0, atol=1e-6, msg=key)


def test_a_checkpoint_directory_resolves_by_its_model_type(plugins, qwen2_checkpoint, tmp_path):
    """qwen2 (no native plugin) goes to hf; llama stays with the native plugin."""
    choice = resolve.resolve_model(plugins, str(qwen2_checkpoint))
    assert choice.spec.name == "hf" and choice.checkpoint == qwen2_checkpoint
    config = tmp_path / "config.json"
    config.write_text(json.dumps(dict(PRESETS["mistral-tiny"])))
    assert resolve.resolve_model(plugins, str(config)).spec.name == "hf"
    run.train(options(plugins, tmp_path, model=str(qwen2_checkpoint), total_steps=2), plugins)
    assert len(losses(tmp_path)) == 2
