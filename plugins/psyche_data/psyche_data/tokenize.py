"""``psyche data tokenize``: text in, token shards the ``local`` and ``http`` providers read.

Documents are read in a fixed order and cut into batches of ``batch_documents``; batches are
encoded by ``workers`` processes and written back in order, and a shard is closed after the
first batch that brings it to ``shard_tokens`` tokens. None of that depends on the number of
workers or on timing, so the same input gives the same bytes.

An output folder holds, per shard, ``NAME.ds`` (raw little-endian tokens, see docs/data.md)
and ``NAME.ds.idx`` (document start offsets, in tokens, as little-endian uint64, with the
shard's token count last), then ``manifest.json``. Closed shards are recorded in
``.tokenize-progress.json`` as they are written, which is what ``--resume`` continues from.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np

from psyche_core.errors import PsycheError
from psyche_data.text_inputs import (
    BadRecords,
    expand_inputs,
    files_fingerprint,
    iter_dataset,
    iter_documents,
    load_text_dataset,
)
from psyche_data.tokenizer_source import TokenizerSource, load_tokenizer

MANIFEST = "manifest.json"
PROGRESS = ".tokenize-progress.json"
FORMAT = "psyche-tokens/1"


@dataclass
class TokenizeSettings:
    """Everything that decides the output's bytes (a resumed run must match them)."""

    tokenizer: str
    tokenizer_sha256: str
    token_size: int
    extension: str
    bos_id: int | None  # prepended to every document (None: nothing)
    eos_id: int | None  # appended to every document
    text_field: str
    shard_tokens: int
    batch_documents: int
    source_sha256: str


@dataclass
class ShardRecord:
    file: str
    documents: int
    tokens: int
    sha256: str


@dataclass
class Progress:
    settings: TokenizeSettings
    shards: list[ShardRecord] = field(default_factory=list)
    documents: int = 0
    text_bytes: int = 0

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.shards)


# -- the worker side ------------------------------------------------------------------------------

_WORKER: dict[str, object] = {}


def _init_worker(
    json_text: str, bos_id: int | None, eos_id: int | None, dtype: str, one_thread: bool
) -> None:
    if one_thread:  # one worker process per core: the Rust thread pool would oversubscribe
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer

    _WORKER.update(
        tokenizer=Tokenizer.from_str(json_text), bos=bos_id, eos=eos_id, dtype=np.dtype(dtype)
    )


def encode_documents(texts: list[str]) -> tuple[np.ndarray, np.ndarray, int]:
    """``(all tokens, tokens per document, UTF-8 bytes read)`` for one batch of documents."""
    tokenizer = _WORKER["tokenizer"]
    bos, eos, dtype = _WORKER["bos"], _WORKER["eos"], _WORKER["dtype"]
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)  # no offsets: faster
    encodings = encode(texts, add_special_tokens=False)
    pieces, lengths = [], np.empty(len(texts), dtype=np.int64)
    head = np.array([bos], dtype) if bos is not None else None
    tail = np.array([eos], dtype) if eos is not None else None
    for i, encoding in enumerate(encodings):
        ids = np.array(encoding.ids, dtype=dtype)
        if head is not None:
            pieces.append(head)
        pieces.append(ids)
        if tail is not None:
            pieces.append(tail)
        lengths[i] = len(ids) + (head is not None) + (tail is not None)
    tokens = np.concatenate(pieces) if pieces else np.empty(0, dtype)
    return tokens, lengths, sum(len(t.encode("utf-8")) for t in texts)


# -- the writer side ------------------------------------------------------------------------------


