"""Nothing the user has is ever lost: save paths psyche owns, checked checkpoints, bounded
numbers (issue 18)."""

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from psyche_core import checkpoint, plan, run
from psyche_core.errors import PsycheError
from psyche_core.options import INT_LIMIT, all_option_specs
from psyche_core.plugins import Plugins
from tests.core import toy_plugin
from tests.core.test_cli import run_main
from tests.core.test_lifecycle import ROOT, flags

SHORT = ["--model", "toy", "--data-provider", "toy", "--total-steps", "2", "--warmup-steps", "1"]


def train(plugins, command_line):
    specs = all_option_specs(plugins)  # the toy plugin's options included
    return run.train(plan.resolve_run_options(specs, command_line, None), plugins)


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# -- save paths ---------------------------------------------------------------------------------


def test_the_data_folder_survives_save_path_pointed_at_it(tmp_path, plugins):
    data = tmp_path / "data"
    data.mkdir()
    (data / "tokens.npy").write_bytes(b"\x00" * 64)
    (data / "notes.txt").write_text("my notes")
    before = snapshot(data)
    with pytest.raises(PsycheError, match="holds files psyche did not write"):
        train(plugins, flags(tmp_path, save_path=str(data), total_steps=2, warmup_steps=1))
    assert snapshot(data) == before
    assert not (tmp_path / "metrics.jsonl").exists()  # refused before step 1


def test_a_file_or_a_path_under_a_file_is_refused_before_step_1(tmp_path, plugins):
    file = tmp_path / "model.bin"
    file.write_text("keep me")
    with pytest.raises(PsycheError, match="is a file"):
        train(plugins, flags(tmp_path, save_path=str(file), total_steps=2, warmup_steps=1))
    assert file.read_text() == "keep me"
    with pytest.raises(PsycheError, match="cannot write there"):
        train(plugins, flags(tmp_path, save_path=str(file / "run"), total_steps=2, warmup_steps=1))
    with pytest.raises(PsycheError, match="--metrics .*cannot write there"):
        bad_metrics = str(file / "m.jsonl")
        train(plugins, flags(tmp_path, metrics=bad_metrics, total_steps=2, warmup_steps=1))
    assert not (tmp_path / "run").exists() or not list((tmp_path / "run").iterdir())


def test_another_psyche_run_is_replaced_only_with_overwrite(tmp_path, plugins):
    short = dict(total_steps=2, warmup_steps=1, checkpoint_every=1)
    train(plugins, flags(tmp_path, **short))
    assert (tmp_path / "run" / checkpoint.RUN_FILE).is_file()  # the mark of a psyche run
    with pytest.raises(PsycheError, match="holds another psyche run; pass --overwrite"):
        train(plugins, flags(tmp_path, **short))
    (tmp_path / "run" / "README.md").write_text("notes kept beside the run")
    stale = tmp_path / "run" / "step-000009"
    shutil.copytree(tmp_path / "run" / "step-000002", stale)  # the old run got further
    train(plugins, flags(tmp_path, overwrite=True, **short))
    assert (tmp_path / "run" / "README.md").read_text() == "notes kept beside the run"
    assert not stale.exists()  # --resume cannot pick up the replaced run's checkpoints
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert "overwrite" not in record["options"]  # a resumed run does not inherit the permission


def test_keep_last_needs_at_least_one_and_keeps_what_it_reports(tmp_path, plugins, capsys):
    for bad in ("-1", "0"):
        code, _, err = run_main(plugins, capsys, "train", *SHORT, "--keep-last", bad)
        assert code == 1 and "--keep-last must be at least 1" in err, err
    summary = train(plugins, flags(tmp_path, checkpoint_every=1, keep_last=1))
    names = [p.name for p in checkpoint.list_checkpoints(tmp_path / "run")]
    assert names == ["step-000008"] and summary["checkpoint"].endswith("step-000008")


def test_a_copied_run_resumes_into_itself(tmp_path, plugins):
    run_a, run_b = tmp_path / "runA", tmp_path / "runB"
    train(plugins, flags(tmp_path, save_path=str(run_a), metrics=str(run_a / "metrics.jsonl")))
    shutil.copytree(run_a, run_b)
    shutil.rmtree(run_b / "step-000008")
    before = snapshot(run_a)
    train(plugins, {"resume": str(run_b)})
    assert snapshot(run_a) == before  # the original is untouched
    assert checkpoint.read(run_b / "step-000008").step == 8
    lines = (run_b / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines]
    assert steps[-4:] == [5, 6, 7, 8]


