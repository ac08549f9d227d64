"""A small registry of named classes that refuses duplicates (eviction policies, schedulers)."""

from __future__ import annotations

from typing import Generic, TypeVar

from gemel_engine.errors import RegistryError, RuntimeConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Classes by their ``name`` attribute; ``create`` returns a new instance."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._classes: dict[str, type[T]] = {}

    def register(self, cls: type[T]) -> type[T]:
        """Register ``cls`` under its ``name``; return it (usable as a class decorator).

        Raises:
            RegistryError: the name is taken.
        """
        name = cls.name  # type: ignore[attr-defined]
        if name in self._classes:
            raise RegistryError(f"{self.kind} {name!r} is already registered")
        self._classes[name] = cls
        return cls

    def create(self, name: str) -> T:
        """Return a new instance of the class registered as ``name``.

        Raises:
            RuntimeConfigError: no such name; the message lists the known ones.
        """
        if name not in self._classes:
            raise RuntimeConfigError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self._classes[name]()

    def names(self) -> list[str]:
        """Return the registered names, sorted."""
        return sorted(self._classes)
