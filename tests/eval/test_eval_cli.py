"""``psyche eval`` end to end, and its one-line errors for bad input."""

from __future__ import annotations

import json
import sys

import pytest

from psyche_core.cli import main
from psyche_core.plugins import Plugins
from tests.eval.helpers import llama_checkpoint, write_tasks


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        main(args, plugins=Plugins.load())
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_cli")
    return llama_checkpoint(root / "ckpt"), write_tasks(root / "tasks")


def test_eval_writes_lm_eval_results(workspace, tmp_path, capsys):
    checkpoint, tasks = workspace
    output = tmp_path / "out" / "results.json"
    code, out, err = run_cli(
        [
            "eval",
            "--model",
            str(checkpoint),
            "--tasks",
            "psyche_colors,psyche_prose",
            "--include-path",
            str(tasks),
            "--limit",
            "5",
            "--num-fewshot",
            "1",
            "--batch-size",
            "4",
            "--output",
            str(output),
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 0, err
    results = json.loads(output.read_text())
    assert set(results["results"]) == {"psyche_colors", "psyche_prose"}
    assert results["n-samples"]["psyche_colors"]["effective"] == 5
    assert results["config"]["model"] == "psyche"
    assert results["config"]["model_args"]["model"] == str(checkpoint)
    assert results["n-shot"]["psyche_colors"] == 1
    assert 0 <= results["results"]["psyche_colors"]["acc,none"] <= 1
    assert "psyche_colors" in out and "acc" in out  # lm-eval's table


def test_eval_registered_name_with_tokenizer(workspace, capsys):
    # A preset resolves as psyche train resolves it; the tokenizer comes from --tokenizer.
    checkpoint, tasks = workspace
    args = [
        "eval",
        "--model",
        "llama:tiny",
        "--tasks",
        "psyche_colors",
        "--include-path",
        str(tasks),
        "--limit",
        "3",
        "--device",
        "cpu",
    ]
    code, _, err = run_cli(args, capsys)
    assert code == 1
    assert err.strip().splitlines() == [
        "error: --model llama:tiny has no saved tokenizer; pass --tokenizer (a tokenizer.json "
        "or a tokenizer directory) so that task text can become token ids"
    ]
    code, out, err = run_cli([*args, "--tokenizer", str(checkpoint / "tokenizer.json")], capsys)
    assert code == 0, err
    assert "psyche_colors" in out


def test_unknown_task_is_one_line_with_close_matches(workspace, capsys):
    checkpoint, _ = workspace
    code, _, err = run_cli(["eval", "--model", str(checkpoint), "--tasks", "helaswag"], capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: unknown lm-eval task 'helaswag'; did you mean 'hellaswag'")
    assert "--include-path" in lines[0]


def test_dataset_that_cannot_be_downloaded_says_how_to_use_local_files(
    workspace, monkeypatch, capsys
):
    # What this machine (no Hub) does with a built-in task, without the minutes of retries.
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    checkpoint, _ = workspace
    code, _, err = run_cli(["eval", "--model", str(checkpoint), "--tasks", "arc_easy"], capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert "task 'arc_easy': its dataset could not be downloaded" in lines[0]
    assert "dataset_path: json" in lines[0] and "--include-path" in lines[0]


def test_missing_local_data_file(tmp_path, capsys):
    checkpoint = llama_checkpoint(tmp_path / "ckpt")
    tasks = write_tasks(tmp_path / "tasks")
    (tasks / "colors.jsonl").unlink()
    args = [
        "eval",
        "--model",
        str(checkpoint),
        "--tasks",
        "psyche_colors",
        "--include-path",
        str(tasks),
    ]
    code, _, err = run_cli(args, capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "task 'psyche_colors': its dataset was not found" in lines[0]


def test_without_lm_eval_names_the_distribution(workspace, monkeypatch, capsys):
    for name in [m for m in sys.modules if m == "lm_eval" or m.startswith("lm_eval.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval now raises ImportError
    checkpoint, _ = workspace
    code, _, err = run_cli(["eval", "--model", str(checkpoint), "--tasks", "x"], capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert "psyche eval needs lm-eval" in lines[0] and "pip install psyche-eval" in lines[0]
    # The rest of the CLI does not need lm-eval.
    code, out, _ = run_cli(["list-plugins"], capsys)
    assert code == 0 and "psyche_eval" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--batch-size", "0"], "error: --batch-size must be at least 1"),
        (["--limit", "-1"], "error: --limit must be positive"),
        (["--output", "."], "error: --output . is a directory; give a file name like results.json"),
    ],
)
def test_bad_numbers_and_paths(workspace, capsys, extra, message):
    checkpoint, _ = workspace
    code, _, err = run_cli(["eval", "--model", str(checkpoint), "--tasks", "x", *extra], capsys)
    assert code == 1 and err.strip() == message