# -- checkpoint integrity -----------------------------------------------------------------------


def test_a_flipped_byte_is_caught_and_the_intact_checkpoint_offered(tmp_path, plugins):
    train(plugins, flags(tmp_path, total_steps=8, checkpoint_every=2))
    run = tmp_path / "run"
    newest = run / "step-000008"
    weights = newest / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x10  # inside the tensor data: safetensors itself would load it
    weights.write_bytes(bytes(data))
    with pytest.raises(PsycheError) as caught:
        plan.resolve_run_options(plan_specs(), {"resume": str(run), "total_steps": 10}, None)
    message = str(caught.value)
    assert "step-000008 is damaged (model.safetensors does not match its checksum)" in message
    assert "newest intact one is" in message and "step-000006" in message
    with pytest.raises(PsycheError, match="step-000008 is damaged"):
        plan.resolve_run_options(plan_specs(), {"resume": str(newest), "total_steps": 10}, None)
    options = plan.resolve_run_options(
        plan_specs(), {"resume": str(run), "total_steps": 10, "resume_latest_valid": True}, None
    )
    assert options.resume.endswith("step-000006") and options.start_step == 7


def test_stale_staging_folders_go_at_the_next_save(tmp_path, plugins):
    train(plugins, flags(tmp_path, total_steps=4, checkpoint_every=2))
    stale = tmp_path / "run" / ".step-000006.tmp-abc123"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    train(plugins, {"resume": str(tmp_path / "run"), "total_steps": 6})
    assert not stale.exists()


def test_a_checkpoint_missing_its_manifest_is_incomplete(tmp_path, plugins):
    train(plugins, flags(tmp_path, total_steps=4, checkpoint_every=2))
    (tmp_path / "run" / "step-000004" / checkpoint.MANIFEST_FILE).unlink()
    with pytest.raises(PsycheError, match="manifest.json is missing; it is incomplete"):
        plan.resolve_run_options(plan_specs(), {"resume": str(tmp_path / "run")}, None)


def test_a_checkpoint_from_before_manifests_still_resumes(tmp_path, plugins):
    """Format 1 checkpoints (psyche 0.1 before manifests) have none; they are not refused."""
    train(plugins, flags(tmp_path, total_steps=4, checkpoint_every=2))
    step = tmp_path / "run" / "step-000004"
    (step / checkpoint.MANIFEST_FILE).unlink()
    record = json.loads((step / checkpoint.TRAINER_FILE).read_text())
    (step / checkpoint.TRAINER_FILE).write_text(json.dumps({**record, "format": 1}))
    resume = {"resume": str(tmp_path / "run"), "total_steps": 6}
    options = plan.resolve_run_options(plan_specs(), resume, None)
    assert options.resume == str(step) and options.start_step == 5


# -- numbers ------------------------------------------------------------------------------------


def plan_specs():
    from tests.core.test_lifecycle import SPECS

    return SPECS


def bad_values():
    """Every numeric option of every installed spec, paired with values it must refuse."""
    specs = all_option_specs(Plugins.load(entry_points=False, extra=[toy_plugin]))
    cases = []
    for spec in specs:
        if spec.type not in (int, float) or not spec.cli:
            continue
        values = ["nan", "inf", "-inf"] if spec.type is float else [str(INT_LIMIT * 4)]
        for low in (spec.min, spec.above):
            if low is not None:
                values.append(str(low - 1) if spec.type is int else str(low - 0.5))
        if spec.above is not None:
            values.append(str(int(spec.above)) if spec.type is int else str(float(spec.above)))
        for high in (spec.max, spec.below):
            if high is not None:
                values.append(str(int(high) + 1) if spec.type is int else str(high + 0.5))
        if spec.below is not None:
            values.append(str(spec.below))
        cases += [(spec.name, value) for value in values]
    return cases


@pytest.mark.parametrize("name, value", bad_values())
def test_every_bad_number_is_one_line_before_step_1(plugins, capsys, name, value):
    code, _, err = run_main(plugins, capsys, "train", *SHORT, f"--{name}", value)
    assert code == 1, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"--{name}" in err and "step 1/" not in err, err


def test_the_table_covers_every_numeric_core_option():
    names = {name for name, _ in bad_values()}
    assert {"learning-rate", "peer-timeout", "seed", "keep-last", "beta2"} <= names
    assert all(math.isfinite(INT_LIMIT) for _ in names)


# -- processes ----------------------------------------------------------------------------------


def _descendants(pid):
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += [int(child), *_descendants(int(child))]
    return found


