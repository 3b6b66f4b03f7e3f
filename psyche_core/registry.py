"""One generic registry for models, data providers and optimizers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from psyche_core.errors import PsycheError, UnknownNameError

T = TypeVar("T")


@dataclass(frozen=True)
class Owner:
    """Which plugin registered something."""

    plugin: str
    distribution: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        if self.distribution and self.distribution != self.plugin:
            version = f" {self.version}" if self.version else ""
            return f"plugin {self.plugin!r} (distribution {self.distribution}{version})"
        return f"plugin {self.plugin!r}"


class DuplicateNameError(PsycheError):
    def __init__(self, kind: str, name: str, first: Owner, second: Owner) -> None:
        super().__init__(
            f"{kind} {name!r} is registered twice: by {first} and by {second}. "
            "Uninstall one of the two distributions."
        )


class Registry(Generic[T]):
    """Name -> spec, remembering which plugin registered each name.

    A name claimed by two plugins is kept as a conflict: looking it up raises an error naming
    both, everything else keeps working (so ``psyche list-plugins`` can still show the clash).
    """

    def __init__(self, kind: str, install_hint: str = "") -> None:
        self.kind = kind
        self.install_hint = install_hint
        self._entries: dict[str, tuple[T, Owner]] = {}
        self._conflicts: dict[str, DuplicateNameError] = {}

    def add(self, name: str, spec: T, owner: Owner) -> None:
        if not name or not isinstance(name, str):
            raise PsycheError(f"{owner} registered a {self.kind} with an empty or non-string name")
        if name in self._entries:
            first = self._entries[name][1]
            self._conflicts[name] = DuplicateNameError(self.kind, name, first, owner)
            return
        self._entries[name] = (spec, owner)

    def get(self, name: str) -> T:
        if name in self._conflicts:
            raise self._conflicts[name]
        try:
            return self._entries[name][0]
        except KeyError:
            raise UnknownNameError(self.kind, name, self.names(), self.install_hint) from None

    def get_unchecked(self, name: str) -> T:
        """The first registration of ``name``, even when another plugin also claims it."""
        return self._entries[name][0]

    def owner(self, name: str) -> Owner:
        return self._entries[name][1]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def conflicts(self) -> list[DuplicateNameError]:
        return list(self._conflicts.values())

    def items(self) -> Iterator[tuple[str, T, Owner]]:
        for name in sorted(self._entries):
            spec, owner = self._entries[name]
            yield name, spec, owner

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)
