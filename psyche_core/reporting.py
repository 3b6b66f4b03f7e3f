"""Where per-step metrics go: the console (rich), a JSONL file, TensorBoard, Weights & Biases.

Each reporter is registered through the ``register_reporters`` hook (core's own in
``psyche_core.default_plugins.reporters``) with a factory ``(options, run) -> Reporter | None``;
peer 0 asks every registered factory and keeps the reporters its options switch on.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from psyche_core.errors import PsycheError

if TYPE_CHECKING:
    from psyche_core.model import CausalLM
    from psyche_core.plan import RunPlan


@dataclass(frozen=True)
class RunInfo:
    """What a reporter factory may need besides the options."""

    console: Console
    first_step: int
    total_steps: int
    record: dict[str, Any]  # the run record (options, model, plugins), as checkpoints hold it


class JsonlMetrics:
    """One JSON object per step, flushed as it is written (``--metrics PATH``).

    A resumed run (``resume_at`` = its first step) keeps the lines of earlier steps and drops
    those at or after it, which a crashed run may have written past its last checkpoint.
    """

    def __init__(self, path: str | Path, resume_at: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = ""
        if resume_at is not None and resume_at > 1 and self.path.is_file():
            kept = "".join(
                line + "\n"
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) < resume_at
            )
        # Kept open for the whole run (one line per step); closed in on_end / close.
        self._file: TextIO | None = open(self.path, "w", buffering=1)  # noqa: SIM115
        self._file.write(kept)

    def on_start(self, info: dict[str, Any]) -> None:
        pass

    def on_step(self, metrics: dict[str, Any]) -> None:
        assert self._file is not None
        self._file.write(json.dumps({k: _plain(v) for k, v in metrics.items()}) + "\n")

    def on_end(self, summary: dict[str, Any]) -> None:
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    if hasattr(value, "item"):
        return value.item()
    return value


class TensorBoardMetrics:
    """Scalars to TensorBoard (``--tensorboard DIR``), if the tensorboard package is there."""

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise PsycheError(
                "--tensorboard needs tensorboard: pip install 'psyche-core[tensorboard]'"
            ) from None
        self._writer = SummaryWriter(str(log_dir))

    def on_start(self, info: dict[str, Any]) -> None:
        pass

    def on_step(self, metrics: dict[str, Any]) -> None:
        step = metrics["step"]
        for key, value in metrics.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(key, value, step)

    def on_end(self, summary: dict[str, Any]) -> None:
        self._writer.close()


class ConsoleProgress:
    """A live progress bar on a terminal; a plain line at most once a second otherwise."""

    def __init__(self, console: Console, total_steps: int) -> None:
        self.console = console
        self.total_steps = total_steps
        self._progress: Progress | None = None
        self._task: Any = None
        self._last_line = 0.0

    def on_start(self, info: dict[str, Any]) -> None:
        first = info["first_step"]
        if self.console.is_terminal:
            self._progress = Progress(
                TextColumn("[bold]step"),
                MofNCompleteColumn(),
                BarColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._task = self._progress.add_task(
                "train", total=self.total_steps, completed=first - 1, stats=""
            )
            self._progress.start()

    def on_step(self, m: dict[str, Any]) -> None:
        stats = (
            f"loss {m['loss']:.4f}  lr {m['lr']:.2e}  {m['tokens_per_s']:,.0f} tok/s  "
            f"|g| {m['grad_norm']:.3f}"
        )
        if "val_loss" in m:
            stats += f"  val {m['val_loss']:.4f}"
        if "mfu" in m:
            stats += f"  MFU {100 * m['mfu']:.1f}%"
        if self._progress is not None:
            self._progress.update(self._task, completed=m["step"], stats=stats)
            return
        now = time.monotonic()
        if now - self._last_line >= 1.0 or m["step"] == self.total_steps:
            self._last_line = now
            self.console.print(f"step {m['step']}/{self.total_steps}  {stats}", highlight=False)

    def on_end(self, summary: dict[str, Any]) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class WandbMetrics:
    """Scalars to Weights & Biases (``--wandb-project NAME``; ``WANDB_MODE=offline`` writes a
    local run that ``wandb sync`` uploads later)."""

    def __init__(self, project: str, name: str | None, record: dict[str, Any]) -> None:
        try:
            import wandb
        except ImportError:
            raise PsycheError(
                "--wandb-project needs wandb: pip install 'psyche-core[wandb]'"
            ) from None
        self._wandb = wandb
        self._run = wandb.init(project=project, name=name, config=record.get("options", {}))

    def on_start(self, info: dict[str, Any]) -> None:
        pass

    def on_step(self, metrics: dict[str, Any]) -> None:
        scalars = {
            k: v
            for k, v in metrics.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        self._run.log(scalars, step=metrics["step"])

    def on_end(self, summary: dict[str, Any]) -> None:
        self._run.finish()


# -- factories (registered by psyche_core.default_plugins.reporters) ----------------------------


def console_reporter(options: Any, run: RunInfo) -> ConsoleProgress:
    return ConsoleProgress(run.console, run.total_steps)


def jsonl_reporter(options: Any, run: RunInfo) -> JsonlMetrics | None:
    if not options.metrics:
        return None
    return JsonlMetrics(options.metrics, resume_at=run.first_step)


def tensorboard_reporter(options: Any, run: RunInfo) -> TensorBoardMetrics | None:
    return TensorBoardMetrics(options.tensorboard) if options.tensorboard else None


def wandb_reporter(options: Any, run: RunInfo) -> WandbMetrics | None:
    if not options.wandb_project:
        return None
    return WandbMetrics(options.wandb_project, options.wandb_name, run.record)


# -- the run's first and last lines --------------------------------------------------------------


def _optimizer_settings(plan: RunPlan) -> str:
    """`` (compression-chunk 64, ...)``: the optimizer's own options as this run sets them
    (switches that are off and unset ones left out), so a log says what was compared."""
    shown = []
    for option in plan.optimizer.options:
        value = plan.options.get(option.key)
        if option.key == plan.optimizer.implied_by or value is None or value is False:
            continue
        if value is True:
            shown.append(option.name)
        else:
            shown.append(
                f"{option.name} {value:g}" if isinstance(value, float) else f"{option.name} {value}"
            )
    return f" ({', '.join(shown)})" if shown else ""


def print_header(console: Console, plan: RunPlan, model: CausalLM, data: Any, device: Any) -> None:
    from psyche_core import hf

    options = plan.options
    dtype = next(model.parameters()).dtype
    console.print(
        f"[bold]psyche train[/bold]  model {plan.model.label} "
        f"({model.num_parameters() / 1e6:.2f}M params, {hf.dtype_name(dtype)}, {device})",
        highlight=False,
    )
    if plan.model.note:
        console.print(f"  {plan.model.note}", highlight=False)
    console.print(f"  data      {data.describe()}", highlight=False)
    console.print(
        f"  optimizer {plan.optimizer.name}{_optimizer_settings(plan)}, lr "
        f"{options.learning_rate:g} (warmup "
        f"{options.warmup_steps}, {plan.schedule.describe()})",
        highlight=False,
    )
    speed = [f"precision {plan.precision.name}"]
    if plan.compile:
        speed.append("compiled blocks")
    if options.activation_checkpointing != "none":
        speed.append(f"activation checkpointing {options.activation_checkpointing}")
    console.print("  " + ", ".join(speed), highlight=False)
    for note in plan.notes:
        console.print(f"  {note}", highlight=False)
    console.print(
        f"  batch     {options.total_batch} x {options.sequence_length} tokens over "
        f"{plan.layout.describe()}, steps {options.start_step}..{options.total_steps}",
        highlight=False,
    )


def print_summary(console: Console, summary: dict[str, Any]) -> None:
    if summary["last_step"] < summary["first_step"]:
        console.print("no steps run", highlight=False)
        return
    tokens = summary["tokens"]
    rate = tokens / summary["elapsed_s"] if summary["elapsed_s"] else 0.0
    line = (
        f"done: steps {summary['first_step']}..{summary['last_step']}, final loss "
        f"{summary['loss']:.4f}, {summary['elapsed_s']:.1f}s, {rate:,.0f} tokens/s"
    )
    if "val_loss" in summary:
        line += f", held-out loss {summary['val_loss']:.4f}"
    if "model_tflops" in summary:
        line += f", {summary['model_tflops']:.3g} model TFLOP/s"
    if "mfu" in summary:
        line += f" (MFU {100 * summary['mfu']:.1f}%)"
    if "compile_s" in summary:
        line += f"; compile {summary['compile_s']:.1f}s (not in the step times)"
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
