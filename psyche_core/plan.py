"""The run plan: every choice of a ``psyche train`` call, resolved and checked once.

The CLI turns options into a :class:`RunPlan` in the parent process, before any peer starts;
the launcher hands the same frozen, picklable plan to every peer (thread, worker process, or
torchrun rank), and peers build from it without resolving or checking anything again.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from psyche_core import checkpoint, hf, paths
from psyche_core.compiling import resolve_compile
from psyche_core.errors import PsycheError
from psyche_core.flops import peak_flops
from psyche_core.layout import Layout, resolve_layout, torchrun_shape
from psyche_core.options import Options, all_option_specs, check_bounds, resolve
from psyche_core.plugins import Plugins
from psyche_core.precision import Precision, resolve_precision
from psyche_core.resolve import (
    ModelChoice,
    choose,
    resolve_device,
    resolve_model,
    spec_for_config,
)
from psyche_core.schedule import LRSchedule, make_schedule
from psyche_core.specs import (
    DataProviderSpec,
    EvaluatorSpec,
    OptimizerSpec,
    OptionSpec,
    ReporterSpec,
)
from psyche_core.trainer import TrainerConfig, plan_batches

# Options that define what a run trains on; a resumed run may not change them.
RUN_DEFINING = (
    "model",
    "optimizer",
    "data_provider",
    "data_path",
    "data_url",
    "sequence_length",
    "token_size",
    "total_batch",
    "seed",
    "peers",
)

# Options that may differ between peers without changing what is trained.
PER_PEER_OPTIONS = frozenset(
    {"device", "metrics", "save_path", "overwrite", "tensorboard", "wandb_project"}
)


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a resumed run continues from."""

    path: str
    step: int
    tokens: int
    layout: Layout  # the layout it was saved from (peers only, for checkpoints before layouts)
    states_per_rank: bool  # it holds each rank's optimizer state, not each peer's


@dataclass(frozen=True)
class RunPlan:
    """Everything a peer needs to build its part of the run."""

    options: Options
    model: ModelChoice
    data: DataProviderSpec
    optimizer: OptimizerSpec
    reporters: tuple[ReporterSpec, ...]
    eval_data: DataProviderSpec | None  # a separate held-out set (--eval-data-path/-url)
    evaluators: tuple[EvaluatorSpec, ...]  # evaluations switched on (--eval-tasks)
    device: torch.device
    dtype: torch.dtype
    layout: Layout
    seed: int
    trainer: TrainerConfig
    schedule: LRSchedule
    precision: Precision
    compile: bool  # regional torch.compile of the model's repeated blocks
    notes: tuple[str, ...]  # header lines about choices made (a --compile auto fallback)
    record: dict[str, Any]  # what every checkpoint records about the run
    fingerprint: dict[str, Any]  # what peers compare before training together
    resume: ResumePoint | None
    plugin_load_args: tuple[bool, tuple[str, ...]]

    @property
    def world_size(self) -> int:
        return self.layout.world_size


def resolve_run_options(
    specs: Sequence[OptionSpec], command_line: Mapping[str, Any], toml_path: str | None
) -> Options:
    """Options from defaults, TOML and flags; for ``--resume``, the checkpoint's recorded
    options sit under the TOML and the flags, and the run-defining ones may not change."""
    options = resolve(specs, command_line, toml_path)
    if not options.resume:
        return options
    if "start_step" in command_line:
        raise PsycheError("--resume and --start-step both pick the first step; give only one")
    found = checkpoint.read(checkpoint.find_checkpoint(options.resume, options.resume_latest_valid))
    recorded = dict(found.run.get("options", {}))
    if "peers" not in recorded and "data_parallelism" in recorded:
        # before --peers existed, --data-parallelism N meant N peers
        recorded["peers"] = recorded.pop("data_parallelism")
    run_folder = found.path.resolve().parent  # step-NNNNNN sits in the run's save path
    for key in found.run.get("run_relative", ()):
        if recorded.get(key):
            recorded[key] = str(run_folder / recorded[key])
    merged = resolve(specs, command_line, toml_path, base=recorded)
    for key in RUN_DEFINING:
        if key in recorded and merged[key] != recorded[key]:
            flag = key.replace("_", "-")
            raise PsycheError(
                f"--{flag} {merged[key]!r} differs from the checkpoint's {recorded[key]!r} "
                f"({found.path}); a resumed run keeps its {flag}"
            )
    if found.step >= merged.total_steps:
        raise PsycheError(
            f"{found.path} is at step {found.step}, the run's last (--total-steps "
            f"{merged.total_steps}); raise --total-steps to train further"
        )
    return merged.replace(resume=str(found.path), start_step=found.step + 1)


