"""The example third-party plugin, pip-installed the way a user would install it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "psyche-gru"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """pip-install examples/psyche-gru into its own target folder (not the dev environment)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(EXAMPLE),
        ],
        check=True,
        capture_output=True,
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(target), str(ROOT)])
    return env


def psyche(env, *args, check=True):
    return subprocess.run(
        [sys.executable, "-m", "psyche_core", *args],
        env=env,
        capture_output=True,
        text=True,
        check=check,
        timeout=300,
    )


def test_list_plugins_shows_the_installed_example(installed):
    data = json.loads(psyche(installed, "list-plugins", "--json").stdout)
    gru = next(p for p in data["plugins"] if p["name"] == "psyche_gru")
    assert gru["distribution"] == "psyche-gru" and gru["version"] == "0.1.0" and gru["ok"]
    assert gru["models"][0]["name"] == "gru"
    assert gru["models"][0]["presets"] == ["tiny", "small"]


def test_train_uses_the_installed_example(installed, tmp_path):
    pytest.importorskip("psyche_data", reason="training needs a data provider (psyche-data)")
    metrics = tmp_path / "m.jsonl"
    result = psyche(
        installed,
        "train",
        "--model",
        "gru:tiny",
        "--total-steps",
        "3",
        "--warmup-steps",
        "1",
        "--total-batch",
        "2",
        "--sequence-length",
        "32",
        "--metrics",
        str(metrics),
        "--save-path",
        str(tmp_path / "saved"),
    )
    assert "model gru:tiny" in result.stderr
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert config["model_type"] == "psyche_gru"


def test_the_examples_own_tests_pass_with_the_conformance_kit(installed):
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
        env=installed,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=EXAMPLE,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "1 passed" in result.stdout
