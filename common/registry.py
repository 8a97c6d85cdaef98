"""A registry of plug-ins by name: one per extension kind (aggregators, strategies, ...).

Registered classes get their `name`; `build` makes one from a name and keyword settings
(TOML experiments), `from_state` rebuilds one from its `get_state()` (checkpoints). Every
error is a ConfigurationError naming the known names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from common.errors import ConfigurationError

__all__ = ["Registry"]


class Plugin(Protocol):
    """What a registrable class offers: a registry name and its state."""

    name: ClassVar[str]

    def get_state(self) -> Mapping[str, Any]: ...
    def set_state(self, state: Mapping[str, Any]) -> None: ...


P = TypeVar("P", bound=Plugin)


class Registry(Mapping[str, type[P]], Generic[P]):
    """name -> class of every registered `kind` (e.g. "aggregator")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._classes: dict[str, type[P]] = {}

    def __getitem__(self, name: str) -> type[P]:
        return self._classes[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes)

    def __len__(self) -> int:
        return len(self._classes)

    def register(self, name: str) -> Callable[[type[P]], type[P]]:
        """Class decorator: make the class available as `name`."""

        def decorate(cls: type[P]) -> type[P]:
            if name in self._classes and self._classes[name] is not cls:
                raise ConfigurationError(f"{self.kind} name {name!r} is already taken")
            cls.name = name
            self._classes[name] = cls
            return cls

        return decorate

    def build(self, name: str, params: Mapping[str, Any] | None = None) -> P:
        """Instantiate the class registered as `name` with keyword `params`."""
        cls = self._classes.get(name.lower())
        if cls is None:
            raise ConfigurationError(f"unknown {self.kind} {name!r}; known: {sorted(self)}")
        try:
            return cls(**dict(params or {}))
        except TypeError as exc:
            raise ConfigurationError(
                f"{self.kind} {name!r} does not take these settings: {exc}"
            ) from exc

    def from_state(self, state: Mapping[str, Any]) -> P:
        """Rebuild an instance from its `get_state()` (by registry name, else class name)."""
        by_class = {cls.__name__: cls for cls in self._classes.values()}
        cls = self._classes.get(str(state.get("name"))) or by_class.get(str(state.get("class")))
        if cls is None:
            raise ConfigurationError(
                f"saved {self.kind} {state.get('class')!r} is not one of {sorted(self)}: "
                f"set the {self.kind} again after loading"
            )
        instance = cls()
        instance.set_state(state)
        return instance
