"""In-memory multi-view scene shared by every loader."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from loaders.normalize import Similarity
from renderer.cameras import Cameras


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
    cameras: each image's intrinsics and distortion (renderer.cameras); by default the
    single ``focal`` with the principal point at the centre (the Blender scenes).
    ``focal`` stays the first camera's fx, for what needs one number (a GUI field of view).
    """

    images: np.ndarray
    c2w: np.ndarray
    focal: float
    names: list[str] = field(default_factory=list)
    alpha: np.ndarray | None = None
    cameras: Cameras | None = None

    def __post_init__(self):
        if self.cameras is None:
            self.cameras = Cameras.pinhole(len(self.images), self.width, self.height, self.focal)
        elif len(self.cameras) != len(self.images):
            raise ValueError(f"{len(self.cameras)} cameras for {len(self.images)} images")

    def subset(self, keep) -> "Split":
        """The views where the boolean mask (or index array) ``keep`` selects."""
        keep = np.asarray(keep)
        idx = np.flatnonzero(keep) if keep.dtype == bool else keep
        return Split(self.images[idx], self.c2w[idx], self.focal, [self.names[i] for i in idx] if self.names
                     else [], None if self.alpha is None else self.alpha[idx], self.cameras[idx])

    def holdout(self, every: int) -> tuple["Split", "Split"]:
        """(train, test): views 0, every, 2 every, ... are the test split (the NeRF
        protocol for scenes that ship one split); at least one view stays in each."""
        test = np.arange(len(self)) % every == 0
        if test.all():
            test[1:] = False
        if len(self) < 2:
            return self, self
        return self.subset(~test), self.subset(test)

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
    kind: "object" (images with alpha: an object on a known background, the Blender
    scenes) or "capture" (a real photo capture: opaque images, a background to model).
    normalization: world (the files' frame) -> this scene's frame (loaders.normalize);
    results leaving the scene's frame go through its inverse (``to_world_*``).
    points: sparse 3-D points (M, 3) in the scene's frame when the capture has them,
    with colours (M, 3) uint8.
    """

    splits: dict[str, Split]
    near: float
    far: float
    white_bkgd: bool
    source: str
    ndc: bool = False
    notes: list[str] = field(default_factory=list)
    kind: str = "object"
    normalization: Similarity = field(default_factory=Similarity.identity)
    points: np.ndarray | None = None
    point_colors: np.ndarray | None = None

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

    # -- leaving the normalised frame --------------------------------------------------------
    def to_world_points(self, x) -> np.ndarray:
        """Points (..., 3) in the scene's frame -> the capture's world frame (meshes,
        point clouds)."""
        return self.normalization.inverse().points(x)

    def to_world_poses(self, c2w) -> np.ndarray:
        """Camera-to-world (..., 4, 4) in the scene's frame -> the world frame."""
        return self.normalization.inverse().poses(c2w)

    def from_world_poses(self, c2w) -> np.ndarray:
        """Camera-to-world (..., 4, 4) given in the world frame -> the scene's frame."""
        return self.normalization.poses(c2w)