def check_optimizer_options(options: Options, plugins: Plugins, given: Iterable[str]) -> None:
    """Refuse options the user set (``given``: flags and TOML keys) that belong only to an
    optimizer the run does not use: they would be ignored without a word (``--compression-topk
    8`` on an AdamW run), or a preset would reach into the other optimizer's settings."""
    chosen = choose(plugins.optimizers, options.optimizer, options, "optimizer")
    stray_keys = set(given) - {option.key for option in chosen.options}
    strays: dict[str, list[str]] = {}
    for name, spec, _ in plugins.optimizers.items():
        if name == chosen.name:
            continue
        for option in spec.options:
            if option.key in stray_keys and option.key != spec.implied_by:
                strays.setdefault(name, []).append(f"--{option.name}")
    for name, flags in strays.items():
        many = len(flags) > 1
        raise PsycheError(
            f"{', '.join(flags)} {'are options' if many else 'is an option'} of --optimizer "
            f"{name}, but this run trains with {chosen.name}; leave {'them' if many else 'it'} "
            f"out, or add --optimizer {name}"
        )


def check_numbers(options: Options, specs: Sequence[OptionSpec]) -> None:
    """Every number in range (bounds declared on each option's spec), then the rules that
    relate two options."""
    check_bounds(specs, options)
    if options.start_step > options.total_steps:
        raise PsycheError(
            f"--start-step {options.start_step} is past --total-steps {options.total_steps}"
        )
    if options.total_steps <= options.warmup_steps:
        raise PsycheError(
            f"--total-steps ({options.total_steps}) must be larger than --warmup-steps "
            f"({options.warmup_steps})"
        )


# Reporter options that name files or folders the run writes (core's built-in reporters).
OUTPUT_FILES = ("metrics",)
OUTPUT_DIRS = ("tensorboard",)


def check_outputs(options: Options) -> None:
    """Every place the run will write is usable before step 1, not after training."""
    if options.save_path:
        paths.check_save_path(options.save_path, options.overwrite, options.resume)
    for key in OUTPUT_FILES:
        if options.get(key):
            paths.check_file_writable(key, options[key])
    for key in OUTPUT_DIRS:
        if options.get(key):
            paths.check_writable(key, Path(options[key]))
    if "wandb_project" in options and options.wandb_project:
        # W&B keeps its files under WANDB_DIR, else the working directory.
        paths.check_writable("wandb-project", Path(os.environ.get("WANDB_DIR", ".")))


