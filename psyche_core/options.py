"""``psyche train`` options: the core set, plugin extras, and TOML + command-line resolution.

Every option has one definition (an :class:`~psyche_core.specs.OptionSpec`); the Click flags,
the run-TOML keys and the ``Options`` object a factory receives all come from it. Precedence:
defaults < ``--config run.toml`` < flags given on the command line.
"""

from __future__ import annotations

import difflib
import math
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from psyche_core.errors import PsycheError
from psyche_core.schedule import DECAY_TYPES, LR_SCHEDULES
from psyche_core.specs import OptionSpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ATTN_IMPLEMENTATIONS = ("eager", "sdpa")
DTYPES = ("float32", "bfloat16", "float16")
PRECISIONS = ("32-true", "bf16-true", "bf16-mixed")
COMPILE_MODES = ("off", "on", "auto")
CHECKPOINTING_MODES = ("none", "full", "selective")

# Psyche's names and meanings; defaults are Psyche's except the run size, which is sized for
# the embedded quick start on a laptop CPU (Psyche: sequence 2048, batch 256 / micro 8,
# warmup 500 of 25000 steps). configs/psyche-train-example.toml restores Psyche's values.
CORE_OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec(
        "model",
        str,
        None,
        "Model: a registered name (llama), NAME:PRESET (llama:20m), a config.json for "
        "random init, a local HF checkpoint directory or a Hugging Face repo id. Default: "
        "the installed plugins' default model (the tiny Llama with the first-party plugins).",
    ),
    OptionSpec(
        "data-provider",
        str,
        None,
        "Data provider name; default: the one an option implies (local with --data-path, "
        "http with --data-url), else the embedded sample data.",
    ),
    OptionSpec("data-path", str, None, "Folder of pre-tokenized .ds/.bin/.npy token files."),
    OptionSpec(
        "data-url",
        str,
        None,
        "HTTP source: a URL, comma-separated URLs, a template with {} or a HF dataset repo id.",
    ),
    OptionSpec("sequence-length", int, 256, "Tokens per training sequence (Psyche: 2048).", min=2),
    OptionSpec("token-size", int, 2, "Bytes per token in the data files: 2 or 4.", min=2, max=4),
    OptionSpec(
        "total-batch",
        int,
        16,
        "Sequences per global step, over all peers (Psyche: 256).",
        min=1,
    ),
    OptionSpec(
        "micro-batch",
        int,
        None,
        "Sequences per forward/backward; gradients accumulate over the rest of a peer's "
        "share. Default: the whole share at once (Psyche: 8).",
        min=1,
    ),
    OptionSpec(
        "optimizer",
        str,
        None,
        "Optimizer name (adamw, or a plugin's: distro); default adamw.",
    ),
    OptionSpec("learning-rate", float, 4e-4, "Peak learning rate.", above=0),
    OptionSpec("warmup-steps", int, 20, "Linear warmup steps from 0 (Psyche: 500).", min=0),
    OptionSpec(
        "total-steps",
        int,
        500,
        "Steps of the cosine schedule and of the run; it ends at learning-rate / 10 "
        "(Psyche: 25000).",
        min=1,
    ),
    OptionSpec("beta1", float, 0.9, "AdamW beta1.", min=0, below=1),
    OptionSpec("beta2", float, 0.95, "AdamW beta2.", min=0, below=1),
    OptionSpec("weight-decay", float, 0.1, "Decoupled weight decay (AdamW and DisTrO).", min=0),
    OptionSpec("eps", float, 1e-8, "AdamW epsilon.", above=0),
    OptionSpec(
        "max-grad-norm",
        float,
        1.0,
        "Clip the global gradient norm to this; 0 disables.",
        min=0,
    ),
    OptionSpec(
        "lr-schedule",
        LR_SCHEDULES,
        "cosine",
        "Learning-rate schedule after the warmup: cosine (Psyche's), wsd (stable at the peak, "
        "then --decay-type over the last --decay-steps), linear, or constant. Decaying "
        "schedules end at learning-rate / 10.",
    ),
    OptionSpec(
        "decay-steps",
        int,
        None,
        "wsd: steps of the final decay (default: a fifth of the steps after warmup).",
    ),
    OptionSpec("decay-type", DECAY_TYPES, "linear", "wsd: shape of the final decay."),
    OptionSpec(
        "grad-accum-in-fp32",
        bool,
        False,
        "Accumulate micro-batch gradients in float32 (useful with --dtype bfloat16).",
    ),
    OptionSpec(
        "attn-implementation",
        ATTN_IMPLEMENTATIONS,
        "sdpa",
        "Attention kernel: eager (reference math) or sdpa (torch scaled_dot_product_attention).",
    ),
    OptionSpec("device", str, "auto", "Device: auto, cpu, cuda, cuda:N or mps."),
    OptionSpec(
        "dtype",
        DTYPES,
        None,
        "Parameter dtype (float32 means --precision 32-true, bfloat16 bf16-true); default "
        "from --precision.",
    ),
    OptionSpec(
        "precision",
        PRECISIONS,
        None,
        "32-true (float32 everywhere), bf16-true (bfloat16 parameters, gradients and "
        "optimizer state) or bf16-mixed (float32 parameters and optimizer state, forward and "
        "backward in bfloat16 under autocast). Default: 32-true on CPU, bf16-mixed on CUDA.",
    ),
    OptionSpec(
        "compile",
        COMPILE_MODES,
        "off",
        "torch.compile each repeated block of the model (regional: compile time does not grow "
        "with depth). A bare --compile means on (an error where the compiler is unavailable); "
        "auto falls back to eager there.",
        flag_value="on",
    ),
    OptionSpec(
        "activation-checkpointing",
        CHECKPOINTING_MODES,
        "none",
        "Recompute activations in backward to save memory: full (each decoder layer) or "
        "selective (keep matmul and attention outputs, recompute the cheap rest).",
    ),
    OptionSpec(
        "seed",
        int,
        None,
        "Seed for random init and the data shuffle; the same seed repeats a CPU run bit "
        "for bit. Without it data is read in order and random init uses seed 0.",
        min=0,
    ),
    OptionSpec("start-step", int, 1, "First global step to run (its samples and its LR).", min=1),
    OptionSpec(
        "save-path",
        str,
        None,
        "Directory to write checkpoints and the final model to (HF format): a new or empty "
        "folder, or one holding a psyche run.",
    ),
    OptionSpec(
        "overwrite",
        bool,
        False,
        "Allow --save-path to name a folder that holds another psyche run (its files are "
        "replaced); folders psyche did not write are refused regardless.",
    ),
    OptionSpec(
        "peers",
        int,
        None,
        "P: decentralised peers simulated; only the optimizer's exchange (DisTrO's payload, "
        "AdamW's mean gradient) crosses between them, and its bytes are counted. Default 1; "
        "under torchrun one per node.",
        min=1,
    ),
    OptionSpec(
        "data-parallelism",
        int,
        None,
        "D: replicas inside each peer, splitting its share of the batch and averaging "
        "gradients (Psyche's meaning). Default 1; under torchrun the ranks per node / T.",
        min=1,
    ),
    OptionSpec(
        "tensor-parallelism",
        int,
        1,
        "T: ranks splitting every layer's matrices with the model plugin's plan (DTensor). "
        "World size = P x D x T.",
        min=1,
    ),
    OptionSpec(
        "fsdp",
        bool,
        False,
        "Shard the D replicas' parameters, gradients and optimizer state with FSDP2 instead "
        "of keeping D full copies.",
    ),
    OptionSpec(
        "dp-backend",
        ("auto", "gloo", "nccl", "threads"),
        "auto",
        "How ranks talk: gloo (CPU) or nccl (CUDA) processes via torch.distributed (auto "
        "picks by device), or threads of this one process (simulated peers; not with "
        "--tensor-parallelism or --fsdp).",
    ),
    OptionSpec(
        "peer-timeout",
        float,
        300.0,
        "Seconds a peer waits for the others in a collective before the run stops with an "
        "error (a dead or hung peer).",
        above=0,
        max=1e7,
    ),
    OptionSpec(
        "checkpoint-every",
        int,
        0,
        "Write a resumable checkpoint to SAVE_PATH/step-NNNNNN every this many steps (0: only "
        "when stopped by a signal, if --save-path is set).",
        min=0,
    ),
    OptionSpec(
        "keep-last",
        int,
        None,
        "Keep only the newest this many checkpoints (at least 1; default: all).",
        min=1,
    ),
    OptionSpec(
        "resume",
        str,
        None,
        "Continue from a checkpoint (a step-NNNNNN folder, or the save path for its newest); "
        "the run's recorded options are the defaults.",
    ),
    OptionSpec(
        "resume-latest-valid",
        bool,
        False,
        "With --resume SAVE_PATH: when the newest checkpoint is damaged or incomplete, continue "
        "from the newest intact one (without it psyche stops and names both).",
    ),
    OptionSpec(
        "eval-every",
        int,
        0,
        "Every this many steps (and at the last), report the held-out loss val_loss and "
        "val_ppl; needs --eval-holdout or --eval-data-path/--eval-data-url. 0: never.",
        min=0,
    ),
    OptionSpec(
        "eval-holdout",
        int,
        0,
        "Hold out the last this many sequences of the training data (never trained on) "
        "for --eval-every.",
        min=0,
    ),
    OptionSpec(
        "eval-data-path",
        str,
        None,
        "Held-out data for --eval-every: a folder of token files, read like --data-path.",
    ),
    OptionSpec(
        "eval-data-url",
        str,
        None,
        "Held-out data for --eval-every over HTTP, read like --data-url.",
    ),
    OptionSpec(
        "eval-batches",
        int,
        None,
        "Score this many total batches of --eval-data-path/--eval-data-url (default: all "
        "of it); a holdout is always scored whole.",
        min=1,
    ),
    OptionSpec(
        "optim-stats",
        bool,
        False,
        "Add optimizer statistics (bytes, compression, energies) to the metrics.",
    ),
)


