"""The README's commands, CI and shipped configs stay true to each other."""

import re
from pathlib import Path

from psyche_core.options import all_option_specs, resolve
from psyche_core.plugins import Plugins

ROOT = Path(__file__).resolve().parents[2]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    quick = re.search(r"# 2\. set up and run the tests\n(.+)\n", readme).group(1)
    test_command = quick.split("&&")[-1].strip().removeprefix(".venv/bin/")
    ci = (ROOT / ".ci" / "run").read_text()
    assert f".venv/bin/{test_command}\n" in ci


def test_psyche_example_config_is_valid():
    specs = all_option_specs(Plugins.load())  # the example names first-party plugin flags
    options = resolve(specs, {}, ROOT / "configs" / "psyche-train-example.toml")
    assert options.total_batch == 256 and options.micro_batch == 8
    assert options.sequence_length == 2048 and options.warmup_steps == 500


def test_cli_reference_is_current():
    import importlib.util

    import pytest

    path = ROOT / "tools" / "cli_reference.py"
    spec = importlib.util.spec_from_file_location("cli_reference", path)
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    for name in reference.first_party_plugins():
        pytest.importorskip(name, reason=f"docs/cli.md is generated with {name} installed")
    expected = reference.render()
    assert (ROOT / "docs" / "cli.md").read_text() == expected, (
        "docs/cli.md is stale: python tools/cli_reference.py > docs/cli.md"
    )
