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


def test_each_distribution_has_one_version_source():
    """The version lives in the package's __version__; pyproject reads it (no second copy)."""
    import ast

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    pyprojects = [p for p in ROOT.glob("**/pyproject.toml") if ".venv" not in p.parts]
    checked = 0
    for pyproject in pyprojects:
        data = tomllib.loads(pyproject.read_text())
        if not data["tool"].get("setuptools", {}).get("packages", True):
            continue  # meta/psyche-all: no package, so its pyproject is the one source
        assert "version" not in data["project"], f"{pyproject}: a static version"
        assert data["project"]["dynamic"] == ["version"], pyproject
        attr = data["tool"]["setuptools"]["dynamic"]["version"]["attr"]
        package, name = attr.rsplit(".", 1)
        init = pyproject.parent / package.replace(".", "/") / "__init__.py"
        assigned = [
            node.value.value
            for node in ast.parse(init.read_text()).body
            if isinstance(node, ast.Assign) and [t.id for t in node.targets] == [name]
        ]
        assert len(assigned) == 1 and re.fullmatch(r"\d+\.\d+\.\d+", assigned[0]), init
        checked += 1
    assert checked >= 7  # core, llama, deepseek, data, distro, hf, the gru example


def test_psyche_all_lists_every_first_party_distribution():
    """`pip install psyche-all` installs each distribution this repo builds (examples aside)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    meta = tomllib.loads((ROOT / "meta" / "psyche-all" / "pyproject.toml").read_text())
    listed = {re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0] for d in meta["project"]["dependencies"]}
    built = {
        tomllib.loads(p.read_text())["project"]["name"]
        for p in ROOT.glob("**/pyproject.toml")
        if not {".venv", "examples", "meta"} & set(p.relative_to(ROOT).parts)
    }
    assert {"psyche-core", "psyche-llama", "psyche-hf"} <= built
    assert built <= listed, f"add to meta/psyche-all: {sorted(built - listed)}"
