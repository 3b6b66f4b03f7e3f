"""--precision, --compile, --activation-checkpointing, model FLOPs / MFU and --lr-schedule in
runs (tiny models; the speed itself is measured in benchmarks/, never here)."""

import json

import pytest
import torch

from psyche_core import compiling, flops, precision
from psyche_core.errors import PsycheError
from psyche_core.precision import resolve_precision
from tests.core.test_lifecycle import flags, train
from tests.core.test_trainer import read_metrics
from tests.core.toy_plugin import ToyForCausalLM

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def known_peak(tmp_path, monkeypatch):
    """A fixed cached CPU peak, so no test measures the (shared) machine."""
    cache = tmp_path / "cache"
    cache.mkdir()
    peaks = {"float32": 1e11, "bfloat16": 4e11}
    (cache / "peak_flops.json").write_text(json.dumps({flops.machine_key(): peaks}))
    monkeypatch.setenv("PSYCHE_CACHE_DIR", str(cache))
    return peaks


def losses(directory):
    return [r["loss"] for r in read_metrics(directory / "metrics.jsonl")]


def weights(directory):
    return ToyForCausalLM.from_pretrained(directory / "run").state_dict()


def saved_dtype(directory):
    return json.loads((directory / "run" / "config.json").read_text())["torch_dtype"]


# -- --precision ---------------------------------------------------------------------------------


def test_precision_defaults_and_dtype_equivalents():
    assert resolve_precision(None, None, CPU).name == "32-true"
    assert resolve_precision(None, "bfloat16", CPU) == resolve_precision("bf16-true", None, CPU)
    mixed = resolve_precision("bf16-mixed", "float32", CPU)
    assert (mixed.param_dtype, mixed.autocast_dtype) == (torch.float32, torch.bfloat16)
    assert mixed.compute_dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("given", "dtype"),
    [("32-true", "bfloat16"), ("bf16-true", "float32"), ("bf16-mixed", "bfloat16")],
)
def test_conflicting_dtype_and_precision_is_one_line(given, dtype):
    with pytest.raises(PsycheError, match=f"--dtype {dtype} conflicts with --precision {given}"):
        resolve_precision(given, dtype, CPU)


def test_unknown_precision_is_one_line():
    with pytest.raises(PsycheError, match="--precision 'fp8' is unknown"):
        resolve_precision("fp8", None, CPU)


def test_bf16_on_a_gpu_without_bf16_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    with pytest.raises(PsycheError, match="Tesla V100 does not support bfloat16"):
        precision.check_bf16_supported(torch.device("cuda"), "--precision bf16-mixed")


def test_bf16_true_is_dtype_bfloat16_bit_for_bit(tmp_path, plugins):
    by_dtype, by_precision = tmp_path / "dtype", tmp_path / "precision"
    train(plugins, flags(by_dtype, dtype="bfloat16"))
    train(plugins, flags(by_precision, precision="bf16-true"))
    assert losses(by_dtype) == losses(by_precision)
    a, b = weights(by_dtype), weights(by_precision)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert saved_dtype(by_dtype) == saved_dtype(by_precision) == "bfloat16"


def test_bf16_mixed_keeps_fp32_weights_and_tracks_the_fp32_loss(tmp_path, plugins):
    full, mixed = tmp_path / "fp32", tmp_path / "mixed"
    train(plugins, flags(full))
    train(plugins, flags(mixed, precision="bf16-mixed"))
    assert losses(mixed) != losses(full)  # bf16 compute really ran
    assert losses(mixed) == pytest.approx(losses(full), rel=0.01)
    assert saved_dtype(mixed) == "float32"


# -- model FLOPs and MFU -------------------------------------------------------------------------


def test_every_step_and_the_summary_carry_model_tflops_and_mfu(tmp_path, plugins, known_peak):
    summary = train(plugins, flags(tmp_path))
    rows = read_metrics(tmp_path / "metrics.jsonl")
    model = ToyForCausalLM.from_config({"vocab_size": 32, "hidden_size": 16})
    per_token = 6 * (32 * 16 + 16 * 32)  # mix and lm_head; the toy has no attention
    assert model.flops_per_token(12) == per_token
    for row in rows:
        achieved = per_token * 8 * 12 / row["step_time_s"]
        assert row["model_tflops"] == pytest.approx(achieved / 1e12, rel=1e-6)
        assert row["mfu"] == pytest.approx(achieved / known_peak["float32"], rel=1e-6)
    assert summary["mfu"] == pytest.approx(summary["model_tflops"] * 1e12 / 1e11)


