"""Typed run configuration: schema, loader (YAML + dotted overrides), validation, DeepSpeed config."""
from .loader import ConfigError, config_from_yaml_text, load_config, to_yaml
from .schema import RunConfig

__all__ = ["ConfigError", "RunConfig", "config_from_yaml_text", "load_config", "to_yaml"]
