"""Run lm-eval tasks on an in-memory psyche model: what ``psyche eval`` calls, and what a trainer
can call between steps.

    from psyche_eval.harness import evaluate
    results = evaluate(model, tokenizer, ["arc_easy"], limit=100)
    results["results"]["arc_easy"]["acc,none"]

Task names, options and the returned dict are lm-eval's own (``lm_eval.simple_evaluate``). What
this module adds is the one-line errors a user can act on: an unknown task (with close matches),
a dataset that cannot be fetched offline, lm-eval missing.
"""

from __future__ import annotations

import difflib
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from psyche_core.errors import PsycheError
from psyche_core.model import CausalLM

INSTALL_HINT = "pip install psyche-eval (it brings lm-eval>=0.4.13)"
OFFLINE_HINT = (
    "To run offline, write a task YAML over local files (dataset_path: json, "
    "dataset_kwargs: {data_files: {test: /path/test.jsonl}}) and pass its folder with "
    "--include-path (see docs/eval.md), or fill the datasets cache (HF_DATASETS_CACHE) on a "
    "machine that can reach the Hub."
)


def require_lm_eval() -> None:
    """Fail with one line, naming what to install, when lm-eval cannot be imported."""
    try:
        import lm_eval
        import lm_eval.api.model  # noqa: F401
    except ImportError as exc:
        raise PsycheError(
            f"psyche eval needs lm-eval (lm-evaluation-harness), which is not installed here "
            f"({exc}): {INSTALL_HINT}"
        ) from None


def make_task_manager(include_path: str | Path | Sequence[str | Path] | None = None) -> Any:
    """lm-eval's TaskManager over its built-in tasks plus ``include_path`` folders of YAMLs."""
    require_lm_eval()
    from lm_eval.tasks import TaskManager

    paths = [include_path] if isinstance(include_path, (str, Path)) else list(include_path or ())
    for path in paths:
        if not Path(path).is_dir():
            raise PsycheError(f"--include-path {path}: not a folder of task YAML files")
    return TaskManager(include_path=[str(p) for p in paths] or None)


def check_task_names(manager: Any, names: Sequence[str]) -> None:
    """Every name must be a task, group or tag the manager knows, a glob matching some, or a
    task YAML file."""
    if not names:
        raise PsycheError("--tasks is empty; give lm-eval task names, e.g. --tasks arc_easy")
    for name in names:
        if name.endswith((".yaml", ".yml")):
            if not Path(name).is_file():
                raise PsycheError(f"task file {name} does not exist")
        elif not manager.match_tasks([name]):
            close = difflib.get_close_matches(name, manager.all_tasks, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else "."
            raise PsycheError(
                f"unknown lm-eval task {name!r}{hint} `lm-eval ls tasks` lists the "
                f"{len(manager.all_tasks):,} known names; --include-path DIR adds local task "
                "YAMLs."
            )


def load_tasks(manager: Any, names: Sequence[str]) -> list[Any]:
    """Build the tasks (this is when lm-eval reads their datasets), one name at a time so that
    a dataset that cannot be fetched is reported with its task."""
    check_task_names(manager, names)
    specs = [
        match
        for name in names
        for match in (
            [str(Path(name).resolve())]
            if name.endswith((".yaml", ".yml"))
            else manager.match_tasks([name])
        )
    ]
    loaded: list[Any] = []
    for spec in dict.fromkeys(specs):
        try:
            built = manager.load([spec])
        except ConnectionError as exc:
            raise PsycheError(
                f"task {spec!r}: its dataset could not be downloaded ({_first_line(exc)}). "
                f"{OFFLINE_HINT}"
            ) from None
        except FileNotFoundError as exc:
            raise PsycheError(
                f"task {spec!r}: its dataset was not found ({_first_line(exc)}). "
                "Check the task's dataset_path / data_files; " + OFFLINE_HINT
            ) from None
        top = set(built["tasks"]) | set(built["groups"])
        children = {c for kids in built["group_map"].values() for c in kids}
        loaded += [built["groups"].get(n) or built["tasks"][n] for n in sorted(top - children)]
    return loaded


def evaluate(
    model: CausalLM,
    tokenizer: Any,
    tasks: Sequence[Any],
    *,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 1,
    include_path: str | Path | Sequence[str | Path] | None = None,
    log_samples: bool = False,
    max_length: int | None = None,
    max_gen_toks: int = 256,
    seed: int | None = None,
    bootstrap_iters: int = 100_000,
    task_manager: Any = None,
) -> dict[str, Any]:
    """lm-eval's results for ``model`` on ``tasks``, as ``lm_eval.simple_evaluate`` returns them.

    Args:
        model: any psyche CausalLM, on any device; its training mode and the global RNG states
            (torch, numpy, random) are restored afterwards, so a trainer can call this between
            steps without changing its run.
        tokenizer: a transformers tokenizer for the model's ids (see ``psyche_eval.tokenizer``).
        tasks: lm-eval task, group or tag names, globs, task YAML paths, or tasks already
            built by :func:`load_tasks` (whose datasets are then not read again).
        limit: documents per task (a fraction below 1), as lm-eval's ``--limit``.
        num_fewshot: few-shot examples (the task's default when None).
        batch_size: requests per forward pass.
        include_path: folders of extra task YAMLs.
        log_samples: keep per-document inputs and scores under ``"samples"``.
        max_length: context positions to use (default: the model's).
        max_gen_toks: default generation length for generative tasks.
        seed: every lm-eval seed (python, numpy, torch, few-shot sampling) and generation
            sampling; None keeps lm-eval's defaults, so results match its own CLI.
        bootstrap_iters: resamples for the standard errors (0 skips them).
        task_manager: a ready ``lm_eval.tasks.TaskManager``, to skip re-indexing its tasks.
    """
    require_lm_eval()
    import lm_eval

    from psyche_eval.adapter import PsycheLM

    if isinstance(tasks, str):
        tasks = tasks.split(",")

    manager = task_manager or make_task_manager(include_path)
    lm = PsycheLM(model, tokenizer, batch_size, max_length, max_gen_toks, seed or 0)
    seeds = (
        {}
        if seed is None
        else {
            f"{kind}_seed": seed
            for kind in ("random", "numpy_random", "torch_random", "fewshot_random")
        }
    )
    with _preserved_rng():
        names = [t for t in tasks if isinstance(t, str)]
        built = [t for t in tasks if not isinstance(t, str)]
        loaded = built + (load_tasks(manager, names) if names else [])
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=loaded,
            num_fewshot=num_fewshot,
            batch_size=batch_size,
            limit=limit,
            log_samples=log_samples,
            bootstrap_iters=bootstrap_iters,
            task_manager=manager,
            **seeds,
        )
    assert results is not None  # None only on non-zero ranks of a distributed lm-eval run
    return dict(results)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class _preserved_rng:
    """lm-eval reseeds python, numpy and torch; put the caller's generators back afterwards."""

    def __enter__(self) -> None:
        self.python = random.getstate()
        self.numpy = np.random.get_state()
        self.torch = torch.random.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def __exit__(self, *exc: object) -> None:
        random.setstate(self.python)
        np.random.set_state(self.numpy)
        torch.random.set_rng_state(self.torch)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