def test_llama_flops_per_token_counts_matmul_weights_once_and_attention():
    from psyche_llama.model import LlamaForCausalLM
    from tests.llama.helpers import tiny_config

    model = LlamaForCausalLM.from_config(tiny_config(tie_word_embeddings=True))
    hidden, inner, layers, vocab = 64, 112, 2, model.vocab_size
    per_layer = hidden * hidden * 2 + hidden * 32 * 2 + 3 * hidden * inner  # q,o; k,v (GQA); mlp
    matmuls = layers * per_layer + vocab * hidden  # the tied head once
    assert model.flops_per_token(16) == 6 * matmuls + 12 * layers * hidden * 16


def test_gpu_peak_table_picks_the_specific_name_first():
    assert flops.gpu_peak_flops("NVIDIA H100 PCIe", torch.bfloat16) == 756e12
    assert flops.gpu_peak_flops("NVIDIA H100 80GB HBM3", torch.bfloat16) == 989e12
    assert flops.gpu_peak_flops("Some Future GPU", torch.bfloat16) is None


def test_bench_peak_command_measures_and_caches(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from psyche_core.cli.bench import bench_command

    monkeypatch.setenv("PSYCHE_CACHE_DIR", str(tmp_path / "fresh"))
    result = CliRunner().invoke(bench_command, ["peak", "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    assert "GFLOP/s" in result.output
    assert flops.cached_cpu_peaks()["float32"] > 1e8


@pytest.mark.parametrize(("load", "kept"), [(0.0, True), (1000.0, False)])
def test_a_peak_measured_by_a_run_is_kept_only_from_an_idle_machine(
    tmp_path, monkeypatch, load, kept
):
    monkeypatch.setenv("PSYCHE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(flops.os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(flops, "measure_cpu_peak", lambda dtype: 1.5e11)
    assert flops.peak_flops(torch.device("cpu"), torch.float32) == 1.5e11  # used either way
    assert (flops.cached_cpu_peaks() == {"float32": 1.5e11}) is kept


# -- --lr-schedule in runs -----------------------------------------------------------------------


def test_wsd_run_logs_its_curve_and_resumes_on_it_exactly(tmp_path, plugins):
    full, part = tmp_path / "full", tmp_path / "part"
    wsd = {"lr_schedule": "wsd", "decay_steps": 3}
    train(plugins, flags(full, **wsd))
    train(plugins, flags(part, **wsd))
    resumed = tmp_path / "resumed"
    train(
        plugins,
        {
            "resume": str(part / "run" / "step-000004"),
            "metrics": str(resumed / "metrics.jsonl"),
            "save_path": str(resumed / "run"),
        },
    )
    rows = read_metrics(full / "metrics.jsonl")
    assert [r["lr"] for r in rows][2:5] == [3e-2, 3e-2, 3e-2]
    assert rows[-1]["lr"] == pytest.approx(3e-3)
    again = read_metrics(resumed / "metrics.jsonl")
    assert [r["lr"] for r in again] == [r["lr"] for r in rows[4:]]
    assert [r["loss"] for r in again] == [r["loss"] for r in rows[4:]]


def test_wsd_decay_longer_than_the_run_stops_before_step_one(tmp_path, plugins):
    with pytest.raises(PsycheError, match="--decay-steps 50 is longer than the run"):
        train(plugins, flags(tmp_path, lr_schedule="wsd", decay_steps=50))
    assert not (tmp_path / "metrics.jsonl").exists()


# -- --compile -----------------------------------------------------------------------------------


def test_compile_where_the_compiler_is_missing(monkeypatch):
    monkeypatch.setattr(compiling, "compiler_problem", lambda device: "no C++ compiler found")
    with pytest.raises(PsycheError, match="--compile: no C\\+\\+ compiler found; use --compile"):
        compiling.resolve_compile("on", CPU)
    assert compiling.resolve_compile("auto", CPU) == (
        False,
        "--compile auto: running eager (no C++ compiler found)",
    )
    assert compiling.resolve_compile("off", CPU) == (False, "")


def test_repeated_blocks_are_the_decoder_layers():
    from psyche_llama.model import LlamaForCausalLM
    from tests.llama.helpers import tiny_config

    model = LlamaForCausalLM.from_config(tiny_config())
    assert compiling.repeated_blocks(model) == list(model.model.layers)


def test_a_bare_compile_flag_means_on():
    import click

    from psyche_core.cli.train import click_option
    from psyche_core.options import CORE_OPTIONS

    seen = []
    command = click.Command("t", callback=lambda **kw: seen.append(kw["compile"]))
    command.params.append(click_option(next(s for s in CORE_OPTIONS if s.name == "compile")))
    for argv in (["--compile"], [], ["--compile", "auto"]):
        command.main(argv, standalone_mode=False)
    assert seen == ["on", "off", "auto"]
