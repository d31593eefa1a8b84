"""Architectures, written only with ``graph.nn``; one file per family.

``zoo.get(name, **kwargs)`` builds a model; ``zoo.names()`` lists them; ``zoo.spec(name)``
gives the default input shape and class count each was designed for, the torchvision builder
it corresponds to, and, where ``zoo.get(name)`` is not that builder's default model, why.
``TORCHVISION_PARAMS`` holds torchvision's published parameter counts, with their sources
(``zoo/torchvision_params.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from graph.nn import Module
from zoo.torchvision_params import TORCHVISION_PARAMS


@dataclass(frozen=True)
class ModelSpec:
    """A registered model.

    ``torchvision`` names the ``torchvision.models`` builder of the same architecture (None
    where torchvision has none). ``departs`` is None when ``build()`` makes the model that
    builder makes with no arguments (same layers, same parameter names and count); otherwise
    it is one line saying how and why ours differs, or that torchvision lacks the model.
    """

    name: str
    build: Callable[..., Module]
    input_shape: tuple[int, int, int]
    num_classes: int
    torchvision: str | None = None
    departs: str | None = None

    @property
    def torchvision_params(self) -> int | None:
        """torchvision's parameter count for its default ``torchvision`` model, if any."""
        return TORCHVISION_PARAMS.get(self.torchvision) if self.torchvision else None


_MODELS: dict[str, ModelSpec] = {}


def register(
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    torchvision: str | None = None,
    departs: str | None = None,
):
    """Decorator: register a model factory under ``name``; ``torchvision`` and ``departs`` as
    in ``ModelSpec`` (a model that matches torchvision's default names a builder whose count
    ``TORCHVISION_PARAMS`` records)."""

    def wrap(build: Callable[..., Module]) -> Callable[..., Module]:
        if name in _MODELS:
            raise ValueError(f"zoo model {name!r} is registered twice")
        if departs is not None and not departs.strip():
            raise ValueError(f"zoo model {name!r}: departs must say how, but got {departs!r}")
        if torchvision is not None and departs is None and torchvision not in TORCHVISION_PARAMS:
            raise ValueError(
                f"zoo model {name!r} claims torchvision's default {torchvision!r}, whose "
                f"parameter count is not in zoo.TORCHVISION_PARAMS"
            )
        _MODELS[name] = ModelSpec(name, build, input_shape, num_classes, torchvision, departs)
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
