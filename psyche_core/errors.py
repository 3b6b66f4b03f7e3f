"""Errors that reach the user as one line.

Anything raised as a :class:`PsycheError` is printed by the CLI as ``error: <message>`` and
exits non-zero, without a traceback (set ``PSYCHE_DEBUG=1`` to see one). Raise it for every
mistake a user can fix: a bad flag, a missing file, an unknown name.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PsycheError(Exception):
    """An error whose message is complete enough to show the user on its own."""


class UnknownNameError(PsycheError, KeyError):
    """A name (model, optimizer, data provider, ...) that nothing registered."""

    def __init__(self, kind: str, name: str, known: Iterable[str], hint: str = "") -> None:
        known = sorted(known)
        message = f"unknown {kind} {name!r}"
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        if close:
            message += f"; did you mean {', '.join(repr(c) for c in close)}?"
        message += f" Known {kind}s: {', '.join(known) if known else '(none installed)'}."
        if hint:
            message += f" {hint}"
        super().__init__(message)
        self.kind = kind
        self.name = name

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class InvalidInputError(PsycheError, ValueError):
    """Input a model cannot take (a token id outside the vocabulary, a sequence longer than the
    context). A ``ValueError`` for library callers, one line for CLI users."""
