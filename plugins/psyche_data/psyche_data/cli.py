"""The ``psyche data`` commands: ``serve`` and ``inspect``.

Errors are raised as :class:`~psyche_core.errors.PsycheError`; the ``psyche`` CLI prints them
as one line.
"""

from __future__ import annotations

import os
import sys

import click


@click.group()
def data() -> None:
    """Work with token data: serve a folder over HTTP, inspect token files."""


@data.command()
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=0, show_default=True, type=int, help="Port to listen on; 0 picks a free one."
)
@click.option(
    "--hf-repo",
    default=None,
    metavar="OWNER/NAME",
    help="First download this Hugging Face dataset repo's .ds/.bin/.npy files into FOLDER.",
)
@click.option(
    "--multi-range/--no-multi-range",
    default=True,
    show_default=True,
    help="Answer several ranges in one request (multipart/byteranges); --no-multi-range "
    "answers them with the whole file, like a plain static server.",
)
@click.option(
    "--multipart-only",
    is_flag=True,
    help="Answer several ranges as multipart/byteranges even to psyche's own client, which "
    "otherwise asks for them back to back without part headers (to compare the two).",
)
def serve(
    folder: str,
    host: str,
    port: int,
    hf_repo: str | None,
    multi_range: bool,
    multipart_only: bool,
) -> None:
    """Serve the token files in FOLDER over HTTP with range requests (for --data-url).

    Only files inside FOLDER are served (no '..', no symlinks leading out); GET / answers with
    a JSON index of the data files, so the printed URL reads the whole folder.
    """
    from pathlib import Path

    from psyche_core.errors import PsycheError
    from psyche_data.server import DataServer, data_index, download_hf_repo

    if hf_repo:
        Path(folder).mkdir(parents=True, exist_ok=True)
        click.echo(f"downloading the data files of {hf_repo} into {folder} ...", err=True)
        download_hf_repo(hf_repo, folder)
    if not Path(folder).is_dir():
        raise PsycheError(f"cannot serve {folder!r}: no such folder")
    files = data_index(Path(folder))
    if not files:
        raise PsycheError(f"{folder!r} has no .ds, .bin or .npy files to serve")
    server = DataServer(folder, host, port, multi_range, concatenated=not multipart_only)
    total = sum(int(f["size"]) for f in files)  # type: ignore[call-overload]
    click.echo(f"serving {len(files)} files ({total:,} bytes) from {folder}", err=True)
    click.echo(f"use: --data-url {server.url}")
    sys.stdout.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@data.command()
@click.argument("path", type=click.Path())
@click.option(
    "--sequence-length", default=2048, show_default=True, type=int, help="Tokens per sequence."
)
@click.option(
    "--token-size",
    default=None,
    type=int,
    help="Bytes per token: 2 or 4 (default: the manifest's, else 2).",
)
@click.option(
    "--decode",
    "decode",
    default=None,
    type=int,
    metavar="N",
    help="Print the first N samples as text (needs --tokenizer) and nothing else.",
)
@click.option(
    "--tokenizer",
    default=None,
    type=click.Path(dir_okay=False),
    help="A tokenizer.json for --decode (Hugging Face tokenizers format).",
)
def inspect(
    path: str, sequence_length: int, token_size: int, decode: int | None, tokenizer: str | None
) -> None:
    """Count the files, tokens and sequences under PATH (a folder or a file) and show the
    token-id range, and the manifest.json `psyche data tokenize` wrote there; or, with --decode
    N, print its first N samples as plain text."""
    from psyche_core.errors import PsycheError
    from psyche_data.summary import decoded_samples, manifest_lines, summarize
    from psyche_data.tokenize import read_manifest

    manifest = read_manifest(path) if os.path.isdir(path) else None
    if token_size is None:
        token_size = int(manifest.get("token_size", 2)) if manifest else 2

    if decode is not None:
        if tokenizer is None:
            raise PsycheError("--decode needs --tokenizer tokenizer.json")
        if decode < 0:
            raise PsycheError(f"--decode must be 0 or more, got {decode}")
        for text in decoded_samples(path, sequence_length, token_size, decode, tokenizer):
            click.echo(text)
        return
    for line in summarize(path, sequence_length, token_size).lines():
        click.echo(line)
    if manifest:
        for line in manifest_lines(manifest):
            click.echo(line)


