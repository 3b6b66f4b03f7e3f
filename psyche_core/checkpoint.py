"""Training checkpoints: the model in Hugging Face layout plus everything needed to resume.

``SAVE_PATH/step-000120/`` holds

- ``config.json`` + ``model.safetensors``: the model, loadable by ``transformers``;
- ``peer-00000.safetensors`` ...: each peer's optimizer state (AdamW moments, DisTrO's momentum
  and pending results) and RNG state, as tensors, with the non-tensor structure as JSON in the
  safetensors metadata (no pickle anywhere);
- ``trainer.json``: the last completed step, tokens seen, world size;
- ``run.json``: the run record (every option, plugin names and versions, psyche version).

- ``manifest.json``, written last: size and SHA-256 of every other file.

A checkpoint is written to a temporary directory and renamed into place, so an interrupted write
never leaves a partial checkpoint under a step name; ``--keep-last K`` prunes older ones only
after the new one is complete. ``--resume`` checks the manifest, so a flipped byte or a
truncated copy is named instead of trained on; staging folders left by an interrupted write are
removed at the next save.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from psyche_core.errors import PsycheError

FORMAT = 2  # 2: with manifest.json; 1 (psyche 0.1 before manifests) still loads
LEGACY_FORMATS = (1,)
STEP_DIR = re.compile(r"^step-(\d{6,})$")
TRAINER_FILE = "trainer.json"
RUN_FILE = "run.json"
MANIFEST_FILE = "manifest.json"
STAGING = re.compile(r"^\.+step-\d{6,}\.(tmp|old)-")
STATE_KEY = "psyche_state"


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def peer_file_name(rank: int) -> str:
    return f"peer-{rank:05d}.safetensors"


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found) if (p / TRAINER_FILE).is_file()]


def find_checkpoint(path: str | Path, latest_valid: bool = False) -> Path:
    """``path`` itself if it is a checkpoint, else the newest checkpoint inside it; either way
    verified against its manifest. A damaged newest checkpoint is named with the newest intact
    one, which ``latest_valid`` picks instead."""
    path = Path(path)
    if (path / TRAINER_FILE).is_file():
        candidates = [path]
        older = [p for p in list_checkpoints(path.parent) if _step(p) < _step(path)]
    elif not path.exists():
        raise PsycheError(f"--resume {path}: no such directory")
    else:
        found = list_checkpoints(path)
        if not found:
            raise PsycheError(f"--resume {path}: no checkpoint here (expected step-NNNNNN folders)")
        candidates, older = found[-1:], found[:-1]
    problem = verify(candidates[0])
    if problem is None:
        return candidates[0]
    intact = next((p for p in reversed(older) if verify(p) is None), None)
    if intact is not None and latest_valid:
        return intact
    hint = (
        f"; the newest intact one is {intact}: resume from it (--resume {intact}, or add "
        "--resume-latest-valid)"
        if intact is not None
        else "; no older intact checkpoint is there"
    )
    raise PsycheError(f"--resume: checkpoint {candidates[0]} is damaged ({problem}){hint}")


def _step(path: Path) -> int:
    match = STEP_DIR.match(path.name)
    return int(match.group(1)) if match else -1


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()  # hashlib.file_digest needs Python 3.11
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path) -> None:
    """Size and SHA-256 of every file in ``folder``; written last, so its presence means the
    rest was written completely."""
    files = {
        p.name: {"size": p.stat().st_size, "sha256": file_digest(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST_FILE
    }
    (folder / MANIFEST_FILE).write_text(json.dumps({"files": files}, indent=2))


def verify(path: str | Path) -> str | None:
    """What is wrong with the checkpoint at ``path`` (``None``: every file matches its
    manifest)."""
    path = Path(path)
    try:
        listed = json.loads((path / MANIFEST_FILE).read_text())["files"]
    except FileNotFoundError:
        if _format(path) in LEGACY_FORMATS:
            return None  # written before manifests existed: nothing to verify it against
        return f"{MANIFEST_FILE} is missing; it is incomplete"
    except (json.JSONDecodeError, KeyError, TypeError):
        return f"{MANIFEST_FILE} is damaged"
    for name, expected in listed.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != expected["size"]:
            return f"{name} has {file.stat().st_size} bytes, the manifest says {expected['size']}"
        if file_digest(file) != expected["sha256"]:
            return f"{name} does not match its checksum"
    return None


def _format(path: Path) -> Any:
    try:
        return json.loads((path / TRAINER_FILE).read_text()).get("format")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def remove_stale_staging(root: Path, older_than_s: float = 0.0) -> None:
    """Staging folders of writes that were interrupted (a killed run) go at the next save."""
    if not root.is_dir():
        return
    now = time.time()
    for entry in root.iterdir():
        if STAGING.match(entry.name) and now - entry.stat().st_mtime >= older_than_s:
            shutil.rmtree(entry, ignore_errors=True)


# -- state dicts <-> safetensors ---------------------------------------------------------------


def _encode(value: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().contiguous().cpu()
        return {"tensor": path}
    if isinstance(value, Mapping):
        return {"dict": [[k, _encode(v, tensors, f"{path}.{k}")] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        items = [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]
        return {"tuple" if isinstance(value, tuple) else "list": items}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"value": value}
    raise PsycheError(f"cannot store a {type(value).__name__} at {path} in a checkpoint")


def _decode(node: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if "tensor" in node:
        return tensors[node["tensor"]]
    if "dict" in node:
        return {k: _decode(v, tensors) for k, v in node["dict"]}
    if "list" in node:
        return [_decode(v, tensors) for v in node["list"]]
    if "tuple" in node:
        return tuple(_decode(v, tensors) for v in node["tuple"])
    return node["value"]


def state_to_bytes(state: Any) -> bytes:
    """Nested dicts/lists of tensors and plain values -> safetensors bytes."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode(state, tensors, "s")
    return save(tensors, metadata={STATE_KEY: json.dumps(skeleton)})