class ShardWriter:
    """Appends documents to the current shard; closes it atomically."""

    def __init__(self, out: Path, settings: TokenizeSettings, progress: Progress) -> None:
        self.out, self.settings, self.progress = out, settings, progress
        self.dtype = np.dtype("<u2" if settings.token_size == 2 else "<u4")
        self._reset()

    def _reset(self) -> None:
        self.number = len(self.progress.shards)
        self.name = f"{self.number:05d}{self.settings.extension}"
        self.tmp = self.out / f".{self.name}.tmp"
        self.file = open(self.tmp, "wb")  # noqa: SIM115 (closed in close_shard)
        self.digest = hashlib.sha256()
        self.starts: list[np.ndarray] = []
        self.tokens = 0
        self.documents = 0
        self.text_bytes = 0

    def add(self, tokens: np.ndarray, lengths: np.ndarray, text_bytes: int) -> None:
        data = tokens.astype(self.dtype, copy=False).tobytes()
        self.file.write(data)
        self.digest.update(data)
        self.starts.append(self.tokens + np.concatenate([[0], np.cumsum(lengths)[:-1]]))
        self.tokens += int(lengths.sum())
        self.documents += len(lengths)
        self.text_bytes += text_bytes

    def close_shard(self, reopen: bool = True) -> None:
        self.file.close()
        if self.documents == 0:
            self.tmp.unlink()
        else:
            offsets = np.concatenate([*self.starts, [self.tokens]]).astype("<u8")
            (self.out / f"{self.name}.idx").write_bytes(offsets.tobytes())
            os.replace(self.tmp, self.out / self.name)
            self.progress.shards.append(
                ShardRecord(self.name, self.documents, self.tokens, self.digest.hexdigest())
            )
            self.progress.documents += self.documents
            self.progress.text_bytes += self.text_bytes
            _write_json(self.out / PROGRESS, _progress_json(self.progress))
        if reopen:
            self._reset()


# -- the run --------------------------------------------------------------------------------------


@dataclass
class TokenizeRequest:
    inputs: list[str]
    out: str
    tokenizer: str
    dataset: str | None = None
    split: str = "train"
    text_field: str = "text"
    extension: str = ".ds"
    token_size: int | None = None  # None: 2 when the vocabulary fits, else 4
    bos: bool | None = None  # None: as the tokenizer's post-processor does
    eos: bool | None = None
    workers: int = 1
    shard_tokens: int = 1 << 28
    batch_documents: int = 128
    skip_bad: bool = False
    resume: bool = False
    overwrite: bool = False


@dataclass
class TokenizeResult:
    manifest: dict
    seconds: float


Reporter = Callable[[int, int, int], None]  # (documents, tokens, text bytes) so far