@data.command()
@click.argument("inputs", nargs=-1, type=click.Path())
@click.option(
    "--tokenizer",
    required=True,
    metavar="NAME_OR_PATH",
    help="A tokenizer.json, a model folder holding one, or a Hugging Face model id.",
)
@click.option(
    "--out", required=True, type=click.Path(), help="Folder for the shards (new or empty)."
)
@click.option(
    "--dataset", default=None, metavar="NAME", help="Read a Hugging Face dataset instead of INPUTS."
)
@click.option("--split", default="train", show_default=True, help="The --dataset split.")
@click.option(
    "--text-field", default="text", show_default=True, help="The jsonl field / parquet column."
)
@click.option(
    "--format",
    "extension",
    type=click.Choice(["ds", "bin", "npy"]),
    default="ds",
    show_default=True,
    help="Shard file extension (all are raw little-endian tokens, no header).",
)
@click.option(
    "--token-size",
    type=click.Choice(["2", "4"]),
    default=None,
    help="Bytes per token; by default 2 when the vocabulary fits, else 4.",
)
@click.option(
    "--bos/--no-bos", default=None, help="Start each document with BOS (default: as the tokenizer)."
)
@click.option(
    "--eos/--no-eos", default=None, help="End each document with EOS (default: as the tokenizer)."
)
@click.option("--workers", default=1, show_default=True, type=int, help="Encoding processes.")
@click.option(
    "--shard-tokens",
    default=1 << 28,
    show_default=True,
    type=int,
    help="Close a shard once it holds this many tokens.",
)
@click.option(
    "--batch-documents", default=128, show_default=True, type=int, help="Documents per work item."
)
@click.option("--skip-bad", is_flag=True, help="Skip (and count) records without text.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out.")
@click.option("--overwrite", is_flag=True, help="Delete what --out holds first.")
def tokenize(inputs, tokenizer, out, dataset, split, text_field, extension, token_size, bos,
             eos, workers, shard_tokens, batch_documents, skip_bad, resume,
             overwrite) -> None:  # fmt: skip
    """Tokenize INPUTS (text files, .jsonl/.parquet with --text-field, folders of them) or a
    --dataset into token shards for --data-provider local/http, with document boundaries
    (NAME.idx) and a manifest.json."""
    from psyche_core.errors import PsycheError
    from psyche_data.progress import TokenProgress
    from psyche_data.tokenize import TokenizeRequest
    from psyche_data.tokenize import tokenize as run_tokenize

    if resume and overwrite:
        raise PsycheError("--resume and --overwrite contradict each other; pick one")
    request = TokenizeRequest(
        list(inputs),
        out,
        tokenizer,
        dataset=dataset,
        split=split,
        text_field=text_field,
        extension="." + extension,
        token_size=None if token_size is None else int(token_size),
        bos=bos,
        eos=eos,
        workers=workers,
        shard_tokens=shard_tokens,
        batch_documents=batch_documents,
        skip_bad=skip_bad,
        resume=resume,
        overwrite=overwrite,
    )
    with TokenProgress() as progress:
        result = run_tokenize(request, progress.update)
    manifest = result.manifest
    mb = manifest["text_bytes"] / 1e6
    click.echo(
        f"{manifest['documents']:,} documents, {manifest['tokens']:,} tokens in "
        f"{len(manifest['shards'])} shards ({mb:,.1f} MB of text, {result.seconds:.1f} s, "
        f"{mb / max(result.seconds, 1e-9):,.1f} MB/s) -> {out}"
    )
    if manifest["skipped_bad"]:
        click.echo(f"skipped {manifest['skipped_bad']:,} bad records (--skip-bad)", err=True)


@data.command("prepare-chat")
@click.argument("inputs", nargs=-1, type=click.Path())
@click.option(
    "--tokenizer", required=True, metavar="NAME_OR_PATH", help="As for `psyche data tokenize`."
)
@click.option("--out", required=True, type=click.Path(), help="Folder for the parquet file.")
@click.option("--sequence-length", required=True, type=int, help="Tokens per packed row.")
@click.option("--dataset", default=None, metavar="NAME", help="Read a Hugging Face dataset.")
@click.option("--split", default="train", show_default=True, help="The --dataset split.")
@click.option(
    "--messages-field",
    default=None,
    help="Field holding the message list (default: messages, else conversations).",
)
@click.option(
    "--chat-template",
    default=None,
    metavar="FILE",
    help="A Jinja chat template (file or text) instead of the tokenizer's own.",
)
@click.option(
    "--packing",
    type=click.Choice(["ffd", "greedy", "random"]),
    default="ffd",
    show_default=True,
    help="first-fit-decreasing, in order, or seeded random order.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for --packing random.")
@click.option(
    "--too-long",
    type=click.Choice(["truncate", "drop"]),
    default="truncate",
    show_default=True,
    help="What to do with a conversation longer than --sequence-length (counted either way).",
)
@click.option("--pad-token-id", default=None, type=int, help="Padding id (default: EOS).")
@click.option("--skip-bad", is_flag=True, help="Skip (and count) malformed conversations.")
@click.option("--overwrite", is_flag=True, help="Replace what --out holds.")
def prepare_chat(inputs, tokenizer, out, sequence_length, dataset, split, messages_field,
                 chat_template, packing, seed, too_long, pad_token_id, skip_bad,
                 overwrite) -> None:  # fmt: skip
    """Render conversations (.jsonl/.parquet with OpenAI `messages` or ShareGPT
    `conversations`) with the chat template, label only the assistant turns, pack them into
    rows of --sequence-length and write the preprocessed parquet for --data-provider
    preprocessed."""
    from psyche_data.prepare_chat import ChatRequest
    from psyche_data.prepare_chat import prepare_chat as run

    manifest = run(
        ChatRequest(
            list(inputs),
            out,
            tokenizer,
            sequence_length,
            dataset=dataset,
            split=split,
            messages_field=messages_field,
            chat_template=chat_template,
            packing=packing,
            seed=seed,
            too_long=too_long,
            pad_id=pad_token_id,
            skip_bad=skip_bad,
            overwrite=overwrite,
        )
    )
    click.echo(
        f"{manifest['documents']:,} conversations -> {manifest['rows']:,} rows of "
        f"{sequence_length} (fill {manifest['fill_ratio']:.1%}; truncated {manifest['truncated']}, "
        f"dropped {manifest['dropped']}, bad {manifest['skipped_bad']}) -> {out}"
    )