def make_plan(options: Options, plugins: Plugins, layout: Layout | None = None) -> RunPlan:
    """Resolve and check every user-facing choice of a run laid out as ``layout`` (default:
    from the options, and torchrun's world when launched by it)."""
    check_numbers(options, all_option_specs(plugins))
    check_outputs(options)
    device = resolve_device(options.device)
    if layout is None:
        layout = run_layout(options)
    check_layout(layout, options, device)
    plan_batches(options.total_batch, options.micro_batch, layout.data_ranks)
    resume = None
    if options.resume:
        found = checkpoint.read(options.resume)
        saved = found.trainer
        resume = ResumePoint(
            str(found.path),
            found.step,
            int(saved.get("tokens", 0)),
            Layout(**saved["layout"]) if "layout" in saved else Layout(saved.get("world_size", 1)),
            saved.get("states", "peer") == "rank",
        )
        model = _resumed_model(plugins, options, found.run)
    else:
        model = resolve_model(plugins, options.model, options)
    data = choose(plugins.data_providers, options.data_provider, options, "data-provider")
    optimizer = choose(plugins.optimizers, options.optimizer, options, "optimizer")
    evaluators = _evaluators(plugins, options)
    eval_data = _eval_data(plugins, options, evaluators)
    if resume is not None:
        _check_same_choices(found, data.name, optimizer.name)
    options = options.replace(model=options.model or model.label)
    seed = 0 if options.seed is None else options.seed
    precision = resolve_precision(options.precision, options.dtype, device)
    compiled, compile_note = resolve_compile(options.compile, device)
    schedule = make_schedule(
        options.lr_schedule,
        options.learning_rate,
        options.warmup_steps,
        options.total_steps,
        options.decay_steps,
        options.decay_type,
    )
    trainer = TrainerConfig(
        total_batch=options.total_batch,
        total_steps=options.total_steps,
        micro_batch=options.micro_batch,
        start_step=options.start_step,
        max_grad_norm=options.max_grad_norm,
        grad_accum_in_fp32=options.grad_accum_in_fp32,
        optim_stats=options.optim_stats,
        eval_every=options.eval_every,
        autocast_dtype=precision.autocast_dtype,
        peak_flops=peak_flops(device, precision.compute_dtype),
        compiled=compiled,
    )
    reporters = tuple(spec for _, spec, _ in plugins.reporters.items())
    return RunPlan(
        options=options,
        model=model,
        data=data,
        optimizer=optimizer,
        reporters=reporters,
        eval_data=eval_data,
        evaluators=evaluators,
        device=device,
        dtype=precision.param_dtype,
        layout=layout,
        seed=seed,
        trainer=trainer,
        schedule=schedule,
        precision=precision,
        compile=compiled,
        notes=(compile_note,) if compile_note else (),
        record=run_record(options, plugins, model, data, optimizer, layout.peers),
        fingerprint=config_fingerprint(options, plugins),
        resume=resume,
        plugin_load_args=plugins.load_args,
    )


def run_layout(options: Options) -> Layout:
    """P x D x T from the flags, degrees left out inferred from torchrun's world."""
    return resolve_layout(
        options.peers,
        options.data_parallelism,
        options.tensor_parallelism,
        options.fsdp,
        torchrun_shape(),
    )


def check_layout(layout: Layout, options: Options, device: torch.device) -> None:
    """Refuse layouts this run cannot have, before any rank starts."""
    if layout.needs_mesh and options.dp_backend == "threads":
        raise PsycheError(
            "--tensor-parallelism and --fsdp shard tensors with torch.distributed (DTensor), "
            "which needs process ranks: leave out --dp-backend threads"
        )
    if layout.needs_mesh and options.compile != "off":
        raise PsycheError(
            "--compile does not combine with --tensor-parallelism or --fsdp yet; "
            "leave one of them out"
        )
    if options.dp_backend == "nccl" and not torch.cuda.is_available():
        raise PsycheError(
            "--dp-backend nccl needs CUDA GPUs and this machine has none; use gloo on CPU"
        )
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type == "cuda" and torchrun_shape() is None and layout.world_size > gpus:
        raise PsycheError(
            f"{layout.describe()} needs {layout.world_size} GPUs (one per rank) and "
            f"{gpus} are present; lower the degrees or run on CPU"
        )


def eval_data_options(options: Options) -> Options:
    """The options a held-out data provider is built with: the run's, reading the eval data."""
    return options.replace(
        data_provider=None, data_path=options.eval_data_path, data_url=options.eval_data_url
    )


def _evaluators(plugins: Plugins, options: Options) -> tuple[EvaluatorSpec, ...]:
    """The evaluators whose switch (``implied_by``: ``--eval-tasks``) the user set."""
    return tuple(
        spec
        for _, spec, _ in plugins.evaluators.items()
        if spec.implied_by and spec.implied_by in options and options[spec.implied_by]
    )


