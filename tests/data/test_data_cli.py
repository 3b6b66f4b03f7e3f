"""The plugin's registrations and the `psyche data inspect` command."""

from __future__ import annotations

import subprocess
import sys

import click
import numpy as np
import pytest
from click.testing import CliRunner
from data_helpers import make_options, write_tokens

from psyche_core.errors import PsycheError
from psyche_core.plugins import Plugins
from psyche_data import plugin


def test_hook_register_data_providers():
    specs = []
    plugin.register_data_providers(register=specs.append)
    # the embedded sample data is core's own
    assert [s.name for s in specs] == ["local", "http", "weighted", "preprocessed"]
    for spec in specs:
        assert callable(spec.load())
    http = next(s for s in specs if s.name == "http")
    assert {o.name for o in http.options} >= {"data-url-count", "data-http-timeout"}
    weighted = next(s for s in specs if s.name == "weighted")
    assert weighted.options[0].cli is False


def test_hook_register_commands():
    cli = click.Group("psyche")
    plugin.register_commands(cli=cli)
    assert set(cli.commands["data"].commands) == {"serve", "inspect", "tokenize", "prepare-chat"}


def test_loads_as_a_plugin_and_builds_through_the_registry(token_folder):
    plugins = Plugins.load(entry_points=False, extra=[plugin])
    assert plugins.broken() == []
    factory = plugins.data_providers.get("local").load()
    with factory(make_options(data_path=str(token_folder), sequence_length=100)) as provider:
        assert provider.num_sequences == 65


def test_plugin_module_is_light():
    code = (
        "import sys, psyche_data.plugin; "
        "heavy = {'numpy', 'httpx', 'huggingface_hub', 'tokenizers', 'pyarrow'}; "
        "heavy &= set(sys.modules); "
        "print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # psyche_core itself may import numpy/torch; the plugin must add none of the others
    assert set(eval(out.stdout)) <= {"numpy"}


def test_inspect_summary(token_folder):
    result = CliRunner().invoke(
        plugin_cli(), ["data", "inspect", str(token_folder), "--sequence-length", "100"]
    )
    assert result.exit_code == 0, result.output
    tokens = np.concatenate(
        [np.fromfile(token_folder / n, "<u2") for n in ("a.ds", "b.ds", "c.bin", "d.npy")]
    )
    assert "files:      4" in result.output
    assert "tokens:     6,564" in result.output
    assert "sequences:  65 of 100 tokens" in result.output
    assert f"token ids:  {tokens.min()} .. {tokens.max()}" in result.output


def test_inspect_token_size_4(tmp_path):
    write_tokens(tmp_path / "x.ds", [5, 70000, 9, 1], token_size=4)
    result = CliRunner().invoke(
        plugin_cli(),
        ["data", "inspect", str(tmp_path), "--sequence-length", "2", "--token-size", "4"],
    )
    assert "token ids:  1 .. 70000" in result.output
    assert "sequences:  2 of 2 tokens" in result.output


def test_inspect_decode_prints_only_text(fixtures):
    result = CliRunner().invoke(
        plugin_cli(),
        [
            "data",
            "inspect",
            str(fixtures / "fineweb" / "data"),
            "--decode",
            "2",
            "--tokenizer",
            str(fixtures / "llama2_tokenizer.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    first = (fixtures / "fineweb" / "decoded" / "0.txt").read_text()
    second = (fixtures / "fineweb" / "decoded" / "1.txt").read_text()
    # one sample after the other, each ended by a newline
    assert " ".join(result.output.split()) == " ".join(f"{first}\n{second}".split())


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--decode", "1"], "needs --tokenizer"),
        (["--token-size", "3"], "token size must be 2 or 4"),
        (["--sequence-length", "100000"], "longer than every data file"),
        (["--decode", "1", "--tokenizer", "missing.json"], "cannot load tokenizer"),
    ],
)
def test_inspect_bad_input(token_folder, arguments, message):
    result = CliRunner().invoke(plugin_cli(), ["data", "inspect", str(token_folder), *arguments])
    assert isinstance(result.exception, PsycheError)
    assert message in str(result.exception)


def test_inspect_missing_folder(tmp_path):
    result = CliRunner().invoke(plugin_cli(), ["data", "inspect", str(tmp_path / "none")])
    assert "does not exist" in str(result.exception)


def plugin_cli() -> click.Group:
    cli = click.Group("psyche")
    plugin.register_commands(cli=cli)
    return cli
