"""Backbones by name, so configs and sweeps can say ``--model.backbone=resnet101``.

A backbone from another package needs no edit to caef: ``--model.backbone=mypkg.nets:my_backbone`` imports the
factory (a function or a :class:`Backbone` subclass) by its import path, and a package can register names for
good through the entry-point group ``caef.backbones`` (``my_backbone = "mypkg.nets:my_backbone"``). Whatever
builds it, a backbone declares its own stage table (:meth:`Backbone.stage_modules`, ``stage_channels``), which
masking depth and AffinityNet read.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from caef.errors import CaefError
from caef.models.backbones.base import Backbone

_REGISTRY: dict[str, Callable[..., Backbone]] = {}
ENTRY_POINT_GROUP = "caef.backbones"


def register_backbone(name: str) -> Callable[[Callable[..., Backbone]], Callable[..., Backbone]]:
    def decorator(factory: Callable[..., Backbone]) -> Callable[..., Backbone]:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} registered twice")
        _REGISTRY[name] = factory
        return factory

    return decorator


def available_backbones() -> list[str]:
    """Registered names and those of installed ``caef.backbones`` entry points."""
    _import_builtin()
    return sorted(set(_REGISTRY) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def build_backbone(name: str, **kwargs: Any) -> Backbone:
    """Build a backbone by registered name, entry-point name or import path ``module:factory``; keyword arguments
    go to its factory (e.g. ``width``, ``pretrained``)."""
    backbone = resolve_backbone(name)(**kwargs)
    if not isinstance(backbone, Backbone):
        raise CaefError(
            f"backbone {name!r} built a {type(backbone).__name__}, not a caef Backbone: subclass "
            "caef.models.backbones.Backbone and declare stage_modules() and stage_channels"
        )
    return backbone


def resolve_backbone(name: str) -> Callable[..., Backbone]:
    """The factory of ``name`` (see :func:`build_backbone`)."""
    _import_builtin()
    if name in _REGISTRY:
        return _REGISTRY[name]
    for entry_point in entry_points(group=ENTRY_POINT_GROUP, name=name):
        return _load(entry_point.value, f"entry point {name!r} of {ENTRY_POINT_GROUP}", entry_point.load)
    if ":" in name:
        module, _, attribute = name.partition(":")
        return _load(name, f"backbone {name!r}", lambda: getattr(importlib.import_module(module), attribute))
    raise CaefError(
        f"unknown backbone {name!r}; choose one of {', '.join(available_backbones())}, or give an import path "
        "module:factory (e.g. mypkg.nets:my_backbone)"
    )


def _load(path: str, what: str, load: Callable[[], Any]) -> Callable[..., Backbone]:
    try:
        factory = load()
    except (ImportError, AttributeError) as exc:
        raise CaefError(f"cannot import {what} ({path}): {exc}; is its package installed / on PYTHONPATH?") from exc
    if not callable(factory):
        raise CaefError(f"{what} ({path}) is a {type(factory).__name__}, not a backbone factory or Backbone class")
    return factory


def _import_builtin() -> None:
    # Importing the modules runs their @register_backbone decorators.
    from caef.models.backbones import resnet38, torchvision_backbones  # noqa: F401
