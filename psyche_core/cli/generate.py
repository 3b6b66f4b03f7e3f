"""``psyche generate``: sample from a model or checkpoint."""

from __future__ import annotations

from pathlib import Path

import click

from psyche_core.errors import PsycheError
from psyche_core.plugins import Plugins


def make_generate_command(plugins: Plugins) -> click.Command:
    @click.command("generate")
    @click.option(
        "--model",
        "model_ref",
        required=True,
        help="A checkpoint directory (e.g. SAVE_PATH or SAVE_PATH/step-000100), a hub "
        "repo id, or NAME[:PRESET] for an untrained model.",
    )
    @click.option("--prompt-ids", help="Comma-separated token ids, e.g. 1,450,4996.")
    @click.option("--prompt", help="Text to encode with --tokenizer.")
    @click.option(
        "--tokenizer",
        type=click.Path(exists=True, dir_okay=False),
        help="A tokenizer.json (Hugging Face tokenizers) to encode and decode text.",
    )
    @click.option("--max-new-tokens", default=64, show_default=True, type=int)
    @click.option(
        "--temperature", default=0.0, show_default=True, type=float, help="0 is greedy decoding."
    )
    @click.option("--top-k", type=int, help="Sample only among the k most likely tokens.")
    @click.option("--top-p", type=float, help="Sample from the smallest set with this mass.")
    @click.option("--seed", default=0, show_default=True, type=int)
    @click.option("--device", default="cpu", show_default=True)
    def generate_command(
        model_ref: str,
        prompt_ids: str | None,
        prompt: str | None,
        tokenizer: str | None,
        max_new_tokens: int,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        seed: int,
        device: str,
    ) -> None:
        """Continue a prompt with a trained model, to see what it learned.

        Prints the new token ids, then (with --tokenizer) the decoded text.
        """
        from psyche_core.generation import generate
        from psyche_core.options import Options, all_option_specs
        from psyche_core.resolve import resolve_device, resolve_model

        encoder = _load_tokenizer(tokenizer) if tokenizer else None
        if (prompt_ids is None) == (prompt is None):
            raise PsycheError("give exactly one of --prompt-ids and --prompt")
        if prompt is not None:
            if encoder is None:
                raise PsycheError("--prompt needs --tokenizer to turn text into token ids")
            ids = encoder.encode(prompt).ids
        else:
            try:
                ids = [int(x) for x in prompt_ids.split(",") if x.strip()]
            except ValueError:
                raise PsycheError(
                    f"--prompt-ids {prompt_ids!r}: expected integers like 1,2,3"
                ) from None
        # built exactly as `psyche train` builds it, with every option at its default
        options = Options.defaults(all_option_specs(plugins), model=model_ref, device=device)
        choice = resolve_model(plugins, model_ref, options)
        model = choice.build(seed, device=resolve_device(device), options=options)
        new = generate(model, ids, max_new_tokens, temperature, top_k, top_p, seed)
        click.echo(",".join(str(t) for t in new))
        if encoder is not None:
            click.echo(encoder.decode(ids + new, skip_special_tokens=True))

    return generate_command


def _load_tokenizer(path: str):
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise PsycheError(
            "--tokenizer needs the tokenizers package: pip install 'psyche-core[tokenizer]'"
        ) from None
    try:
        return Tokenizer.from_file(str(Path(path)))
    except Exception as exc:
        raise PsycheError(f"{path}: not a tokenizer.json ({exc})") from None