class Options(Mapping[str, Any]):
    """Resolved option values, read as ``options.sequence_length`` or ``options["seed"]``."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = {k.replace("-", "_"): v for k, v in values.items()}

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"no option {name!r}") from None

    def __getitem__(self, key: str) -> Any:
        return self._values[key.replace("-", "_")]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def replace(self, **changes: Any) -> Options:
        return Options({**self._values, **changes})

    def __reduce__(self) -> tuple[Any, ...]:
        # ``__getattr__`` must not run on a half-built object while unpickling
        return (Options, (self._values,))

    @classmethod
    def defaults(cls, specs: Iterable[OptionSpec], **values: Any) -> Options:
        """Every option of ``specs`` at its default, with ``values`` on top."""
        return cls({**{spec.key: spec.default for spec in specs}, **values})

    def __repr__(self) -> str:
        return f"Options({self._values!r})"


def plugin_option_specs(plugins: Any) -> Iterator[tuple[str, OptionSpec]]:
    """``(owner, spec)`` of every option a registered model, data provider, optimizer,
    reporter or evaluator declares."""
    registries = (
        plugins.models,
        plugins.data_providers,
        plugins.optimizers,
        plugins.reporters,
        plugins.evaluators,
    )
    for registry in registries:
        for _, spec, owner in registry.items():
            for option in spec.options:
                yield owner.distribution or owner.plugin, option


def all_option_specs(plugins: Any) -> list[OptionSpec]:
    """Core options plus every installed plugin's (the set ``psyche train`` accepts)."""
    return collect_option_specs(plugin_option_specs(plugins))


