import json

import pytest
from click.testing import CliRunner

from psyche_core import __version__
from psyche_core.cli import main, make_cli


def invoke(plugins, *args):
    return CliRunner().invoke(make_cli(plugins), list(args), catch_exceptions=False)


def run_main(plugins, capsys, *args):
    """The real entry point: returns (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as excinfo:
        main(list(args), plugins=plugins)
        raise SystemExit(0)
    captured = capsys.readouterr()
    return excinfo.value.code, captured.out, captured.err


def test_version_and_help(plugins):
    assert invoke(plugins, "--version").output.strip() == f"psyche, version {__version__}"
    result = invoke(plugins, "--help")
    assert "train" in result.output and "list-plugins" in result.output


def test_list_plugins_table_and_json(plugins):
    table = invoke(plugins, "list-plugins").output
    assert "adamw" in table and "psyche-core" in table and "toy" in table
    data = json.loads(invoke(plugins, "list-plugins", "--json").output)
    by_name = {p["name"]: p for p in data["plugins"]}
    assert by_name["adamw"]["optimizers"] == ["adamw"] and by_name["adamw"]["builtin"]
    toy = by_name["tests.core.toy_plugin"]
    assert toy["models"] == [
        {
            "name": "toy",
            "model_types": ["toy"],
            "architectures": ["ToyForCausalLM"],
            "presets": ["tiny"],
            "default_preset": "tiny",
        }
    ]
    assert toy["data_providers"] == ["toy", "toy-failing"] and toy["ok"] and data["conflicts"] == []


def test_train_help_documents_every_psyche_flag(plugins):
    text = invoke(plugins, "train", "--help").output
    for flag in (
        "--model",
        "--data-path",
        "--data-provider",
        "--data-url",
        "--sequence-length",
        "--token-size",
        "--micro-batch",
        "--total-batch",
        "--beta1",
        "--beta2",
        "--weight-decay",
        "--eps",
        "--learning-rate",
        "--warmup-steps",
        "--total-steps",
        "--max-grad-norm",
        "--device",
        "--grad-accum-in-fp32",
        "--attn-implementation",
        "--start-step",
        "--seed",
        "--save-path",
        "--peers",
        "--optim-stats",
        "--optimizer",
        "--config",
        "--dtype",
        "--metrics",
    ):
        assert flag in text, flag


def test_train_runs_from_toml_with_flags_winning(plugins, tmp_path, capsys):
    config = tmp_path / "run.toml"
    metrics = tmp_path / "m.jsonl"
    config.write_text(
        'model = "toy"\ndata-provider = "toy"\nsequence-length = 8\ntotal-batch = 4\n'
        f'total-steps = 50\nwarmup-steps = 1\nmetrics = "{metrics}"\n'
    )
    code, _, err = run_main(plugins, capsys, "train", "--config", str(config), "--total-steps", "3")
    assert code == 0, err
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2, 3]
    assert "done: steps 1..3" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "gpt5"], "error: unknown model 'gpt5'"),
        (["--model", "toy:huge"], "error: model 'toy' has no preset 'huge'; its presets: toy:tiny"),
        (["--optimizer", "adamx"], "error: unknown optimizer 'adamx'; did you mean 'adamw'?"),
        (["--data-provider", "nope"], "error: unknown data provider 'nope'"),
        (["--total-batch", "6", "--micro-batch", "4"], "must be a multiple of --micro-batch 4"),
        (["--device", "cuda:3"], "error: --device cuda:3:"),
        (["--device", "tpu"], "error: --device 'tpu' is not a device"),
        (["--learning-rate", "-1"], "error: --learning-rate must be positive"),
        (["--warmup-steps", "9", "--total-steps", "5"], "must be larger than --warmup-steps"),
    ],
)
def test_bad_input_is_one_clear_line(plugins, capsys, args, message):
    base = [
        "train",
        "--model",
        "toy",
        "--data-provider",
        "toy",
        "--total-steps",
        "2",
        "--warmup-steps",
        "1",
    ]
    code, _, err = run_main(plugins, capsys, *base, *args)
    assert code == 1
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_malformed_toml_names_the_file_and_line(plugins, tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text('model = "toy"\ntotal-batch = = 3\n')
    code, _, err = run_main(plugins, capsys, "train", "--config", str(config))
    assert code == 1
    assert err.startswith(f"error: {config}: invalid TOML:") and "line 2" in err


def test_bad_flag_value_is_a_usage_error(plugins, capsys):
    code, _, err = run_main(plugins, capsys, "train", "--total-batch", "many")
    assert code == 2 and "'many' is not a valid integer" in err
