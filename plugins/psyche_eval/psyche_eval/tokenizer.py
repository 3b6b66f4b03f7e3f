"""The tokenizer that turns lm-eval's task text into a psyche model's token ids.

psyche trains on pre-tokenized data, so a checkpoint need not carry a tokenizer; ``psyche eval``
takes one with ``--tokenizer`` (a ``tokenizer.json`` or a transformers tokenizer directory or
hub id) or finds one saved in the checkpoint directory. It is loaded as a transformers tokenizer
so that text is split exactly as lm-eval's ``hf`` backend splits it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from psyche_core.errors import PsycheError
from psyche_core.model import CausalLM

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def find_tokenizer(*directories: Path | None) -> Path | None:
    """The first of ``directories`` that holds a saved tokenizer."""
    for directory in directories:
        if directory is not None and any((directory / f).is_file() for f in TOKENIZER_FILES):
            return directory
    return None


def load_tokenizer(reference: str | Path, model: CausalLM) -> Any:
    """A transformers tokenizer from a ``tokenizer.json``, a tokenizer directory or a hub id.

    A bare ``tokenizer.json`` does not say which of its tokens are BOS and EOS; they are taken
    from the model's config (``bos_token_id``, ``eos_token_id``), as the model was trained.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(reference).expanduser()
    try:
        if path.is_file():
            tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(path))
        else:
            tokenizer = AutoTokenizer.from_pretrained(str(reference))
    except Exception as exc:  # transformers raises OSError, ValueError, EnvironmentError...
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PsycheError(
            f"--tokenizer {reference}: not a tokenizer.json, a tokenizer directory or a "
            f"reachable hub id ({first_line})"
        ) from None
    _fill_special_tokens(tokenizer, model)
    if len(tokenizer) > model.vocab_size:
        raise PsycheError(
            f"--tokenizer {reference} has {len(tokenizer)} tokens but the model's vocabulary "
            f"has {model.vocab_size}; pass the tokenizer the model was trained with"
        )
    return tokenizer


def _fill_special_tokens(tokenizer: Any, model: CausalLM) -> None:
    if tokenizer.bos_token is None and model.bos_token_id is not None:
        tokenizer.bos_token = tokenizer.convert_ids_to_tokens(model.bos_token_id)
    if tokenizer.eos_token is None and model.eos_token_ids:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(model.eos_token_ids[0])
    if tokenizer.eos_token is None:
        raise PsycheError(
            "the tokenizer names no end-of-text token and the model config has no "
            "eos_token_id; lm-eval needs one to end generations"
        )