def state_from_bytes(data: bytes, source: str) -> Any:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        # The safetensors header: 8 bytes of length, then JSON with our skeleton in metadata.
        header_size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_size])
        skeleton = json.loads(header["__metadata__"][STATE_KEY])
        tensors = load(data)
    except (SafetensorError, KeyError, ValueError, TypeError) as exc:
        raise PsycheError(f"{source}: damaged checkpoint state ({exc})") from None
    return _decode(skeleton, tensors)


# -- writing and reading ------------------------------------------------------------------------


@dataclass
class Checkpoint:
    path: Path
    trainer: dict[str, Any]
    run: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.trainer["step"])

    def peer_state(self, rank: int) -> Any:
        return read_peer_state(self.path, rank)


def read_peer_state(path: str | Path, rank: int) -> Any:
    """Peer ``rank``'s optimizer and RNG state from the checkpoint at ``path``."""
    file = Path(path) / peer_file_name(rank)
    if not file.is_file():
        raise PsycheError(f"{path}: {file.name} is missing; the checkpoint is incomplete")
    return state_from_bytes(file.read_bytes(), str(file))


def read(path: str | Path) -> Checkpoint:
    path = Path(path)
    records = []
    for name in (TRAINER_FILE, RUN_FILE):
        file = path / name
        try:
            records.append(json.loads(file.read_text()))
        except FileNotFoundError:
            raise PsycheError(f"{path}: {name} is missing; not a psyche checkpoint") from None
        except json.JSONDecodeError as exc:
            raise PsycheError(f"{file}: damaged ({exc.msg} at line {exc.lineno})") from None
    trainer, run = records
    if trainer.get("format") != FORMAT and trainer.get("format") not in LEGACY_FORMATS:
        raise PsycheError(
            f"{path}: checkpoint format {trainer.get('format')} is not supported by this psyche "
            f"(format {FORMAT}); resume it with the psyche version that wrote it "
            f"({run.get('psyche_version', 'unknown')})"
        )
    return Checkpoint(path, trainer, run)


def write(
    root: str | Path,
    step: int,
    model: Any,
    peer_states: list[bytes],
    trainer: dict[str, Any],
    run: dict[str, Any],
    keep_last: int | None = None,
    emergency: bool = False,
) -> Path:
    """Write ``root/step-NNNNNN`` atomically (model + peer states + records + manifest), then
    prune old ones.

    ``emergency``: written by a surviving peer after a fatal error, perhaps by several peers
    at once; the first complete one wins, nothing is pruned or cleaned.
    """
    from psyche_core import hf

    root = Path(root)
    target = root / step_dir_name(step)
    extra: dict[str, str | bytes] = {
        TRAINER_FILE: json.dumps({**trainer, "format": FORMAT, "step": step}, indent=2),
        RUN_FILE: json.dumps(run, indent=2, sort_keys=True),
    }
    for rank, data in enumerate(peer_states):
        extra[peer_file_name(rank)] = data
    if not emergency:
        remove_stale_staging(root)
        if target.exists():
            # A step folder from an earlier attempt at this run: set it aside, replace it whole.
            os.replace(target, root / f".{target.name}.old-{os.getpid()}-{time.time_ns()}")
    # The model's own save_pretrained (a plugin's may add files, e.g. generation_config.json)
    # writes a staging folder; the manifest goes in last, then one rename publishes it.
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=root))
    try:
        model.save_pretrained(staging, extra_files=extra)
        write_manifest(staging)
        hf.fsync_tree(staging)
        try:
            os.rename(staging, target)  # atomic; fails if another peer's copy got there first
        except OSError:
            if not (emergency and target.is_dir()):
                raise
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not emergency:
        remove_stale_staging(root)
        if keep_last is not None:
            for old in list_checkpoints(root)[:-keep_last]:
                if old != target:
                    shutil.rmtree(old, ignore_errors=True)
    return target
