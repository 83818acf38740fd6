"""One registry pattern for every pluggable part: targets, datasets, search spaces, predictors and samplers.

A part registers under a name with its config dataclass (as timm's ``register_model`` does for models), and the
registry stores that dataclass in Hydra's ConfigStore, so ``target=NAME`` composes and validates it like a
built-in. Built-ins ship a YAML in ``conf/<group>/`` that names the schema (``defaults: [NAME_schema]``); a
plugin without a YAML is selectable as ``<group>=NAME`` all the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from nas.core.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    factory: T
    config: type | None


class Registry(Generic[T]):
    """Name -> factory (a class or a function) and its config dataclass, for one kind of part."""

    def __init__(self, kind: str, group: str | None = None) -> None:
        self.kind, self.group = kind, group
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, config: type | None = None, option: bool = True) -> Callable[[T], T]:
        """Decorator: ``@targets.register("onnxruntime", OrtConfig)`` on the implementation.

        With a config and a Hydra group, the config is stored as ``<name>_schema`` (a YAML's ``defaults`` entry),
        and, with ``option``, also as the option ``<group>=<name>`` itself (for plugins, which ship no YAML; the
        built-ins pass ``option=False``: their YAMLs are the options)."""

        def add(factory: T) -> T:
            self._entries[name] = Entry(name, factory, config)
            if config is not None and self.group is not None:
                _store_config(self.group, name, config, option)
            return factory

        return add

    def get(self, name: str) -> Entry[T]:
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind} {name!r}: use one of {', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries


# The registries themselves live here, in the bottom layer, so that the config schema can check a name
# (``study.sampler``, ``predictor.kind``) without importing any implementation; ``nas.builtins`` fills them.
targets: Registry[Any] = Registry("target", group="target")
datasets: Registry[Any] = Registry("dataset", group="dataset")
spaces: Registry[Any] = Registry("search space")
predictors: Registry[Any] = Registry("predictor")
samplers: Registry[Any] = Registry("sampler")


def _store_config(group: str, name: str, config: type, option: bool) -> None:
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(group=group, name=f"{name}_schema", node=config)
    if option:  # selectable as group=name with the dataclass defaults
        cs.store(group=group, name=name, node=config(name=name) if _has_field(config, "name") else config)


def _has_field(config: type, field_name: str) -> bool:
    return field_name in getattr(config, "__dataclass_fields__", {})


def load_plugins() -> list[str]:
    """Import plugin modules: the ``nas.plugins`` entry-point group, and ``NAS_PLUGINS`` (comma-separated modules).

    A plugin module registers its parts on import; importing it is all this does.
    """
    import importlib
    import os
    from importlib.metadata import entry_points

    names = [ep.value for ep in entry_points(group="nas.plugins")]
    names += [m.strip() for m in os.environ.get("NAS_PLUGINS", "").split(",") if m.strip()]
    for module in names:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ConfigError(f"plugin {module!r} cannot be imported ({e}); check NAS_PLUGINS and PYTHONPATH") from None
    return names

