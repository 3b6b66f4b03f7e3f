"""Conversations through a chat template, with loss only on the assistant's turns.

A conversation is a list of ``{"role", "content"}`` messages (OpenAI) or ``{"from", "value"}``
ones (ShareGPT: ``human``/``gpt``/``system``). It is rendered with the tokenizer's Jinja chat
template as ``transformers`` renders it, and tokenized once. An assistant turn is the text the
template adds between ``messages[:k]`` with the generation prompt and ``messages[:k+1]``, so
the labels cover the assistant's words and the template's end-of-turn marker, and not the
header that announces the turn (it is part of the prompt).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from psyche_core.data import IGNORE_INDEX
from psyche_core.errors import PsycheError
from psyche_data.text_inputs import BadRecords, kind_of
from psyche_data.tokenizer_source import TokenizerSource

ROLES = {
    "system": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
    "human": "user",
    "gpt": "assistant",
}
MESSAGE_FIELDS = ("messages", "conversations")


class BadConversation(PsycheError):
    pass


@dataclass(frozen=True)
class TokenizedConversation:
    input_ids: np.ndarray  # int32
    labels: np.ndarray  # int32, IGNORE_INDEX outside assistant turns


def normalise(messages: object, where: str) -> list[dict[str, str]]:
    """OpenAI or ShareGPT messages as ``[{"role", "content"}]``; unknown roles are refused."""
    if not isinstance(messages, list) or not messages:
        raise BadConversation(f"{where}: messages must be a non-empty list")
    result = []
    for number, message in enumerate(messages, 1):
        if not isinstance(message, dict):
            raise BadConversation(f"{where}: message {number} is not an object")
        role = message.get("role", message.get("from"))
        content = message.get("content", message.get("value"))
        if role not in ROLES:
            raise BadConversation(
                f"{where}: message {number} has unknown role {role!r} (known: {', '.join(ROLES)})"
            )
        if not isinstance(content, str):
            raise BadConversation(f"{where}: message {number} has no text content")
        result.append({"role": ROLES[role], "content": content})
    return result


class ChatTemplate:
    """A Jinja chat template, sandboxed, with the helpers ``transformers`` gives templates."""

    def __init__(self, template: str, bos_token: str, eos_token: str) -> None:
        try:
            from jinja2.exceptions import TemplateError
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError:
            raise PsycheError(
                "chat templates need jinja2: pip install 'psyche-data[text]'"
            ) from None

        def raise_exception(message: str) -> None:
            raise TemplateError(message)

        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        environment.globals["raise_exception"] = raise_exception
        environment.filters["tojson"] = lambda value, indent=None: json.dumps(value, indent=indent)
        try:
            self._template = environment.from_string(template)
        except TemplateError as exc:
            raise PsycheError(f"the chat template does not parse: {exc}") from None
        self._error = TemplateError
        self.bos_token, self.eos_token = bos_token, eos_token

    def render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except self._error as exc:
            raise BadConversation(f"the chat template refused the conversation: {exc}") from None


class ChatEncoder:
    """Renders and tokenizes conversations, labelling the assistant turns."""

    def __init__(self, source: TokenizerSource, template_text: str | None) -> None:
        template_text = template_text or source.chat_template
        if not template_text:
            raise PsycheError(
                f"tokenizer {source.name!r} has no chat template (tokenizer_config.json); "
                "pass one with --chat-template FILE"
            )
        self.tokenizer = source.build()
        bos, eos = source.bos_id, source.eos_id
        self.template = ChatTemplate(
            template_text,
            "" if bos is None else self.tokenizer.id_to_token(bos),
            "" if eos is None else self.tokenizer.id_to_token(eos),
        )

    def encode(self, messages: list[dict[str, str]], where: str) -> TokenizedConversation:
        text = self.template.render(messages, generation_prompt=False)
        spans = []
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self.template.render(messages[:k], generation_prompt=True)
            through = self.template.render(messages[: k + 1], generation_prompt=False)
            if not (text.startswith(before) and text.startswith(through)):
                raise PsycheError(
                    f"{where}: the chat template does not render a conversation as a prefix of "
                    "its continuation, so assistant turns cannot be located; use another template"
                )
            spans.append((len(before), len(through)))
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        ids = np.asarray(encoding.ids, dtype=np.int32)
        starts = np.fromiter((s for s, _ in encoding.offsets), dtype=np.int64, count=len(ids))
        learn = np.zeros(len(ids), dtype=bool)
        for first, last in spans:
            learn |= (starts >= first) & (starts < last)
        labels = np.where(learn, ids, IGNORE_INDEX).astype(np.int32)
        return TokenizedConversation(ids, labels)


def iter_conversations(
    files: list[Path], field: str | None, skip_bad: bool, bad: BadRecords
) -> Iterator[tuple[list[dict[str, str]], str]]:
    """``(messages, where)`` for each conversation in jsonl or parquet ``files``."""
    for path in files:
        kind = kind_of(path)
        if kind == "jsonl":
            records = _jsonl_records(path)
        elif kind == "parquet":
            records = _parquet_records(path)
        else:
            raise PsycheError(f"{path}: conversations must be .jsonl or .parquet files")
        for record, where in records:
            try:
                if not isinstance(record, dict):
                    raise BadConversation(f"{where}: not a JSON object")
                name = field or next((f for f in MESSAGE_FIELDS if f in record), None)
                if name is None or name not in record:
                    raise BadConversation(
                        f"{where}: no {field or 'messages/conversations'!r} field; pick it with "
                        "--messages-field"
                    )
                yield normalise(record[name], where), where
            except BadConversation as exc:
                if not skip_bad:
                    raise PsycheError(f"{exc} (pass --skip-bad to skip such records)") from None
                bad.add(where)


def _jsonl_records(path: Path) -> Iterator[tuple[object, str]]:
    from psyche_data.text_inputs import _open_text

    with _open_text(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            try:
                yield json.loads(line), where
            except ValueError:
                yield None, where


def _parquet_records(path: Path) -> Iterator[tuple[object, str]]:
    from psyche_data.text_inputs import _pyarrow_parquet

    parquet = _pyarrow_parquet().ParquetFile(path)
    row = 0
    for batch in parquet.iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            row += 1
            yield record, f"{path} row {row}"
