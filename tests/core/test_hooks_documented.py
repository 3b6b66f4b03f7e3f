"""Every hook is documented with its exact signature and has a test named after it."""

import inspect
from pathlib import Path

import pytest

from psyche_core import hookspecs

ROOT = Path(__file__).resolve().parents[2]
HOOKS = [
    name
    for name, fn in vars(hookspecs).items()
    if inspect.isfunction(fn) and hasattr(fn, "psyche_spec")
]


def test_there_are_hooks():
    assert sorted(HOOKS) == [
        "register_commands",
        "register_data_providers",
        "register_evaluators",
        "register_models",
        "register_optimizers",
        "register_reporters",
    ]


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented_with_its_signature(hook):
    signature = f"{hook}{inspect.signature(getattr(hookspecs, hook))}"
    assert f"## {signature}" in (ROOT / "docs" / "plugin-hooks.md").read_text()


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook):
    tests = "".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    assert f"def test_hook_{hook}" in tests
