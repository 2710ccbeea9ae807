"""Backbones by name, so configs and sweeps can say ``--model.backbone=resnet101``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from caef.errors import CaefError
from caef.models.backbones.base import Backbone

_REGISTRY: dict[str, Callable[..., Backbone]] = {}


def register_backbone(name: str) -> Callable[[Callable[..., Backbone]], Callable[..., Backbone]]:
    def decorator(factory: Callable[..., Backbone]) -> Callable[..., Backbone]:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} registered twice")
        _REGISTRY[name] = factory
        return factory

    return decorator


def available_backbones() -> list[str]:
    _import_builtin()
    return sorted(_REGISTRY)


def build_backbone(name: str, **kwargs: Any) -> Backbone:
    """Build a registered backbone; keyword arguments go to its factory (e.g. ``width``, ``pretrained``)."""
    _import_builtin()
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise CaefError(f"unknown backbone {name!r}; choose one of {', '.join(sorted(_REGISTRY))}") from None
    return factory(**kwargs)


def _import_builtin() -> None:
    # Importing the modules runs their @register_backbone decorators.
    from caef.models.backbones import resnet38, torchvision_backbones  # noqa: F401
