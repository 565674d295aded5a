"""In-memory multi-view scene shared by every loader."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class DataError(ValueError):
    """Bad input data. The message always names the offending file and the problem."""

    def __init__(self, path, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}")


@dataclass
class Split:
    """One split of posed images.

    images (N, H, W, 3) float32 in [0, 1] (already composited on the background),
    c2w (N, 4, 4) float32 OpenGL camera-to-world, focal in pixels, names (N,).
    alpha (N, H, W) float16 coverage when the files had an alpha channel (else None):
    with it a trainer can swap the background (``image + (1 - alpha) * (new - old)``
    is exact, also after box downscaling, since both are linear).
    """

    images: np.ndarray
    c2w: np.ndarray
    focal: float
    names: list[str] = field(default_factory=list)
    alpha: np.ndarray | None = None

    @property
    def height(self) -> int:
        return int(self.images.shape[1])

    @property
    def width(self) -> int:
        return int(self.images.shape[2])

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass
class Scene:
    """Splits plus the bounds the renderer needs.

    near/far bound the ray segment; white_bkgd says which colour transparent
    pixels were composited on, so the renderer can use the same background.
    ndc: rays should be mapped to NDC (forward-facing LLFF scenes).
    """

    splits: dict[str, Split]
    near: float
    far: float
    white_bkgd: bool
    source: str
    ndc: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def background(self) -> float:
        return 1.0 if self.white_bkgd else 0.0

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise DataError(self.source, f"no '{name}' split (have: {', '.join(self.splits)})")
        return self.splits[name]

    @property
    def scene_radius(self) -> float:
        """Distance of the farthest training camera from the origin (orbit default)."""
        return float(np.linalg.norm(self.splits["train"].c2w[:, :3, 3], axis=-1).max())
