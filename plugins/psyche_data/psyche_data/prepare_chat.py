"""``psyche data prepare-chat``: conversations to packed rows in the preprocessed parquet that
``--data-provider preprocessed`` (and Psyche) read."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from psyche_core.errors import PsycheError
from psyche_data.chat import BadConversation, ChatEncoder, iter_conversations, normalise
from psyche_data.packing import METHODS, PackStats, build_rows, pack, write_parquet
from psyche_data.text_inputs import BadRecords, expand_inputs, files_fingerprint
from psyche_data.tokenizer_source import load_tokenizer

DATA_FILE = "train-00000-of-00001.parquet"


@dataclass
class ChatRequest:
    inputs: list[str]
    out: str
    tokenizer: str
    sequence_length: int
    dataset: str | None = None
    split: str = "train"
    messages_field: str | None = None  # None: "messages", else "conversations"
    chat_template: str | None = None  # a file, or the template itself
    packing: str = "ffd"
    seed: int = 0
    too_long: str = "truncate"  # or "drop"
    pad_id: int | None = None  # None: the tokenizer's EOS (0 without one)
    skip_bad: bool = False
    overwrite: bool = False


def prepare_chat(request: ChatRequest) -> dict:
    """Run ``psyche data prepare-chat``; returns the manifest it wrote."""
    started = time.perf_counter()
    if request.packing not in METHODS:
        raise PsycheError(f"--packing must be one of {', '.join(METHODS)}")
    if request.too_long not in ("truncate", "drop"):
        raise PsycheError("--too-long must be truncate or drop")
    if request.sequence_length < 2:
        raise PsycheError(f"--sequence-length must be at least 2, got {request.sequence_length}")
    source = load_tokenizer(request.tokenizer)
    template = _template_text(request.chat_template)
    encoder = ChatEncoder(source, template)
    out = Path(request.out).expanduser()
    _check_output(out, request.overwrite)
    bad = BadRecords()
    conversations, described = _conversations(request, bad)
    documents: list[tuple[np.ndarray, np.ndarray]] = []
    truncated = dropped = 0
    length = request.sequence_length
    for messages, where in conversations:
        try:
            encoded = encoder.encode(messages, where)
        except BadConversation as exc:
            if not request.skip_bad:
                raise PsycheError(f"{exc} (pass --skip-bad to skip such records)") from None
            bad.add(where)
            continue
        ids, labels = encoded.input_ids, encoded.labels
        if len(ids) > length:
            if request.too_long == "drop":
                dropped += 1
                continue
            ids, labels = ids[:length], labels[:length]
            truncated += 1
        documents.append((ids, labels))
    if not documents:
        raise PsycheError("no conversations left to pack (all were bad, empty or dropped)")
    rows = pack([len(d[0]) for d in documents], length, request.packing, request.seed)
    pad_id = request.pad_id if request.pad_id is not None else (source.eos_id or 0)
    columns = build_rows(documents, rows, length, pad_id)
    out.mkdir(parents=True, exist_ok=True)
    write_parquet(columns, out / DATA_FILE)
    stats = PackStats(
        len(documents), len(rows), sum(len(d[0]) for d in documents), truncated, dropped, length
    )
    manifest = {
        "format": "psyche-chat/1",
        "tokenizer": {"name": source.name, "sha256": source.sha256},
        "chat_template_sha256": hashlib.sha256(
            (template or source.chat_template or "").encode()
        ).hexdigest(),
        "packing": request.packing,
        "seed": request.seed,
        "too_long": request.too_long,
        "pad_id": pad_id,
        "skipped_bad": bad.count,
        "skipped_examples": bad.examples,
        "source": described,
        "file": DATA_FILE,
        **stats.as_dict(),
        "seconds": round(time.perf_counter() - started, 3),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def _template_text(value: str | None) -> str | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    if path.is_file():
        return path.read_text(encoding="utf-8")
    if "{" not in value:  # neither a file nor a template: most likely a mistyped path
        raise PsycheError(f"--chat-template {value!r}: no such file")
    return value


def _check_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise PsycheError(f"output {str(out)!r} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise PsycheError(
                f"output folder {str(out)!r} is not empty; pass --overwrite to replace its contents"
            )
        for path in out.iterdir():
            if path.is_dir():
                raise PsycheError(f"--overwrite: {str(out)!r} holds a folder ({path.name})")
            path.unlink()


def _conversations(request: ChatRequest, bad: BadRecords):
    if request.dataset:
        from psyche_data.text_inputs import load_text_dataset

        field = request.messages_field or "messages"
        dataset = load_text_dataset(request.dataset, request.split, field)

        def rows():
            for number, record in enumerate(dataset.select_columns([field]), 1):
                where = f"dataset {request.dataset} row {number}"
                try:
                    yield normalise(record[field], where), where
                except BadConversation as exc:
                    if not request.skip_bad:
                        raise PsycheError(f"{exc} (pass --skip-bad to skip such records)") from None
                    bad.add(where)

        return rows(), {"dataset": request.dataset, "split": request.split}
    files = expand_inputs(request.inputs)
    iterator = iter_conversations(files, request.messages_field, request.skip_bad, bad)
    return iterator, {"files": files_fingerprint(files)}
