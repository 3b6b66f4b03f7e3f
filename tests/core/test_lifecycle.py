"""Checkpoints, exact resume, signals."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from psyche_core import checkpoint, plan, run
from psyche_core.errors import PsycheError
from tests.core.test_trainer import CORE_AND_BUILTIN, read_metrics
from tests.core.toy_plugin import ToyForCausalLM

ROOT = Path(__file__).resolve().parents[2]
SPECS = CORE_AND_BUILTIN


def flags(tmp_path, **overrides):
    values = {
        "model": "toy",
        "data_provider": "toy",
        "sequence_length": 12,
        "total_batch": 8,
        "micro_batch": 4,
        "total_steps": 8,
        "warmup_steps": 2,
        "learning_rate": 3e-2,
        "seed": 3,
        "metrics": str(tmp_path / "metrics.jsonl"),
        "save_path": str(tmp_path / "run"),
        "checkpoint_every": 4,
        **overrides,
    }
    return values


def train(plugins, command_line, toml=None):
    return run.train(plan.resolve_run_options(SPECS, command_line, toml), plugins)


def test_resumed_adamw_run_equals_the_uninterrupted_one_bit_for_bit(tmp_path, plugins):
    full, part = tmp_path / "full", tmp_path / "part"
    train(plugins, flags(full))
    train(plugins, flags(part, total_steps=8))  # same run; now resume it from step 4
    resumed = tmp_path / "resumed"
    train(
        plugins,
        {
            "resume": str(part / "run" / "step-000004"),
            "metrics": str(resumed / "metrics.jsonl"),
            "save_path": str(resumed / "run"),
        },
    )
    expected = [r["loss"] for r in read_metrics(full / "metrics.jsonl")]
    got = [r["loss"] for r in read_metrics(resumed / "metrics.jsonl")]
    assert got == expected[4:]
    a = ToyForCausalLM.from_pretrained(full / "run").state_dict()
    b = ToyForCausalLM.from_pretrained(resumed / "run").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_contents_and_keep_last(tmp_path, plugins):
    train(plugins, flags(tmp_path, checkpoint_every=2, keep_last=2))
    names = [p.name for p in checkpoint.list_checkpoints(tmp_path / "run")]
    assert names == ["step-000006", "step-000008"]
    found = checkpoint.read(tmp_path / "run" / "step-000006")
    assert found.step == 6 and found.trainer["tokens"] == 6 * 8 * 12
    assert found.run["options"]["total_batch"] == 8 and found.run["optimizer"] == "adamw"
    assert "psyche_version" in found.run and found.run["plugins"]["adamw"]
    state = found.peer_state(0)
    assert set(state) == {"optimizer", "rng"}
    assert state["optimizer"]["state"][0]["exp_avg"].shape == (32, 16)
    files = sorted(p.name for p in found.path.iterdir())
    assert files == [
        "config.json",
        "manifest.json",
        "model.safetensors",
        "peer-00000.safetensors",
        "run.json",
        "trainer.json",
    ]
    # the final model sits beside the checkpoints, which it did not disturb
    assert (tmp_path / "run" / "config.json").is_file()


def test_resume_from_the_save_path_picks_the_newest_and_appends_metrics(tmp_path, plugins):
    train(plugins, flags(tmp_path, total_steps=8))
    metrics = tmp_path / "metrics.jsonl"
    with open(metrics, "a") as f:  # a crashed run wrote past its last checkpoint
        f.write(json.dumps({"step": 9, "loss": 0.0}) + "\n")
    train(plugins, {"resume": str(tmp_path / "run"), "total_steps": 10, "metrics": str(metrics)})
    assert [r["step"] for r in read_metrics(metrics)] == list(range(1, 11))


def test_a_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, plugins, monkeypatch):
    import safetensors.torch

    real = safetensors.torch.save_file
    calls = {"n": 0}

    def crash_on_second_checkpoint(tensors, path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] >= 2:  # the disk stays full: the emergency checkpoint fails too
            raise OSError("no space left on device")
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", crash_on_second_checkpoint)
    with pytest.raises(PsycheError, match="writing checkpoint .*step-000008 failed: no space"):
        train(plugins, flags(tmp_path))
    monkeypatch.undo()
    assert not list((tmp_path / "run").glob(".step-*"))  # no staging left behind
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["step-000004"]
    options = plan.resolve_run_options(SPECS, {"resume": str(tmp_path / "run")}, None)
    assert options.start_step == 5
    ToyForCausalLM.from_pretrained(tmp_path / "run" / "step-000004")


def test_resume_refuses_a_changed_run_and_damaged_checkpoints(tmp_path, plugins):
    train(plugins, flags(tmp_path, total_steps=4))
    ckpt = tmp_path / "run" / "step-000004"
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    with pytest.raises(PsycheError, match="--total-batch 16 differs from the checkpoint's 8"):
        plan.resolve_run_options(SPECS, {"resume": str(ckpt), "total_batch": 16}, None)
    with pytest.raises(PsycheError, match="--model 'toy:other' differs"):
        plan.resolve_run_options(SPECS, {"resume": str(ckpt), "model": "toy:other"}, None)
    with pytest.raises(PsycheError, match="at step 4, the run's last"):
        plan.resolve_run_options(SPECS, {"resume": str(ckpt)}, None)
    with pytest.raises(PsycheError, match="give only one"):
        plan.resolve_run_options(SPECS, {"resume": str(ckpt), "start_step": 2}, None)
    with pytest.raises(PsycheError, match="no checkpoint here"):
        plan.resolve_run_options(SPECS, {"resume": str(tmp_path)}, None)
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before  # nothing overwritten

    (ckpt / "peer-00000.safetensors").write_bytes(b"garbage")
    with pytest.raises(PsycheError, match="peer-00000.safetensors has 7 bytes, the manifest says"):
        train(plugins, {"resume": str(ckpt), "total_steps": 6})
    with pytest.raises(PsycheError, match="peer-00000.safetensors: damaged checkpoint state"):
        checkpoint.read_peer_state(ckpt, 0)  # what a checkpoint without the manifest check hits
    (ckpt / "peer-00000.safetensors").unlink()
    with pytest.raises(PsycheError, match="peer-00000.safetensors is missing"):
        train(plugins, {"resume": str(ckpt), "total_steps": 6})
    trainer = json.loads((ckpt / "trainer.json").read_text())
    (ckpt / "trainer.json").write_text(json.dumps({**trainer, "format": 99}))
    with pytest.raises(PsycheError, match="checkpoint format 99 is not supported"):
        checkpoint.read(ckpt)
    (ckpt / "trainer.json").write_text("{")
    with pytest.raises(PsycheError, match="trainer.json: damaged"):
        checkpoint.read(ckpt)
    with pytest.raises(PsycheError, match="step-000004 is damaged"):
        plan.resolve_run_options(SPECS, {"resume": str(ckpt), "total_steps": 6}, None)


@pytest.mark.parametrize(
    "sig, code, peers", [(signal.SIGINT, 130, 1), (signal.SIGTERM, 143, 1), (signal.SIGINT, 130, 2)]
)
def test_a_signal_finishes_the_step_saves_and_exits(tmp_path, sig, code, peers):
    metrics = tmp_path / "m.jsonl"
    save = tmp_path / "run"
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests" / "core" / "torchrun_entry.py"),
            "train",
            "--model",
            "toy",
            "--data-provider",
            "toy",
            "--sequence-length",
            "64",
            "--total-batch",
            "4",
            "--total-steps",
            "100000",
            "--warmup-steps",
            "1",
            "--peers",
            str(peers),
            "--metrics",
            str(metrics),
            "--save-path",
            str(save),
        ],
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
                break
            time.sleep(0.1)
        # Ctrl-C in a terminal signals the whole process group; `kill` signals one process.
        if sig == signal.SIGINT:
            os.killpg(process.pid, sig)
        else:
            process.send_signal(sig)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == code, err[-2000:]
    last = checkpoint.list_checkpoints(save)[-1]
    assert f"checkpoint: {last}" in err and f"--resume {last}" in err
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert checkpoint.read(last).step == steps[-1]  # the step in flight was finished and saved


def test_tensorboard_event_file_holds_each_steps_metrics(tmp_path, plugins):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(plugins, flags(tmp_path, tensorboard=str(tmp_path / "tb"), total_steps=3))
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert {"loss", "lr", "grad_norm"} <= set(events.Tags()["scalars"])
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for tag in ("loss", "lr"):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2, 3]
        expected = [m[tag] for m in logged]
        assert [s.value for s in scalars] == pytest.approx(expected, rel=1e-6)


def test_tensorboard_missing_is_one_clear_line(tmp_path, plugins, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(PsycheError, match=r"needs tensorboard: pip install"):
        train(plugins, flags(tmp_path, tensorboard=str(tmp_path / "tb"), total_steps=3))


def test_wandb_offline_run_records_each_steps_metrics(tmp_path, plugins, monkeypatch):
    pytest.importorskip("wandb", reason="the W&B reporter test needs wandb (requirements-dev)")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    train(plugins, flags(tmp_path, wandb_project="psyche-test", total_steps=3))
    [run_file] = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    # the run file holds each logged value as JSON text, next to its key
    recorded = run_file.read_bytes()
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for row in logged:
        assert json.dumps(row["loss"]).encode() in recorded
    assert b"grad_norm" in recorded and b"tokens_per_s" in recorded


def test_wandb_missing_is_one_clear_line(tmp_path, plugins, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import fails
    with pytest.raises(PsycheError, match=r"--wandb-project needs wandb: pip install"):
        train(plugins, flags(tmp_path, wandb_project="p", total_steps=3))
