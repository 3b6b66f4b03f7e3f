"""Training checkpoints: the model in Hugging Face layout plus everything needed to resume.

``SAVE_PATH/step-000120/`` holds

- ``config.json`` + ``model.safetensors``: the model, loadable by ``transformers``;
- ``peer-00000.safetensors`` ...: each peer's optimizer state (AdamW moments, DisTrO's momentum
  and pending results) and RNG state, as tensors, with the non-tensor structure as JSON in the
  safetensors metadata (no pickle anywhere);
- ``trainer.json``: the last completed step, tokens seen, world size;
- ``run.json``: the run record (every option, plugin names and versions, psyche version).

A checkpoint is written to a temporary directory and renamed into place, so an interrupted write
never leaves a partial checkpoint under a step name; ``--keep-last K`` then prunes older ones.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from psyche_core.errors import PsycheError

FORMAT = 1
STEP_DIR = re.compile(r"^step-(\d{6,})$")
TRAINER_FILE = "trainer.json"
RUN_FILE = "run.json"
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


def find_checkpoint(path: str | Path) -> Path:
    """``path`` itself if it is a checkpoint, else the latest checkpoint inside it."""
    path = Path(path)
    if (path / TRAINER_FILE).is_file():
        return path
    if not path.exists():
        raise PsycheError(f"--resume {path}: no such directory")
    found = list_checkpoints(path)
    if not found:
        raise PsycheError(f"--resume {path}: no checkpoint here (expected step-NNNNNN folders)")
    return found[-1]


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
    if trainer.get("format") != FORMAT:
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
) -> Path:
    """Write ``root/step-NNNNNN`` atomically (model + peer states + records); prune old ones."""
    target = Path(root) / step_dir_name(step)
    extra: dict[str, str | bytes] = {
        TRAINER_FILE: json.dumps({**trainer, "format": FORMAT, "step": step}, indent=2),
        RUN_FILE: json.dumps(run, indent=2, sort_keys=True),
    }
    for rank, data in enumerate(peer_states):
        extra[peer_file_name(rank)] = data
    model.save_pretrained(target, extra_files=extra)
    if keep_last:
        for old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return target
