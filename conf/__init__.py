"""Hydra configs of `nas`; Hydra imports this package to find them, which registers the schemas they extend."""

from nas.builtins import register

register(plugins=False)  # the CLI loads plugins itself, where a failing one is reported in one line
