"""Load the run config: dataclass defaults <- recipe YAML <- `a.b=c` overrides, then validate.

OmegaConf's structured configs give type checking and unknown-key errors for free; this module only
turns its multi-line exceptions into the one-line errors a user needs.
"""
from __future__ import annotations

import reprlib
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union, get_args, get_origin, get_type_hints

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException, ValidationError

from .schema import RunConfig
from .validate import validate


class ConfigError(ValueError):
    """A config problem, phrased as one line naming the key and the fix."""


def _field_type(key: str) -> Optional[str]:
    """The schema's type of a dotted key as written in schema.py (None when the key is not a field)."""
    schema: Any = RunConfig
    hint: Any = None
    for part in key.split("."):
        if not is_dataclass(schema) or part not in (hints := get_type_hints(schema)):
            return None
        hint = schema = hints[part]
    return getattr(hint, "__name__", None) if isinstance(hint, type) else str(hint).replace("typing.", "")


def _describe(exc: OmegaConfBaseException) -> str:
    key = getattr(exc, "full_key", None)
    msg = " ".join(str(exc).split("\n")[0].split())
    if "Key '" in msg and "not in" in msg:
        return f"unknown config key {key!r}; see `launchers/pretrain.py --help-config` for valid keys"
    if not key:
        return msg
    # Only a type mismatch is fixed by the field's type (an interpolation error, say, is not).
    expected = _field_type(str(key)) if isinstance(exc, ValidationError) else None
    return f"invalid value for {key!r}: {msg.rstrip('.')}" + (f"; {key} must be of type {expected}" if expected else "")


def _yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    """Where and what, in one line: PyYAML's own message spans several lines with a caret drawing."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is not None and problem:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    position = getattr(exc, "position", None)  # ReaderError: a character YAML refuses (e.g. NUL)
    first = " ".join(str(exc).splitlines()[0].split())
    if isinstance(position, int):
        return f"line {text.count(chr(10), 0, position) + 1}: {first}"
    return first


def _read_recipe(recipe: str) -> dict[str, Any]:
    """The recipe's top-level mapping; every way a file can fail to be one is a one-line ConfigError."""
    path = Path(recipe)
    if not path.exists():
        raise ConfigError(f"recipe {recipe!r} does not exist; pass an existing YAML file to --config")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"recipe {recipe!r} cannot be read ({exc.strerror}); pass a readable YAML file "
                          f"to --config") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"recipe {recipe!r} is not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}); "
                          "save it as UTF-8 YAML") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {recipe!r} is not valid YAML ({_yaml_problem(exc, text)}); fix it there") from None
    except RecursionError:
        raise ConfigError(f"recipe {recipe!r} nests too deeply to be a config; flatten it") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {recipe!r} must be a YAML mapping of config sections (train:, model:, ...), "
                          f"not {reprlib.repr(data)}")
    return data


def _container_kind(hint: Any) -> Optional[type]:
    """list or dict for a (possibly Optional) container field, else None (scalars and sections)."""
    args = [a for a in get_args(hint) if a is not type(None)] if get_origin(hint) is Union else [hint]
    origin = get_origin(args[0]) if len(args) == 1 else None
    return origin if origin in (list, dict) else None


def _check_shapes(values: Mapping[Any, Any], schema: type, prefix: str = "") -> None:
    """A section or list given as the wrong kind of value makes OmegaConf's merge fail without naming the
    key (or with a bare TypeError); name the key and what it takes here."""
    hints = get_type_hints(schema)
    for f in fields(schema):
        if f.name not in values:
            continue
        key, value, hint = prefix + f.name, values[f.name], hints[f.name]
        if is_dataclass(hint):
            if value is None:
                raise ConfigError(f"{key} is empty; indent its keys under it or remove it")
            if not isinstance(value, Mapping):
                example = fields(hint)[0].name
                raise ConfigError(f"{key}={value!r} must be a mapping of {key}.* keys, e.g. {key}.{example}")
            _check_shapes(value, hint, key + ".")
        elif (kind := _container_kind(hint)) is not None and value is not None:
            wanted = "a list, e.g. [1, 2]" if kind is list else "a mapping, e.g. {name: value}"
            if not isinstance(value, list if kind is list else Mapping):
                raise ConfigError(f"{key}={value!r} must be {wanted}")


def _recipe_layer(recipe: str) -> DictConfig:
    data = _read_recipe(recipe)
    try:
        _check_shapes(data, RunConfig)
        return OmegaConf.create(data)
    except ConfigError as exc:
        raise ConfigError(f"recipe {recipe!r}: {exc}") from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"recipe {recipe!r}: {_describe(exc)}") from None
    except RecursionError:  # an anchor that contains its own alias (`a: &x {b: *x}`) never ends
        raise ConfigError(f"recipe {recipe!r} refers to itself through a YAML alias; write the values out") from None


def _override_layer(item: str) -> DictConfig:
    if "=" not in item or item.startswith("="):
        raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.max_steps=100)")
    try:
        layer = OmegaConf.from_dotlist([item])
    except yaml.YAMLError as exc:
        value = item.split("=", 1)[1]
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({_yaml_problem(exc, value)}); "
                          "quote it or close its brackets") from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"override {item!r}: {_describe(exc)}") from None
    _check_shapes(OmegaConf.to_container(layer), RunConfig)
    return layer


def load_config(recipe: Optional[str] = None, overrides: Sequence[str] = ()) -> RunConfig:
    """Compose defaults, an optional YAML recipe and dotted overrides into a validated RunConfig."""
    merged = OmegaConf.structured(RunConfig)
    if recipe is not None:
        layer = _recipe_layer(recipe)
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as exc:
            raise ConfigError(f"recipe {recipe!r}: {_describe(exc)}") from None
    try:
        merged = OmegaConf.merge(merged, *[_override_layer(item) for item in overrides])
        cfg: RunConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        raise ConfigError(_describe(exc)) from None
    problems = validate(cfg)
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))
    return cfg


def to_yaml(cfg: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def config_from_yaml_text(text: str) -> RunConfig:
    """Rebuild a RunConfig saved by :func:`to_yaml` (checkpoints, run dirs)."""
    merged = OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.create(text))
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def flat_keys(cfg: Optional[RunConfig] = None) -> list[str]:
    """All dotted keys with their current values, for `--help-config`."""
    node = OmegaConf.structured(cfg or RunConfig)

    def walk(prefix: str, value) -> list[str]:
        if OmegaConf.is_dict(value) and value._is_none():  # an optional section left null (no public test)
            return [f"{prefix[:-1]}=None"]
        if OmegaConf.is_dict(value):
            return [line for k, v in value.items_ex(resolve=False) for line in walk(f"{prefix}{k}.", v)]
        return [f"{prefix[:-1]}={value}"]

    return walk("", node)