def collect_option_specs(extra: Iterable[tuple[str, OptionSpec]]) -> list[OptionSpec]:
    """Core options plus plugin options; ``extra`` yields ``(owner, spec)``.

    Two owners declaring one option name is an error naming both, unless the declarations are
    identical (two optimizers may share a flag).
    """
    specs: dict[str, tuple[str, OptionSpec]] = {s.key: ("psyche-core", s) for s in CORE_OPTIONS}
    for owner, spec in extra:
        if spec.key in specs:
            first_owner, first = specs[spec.key]
            if first == spec:
                continue
            raise PsycheError(
                f"option --{spec.name} is declared by both {first_owner} and {owner} with "
                "different settings"
            )
        specs[spec.key] = (owner, spec)
    return [spec for _, spec in specs.values()]


# ints beyond this cannot reach torch, numpy or a file offset intact
INT_LIMIT = 2**63 - 1


def bound_problem(spec: OptionSpec, value: Any) -> str | None:
    """Why ``value`` is out of ``spec``'s range (``None`` when it is fine)."""
    if value is None or spec.type not in (int, float) or isinstance(value, bool):
        return None
    if not isinstance(value, (int, float)):
        return None  # wrong types are reported by ``coerce``
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if abs(value) > INT_LIMIT:
        return f"must be at most {INT_LIMIT:.3g} in size"
    rules = (
        (spec.min, value >= (spec.min or 0), "must be at least {}"),
        (spec.above, value > (spec.above or 0), "must be greater than {}"),
        (spec.max, value <= (spec.max or 0), "must be at most {}"),
        (spec.below, value < (spec.below or 0), "must be less than {}"),
    )
    for bound, ok, rule in rules:
        if bound is not None and not ok:
            if bound == 0 and bound is spec.above:
                return "must be positive"
            if bound == 0 and bound is spec.min:
                return "must be >= 0"
            return rule.format(f"{bound:g}")
    return None