def _running(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_die_with_a_killed_launcher_and_write_nothing(tmp_path):
    metrics, save = tmp_path / "m.jsonl", tmp_path / "run"
    launcher = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests" / "core" / "torchrun_entry.py"),
            "train",
            *SHORT[:4],
            "--sequence-length",
            "64",
            "--total-batch",
            "4",
            "--total-steps",
            "100000",
            "--warmup-steps",
            "1",
            "--peers",
            "2",
            "--checkpoint-every",
            "1",
            "--metrics",
            str(metrics),
            "--save-path",
            str(save),
        ],
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
                break
            time.sleep(0.1)
        workers = [
            p
            for p in _descendants(launcher.pid)
            if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text(errors="replace")
        ]
        assert len(workers) == 2
        launcher.kill()
        launcher.wait()
        killed_at = time.monotonic()
        while any(_running(p) for p in workers) and time.monotonic() - killed_at < 5:
            time.sleep(0.05)
        assert not any(_running(p) for p in workers), "workers outlived their launcher by 5 s"
        written = snapshot(save)
        time.sleep(1.0)
        assert snapshot(save) == written and not (save / "config.json").exists()
    finally:
        for pid in [launcher.pid, *locals().get("workers", [])]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# -- fatal errors leave a checkpoint ------------------------------------------------------------


def losses(metrics):
    return [json.loads(line)["loss"] for line in Path(metrics).read_text().splitlines()]


def test_a_dead_data_server_leaves_a_resumable_checkpoint(tmp_path, plugins):
    full = tmp_path / "full"
    train(plugins, flags(full, checkpoint_every=0))
    broken = flags(tmp_path, data_provider="toy-failing", checkpoint_every=0, toy_fail_at=40)
    with pytest.raises(PsycheError) as caught:
        train(plugins, broken)  # samples 40.. belong to step 6
    lines = str(caught.value).splitlines()
    assert lines[0] == "data server http://127.0.0.1:9/ stopped answering"  # the error first
    saved = tmp_path / "run" / "step-000005"
    assert lines[1] == f"emergency checkpoint of step 5: {saved} (continue with --resume {saved})"
    assert checkpoint.verify(saved) is None
    # The server is back: the run continues from step 6 to the uninterrupted run's losses.
    train(plugins, {"resume": str(tmp_path / "run"), "toy_fail_at": 10**6})
    assert losses(tmp_path / "metrics.jsonl")[-3:] == losses(full / "metrics.jsonl")[-3:]


def test_a_dead_peer_leaves_a_resumable_checkpoint(tmp_path, plugins):
    options = flags(
        tmp_path,
        data_provider="toy-failing",
        toy_fail_how="die",
        toy_fail_at=44,  # peer 1's share of step 6, fetched ahead during step 5
        peers=2,
        dp_backend="gloo",
        checkpoint_every=0,
        peer_timeout=20.0,
    )
    with pytest.raises(PsycheError) as caught:
        train(plugins, options)
    lines = str(caught.value).splitlines()
    assert lines[0].startswith("peer 1 of 2 died"), lines
    assert lines[1].startswith("emergency checkpoint of step "), lines
    found = checkpoint.list_checkpoints(tmp_path / "run")
    assert found and checkpoint.verify(found[-1]) is None
    resumed = plan.resolve_run_options(plan_specs(), {"resume": str(tmp_path / "run")}, None)
    assert resumed.start_step == checkpoint.read(found[-1]).step + 1 >= 5
    assert json.loads((found[-1] / "trainer.json").read_text())["world_size"] == 2
    assert len(checkpoint.read_peer_state(found[-1], 1)["optimizer"]["state"]) > 0


def test_a_non_finite_loss_saves_the_last_finite_step(tmp_path, plugins, monkeypatch):
    real_forward = toy_plugin.ToyForCausalLM.forward
    calls = {"n": 0}

    def nan_at_step_3(self, *args, **kwargs):
        out = real_forward(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] >= 5:  # 2 micro-batches a step: step 3's first
            out = out._replace(loss=out.loss * float("nan"))
        return out

    monkeypatch.setattr(toy_plugin.ToyForCausalLM, "forward", nan_at_step_3)
    with pytest.raises(PsycheError, match="loss is nan at step 3") as caught:
        train(plugins, flags(tmp_path, checkpoint_every=0))
    assert "emergency checkpoint of step 2" in str(caught.value)
    model = toy_plugin.ToyForCausalLM.from_pretrained(tmp_path / "run" / "step-000002")
    assert all(p.isfinite().all() for p in model.parameters())
