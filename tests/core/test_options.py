import pytest

from psyche_core.errors import PsycheError
from psyche_core.options import CORE_OPTIONS, Options, collect_option_specs, resolve
from psyche_core.specs import OptionSpec


def write(tmp_path, text):
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


def test_defaults_then_toml_then_command_line(tmp_path):
    specs = collect_option_specs([])
    path = write(tmp_path, 'learning-rate = 0.01\ntotal_batch = 32\nmodel = "llama:20m"\n')
    options = resolve(specs, {"total_batch": 64}, path)
    assert options.learning_rate == 0.01  # from the file
    assert options.total_batch == 64  # the flag wins
    assert options.model == "llama:20m"
    assert options.beta2 == 0.95  # default


def test_toml_int_is_accepted_for_a_float_option(tmp_path):
    options = resolve(collect_option_specs([]), {}, write(tmp_path, "max-grad-norm = 2\n"))
    assert options.max_grad_norm == 2.0 and isinstance(options.max_grad_norm, float)


def test_toml_wrong_type_names_option_and_file(tmp_path):
    path = write(tmp_path, 'total-batch = "many"\n')
    with pytest.raises(PsycheError, match=r"run.toml: total-batch = 'many' is not an integer"):
        resolve(collect_option_specs([]), {}, path)


def test_toml_choice_is_checked(tmp_path):
    path = write(tmp_path, 'attn-implementation = "flash"\n')
    with pytest.raises(PsycheError, match="one of eager, sdpa"):
        resolve(collect_option_specs([]), {}, path)


def test_unknown_toml_key_suggests_the_close_one(tmp_path):
    path = write(tmp_path, "learning_rat = 0.1\n")
    with pytest.raises(
        PsycheError, match="unknown option 'learning_rat'; did you mean learning-rate"
    ):
        resolve(collect_option_specs([]), {}, path)


def test_malformed_toml_names_file_and_line(tmp_path):
    path = write(tmp_path, "seed = 1\nmodel = \n")
    with pytest.raises(PsycheError, match=r"run.toml: invalid TOML: .*line 2"):
        resolve(collect_option_specs([]), {}, path)


def test_missing_toml_file(tmp_path):
    with pytest.raises(PsycheError, match="config file not found"):
        resolve(collect_option_specs([]), {}, tmp_path / "nope.toml")


def test_plugin_options_join_and_identical_duplicates_merge():
    chunk = OptionSpec("compression-chunk", int, 64, "chunk")
    specs = collect_option_specs([("a", chunk), ("b", chunk)])
    assert [s.key for s in specs].count("compression_chunk") == 1
    assert len(specs) == len(CORE_OPTIONS) + 1


def test_conflicting_plugin_options_name_both_owners():
    with pytest.raises(PsycheError, match="declared by both psyche-a and psyche-b"):
        collect_option_specs(
            [("psyche-a", OptionSpec("x", int, 1)), ("psyche-b", OptionSpec("x", float, 1.0))]
        )


def test_options_read_by_attribute_or_key():
    options = Options({"data-path": "d", "seed": 3})
    assert options.data_path == "d" and options["data-path"] == "d" and options["seed"] == 3
    with pytest.raises(AttributeError):
        _ = options.nope


PRESET_SPECS = [
    OptionSpec("chunk", int, 64),
    OptionSpec("topk", int, 4),
    OptionSpec(
        "preset",
        ("small", "broken"),
        None,
        presets={"small": {"chunk": 16, "topk": 8}, "broken": {"nope": 1}},
    ),
]


def test_a_preset_fills_in_only_what_the_user_did_not_set(tmp_path):
    assert dict(resolve(PRESET_SPECS, {})) == {"chunk": 64, "topk": 4, "preset": None}
    chosen = resolve(PRESET_SPECS, {"preset": "small"})
    assert (chosen.chunk, chosen.topk) == (16, 8)
    flag_wins = resolve(PRESET_SPECS, {"preset": "small", "topk": 2})
    assert (flag_wins.chunk, flag_wins.topk) == (16, 2)
    toml = tmp_path / "run.toml"
    toml.write_text('preset = "small"\nchunk = 32\n')
    toml_wins = resolve(PRESET_SPECS, {}, toml)
    assert (toml_wins.chunk, toml_wins.topk) == (32, 8)
    # a resumed run's recorded options are what it ran with: a preset does not change them
    resumed = resolve(PRESET_SPECS, {}, base={"chunk": 64, "topk": 4, "preset": "small"})
    assert (resumed.chunk, resumed.topk) == (64, 4)
    with pytest.raises(PsycheError, match="--preset broken sets 'nope', which no plugin declares"):
        resolve(PRESET_SPECS, {"preset": "broken"})
