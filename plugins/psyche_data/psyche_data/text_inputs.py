"""The documents ``psyche data tokenize`` reads: text files, jsonl, parquet, a datasets dataset.

- a text file (any name not below, ``.gz`` allowed) is one document;
- ``.jsonl`` / ``.json`` (one JSON object a line, ``.gz`` allowed): the ``--text-field`` of each;
- ``.parquet``: the ``--text-field`` column, row by row;
- a folder: every file under it (hidden ones skipped), sorted by path;
- ``--dataset NAME``: a Hugging Face ``datasets`` dataset: a folder written by
  ``save_to_disk``, a local folder or file ``load_dataset`` reads, or a hub dataset id.

Every reader yields documents in a fixed order, so the same input gives the same shards.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from psyche_core.errors import PsycheError

_JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")


@dataclass
class BadRecords:
    """Records skipped with ``--skip-bad`` (the first few named, for the report)."""

    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, where: str) -> None:
        self.count += 1
        if len(self.examples) < 5:
            self.examples.append(where)


def expand_inputs(inputs: list[str]) -> list[Path]:
    """The files named by ``inputs`` (folders expanded), each checked to be readable."""
    if not inputs:
        raise PsycheError("no input: name text/jsonl/parquet files or folders, or use --dataset")
    files: list[Path] = []
    for name in inputs:
        path = Path(name).expanduser()
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and not any(x.startswith(".") for x in p.relative_to(path).parts)
            )
            if not found:
                raise PsycheError(f"input folder {name!r} holds no files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise PsycheError(f"input {name!r} does not exist")
    for path in files:
        if not os.access(path, os.R_OK):
            raise PsycheError(f"input {str(path)!r} is not readable (check its permissions)")
    return files


def kind_of(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(_JSON_SUFFIXES):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    return "text"


def _open_text(path: Path):
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")  # the caller closes it


def iter_documents(
    files: list[Path], text_field: str, skip_bad: bool, bad: BadRecords
) -> Iterator[str]:
    """Every document of ``files``, in order; a bad record raises unless ``skip_bad``."""
    for path in files:
        kind = kind_of(path)
        try:
            if kind == "jsonl":
                yield from _jsonl(path, text_field, skip_bad, bad)
            elif kind == "parquet":
                yield from _parquet(path, text_field, skip_bad, bad)
            else:
                with _open_text(path) as f:
                    yield f.read()
        except UnicodeDecodeError as exc:
            reason = f"{exc.reason} at byte {exc.start}"
            raise PsycheError(f"{path}: not UTF-8 text ({reason})") from None
        except (OSError, EOFError) as exc:
            raise PsycheError(f"cannot read {path}: {exc}") from None


def _jsonl(path: Path, text_field: str, skip_bad: bool, bad: BadRecords) -> Iterator[str]:
    with _open_text(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)[text_field]
                if not isinstance(text, str):
                    raise TypeError
            except (ValueError, KeyError, TypeError, IndexError):
                where = f"{path} line {number}"
                if not skip_bad:
                    raise PsycheError(
                        f"{where}: no text field {text_field!r} (a JSON object with a string "
                        f"there); pick the field with --text-field, or pass --skip-bad to skip "
                        "such lines"
                    ) from None
                bad.add(where)
                continue
            yield text


def _parquet(path: Path, text_field: str, skip_bad: bool, bad: BadRecords) -> Iterator[str]:
    pq = _pyarrow_parquet()
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:
        raise PsycheError(f"cannot read {path} as parquet: {exc}") from None
    if text_field not in parquet.schema_arrow.names:
        raise PsycheError(
            f"{path}: no column {text_field!r} (columns: {', '.join(parquet.schema_arrow.names)}); "
            "pick it with --text-field"
        )
    row = 0
    for batch in parquet.iter_batches(batch_size=4096, columns=[text_field]):
        for text in batch.column(0).to_pylist():
            row += 1
            if isinstance(text, str):
                yield text
            elif skip_bad:
                bad.add(f"{path} row {row}")
            else:
                raise PsycheError(
                    f"{path} row {row}: {text_field!r} is {type(text).__name__}, not text; "
                    "pass --skip-bad to skip such rows"
                )


def _pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise PsycheError(
            "reading parquet needs pyarrow: pip install 'psyche-data[text]'"
        ) from None
    return pq


def files_fingerprint(files: list[Path]) -> list[dict[str, object]]:
    """Each input's path, size and sha256 (the manifest's record of what was read)."""
    described = []
    for path in files:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        described.append(
            {"path": str(path), "bytes": path.stat().st_size, "sha256": digest.hexdigest()}
        )
    return described


# -- datasets -------------------------------------------------------------------------------------


def load_text_dataset(name: str, split: str, text_field: str):
    """A ``datasets.Dataset`` from a saved folder, local data files or the hub."""
    try:
        import datasets
    except ImportError:
        raise PsycheError(
            "--dataset needs the datasets library: pip install 'psyche-data[text]'"
        ) from None
    path = Path(name).expanduser()
    try:
        saved = ("state.json", "dataset_dict.json")  # what save_to_disk writes
        if path.is_dir() and any((path / marker).is_file() for marker in saved):
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise PsycheError(
                        f"dataset {name!r} has no split {split!r} (splits: {', '.join(loaded)})"
                    )
                loaded = loaded[split]
        elif path.is_file():
            builder = {"jsonl": "json", "parquet": "parquet", "text": "text"}[kind_of(path)]
            loaded = datasets.load_dataset(builder, data_files=str(path), split=split)
        else:  # a local folder of data files, or a hub dataset id
            loaded = datasets.load_dataset(str(path) if path.exists() else name, split=split)
    except PsycheError:
        raise
    except Exception as exc:  # datasets and the hub raise many types; show one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise PsycheError(f"cannot load dataset {name!r} split {split!r}: {first}") from None
    if text_field not in loaded.column_names:
        raise PsycheError(
            f"dataset {name!r} has no column {text_field!r} (columns: "
            f"{', '.join(loaded.column_names)}); pick it with --text-field"
        )
    return loaded


def iter_dataset(dataset, text_field: str, skip_bad: bool, bad: BadRecords) -> Iterator[str]:
    column = dataset.select_columns([text_field])
    for start in range(0, len(column), 4096):
        for row, text in enumerate(column[start : start + 4096][text_field], start + 1):
            if isinstance(text, str):
                yield text
            elif skip_bad:
                bad.add(f"dataset row {row}")
            else:
                raise PsycheError(
                    f"dataset row {row}: {text_field!r} is {type(text).__name__}, not text; "
                    "pass --skip-bad to skip such rows"
                )
