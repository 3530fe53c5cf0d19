"""Load the run config: dataclass defaults <- recipe YAML <- `a.b=c` overrides, then validate.

OmegaConf's structured configs give type checking and unknown-key errors for free; this module only
turns its multi-line exceptions into the one-line errors a user needs.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .schema import RunConfig
from .validate import validate


class ConfigError(ValueError):
    """A config problem, phrased as one line naming the key and the fix."""


def _describe(exc: OmegaConfBaseException) -> str:
    key = getattr(exc, "full_key", None)
    msg = str(exc).splitlines()[0]
    if "Key '" in msg and "not in" in msg:
        return f"unknown config key {key!r}; see `launchers/pretrain.py --help-config` for valid keys"
    return f"invalid value for {key!r}: {msg}" if key else msg


def load_config(recipe: Optional[str] = None, overrides: Sequence[str] = ()) -> RunConfig:
    """Compose defaults, an optional YAML recipe and dotted overrides into a validated RunConfig."""
    base = OmegaConf.structured(RunConfig)
    layers = []
    if recipe is not None:
        if not os.path.isfile(recipe):
            raise ConfigError(f"recipe {recipe!r} does not exist; pass an existing YAML file to --config")
        try:
            data = yaml.safe_load(Path(recipe).read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"recipe {recipe!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"recipe {recipe!r} must be a YAML mapping of config sections")
        layers.append(OmegaConf.create(data))
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.max_steps=100)")
    if overrides:
        layers.append(OmegaConf.from_dotlist(list(overrides)))
    try:
        merged = OmegaConf.merge(base, *layers)
        cfg: RunConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        raise ConfigError(_describe(exc)) from None
    problems = validate(cfg)
    if problems:
        raise ConfigError(problems[0] if len(problems) == 1 else "; ".join(problems))
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
        if OmegaConf.is_dict(value):
            return [line for k, v in value.items_ex(resolve=False) for line in walk(f"{prefix}{k}.", v)]
        return [f"{prefix[:-1]}={value}"]

    return walk("", node)
