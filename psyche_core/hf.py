"""Hugging Face checkpoint I/O shared by every model plugin.

A checkpoint is a directory with ``config.json`` and either ``model.safetensors`` or shards
listed in ``model.safetensors.index.json``, exactly as ``transformers`` writes them. Sources are a
local directory or a hub repo id resolved with huggingface_hub (``HF_HUB_OFFLINE=1`` and the
local cache are honoured). Writes go to a temporary sibling directory that is renamed into
place, so an interrupted save never leaves a half-written checkpoint where a good one was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from psyche_core.errors import PsycheError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def parse_dtype(value: str | torch.dtype | None) -> torch.dtype | None:
    """``"bfloat16"`` / ``"torch.bfloat16"`` / ``torch.bfloat16`` -> ``torch.bfloat16``."""
    if value is None or isinstance(value, torch.dtype):
        return value
    key = str(value).removeprefix("torch.").lower()
    if key not in _DTYPES:
        raise PsycheError(f"unknown dtype {value!r}; use one of float32, bfloat16, float16")
    return _DTYPES[key]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def resolve_checkpoint(source: str | os.PathLike[str], revision: str | None = None) -> Path:
    """A local directory as is, else a hub repo id downloaded (or found in the cache)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise PsycheError(f"{source}: expected a checkpoint directory, found a file")
    repo_id = str(source)
    if repo_id.count("/") > 1 or repo_id.startswith((".", "/", "~")):
        raise PsycheError(f"{source}: no such directory (and not a Hugging Face repo id)")
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    patterns = ["*.json", "*.safetensors"]
    try:
        return Path(
            huggingface_hub.snapshot_download(repo_id, revision=revision, allow_patterns=patterns)
        )
    except LocalEntryNotFoundError as exc:
        raise PsycheError(
            f"{repo_id}: not a local directory, and not in the Hugging Face cache while the hub "
            f"cannot be reached ({exc.__class__.__name__}). Download it first or pass a directory."
        ) from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise PsycheError(f"{repo_id}: cannot fetch from the Hugging Face hub: {exc}") from exc


def read_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise PsycheError(f"{directory}: no {CONFIG_NAME}; is this a Hugging Face checkpoint?")
    return read_config_file(path)


def weight_files(directory: str | os.PathLike[str]) -> list[Path]:
    """The safetensors files of a checkpoint, in index order."""
    directory = Path(directory)
    index = directory / WEIGHTS_INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise PsycheError(f"{index}: not a valid safetensors index ({exc})") from None
        files = [directory / name for name in dict.fromkeys(weight_map.values())]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise PsycheError(f"{directory}: shards listed in {index.name} are missing: {missing}")
        return files
    single = directory / WEIGHTS_NAME
    if single.is_file():
        return [single]
    if list(directory.glob("*.bin")) or list(directory.glob("*.pth")):
        raise PsycheError(
            f"{directory}: only pickle weights (*.bin / *.pth) found; psyche loads safetensors. "
            "Convert with transformers: model.save_pretrained(dir, safe_serialization=True)"
        )
    raise PsycheError(f"{directory}: no {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME}")


def load_safetensors(directory: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for file in weight_files(directory):
        try:
            state.update(load_file(file))
        except (SafetensorError, OSError) as exc:
            raise PsycheError(f"{file}: cannot read safetensors ({exc})") from None
    return state


def check_state_dict(
    expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], source: str
) -> None:
    """Raise one clear error for missing keys, unexpected keys or shape mismatches."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing keys: {summarize_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {summarize_keys(unexpected)}")
    for key in sorted(set(expected) & set(found)):
        want, got = tuple(expected[key].shape), tuple(found[key].shape)
        if want != got:
            problems.append(f"shape mismatch for {key}: checkpoint has {got}, model expects {want}")
    if problems:
        raise PsycheError(f"{source}: weights do not match the config ({'; '.join(problems)})")


def summarize_keys(keys: Sequence[str], limit: int = 6) -> str:
    """``"a, b, c and 4 more"``: key lists short enough for a one-line error."""
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def save_checkpoint(
    directory: str | os.PathLike[str],
    config: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    max_shard_size: int | None = None,
    extra_files: Mapping[str, str | bytes] | None = None,
) -> Path:
    """Write config.json + safetensors (sharded above ``max_shard_size`` bytes) atomically.

    The files go to a temporary directory beside ``directory`` that replaces it at the end;
    an existing checkpoint stays intact until the new one is complete.
    """
    from safetensors.torch import save_file

    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        (staging / CONFIG_NAME).write_text(json.dumps(dict(config), indent=2, sort_keys=True))
        tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
        shards = _shard(tensors, max_shard_size)
        if len(shards) == 1:
            save_file(shards[0], staging / WEIGHTS_NAME, metadata={"format": "pt"})
        else:
            weight_map: dict[str, str] = {}
            for i, shard in enumerate(shards, start=1):
                name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, staging / name, metadata={"format": "pt"})
                weight_map.update(dict.fromkeys(shard, name))
            total = sum(t.numel() * t.element_size() for t in tensors.values())
            index = {
                "metadata": {"total_size": total},
                "weight_map": dict(sorted(weight_map.items())),
            }
            (staging / WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2))
        for name, content in (extra_files or {}).items():
            mode = "wb" if isinstance(content, bytes) else "w"
            with open(staging / name, mode) as f:
                f.write(content)
        replace_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def replace_directory(staging: Path, target: Path) -> None:
    """Move a finished ``staging`` directory to ``target``, replacing what was there.

    A target that already holds anything (a save path with step-NNNNNN checkpoints, a metrics
    file) keeps it: the new files are moved in one by one and stale weight files removed, so a
    save never deletes a file it did not write.
    """
    fsync_tree(staging)
    if target.is_dir() and any(target.iterdir()):
        new = {p.name for p in staging.iterdir()}
        for path in staging.iterdir():
            os.replace(path, target / path.name)
        for stale in target.glob("model*.safetensors*"):
            if stale.name not in new:
                stale.unlink()
        staging.rmdir()
        return
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)


def fsync_tree(directory: Path) -> None:
    for path in directory.iterdir():
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def _shard(
    tensors: dict[str, torch.Tensor], max_shard_size: int | None
) -> list[dict[str, torch.Tensor]]:
    if not max_shard_size:
        return [tensors]
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_size:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    return shards


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A standalone config.json (for random init from a config)."""
    path = Path(path)
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise PsycheError(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise PsycheError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    if not isinstance(config, dict):
        raise PsycheError(f"{path}: expected a JSON object")
    return config
