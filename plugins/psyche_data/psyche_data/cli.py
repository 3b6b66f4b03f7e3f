"""The ``psyche data`` commands: ``serve`` and ``inspect``.

Errors are raised as :class:`~psyche_core.errors.PsycheError`; the ``psyche`` CLI prints them
as one line.
"""

from __future__ import annotations

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
def serve(folder: str, host: str, port: int, hf_repo: str | None) -> None:
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
    server = DataServer(folder, host, port)
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
    "--token-size", default=2, show_default=True, type=int, help="Bytes per token: 2 or 4."
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
    token-id range; or, with --decode N, print its first N samples as plain text."""
    from psyche_core.errors import PsycheError
    from psyche_data.summary import decoded_samples, summarize

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
