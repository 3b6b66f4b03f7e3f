"""Finding a model's tokenizer: a ``tokenizer.json``, a model folder, or a Hugging Face hub id.

Besides the ``tokenizers.Tokenizer`` this reads the model's ``tokenizer_config.json`` when there
is one, for the BOS/EOS tokens and the chat template, as ``transformers`` would.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psyche_core.errors import PsycheError

# special tokens tried, in order, when no tokenizer_config.json names them
_BOS_GUESSES = ("<|begin_of_text|>", "<s>", "<bos>", "[CLS]", "<|startoftext|>")
_EOS_GUESSES = ("<|end_of_text|>", "</s>", "<eos>", "<|endoftext|>", "[SEP]", "<|im_end|>")


@dataclass
class TokenizerSource:
    """A loaded tokenizer plus what its model folder says about it."""

    name: str  # what the user typed
    json_text: str  # the tokenizer.json, so worker processes can rebuild it exactly
    config: dict[str, Any]  # tokenizer_config.json, or {}
    _built: Any = field(default=None, repr=False, compare=False)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.json_text.encode()).hexdigest()

    def build(self):
        """The tokenizer (built once: parsing a large tokenizer.json takes a while)."""
        if self._built is None:
            from tokenizers import Tokenizer

            self._built = Tokenizer.from_str(self.json_text)
        return self._built

    def special_id(self, key: str, guesses: tuple[str, ...]) -> int | None:
        """The id of the config's ``bos_token``/``eos_token``, else of a usual name."""
        tokenizer = self.build()
        named = self.config.get(key)
        if isinstance(named, dict):  # {"content": "<s>", ...} in older configs
            named = named.get("content")
        for token in ([named] if named else []) + list(guesses):
            token_id = tokenizer.token_to_id(token)
            if token_id is not None:
                return token_id
        return None

    @property
    def bos_id(self) -> int | None:
        return self.special_id("bos_token", _BOS_GUESSES)

    @property
    def eos_id(self) -> int | None:
        return self.special_id("eos_token", _EOS_GUESSES)

    @property
    def chat_template(self) -> str | None:
        template = self.config.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            by_name = {t.get("name"): t.get("template") for t in template}
            template = by_name.get("default") or next(iter(by_name.values()), None)
        return template


def load_tokenizer(name: str) -> TokenizerSource:
    """Load ``name``: a tokenizer.json file, a folder holding one, or a hub model id."""
    try:
        import tokenizers  # noqa: F401
    except ImportError:
        raise PsycheError(
            "this needs the tokenizers library: pip install 'psyche-data[text]'"
        ) from None
    path = Path(name).expanduser()
    if path.is_file():
        folder, json_file = path.parent, path
    elif path.is_dir():
        folder, json_file = path, path / "tokenizer.json"
        if not json_file.is_file():
            raise PsycheError(f"tokenizer folder {name!r} has no tokenizer.json")
    elif (os.sep in name and not _looks_like_repo_id(name)) or name.endswith(".json"):
        raise PsycheError(f"tokenizer {name!r}: no such file or folder")
    else:
        folder, json_file = _from_hub(name)
    try:
        json_text = json_file.read_text(encoding="utf-8")
        from tokenizers import Tokenizer

        built = Tokenizer.from_str(json_text)
    except Exception as exc:  # OSError, bad UTF-8, or what tokenizers says of bad JSON
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PsycheError(f"cannot load tokenizer {name!r}: {first}") from None
    config: dict[str, Any] = {}
    config_file = folder / "tokenizer_config.json"
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise PsycheError(f"{config_file}: not valid JSON ({exc})") from None
    return TokenizerSource(name, json_text, config, built)


def _looks_like_repo_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def _from_hub(repo_id: str) -> tuple[Path, Path]:
    """Download (or find in the cache) a hub model's tokenizer files."""
    from huggingface_hub import hf_hub_download

    try:
        json_file = Path(hf_hub_download(repo_id, "tokenizer.json"))
    except Exception as exc:  # huggingface_hub raises many types; show one line
        from huggingface_hub import constants

        offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        raise PsycheError(
            f"tokenizer {repo_id!r} is neither a local file or folder nor on the Hugging Face hub "
            f"({type(exc).__name__}{', offline mode' if offline else ''}); pass a tokenizer.json "
            "path, or download it first while online"
        ) from None
    with contextlib.suppress(Exception):  # optional: BOS/EOS are then guessed from the vocabulary
        hf_hub_download(repo_id, "tokenizer_config.json")
    return json_file.parent, json_file
