"""Radiance fields. Each field is one file implementing models.field.Field and one line
in REGISTRY below; the CLI's --model choices and the GUI's model list come from here."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the registry itself imports no torch: `main.py --help` stays light
    from models.field import Field


# name -> "module:class". Order is the order the GUI lists them in.
REGISTRY: dict[str, str] = {
    "nerf": "models.nerf:NeRFModel",
    "plenoxels": "models.plenoxels:Plenoxels",
    "hash": "models.hashgrid:HashGridModel",
    "nerfacto": "models.nerfacto:NerfactoField",
}


def register(name: str, target: str | type) -> None:
    """Add a field at run time (tests, plug-ins): target a class or "module:class"."""
    REGISTRY[name] = target


def model_class(name: str) -> "type[Field]":
    """The Field subclass registered under name; ValueError naming the choices otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(REGISTRY)}")
    target = REGISTRY[name]
    if isinstance(target, str):
        mod, cls = target.split(":")
        target = getattr(importlib.import_module(mod), cls)
    return target


def available() -> list[str]:
    return list(REGISTRY)


def is_capture(scene) -> bool:
    """Whether a loaded scene is a real capture (photos of the world, background at every
    distance) that its own fields should model: the loader's ``Scene.kind`` "capture",
    unless rendered in NDC (a forward-facing capture is bounded by its NDC box and suits
    the object fields, which do well there)."""
    return getattr(scene, "kind", "object") == "capture" and not scene.ndc


def default_model(cuda: bool, scene=None) -> str:
    """The model a front end picks when the user names none: the highest default rank for
    the device, or, for a real capture (``is_capture``), the highest capture rank."""
    capture = scene is not None and is_capture(scene)

    def rank(name):
        p = model_class(name).policy(cuda, {})
        if capture and p.default_rank_capture:
            return (1, p.default_rank_capture)
        return (0, p.default_rank_cuda if cuda else p.default_rank_cpu)
    return max(REGISTRY, key=rank)


def build_model(kind: str, **options) -> "Field":
    """Construct a registered model by name with its options."""
    return model_class(kind)(**options)
