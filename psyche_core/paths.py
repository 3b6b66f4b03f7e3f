"""Where a run may write, checked before step 1.

A save path is psyche's own: psyche writes only into a folder that does not exist yet (it
creates it), an empty one, or one that already holds a psyche run (a ``run.json`` run record at
its top, or ``step-NNNNNN`` checkpoints). Anything else (the data folder, a folder of notes, a
regular file) is refused with one line, so a typo in ``--save-path`` can never cost the user
their files. Replacing another psyche run needs ``--overwrite``; continuing the run being
resumed does not.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from psyche_core import checkpoint
from psyche_core.errors import PsycheError


def holds_psyche_run(folder: Path) -> bool:
    return (folder / checkpoint.RUN_FILE).is_file() or bool(checkpoint.list_checkpoints(folder))


def check_save_path(path: str, overwrite: bool, resume: str | None) -> None:
    """Refuse a ``--save-path`` that psyche does not own; prove it is writable."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise PsycheError(
            f"--save-path {path} is a file; give a folder (new, empty or a psyche run)"
        )
    if folder.is_dir() and _entries(folder):
        if not holds_psyche_run(folder):
            raise PsycheError(
                f"--save-path {path} holds files psyche did not write; psyche would replace "
                "them, so give a new or empty folder"
            )
        resuming_here = resume is not None and _inside(Path(resume), folder)
        if not (resuming_here or overwrite):
            raise PsycheError(
                f"--save-path {path} holds another psyche run; pass --overwrite to replace it, "
                f"--resume {path} to continue it, or choose another folder"
            )
        if not resuming_here:
            # --overwrite: the old run's checkpoints go, so --resume can never pick one up as
            # this run's; files psyche did not write there stay.
            for old in checkpoint.list_checkpoints(folder):
                shutil.rmtree(old, ignore_errors=True)
            (folder / checkpoint.RUN_FILE).unlink(missing_ok=True)
    check_writable("save-path", folder)


def check_writable(flag: str, folder: Path) -> None:
    """Create ``folder`` (and parents) and write a scratch file there, so a path under a regular
    file or an unwritable location fails now rather than after training."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".psyche-write-test-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise PsycheError(f"--{flag} {folder}: cannot write there ({reason})") from None


def check_file_writable(flag: str, file: str) -> None:
    """The folder of an output file (``--metrics``) must be writable, and the file itself not a
    folder."""
    path = Path(file)
    if path.is_dir():
        raise PsycheError(f"--{flag} {file} is a folder; give a file name")
    check_writable(flag, path.parent if str(path.parent) else Path("."))
    if path.exists() and not os.access(path, os.W_OK):
        raise PsycheError(f"--{flag} {file}: cannot write there (permission denied)")


# What psyche itself leaves for a moment: write tests, staging folders of interrupted saves.
SCRATCH_PREFIXES = (".psyche-write-test-", ".step-", ".psyche-")


def _entries(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if not p.name.startswith(SCRATCH_PREFIXES)]


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True
