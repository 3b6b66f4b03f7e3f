"""From resolved ``psyche train`` options to a running :class:`~psyche_core.trainer.Trainer`.

Everything a user can get wrong is checked here, before any peer starts: names, batch sizes,
the device. Then every data-parallel peer builds its own model replica (weights broadcast from
peer 0), data provider and optimizer, and trains.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from psyche_core import checkpoint, hf
from psyche_core.comm import Communicator, run_local_peers
from psyche_core.distributed import (
    TorchDistributedCommunicator,
    default_backend,
    join_from_environment,
    launched_by_torchrun,
    spawn_peers,
)
from psyche_core.errors import PsycheError, UnknownNameError
from psyche_core.model import CausalLM
from psyche_core.options import Options, resolve
from psyche_core.plugins import Plugins
from psyche_core.reporting import ConsoleProgress, JsonlMetrics, TensorBoardMetrics
from psyche_core.schedule import CosineLR
from psyche_core.signals import stop_on_signals
from psyche_core.specs import ModelSpec, OptionSpec
from psyche_core.trainer import (
    CheckpointPolicy,
    Reporter,
    Trainer,
    TrainerConfig,
    plan_batches,
)


@dataclass(frozen=True)
class ModelChoice:
    """What ``--model`` resolved to: a spec plus a preset config or a checkpoint directory."""

    spec: ModelSpec
    label: str
    config: Mapping[str, Any] | None = None
    checkpoint: Path | None = None
    note: str = ""  # one console line, e.g. which fallback plugin loads the model

    def build(
        self, seed: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> CausalLM:
        cls = self.spec.load()
        if self.checkpoint is not None:
            return cls.from_pretrained(self.checkpoint, device=device, dtype=dtype)
        assert self.config is not None
        return cls.from_config(self.config, seed=seed, device=device, dtype=dtype)


def resolve_model(plugins: Plugins, ref: str) -> ModelChoice:
    """``llama`` | ``llama:20m`` | ``config.json`` | checkpoint directory | hub repo id."""
    name, _, preset = ref.partition(":")
    if name in plugins.models:
        spec = plugins.models.get(name)
        preset = preset or spec.preset_for_default or ""
        if preset not in spec.presets:
            known = ", ".join(spec.presets) or "none"
            raise PsycheError(
                f"model {name!r} has no preset {preset!r}; its presets: {known}"
                if preset
                else f"model {name!r} has no presets; pass a checkpoint or a config.json"
            )
        return ModelChoice(spec, f"{name}:{preset}", config=dict(spec.presets[preset]))
    path = Path(ref).expanduser()
    if path.is_file() and path.suffix == ".json":
        config = hf.read_config_file(path)
        spec = spec_for_config(plugins, config, ref)
        return ModelChoice(spec, ref, config=config, note=fallback_note(spec, config))
    if path.is_dir() or (ref.count("/") == 1 and not path.exists()):
        directory = hf.resolve_checkpoint(ref)
        config = hf.read_config(directory)
        spec = spec_for_config(plugins, config, ref)
        return ModelChoice(spec, ref, checkpoint=directory, note=fallback_note(spec, config))
    if ":" in ref and name not in plugins.models:
        raise UnknownNameError("model", name, plugins.models.names())
    raise UnknownNameError(
        "model",
        ref,
        plugins.models.names(),
        "Pass a registered name, NAME:PRESET, a config.json, a checkpoint directory or a "
        "Hugging Face repo id.",
    )


def spec_for_config(plugins: Plugins, config: Mapping[str, Any], source: str) -> ModelSpec:
    """The registered model that loads this HF config: a native one by model_type, then by
    architectures; else a fallback model (psyche-hf), the first by name if several."""
    model_type = config.get("model_type")
    architectures = set(config.get("architectures") or ())
    specs = [spec for _, spec, _ in plugins.models.items()]
    native = [spec for spec in specs if not spec.fallback]
    for spec in native:
        if model_type and model_type in spec.model_types:
            return spec
    for spec in native:
        if architectures & set(spec.architectures):
            return spec
    for spec in specs:
        if spec.fallback:
            return spec
    loaders = [f"{n} ({', '.join(s.model_types) or '-'})" for n, s, _ in plugins.models.items()]
    raise PsycheError(
        f"{source}: no installed model plugin loads model_type {model_type!r} "
        f"(installed: {'; '.join(loaders) or 'none'}). Install a plugin that does, "
        "e.g. psyche-hf for any transformers model."
    )


def fallback_note(spec: ModelSpec, config: Mapping[str, Any]) -> str:
    """The console line saying a fallback model loads this config, or ``""``."""
    if not spec.fallback:
        return ""
    return (
        f"using {spec.name} for model_type {config.get('model_type')!r} "
        "(no native model plugin claims it)"
    )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PsycheError(
            f"--device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise PsycheError(
                f"--device {name}: CUDA is not available here (no GPU, or torch built "
                "without CUDA); use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise PsycheError(
                f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise PsycheError(f"--device {name}: MPS is not available here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise PsycheError(f"--device {name}: unsupported device type; use cpu, cuda or mps")
    return device


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    if name is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    dtype = hf.parse_dtype(name)
    assert dtype is not None
    return dtype


def optimizer_name(options: Options) -> str:
    if options.distro:
        if options.optimizer not in ("adamw", "distro"):
            raise PsycheError(f"--distro conflicts with --optimizer {options.optimizer}")
        return "distro"
    return options.optimizer


def data_provider_name(options: Options) -> str:
    if options.data_provider:
        return options.data_provider
    if options.data_path:
        return "local"
    if options.data_url:
        return "http"
    return "sample"


def check_numbers(options: Options) -> None:
    rules = [
        ("learning-rate", options.learning_rate > 0, "must be positive"),
        ("warmup-steps", options.warmup_steps >= 0, "must be >= 0"),
        ("total-steps", options.total_steps >= 1, "must be at least 1"),
        ("sequence-length", options.sequence_length >= 2, "must be at least 2"),
        ("max-grad-norm", options.max_grad_norm >= 0, "must be >= 0 (0 disables clipping)"),
        ("data-parallelism", options.data_parallelism >= 1, "must be at least 1"),
        ("start-step", options.start_step >= 1, "must be at least 1"),
    ]
    for flag, ok, rule in rules:
        if not ok:
            raise PsycheError(f"--{flag} {rule}, got {options[flag]}")
    if options.start_step > options.total_steps:
        raise PsycheError(
            f"--start-step {options.start_step} is past --total-steps {options.total_steps}"
        )
    if options.total_steps <= options.warmup_steps:
        raise PsycheError(
            f"--total-steps ({options.total_steps}) must be larger than --warmup-steps "
            f"({options.warmup_steps})"
        )


@dataclass(frozen=True)
class Job:
    """Everything a peer needs to build its part of the run; picklable for worker processes."""

    options: dict[str, Any]
    plugin_load_args: tuple[bool, tuple[str, ...]]


# Options that define what a run trains on and with; a resumed run may not change them.
RUN_DEFINING = (
    "model",
    "optimizer",
    "distro",
    "data_provider",
    "data_path",
    "data_url",
    "sequence_length",
    "token_size",
    "total_batch",
    "seed",
    "data_parallelism",
)


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
    found = checkpoint.read(checkpoint.find_checkpoint(options.resume))
    recorded = found.run.get("options", {})
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


def prepare(options: Options, plugins: Plugins, world_size: int) -> dict[str, Any]:
    """Check every user-facing choice once, before any peer starts; returns resolved parts."""
    check_numbers(options)
    device = resolve_device(options.device)
    plan_batches(options.total_batch, options.micro_batch, world_size)
    if options.resume:
        # the model the run was trained with, if installed (a Llama trained through psyche-hf
        # resumes through psyche-hf); else whatever loads the checkpoint's config
        config = hf.read_config(options.resume)
        recorded = checkpoint.read(options.resume).run.get("model", {}).get("spec")
        if recorded in plugins.models:
            spec = plugins.models.get(recorded)
        else:
            spec = spec_for_config(plugins, config, options.resume)
        model = ModelChoice(spec, options.model, checkpoint=Path(options.resume))
    else:
        model = resolve_model(plugins, options.model)
    return {
        "model": model,
        "data": plugins.data_providers.get(data_provider_name(options)),
        "optimizer": plugins.optimizers.get(optimizer_name(options)),
        "device": device,
        "dtype": resolve_dtype(options.dtype, device),
    }


def train(
    options: Options,
    plugins: Plugins,
    console: Console | None = None,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """Run ``psyche train`` with resolved options; returns peer 0's summary.

    Under torchrun this process is one peer; otherwise ``--data-parallelism N`` peers are
    started here, as processes (gloo / NCCL) or as threads (``--dp-backend threads``).
    """
    console = console or Console(stderr=True, soft_wrap=True)
    rank = 0
    if launched_by_torchrun():
        world = int(os.environ["WORLD_SIZE"])
        if options.data_parallelism not in (1, world):
            raise PsycheError(
                f"--data-parallelism {options.data_parallelism} disagrees with torchrun's "
                f"world size {world}; leave it out under torchrun"
            )
        options = options.replace(data_parallelism=world)
        job = Job(dict(options), plugins.load_args)
        parts = prepare(options, plugins, world)
        device = _local_device(parts["device"])
        comm = join_from_environment(device, options.peer_timeout)
        rank = comm.rank
        try:
            summary = run_peer(comm, job, plugins, console, stop, device)
        finally:
            comm.close()
    else:
        job = Job(dict(options), plugins.load_args)
        world = options.data_parallelism
        parts = prepare(options, plugins, world)
        backend = options.dp_backend
        if backend == "auto":
            backend = default_backend(parts["device"])
        if world == 1 or backend == "threads":
            with _intra_op_threads(threads_per_local_peer(world)):
                summary = run_local_peers(
                    world,
                    lambda comm: run_peer(comm, job, plugins, console, stop),
                    timeout=options.peer_timeout,
                )[0]
        else:
            if backend == "nccl" and torch.cuda.device_count() < world:
                raise PsycheError(
                    f"--data-parallelism {world} with NCCL needs {world} GPUs; "
                    f"{torch.cuda.device_count()} present"
                )
            summary = spawn_peers(world, backend, options.peer_timeout, _process_peer, job, stop)[0]
    if rank == 0:
        _print_summary(console, summary)
    return summary


def threads_per_local_peer(world: int) -> int | None:
    """Intra-op threads for each of ``world`` peers sharing this machine: its cores split evenly
    (more threads than cores slows every peer down), the same for thread and process peers so
    both compute alike. ``None`` (leave torch's choice) for one peer or when OMP_NUM_THREADS is
    set. Note a matmul may round differently with another thread count, so N peers match one
    process to float rounding, not bit for bit; set OMP_NUM_THREADS for equal counts."""
    if world == 1 or "OMP_NUM_THREADS" in os.environ:
        return None
    return max(1, (os.cpu_count() or 1) // world)


@contextlib.contextmanager
def _intra_op_threads(threads: int | None) -> Iterator[None]:
    """Thread peers share one process, so the setting is process-wide for the run's duration."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _local_device(device: torch.device) -> torch.device:
    if device.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def _process_peer(comm: Communicator, job: Job) -> dict[str, Any]:
    """Entry point of a worker process started by ``spawn_peers``."""
    plugins = Plugins.reload(job.plugin_load_args)
    threads = threads_per_local_peer(comm.world_size)
    if threads is not None:
        torch.set_num_threads(threads)
    # Ctrl-C reaches every process of the terminal's group; only the parent handles it (and
    # forwards SIGTERM), so every worker stops after the same step.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    device = comm.device if isinstance(comm, TorchDistributedCommunicator) else None
    with stop_on_signals((signal.SIGTERM,), quiet=True) as stop:
        return run_peer(comm, job, plugins, Console(stderr=True, soft_wrap=True), stop, device)


def run_peer(
    comm: Communicator,
    job: Job,
    plugins: Plugins,
    console: Console,
    stop: threading.Event | None,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """One peer: build model, data and optimizer, agree with the others, train, save."""
    options = Options(job.options)
    parts = prepare(options, plugins, comm.world_size)
    device = device or parts["device"]
    check_same_config(comm, options, plugins)
    seed = 0 if options.seed is None else options.seed
    torch.manual_seed(seed)
    choice: ModelChoice = parts["model"]
    model = choice.build(seed, device=device, dtype=parts["dtype"])
    model.set_attn_implementation(options.attn_implementation)
    model.apply_options(options)
    comm.broadcast_(list(model.state_dict().values()), src=0)
    config = TrainerConfig(
        total_batch=options.total_batch,
        total_steps=options.total_steps,
        micro_batch=options.micro_batch,
        start_step=options.start_step,
        max_grad_norm=options.max_grad_norm,
        grad_accum_in_fp32=options.grad_accum_in_fp32,
        optim_stats=options.optim_stats,
    )
    schedule = CosineLR(
        options.learning_rate,
        options.warmup_steps,
        0.0,
        options.total_steps,
        options.learning_rate / 10,
    )
    policy = None
    if options.save_path:
        record = run_record(options, plugins, choice, parts, comm.world_size)
        policy = CheckpointPolicy(
            options.save_path, options.checkpoint_every, options.keep_last, record
        )
    data = parts["data"].load()(options)
    try:
        optimizer = parts["optimizer"].load()(model, options)
        reporters: list[Reporter] = []
        if comm.rank == 0:
            _print_header(console, options, choice, model, data, parts["optimizer"].name, device)
            reporters.append(ConsoleProgress(console, options.total_steps))
            if options.metrics:
                reporters.append(JsonlMetrics(options.metrics, resume_at=options.start_step))
            if options.tensorboard:
                reporters.append(TensorBoardMetrics(options.tensorboard))
        trainer = Trainer(model, data, optimizer, schedule, config, comm, reporters, device, policy)
        if options.resume:
            found = checkpoint.read(options.resume)
            trainer.load_peer_state(
                found.peer_state(comm.rank), found.step, found.trainer.get("tokens", 0)
            )
        summary = trainer.train(stop)
    finally:
        data.close()
    if comm.rank == 0 and options.save_path and not summary.get("stopped"):
        model.save_pretrained(options.save_path)
        summary["saved"] = options.save_path
    return summary


def run_record(
    options: Options,
    plugins: Plugins,
    choice: ModelChoice,
    parts: dict[str, Any],
    world_size: int,
) -> dict[str, Any]:
    """What a checkpoint records about the run that wrote it."""
    from psyche_core import __version__

    return {
        "psyche_version": __version__,
        "options": {k: v for k, v in options.items() if k not in ("resume", "start_step")},
        "model": {"label": choice.label, "spec": choice.spec.name},
        "optimizer": parts["optimizer"].name,
        "data_provider": parts["data"].name,
        "world_size": world_size,
        "plugins": {i.name: i.version for i in plugins.infos if i.error is None},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


# Options that may differ between peers without changing what is trained.
_PER_PEER_OPTIONS = frozenset({"device", "metrics", "save_path", "tensorboard"})


def config_fingerprint(options: Options, plugins: Plugins) -> dict[str, Any]:
    from psyche_core import __version__

    fingerprint = {k: v for k, v in options.items() if k not in _PER_PEER_OPTIONS}
    fingerprint["psyche_version"] = __version__
    fingerprint["plugins"] = sorted(
        f"{i.name}={i.version}" for i in plugins.infos if i.error is None
    )
    return fingerprint


def check_same_config(comm: Communicator, options: Options, plugins: Plugins) -> None:
    """Refuse to start when peers were launched with different settings or plugins."""
    if comm.world_size == 1:
        return
    mine = config_fingerprint(options, plugins)
    everyone = comm.all_gather_object(mine)
    for rank, theirs in enumerate(everyone):
        if theirs != everyone[0]:
            keys = sorted(
                k for k in set(theirs) | set(everyone[0]) if theirs.get(k) != everyone[0].get(k)
            )
            raise PsycheError(
                f"peer {rank} was started with a different configuration than peer 0 "
                f"(differs in: {', '.join(keys)}); start every peer with the same options"
            )


def _print_header(
    console: Console,
    options: Options,
    choice: ModelChoice,
    model: CausalLM,
    data: Any,
    optimizer: str,
    device: torch.device,
) -> None:
    dtype = next(model.parameters()).dtype
    console.print(
        f"[bold]psyche train[/bold]  model {choice.label} "
        f"({model.num_parameters() / 1e6:.2f}M params, {hf.dtype_name(dtype)}, {device})",
        highlight=False,
    )
    if choice.note:
        console.print(f"  {choice.note}", highlight=False)
    console.print(f"  data      {data.describe()}", highlight=False)
    console.print(
        f"  optimizer {optimizer}, lr {options.learning_rate:g} (warmup {options.warmup_steps}, "
        f"cosine to {options.learning_rate / 10:g} at step {options.total_steps})",
        highlight=False,
    )
    console.print(
        f"  batch     {options.total_batch} x {options.sequence_length} tokens over "
        f"{options.data_parallelism} peer(s), steps {options.start_step}..{options.total_steps}",
        highlight=False,
    )


def _print_summary(console: Console, summary: dict[str, Any]) -> None:
    if summary["last_step"] < summary["first_step"]:
        console.print("no steps run", highlight=False)
        return
    tokens = summary["tokens"]
    rate = tokens / summary["elapsed_s"] if summary["elapsed_s"] else 0.0
    line = (
        f"done: steps {summary['first_step']}..{summary['last_step']}, final loss "
        f"{summary['loss']:.4f}, {summary['elapsed_s']:.1f}s, {rate:,.0f} tokens/s"
    )
    if summary.get("stopped"):
        line = f"stopped after step {summary['last_step']}; " + line
    console.print(line, highlight=False)
    if summary.get("checkpoint"):
        console.print(
            f"checkpoint: {summary['checkpoint']} (continue with --resume {summary['checkpoint']})",
            highlight=False,
        )
    if summary.get("saved"):
        console.print(f"saved model to {summary['saved']}", highlight=False)
