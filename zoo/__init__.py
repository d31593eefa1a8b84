"""Architectures, written only with ``graph.nn``; one file per family.

``zoo.get(name, **kwargs)`` builds a model; ``zoo.names()`` lists them; ``zoo.spec(name)``
gives the default input shape and class count each was designed for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from graph.nn import Module


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[..., Module]
    input_shape: tuple[int, int, int]
    num_classes: int


_MODELS: dict[str, ModelSpec] = {}


def register(name: str, input_shape: tuple[int, int, int], num_classes: int):
    """Decorator: register a model factory under ``name``."""

    def wrap(build: Callable[..., Module]) -> Callable[..., Module]:
        if name in _MODELS:
            raise ValueError(f"zoo model {name!r} is registered twice")
        _MODELS[name] = ModelSpec(name, build, input_shape, num_classes)
        return build

    return wrap


def names() -> list[str]:
    return sorted(_MODELS)


def spec(name: str) -> ModelSpec:
    try:
        return _MODELS[name]
    except KeyError:
        raise KeyError(f"unknown zoo model {name!r}; known models: {names()}") from None


def get(name: str, **kwargs: object) -> Module:
    """Build zoo model ``name`` (keyword arguments go to its factory, e.g. num_classes)."""
    return spec(name).build(**kwargs)


def _register_families() -> None:
    """Import every family module in this package; each registers its models on import."""
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_register_families()