def check_bounds(specs: Iterable[OptionSpec], options: Mapping[str, Any]) -> None:
    """Every numeric option in range, one line per mistake (all of them at once)."""
    problems = []
    for spec in specs:
        problem = bound_problem(spec, options.get(spec.key))
        if problem is not None:
            problems.append(f"--{spec.name} {problem}, got {options.get(spec.key)!r}")
    if problems:
        raise PsycheError("\n".join(problems))


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise PsycheError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise PsycheError(f"{path}: invalid TOML: {exc}") from None


def coerce(spec: OptionSpec, value: Any, where: str) -> Any:
    """Check (and where lossless, convert) a value from TOML against the option's type."""
    if value is None:
        return None
    kind = spec.type
    bad = PsycheError(f"{where}: {spec.name} = {value!r} is not {_describe(kind)}")
    if isinstance(kind, tuple):
        if value not in kind:
            raise bad
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if kind is str:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return ",".join(value)
        if not isinstance(value, str):
            raise bad
        return value
    return value  # TOML-only options (tables, lists) are checked by their owner


def _describe(kind: Any) -> str:
    if isinstance(kind, tuple):
        return "one of " + ", ".join(kind)
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        kind, "valid"
    )


def resolve(
    specs: Iterable[OptionSpec],
    command_line: Mapping[str, Any],
    toml_path: str | Path | None = None,
    base: Mapping[str, Any] | None = None,
) -> Options:
    """Defaults, overridden by ``base`` (a resumed run's recorded options), by the TOML file,
    then by ``command_line`` (the flags the user actually typed, keyed by option key)."""
    by_key = {spec.key: spec for spec in specs}
    values = {key: spec.default for key, spec in by_key.items()}
    values.update({k: v for k, v in (base or {}).items() if k in by_key})
    from_toml: list[str] = []
    if toml_path is not None:
        for raw_key, value in load_toml(toml_path).items():
            key = raw_key.replace("-", "_")
            if key not in by_key:
                close = difflib.get_close_matches(key, by_key, n=2)
                names = ", ".join(c.replace("_", "-") for c in close)
                hint = f"; did you mean {names}?" if close else ""
                raise PsycheError(f"{toml_path}: unknown option {raw_key!r}{hint}")
            values[key] = coerce(by_key[key], value, str(toml_path))
            from_toml.append(key)
    explicit = set(base or {}) | set(from_toml) | {k.replace("-", "_") for k in command_line}
    values.update({k.replace("-", "_"): v for k, v in command_line.items()})
    return Options(apply_presets(by_key.values(), values, explicit))


def apply_presets(
    specs: Iterable[OptionSpec], values: dict[str, Any], explicit: Iterable[str]
) -> dict[str, Any]:
    """``values`` with each chosen preset's settings filled in where the key is not in
    ``explicit`` (the options the user set)."""
    specs, explicit = list(specs), set(explicit)
    known = {spec.key for spec in specs}
    for spec in specs:
        chosen = values.get(spec.key)
        if not spec.presets or chosen is None:
            continue
        for key, value in spec.presets[chosen].items():
            if key not in known:
                raise PsycheError(f"--{spec.name} {chosen} sets {key!r}, which no plugin declares")
            if key not in explicit:
                values[key] = value
    return values
