"""Where per-step metrics go: the console (rich) and a JSONL file."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


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
            from psyche_core.errors import PsycheError

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
