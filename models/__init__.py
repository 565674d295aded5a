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


def apply_sample_counts(config: dict, n_coarse: int | None, n_fine: int | None) -> None:
    """Shared set_samples body: validate and store sample counts in a model config.
    Sample counts change only the integrator, so models apply them without a rebuild."""
    if n_coarse is not None:
        if n_coarse < 2:
            raise ValueError(f"n_coarse must be >= 2, got {n_coarse}")
        config["n_coarse"] = int(n_coarse)
    if n_fine is not None:
        if n_fine < 0:
            raise ValueError(f"n_fine must be >= 0, got {n_fine}")
        config["n_fine"] = int(n_fine)


def build_model(kind: str, **options):
    """Construct a registered model by name ('nerf', 'plenoxels', 'hash')."""
    if not REGISTRY or kind not in REGISTRY:
        _load_builtin()
    if kind not in REGISTRY:
        raise ValueError(f"unknown model {kind!r}; available: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[kind](**options)