def _eval_data(
    plugins: Plugins, options: Options, evaluators: Sequence[EvaluatorSpec] = ()
) -> DataProviderSpec | None:
    """Checks the held-out loss options; the provider of a separate held-out set, if any."""
    separate = bool(options.eval_data_path or options.eval_data_url)
    if options.eval_holdout and separate:
        raise PsycheError("give --eval-holdout or --eval-data-path/--eval-data-url, not both")
    if options.eval_every and not (options.eval_holdout or separate or evaluators):
        raise PsycheError(
            f"--eval-every {options.eval_every} needs held-out data: --eval-holdout K (the "
            "last K training sequences) or --eval-data-path / --eval-data-url (or an "
            "evaluation such as --eval-tasks)"
        )
    if (options.eval_holdout or separate or evaluators) and not options.eval_every:
        switches = [f"--{spec.implied_by.replace('_', '-')}" for spec in evaluators]
        what = "held-out data is" if not switches else f"{', '.join(switches)} is"
        raise PsycheError(f"{what} scored every --eval-every N steps; give N")
    if options.eval_batches is not None and (options.eval_batches < 1 or not separate):
        raise PsycheError(
            "--eval-batches must be at least 1 and goes with --eval-data-path/--eval-data-url"
        )
    if not separate:
        return None
    return choose(plugins.data_providers, None, eval_data_options(options), "data-provider")


def _resumed_model(plugins: Plugins, options: Options, run: Mapping[str, Any]) -> ModelChoice:
    """The model the run was trained with, if installed (a Llama trained through psyche-hf
    resumes through psyche-hf); else whatever loads the checkpoint's config."""
    recorded = run.get("model", {}).get("spec")
    if recorded in plugins.models:
        spec = plugins.models.get(recorded)
    else:
        spec = spec_for_config(plugins, hf.read_config(options.resume), options.resume)
    label = options.model or run.get("model", {}).get("label", options.resume)
    return ModelChoice(spec, label, checkpoint=Path(options.resume))


def _check_same_choices(found: checkpoint.Checkpoint, data: str, optimizer: str) -> None:
    for kind, now in (("data_provider", data), ("optimizer", optimizer)):
        before = found.run.get(kind)
        if before is not None and before != now:
            raise PsycheError(
                f"the checkpoint {found.path} was trained with {kind.replace('_', ' ')} "
                f"{before!r}, this run would use {now!r}; a resumed run keeps its {kind}"
            )


def run_record(
    options: Options,
    plugins: Plugins,
    model: ModelChoice,
    data: DataProviderSpec,
    optimizer: OptimizerSpec,
    world_size: int,
) -> dict[str, Any]:
    """What a checkpoint records about the run that wrote it."""
    from psyche_core import __version__

    # What a resumed run must not inherit: where it resumed from, and one-off permissions.
    one_off = ("resume", "start_step", "overwrite", "resume_latest_valid")
    recorded = {k: v for k, v in options.items() if k not in one_off}
    return {
        "psyche_version": __version__,
        "options": recorded,
        "run_relative": relative_to_run(recorded),
        "model": {"label": model.label, "spec": model.spec.name},
        "optimizer": optimizer.name,
        "data_provider": data.name,
        "world_size": world_size,
        "plugins": {i.name: i.version for i in plugins.infos if i.error is None},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


# Options naming paths that usually live inside the run folder (the save path itself).
RUN_PATH_OPTIONS = ("save_path", "metrics", "tensorboard")


def relative_to_run(recorded: dict[str, Any]) -> list[str]:
    """Rewrite (in place) the path options inside the save path as paths relative to it, so a
    copied or moved run resumes into itself; returns the keys rewritten."""
    if not recorded.get("save_path"):
        return []
    folder = Path(recorded["save_path"]).resolve()
    rewritten = []
    for key in RUN_PATH_OPTIONS:
        value = recorded.get(key)
        if not value:
            continue
        try:
            recorded[key] = str(Path(value).resolve().relative_to(folder))
        except ValueError:
            continue  # outside the run folder: kept as given
        rewritten.append(key)
    return rewritten


def config_fingerprint(options: Options, plugins: Plugins) -> dict[str, Any]:
    """The options and plugin versions every peer of a run must share."""
    from psyche_core import __version__

    fingerprint = {k: v for k, v in options.items() if k not in PER_PEER_OPTIONS}
    fingerprint["psyche_version"] = __version__
    fingerprint["plugins"] = sorted(
        f"{i.name}={i.version}" for i in plugins.infos if i.error is None
    )
    return fingerprint
