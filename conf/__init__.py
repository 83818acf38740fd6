"""Hydra configs of `nas`; importing this package registers the structured-config schemas they extend."""

from nas.config import register_configs

register_configs()
