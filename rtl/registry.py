"""Name -> constructor registries. Everything a user picks by name goes through one of these.

Example:
    >>> BACKBONES = Registry("backbone")
    >>> @BACKBONES.register("small_cnn")
    ... def small_cnn(num_classes: int) -> object: ...
    >>> BACKBONES.get("nope")  # raises RtlError: unknown backbone 'nope'; valid: small_cnn
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from rtl.errors import RtlError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise RtlError(f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
