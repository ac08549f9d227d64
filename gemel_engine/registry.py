"""The engine's one registry mechanism: named entries that refuse duplicates (torchvision/timm style).

Architectures (``zoo``), search strategies (``search.strategies``), schedulers and eviction policies
(``runtime``) each keep a ``Registry``. An entry is anything with a ``name`` attribute: a class (then
``create`` returns a new instance) or a record such as the zoo's ``ArchSpec``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from gemel_engine.errors import GemelError, RegistryError, RuntimeConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries by their ``name`` attribute, in registration order.

    ``kind`` names an entry in messages ("scheduler"); an unknown name raises ``error`` and a duplicate or
    empty one ``duplicate_error``, so each registry keeps the error type its callers already handle.
    """

    def __init__(
        self, kind: str, *, error: type[GemelError] = RuntimeConfigError,
        duplicate_error: type[GemelError] = RegistryError,
    ) -> None:
        self.kind = kind
        self.error = error
        self.duplicate_error = duplicate_error
        self._entries: dict[str, T] = {}

    def register(self, entry: T) -> T:
        """Register ``entry`` under its ``name``; return it (usable as a class decorator).

        Raises:
            duplicate_error (RegistryError by default): the name is empty or already registered.
        """
        name = entry.name  # type: ignore[attr-defined]
        if not name:
            raise self.duplicate_error(f"{self.kind} name must not be empty")
        if name in self._entries:
            raise self.duplicate_error(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        """Return the entry registered as ``name``.

        Raises:
            error (RuntimeConfigError by default): no such name; the message lists the known ones.
        """
        try:
            return self._entries[name]
        except KeyError:
            raise self.error(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}") from None

    def create(self, name: str) -> Any:
        """Return a new instance of the class registered as ``name`` (for registries of classes).

        Raises:
            error (RuntimeConfigError by default): no such name; the message lists the known ones.
        """
        return self.get(name)()  # type: ignore[operator]

    def names(self) -> list[str]:
        """Return the registered names, in registration order."""
        return list(self._entries)

    def __iter__(self) -> Iterator[T]:
        """Return an iterator over the entries, in registration order."""
        return iter(self._entries.values())