def tokenize(request: TokenizeRequest, report: Reporter | None = None) -> TokenizeResult:
    """Run ``psyche data tokenize``; returns the manifest written."""
    started = time.perf_counter()
    source = load_tokenizer(request.tokenizer)
    if request.extension not in (".ds", ".bin", ".npy"):
        raise PsycheError(f"shard format must be ds, bin or npy, got {request.extension!r}")
    if request.workers < 1 or request.batch_documents < 1 or request.shard_tokens < 1:
        raise PsycheError("--workers, --batch-documents and --shard-tokens must be at least 1")
    token_size = _token_size(source, request.token_size)
    bos_id, eos_id = _special_tokens(source, request.bos, request.eos)
    bad = BadRecords()
    if request.dataset:
        if request.inputs:
            raise PsycheError("give either input files or --dataset, not both")
        dataset = load_text_dataset(request.dataset, request.split, request.text_field)
        fingerprint = getattr(dataset, "_fingerprint", None) or ""
        sources: dict = {"dataset": request.dataset, "split": request.split, "rows": len(dataset)}
        source_sha = hashlib.sha256(f"{request.dataset}|{request.split}|{fingerprint}".encode())
        documents = iter_dataset(dataset, request.text_field, request.skip_bad, bad)
    else:
        files = expand_inputs(request.inputs)
        described = files_fingerprint(files)
        sources = {"files": described}
        source_sha = hashlib.sha256("".join(str(d["sha256"]) for d in described).encode())
        documents = iter_documents(files, request.text_field, request.skip_bad, bad)
    settings = TokenizeSettings(
        source.name,
        source.sha256,
        token_size,
        request.extension,
        bos_id,
        eos_id,
        request.text_field,
        request.shard_tokens,
        request.batch_documents,
        source_sha.hexdigest(),
    )
    out = Path(request.out).expanduser()
    progress = _prepare_output(out, settings, request.resume, request.overwrite)
    documents = islice(documents, progress.documents, None)  # skip what a resumed run has
    writer = ShardWriter(out, settings, progress)
    done_docs, done_tokens, done_bytes = progress.documents, progress.tokens, progress.text_bytes
    try:
        for tokens, lengths, text_bytes in _encoded_batches(source, settings, request, documents):
            writer.add(tokens, lengths, text_bytes)
            done_docs, done_tokens = done_docs + len(lengths), done_tokens + int(lengths.sum())
            done_bytes += text_bytes
            if report is not None:
                report(done_docs, done_tokens, done_bytes)
            if writer.tokens >= settings.shard_tokens:
                writer.close_shard()
    except PsycheError:
        # bad input: drop the shard in progress; closed shards stay for --resume (with
        # --skip-bad, say), and a run that closed none leaves the folder as it found it
        writer.file.close()
        writer.tmp.unlink(missing_ok=True)
        raise
    writer.close_shard(reopen=False)
    if not progress.shards:
        raise PsycheError("the input holds no documents")
    manifest = {
        "format": FORMAT,
        "tokenizer": {
            "name": source.name,
            "sha256": source.sha256,
            "vocab_size": source.build().get_vocab_size(with_added_tokens=True),
        },
        "token_size": token_size,
        "bos_id": bos_id,
        "eos_id": eos_id,
        "documents": progress.documents,
        "tokens": progress.tokens,
        "text_bytes": progress.text_bytes,
        "skipped_bad": bad.count,
        "skipped_examples": bad.examples,
        "source": {**sources, "sha256": settings.source_sha256},
        "text_field": request.text_field,
        "shard_tokens": request.shard_tokens,
        "batch_documents": request.batch_documents,
        "shards": [asdict(s) for s in progress.shards],
    }
    _write_json(out / MANIFEST, manifest)
    (out / PROGRESS).unlink(missing_ok=True)
    return TokenizeResult(manifest, time.perf_counter() - started)


def _encoded_batches(
    source: TokenizerSource, settings: TokenizeSettings, request: TokenizeRequest, documents
) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    dtype = "<u2" if settings.token_size == 2 else "<u4"
    init = (source.json_text, settings.bos_id, settings.eos_id, dtype)
    batches = _batched(documents, settings.batch_documents)
    if request.workers == 1:  # in this process, encoding on all cores
        _init_worker(*init, False)
        for batch in batches:
            yield encode_documents(batch)
        return
    import multiprocessing

    # fork: a worker starts at once with what is already imported (spawn and forkserver would
    # import the caller's __main__ again, which for a script importing torch takes seconds)
    fork = sys.platform.startswith("linux")
    context = multiprocessing.get_context("fork" if fork else "spawn")
    with context.Pool(request.workers, _init_worker, (*init, True)) as pool:
        pending: deque = deque()
        for batch in batches:  # a bounded window: the input is never read far ahead
            pending.append(pool.apply_async(encode_documents, (batch,)))
            if len(pending) >= 2 * request.workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _batched(documents: Iterator[str], size: int) -> Iterator[list[str]]:
    while batch := list(islice(documents, size)):
        yield batch


def _token_size(source: TokenizerSource, wanted: int | None) -> int:
    vocab = source.build().get_vocab_size(with_added_tokens=True)
    if wanted is None:
        return 2 if vocab <= 1 << 16 else 4
    if wanted not in (2, 4):
        raise PsycheError(f"--token-size must be 2 or 4, got {wanted}")
    if wanted == 2 and vocab > 1 << 16:
        raise PsycheError(
            f"tokenizer {source.name!r} has {vocab:,} tokens, too many for --token-size 2 "
            "(at most 65,536); use --token-size 4"
        )
    return wanted


