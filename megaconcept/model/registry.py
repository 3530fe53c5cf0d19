"""The one registry type: config string -> constructor, with a config dataclass per entry.

Every pluggable component (decoders, attention backends, position queries, masking strategies, objective
terms, loss weighting, pooling) is an entry of a :class:`Registry`. Config validation, CLI `choices` and
error messages all read the keys from here, so no list of valid names is ever copied by hand.
Plain Python (no torch), and shipped in exported folders with the model code that uses it.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass
from typing import Any, Callable, Generic, Iterator, Mapping, Optional, TypeVar, get_args, get_type_hints

T = TypeVar("T")


class RegistryError(ValueError):
    """An unknown registry key or an invalid entry config; the message is one line naming the valid keys."""


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    build: T
    """The constructor (or function) registered under `name`."""
    config: Optional[type] = None
    """Dataclass of the entry's own options (None: the entry takes none)."""


class Registry(Generic[T]):
    """name -> :class:`Entry`. `key` is the config key that selects an entry (used in every message)."""

    def __init__(self, key: str) -> None:
        self.key = key
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, config: Optional[type] = None) -> Callable[[T], T]:
        """Decorator: `@REGISTRY.register("name", ConfigDataclass)`."""
        if config is not None and not is_dataclass(config):
            raise TypeError(f"{self.key}: the config of {name!r} must be a dataclass")

        def add(build: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.key}: {name!r} is registered twice")
            self._entries[name] = Entry(name, build, config)
            return build

        return add

    def add(self, name: str, build: T, config: Optional[type] = None) -> None:
        """Register `build` under `name` (for functions and lambdas that cannot carry a decorator)."""
        self.register(name, config)(build)

    def keys(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, name: str) -> Entry[T]:
        if name not in self._entries:
            raise RegistryError(f"{self.key}={name!r} is unknown; valid: {', '.join(self.keys())}")
        return self._entries[name]

    def __getitem__(self, name: str) -> T:
        return self.entry(name).build

    def options(self, name: str, values: Optional[Mapping[str, Any]] = None, where: str = "") -> Any:
        """The entry's config dataclass filled from `values`; an unknown or mistyped key is a one-line error
        naming `where` (the config path of the values) and the valid keys."""
        entry = self.entry(name)
        values = dict(values or {})
        where = where or f"{self.key}[{name}]"
        if entry.config is None:
            if values:
                raise RegistryError(f"{where}: {name!r} takes no options; remove {', '.join(sorted(values))}")
            return None
        valid = [f.name for f in fields(entry.config)]
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise RegistryError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
        hints = get_type_hints(entry.config)
        try:
            return entry.config(**{k: _typed(f"{where}.{k}", v, hints.get(k)) for k, v in values.items()})
        except (TypeError, ValueError) as exc:
            raise RegistryError(f"{where}: {exc}") from None


def _typed(key: str, value: Any, hint: Any) -> Any:
    """`value` checked against a scalar field type (int -> float widening allowed); other types pass as given."""
    allowed = [t for t in (get_args(hint) or (hint,)) if t is not type(None)]
    if value is None and type(None) in get_args(hint):
        return None
    if float in allowed and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    for kind in (bool, int, str):
        if kind in allowed:
            if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
                return value
            raise RegistryError(f"{key}={value!r} must be {kind.__name__}")
    if float in allowed:
        raise RegistryError(f"{key}={value!r} must be a number")
    return value
