import pytest
import torch
from click.testing import CliRunner

from psyche_core.cli import make_cli
from psyche_core.errors import PsycheError
from psyche_core.generation import generate, next_token_distribution
from tests.core.test_lifecycle import flags, train


def test_plot_draws_several_runs_into_a_png(tmp_path, plugins):
    for name, lr in (("adamw-a", 3e-2), ("adamw-b", 1e-2)):
        train(plugins, flags(tmp_path / name, learning_rate=lr, save_path=None))
    out = tmp_path / "curves.png"
    result = CliRunner().invoke(
        make_cli(plugins),
        [
            "plot",
            str(tmp_path / "adamw-a" / "metrics.jsonl"),
            str(tmp_path / "adamw-b" / "metrics.jsonl"),
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1650, 495)
    import matplotlib.image

    pixels = matplotlib.image.imread(out)
    assert pixels.std() > 0.05  # curves, not a blank canvas


def test_plot_rejects_a_file_that_is_not_metrics(tmp_path, plugins):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    result = CliRunner().invoke(make_cli(plugins), ["plot", str(bad)])
    assert result.exit_code == 1 and "bad.jsonl:1: not a JSON line" in str(result.exception)


def test_top_k_and_top_p_filter_the_distribution():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    probs = next_token_distribution(logits, 1.0, top_k=2, top_p=None)
    torch.testing.assert_close(probs, torch.tensor([0.625, 0.375, 0.0, 0.0]))
    probs = next_token_distribution(logits, 1.0, top_k=None, top_p=0.7)
    torch.testing.assert_close(probs, torch.tensor([0.625, 0.375, 0.0, 0.0]))
    probs = next_token_distribution(logits, 1.0, top_k=None, top_p=0.4)
    torch.testing.assert_close(probs, torch.tensor([1.0, 0.0, 0.0, 0.0]))


def test_generation_reproduces_the_pattern_the_model_learned(tmp_path, plugins):
    train(plugins, flags(tmp_path, total_steps=150, learning_rate=5e-2, checkpoint_every=0))
    result = CliRunner().invoke(
        make_cli(plugins),
        [
            "generate",
            "--model",
            str(tmp_path / "run"),
            "--prompt-ids",
            "5",
            "--max-new-tokens",
            "6",
        ],
    )
    assert result.exit_code == 0, result.output
    # the toy data continues every token t with t + 3 (mod 32)
    assert result.output.strip() == "8,11,14,17,20,23"


def test_sampling_is_seeded_and_validated(tmp_path, plugins):
    from tests.core.toy_plugin import ToyForCausalLM

    model = ToyForCausalLM.from_config({"vocab_size": 32, "hidden_size": 16}, seed=0)
    a = generate(model, [1, 2], 10, temperature=1.0, seed=4)
    assert a == generate(model, [1, 2], 10, temperature=1.0, seed=4)
    assert a != generate(model, [1, 2], 10, temperature=1.0, seed=5)
    with pytest.raises(PsycheError, match="prompt is empty"):
        generate(model, [], 3)
    with pytest.raises(PsycheError, match="--top-p must be in"):
        generate(model, [1], 3, temperature=1.0, top_p=1.5)
    result = CliRunner().invoke(
        make_cli(plugins), ["generate", "--model", "toy", "--prompt-ids", "x"]
    )
    assert "expected integers" in str(result.exception)