def _special_tokens(
    source: TokenizerSource, bos: bool | None, eos: bool | None
) -> tuple[int | None, int | None]:
    """BOS/EOS ids to add to each document: what the tokenizer's post-processor adds to a
    single text, unless ``bos``/``eos`` say otherwise."""
    tokenizer = source.build()
    plain = tokenizer.encode("a", add_special_tokens=False).ids
    full = tokenizer.encode("a", add_special_tokens=True).ids
    # the post-processor wraps the plain ids: what it puts before and after them
    at = next((i for i in range(len(full)) if full[i : i + len(plain)] == plain), 0)
    before, after = full[:at], full[at + len(plain) :]
    bos_id = before[0] if before else source.bos_id
    eos_id = after[-1] if after else source.eos_id
    add_bos = bool(before) if bos is None else bos
    add_eos = bool(after) if eos is None else eos
    for wanted, token_id, name in ((add_bos, bos_id, "BOS"), (add_eos, eos_id, "EOS")):
        if wanted and token_id is None:
            raise PsycheError(
                f"tokenizer {source.name!r} has no {name} token that psyche can find; "
                f"drop --{name.lower()}"
            )
    return (bos_id if add_bos else None), (eos_id if add_eos else None)


def _prepare_output(out: Path, settings: TokenizeSettings, resume: bool, overwrite: bool):
    if out.exists() and not out.is_dir():
        raise PsycheError(f"output {str(out)!r} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    entries = [p for p in out.iterdir()]
    if entries and overwrite:
        for path in entries:
            if path.is_dir():
                raise PsycheError(
                    f"--overwrite: {str(out)!r} holds a folder ({path.name}); "
                    "refusing to delete it, pick another --out"
                )
            path.unlink()
        entries = []
    progress = Progress(settings)
    if resume and (out / PROGRESS).is_file():
        progress = _load_progress(out / PROGRESS, settings)
        for path in out.glob(".*.tmp"):
            path.unlink()  # a shard cut short by the interruption; it is written again
        return progress
    if resume and (out / MANIFEST).is_file():
        raise PsycheError(
            f"{str(out)!r} is already complete (it has {MANIFEST}); nothing to resume"
        )
    if entries:
        raise PsycheError(
            f"output folder {str(out)!r} is not empty; pass --resume to continue an interrupted "
            "run there, or --overwrite to replace its contents"
        )
    return progress


def _load_progress(path: Path, settings: TokenizeSettings) -> Progress:
    saved = json.loads(path.read_text())
    if saved["settings"] != asdict(settings):
        changed = sorted(k for k, v in asdict(settings).items() if saved["settings"].get(k) != v)
        raise PsycheError(
            f"cannot --resume in {str(path.parent)!r}: it was started with other settings or "
            f"input ({', '.join(changed)} differ); use --overwrite to start again"
        )
    return Progress(
        settings,
        [ShardRecord(**s) for s in saved["shards"]],
        saved["documents"],
        saved["text_bytes"],
    )


def _progress_json(progress: Progress) -> dict:
    return {
        "settings": asdict(progress.settings),
        "shards": [asdict(s) for s in progress.shards],
        "documents": progress.documents,
        "text_bytes": progress.text_bytes,
    }


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_manifest(folder: str | os.PathLike[str]) -> dict | None:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise PsycheError(f"{path}: not valid JSON ({exc})") from None


def read_document_starts(shard: Path) -> np.ndarray | None:
    """A shard's document start offsets (tokens), from its ``.idx`` sidecar, or None."""
    sidecar = shard.with_name(shard.name + ".idx")
    if not sidecar.is_file():
        return None
    offsets = np.fromfile(sidecar, dtype="<u8").astype(np.int64)
    return offsets[:-1]
