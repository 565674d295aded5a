"""The crop box: an axis-aligned box outside which renders see empty space.

A field holds one as ``Field.crop`` (models/field.py). Its render path (``train=False``)
passes the density of every sample through :meth:`CropBox.mask_density`, so a sample
outside the box has density 0: it absorbs nothing and shows nothing, exactly as if the
field were empty there. Training never sees the box, so moving it costs nothing and
does not teach the field anything. Mesh and point-cloud export (app/tools) use the same
box on their own points.

Density rather than ray clipping (near/far moved onto the box): a NeRF's last sample
stands for everything behind it (its interval is infinite, as in the paper), so a ray
clipped at the box would turn any density on the far face into an opaque wall.

The box lives in the field's own coordinates, which for forward-facing (NDC) scenes are
warped: there a box is not a box in the world, and callers refuse it.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class CropBox:
    """lo, hi: the min and max corners (3 floats each), lo < hi on every axis."""

    lo: tuple[float, float, float]
    hi: tuple[float, float, float]

    def __post_init__(self):
        try:
            lo = tuple(float(v) for v in self.lo)
            hi = tuple(float(v) for v in self.hi)
        except (TypeError, ValueError):
            raise ValueError(f"crop box corners must be numbers, got {self.lo!r} .. {self.hi!r}") from None
        if len(lo) != 3 or len(hi) != 3:
            raise ValueError(f"crop box corners need 3 numbers each, got {len(lo)} and {len(hi)}")
        if not (np.isfinite(lo).all() and np.isfinite(hi).all()) or any(a >= b for a, b in zip(lo, hi)):
            raise ValueError(f"crop box must be finite with min < max on every axis, got {list(lo)} .. {list(hi)}")
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)

    # -- geometry ---------------------------------------------------------------------
    def contains(self, x: torch.Tensor) -> torch.Tensor:
        """bool (...) for points x (..., 3): inside or on the box."""
        lo = torch.tensor(self.lo, dtype=x.dtype, device=x.device)
        hi = torch.tensor(self.hi, dtype=x.dtype, device=x.device)
        return ((x >= lo) & (x <= hi)).all(-1)

    def contains_np(self, x: np.ndarray) -> np.ndarray:
        """bool (N,) for points x (N, 3) as numpy."""
        x = np.asarray(x)
        return ((x >= np.asarray(self.lo)) & (x <= np.asarray(self.hi))).all(-1)

    def mask_density(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """sigma (...) with the samples at x (..., 3) outside the box set to 0."""
        return torch.where(self.contains(x), sigma, torch.zeros_like(sigma))

    def intersect(self, lo, hi) -> "CropBox | None":
        """The part of the box inside [lo, hi]; None when they do not overlap."""
        a = np.maximum(self.lo, np.asarray(lo, dtype=np.float64))
        b = np.minimum(self.hi, np.asarray(hi, dtype=np.float64))
        return CropBox(tuple(a), tuple(b)) if (a < b).all() else None

    def corners(self) -> np.ndarray:
        """(8, 3) float64, corner k has bit i of k choosing hi on axis i (for drawing handles)."""
        lo, hi = np.asarray(self.lo), np.asarray(self.hi)
        return np.array([[hi[i] if (k >> i) & 1 else lo[i] for i in range(3)] for k in range(8)])

    # -- storage ----------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"min": list(self.lo), "max": list(self.hi)}

    @classmethod
    def from_json(cls, obj) -> "CropBox":
        """From ``{"min": [x, y, z], "max": [x, y, z]}``; ValueError saying what is wrong."""
        if not isinstance(obj, dict) or "min" not in obj or "max" not in obj:
            raise ValueError(f'crop box must be {{"min": [x, y, z], "max": [x, y, z]}}, got {obj!r}')
        return cls(tuple(obj["min"]), tuple(obj["max"]))

    @classmethod
    def parse(cls, text: str) -> "CropBox":
        """From "X0,Y0,Z0,X1,Y1,Z1" (the CLI's --crop)."""
        try:
            v = [float(s) for s in str(text).split(",")]
        except ValueError:
            raise ValueError(f"need 6 comma-separated numbers X0,Y0,Z0,X1,Y1,Z1, got {text!r}") from None
        if len(v) != 6:
            raise ValueError(f"need 6 comma-separated numbers X0,Y0,Z0,X1,Y1,Z1, got {len(v)}")
        return cls(tuple(v[:3]), tuple(v[3:]))


@contextmanager
def uncropped(model):
    """Within the block the field renders whole (evaluation scores the field, not the view)."""
    saved, model.crop = model.crop, None
    try:
        yield model
    finally:
        model.crop = saved
