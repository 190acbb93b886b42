"""A name → object table that rejects mistakes: the base of the solver, producer and model registries."""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Names to objects of one kind; a taken name is an error and an unknown one lists the known."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> None:
        """Register ``item`` under ``name``; raises ``ValueError`` if the name is empty or taken."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if name in self._items:
            raise ValueError(f"a {self.kind} named {name!r} is already registered; pick another name")
        self._items[name] = item

    def get(self, name: str) -> T:
        """The object registered under ``name``; ``KeyError`` with the closest match and the known names."""
        try:
            return self._items[name]
        except (KeyError, TypeError):
            close = difflib.get_close_matches(str(name), list(self._items), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            known = ", ".join(self.names()) or "(none registered yet)"
            raise KeyError(f"unknown {self.kind} {name!r}{hint} known {self.kind}s: {known}") from None

    def remove(self, name: str) -> None:
        """Forget ``name`` (for tests and interactive sessions)."""
        self._items.pop(name, None)

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def describe(self) -> dict[str, str]:
        """One line per name: the object's ``description`` or the first line of its docstring."""
        lines = {}
        for name in self.names():
            item: Any = self._items[name]
            text = (getattr(item, "description", None) or inspect.getdoc(item) or "").strip()
            lines[name] = text.splitlines()[0] if text else ""
        return lines
