"""Radiance fields and encodings.

Every model implements the small protocol the trainer, GUI and exporters use:
``config`` (JSON-serialisable dict), ``render_rays(rays_o, rays_d, near, far,
background, train) -> dict`` with at least rgb (R, 3), depth (R,), acc (R,),
``loss_terms(out, target) -> dict`` of scalar losses, ``density(x) -> (N,)``,
and optionally ``step_hook(step, trainer)`` and ``param_groups(lr)``.
"""
from __future__ import annotations

from typing import Callable

REGISTRY: dict[str, Callable] = {}


def register(kind: str):
    def deco(factory):
        REGISTRY[kind] = factory
        return factory
    return deco


def _load_builtin() -> None:
    from models import nerf  # noqa: F401
    REGISTRY.setdefault("nerf", nerf.NeRFModel)
    for mod in ("models.plenoxels", "models.hashgrid"):
        try:
            __import__(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise


def build_model(kind: str, **options):
    """Construct a registered model by name ('nerf', 'plenoxels', 'hash')."""
    if not REGISTRY or kind not in REGISTRY:
        _load_builtin()
    if kind not in REGISTRY:
        raise ValueError(f"unknown model {kind!r}; available: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[kind](**options)
