"""The camera path being edited: keyframes in the scene's frame, in time order, and the
conversions the editor needs (to and from app.tools.camera_path.CameraPath in the
capture's frame, the GUI's horizontal field of view and the path's vertical one)."""
from __future__ import annotations

import math

import numpy as np

from app.tools.camera_path import CameraPath, Keyframe

DEFAULT_GAP_S = 1.0  # a new keyframe comes this long after the last


def vertical_fov(fov_h: float, width: int, height: int) -> float:
    """Vertical fov (degrees) of a view ``width`` x ``height`` with horizontal fov ``fov_h``."""
    return math.degrees(2 * math.atan(math.tan(math.radians(fov_h) / 2) * height / width))


def horizontal_fov(fov_v: float, width: int, height: int) -> float:
    return math.degrees(2 * math.atan(math.tan(math.radians(fov_v) / 2) * width / height))


class KeyframeList:
    """Keyframes whose times increase with their position in the list. Moving a keyframe
    up or down swaps its pose and fov with its neighbour's; the times stay in place, so
    the order of the list is the order of the flight."""

    def __init__(self):
        self.keys: list[Keyframe] = []
        self.selected: int | None = None
        self.loop = False

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, c2w, fov_v: float, gap: float = DEFAULT_GAP_S) -> int:
        """Append a keyframe ``gap`` seconds after the last (at 0 s if first); selects it."""
        t = self.keys[-1].time + gap if self.keys else 0.0
        self.keys.append(Keyframe(np.asarray(c2w, np.float64), float(fov_v), t))
        self.selected = len(self.keys) - 1
        return self.selected

    def delete(self, i: int) -> None:
        del self.keys[i]
        self.selected = min(i, len(self.keys) - 1) if self.keys else None

    def move(self, i: int, delta: int) -> int:
        """Swap keyframe i's pose and fov with keyframe i + delta's; returns where it went
        (i itself when it cannot move further)."""
        j = i + delta
        if not (0 <= j < len(self.keys)) or delta == 0:
            return i
        a, b = self.keys[i], self.keys[j]
        a.c2w, b.c2w, a.fov, b.fov = b.c2w, a.c2w, b.fov, a.fov
        self.selected = j
        return j

    def set_time(self, i: int, t: float) -> None:
        """ValueError, changing nothing, unless t lies strictly between the neighbours' times."""
        t = float(t)
        lo = self.keys[i - 1].time if i > 0 else -math.inf
        hi = self.keys[i + 1].time if i + 1 < len(self.keys) else math.inf
        if not (math.isfinite(t) and t >= 0 and lo < t < hi):
            raise ValueError(f"keyframe {i + 1}: time {t:g} s must be >= 0 and between its neighbours' "
                             f"({lo:g} s and {hi:g} s)")
        self.keys[i].time = t

    def set_fov(self, i: int, fov_v: float) -> None:
        if not 1.0 <= float(fov_v) <= 170.0:
            raise ValueError(f"keyframe {i + 1}: fov must be between 1 and 170 degrees, got {fov_v:g}")
        self.keys[i].fov = float(fov_v)

    def labels(self) -> list[str]:
        return [f"{i + 1:2d}   t {k.time:6.2f} s   fov {k.fov:5.1f} deg" for i, k in enumerate(self.keys)]

    # -- conversions ---------------------------------------------------------------------------
    def camera_path(self, to_world=None, width: int = 1280, height: int = 720, fps: float = 30.0) -> CameraPath:
        """A CameraPath (poses mapped by to_world(c2w (N, 4, 4)) -> (N, 4, 4), the scene's
        inverse normalisation; None keeps them) with the first key at time 0."""
        t0 = self.keys[0].time if self.keys else 0.0
        poses = np.stack([k.c2w for k in self.keys]) if self.keys else np.zeros((0, 4, 4))
        if to_world is not None and len(poses):
            poses = to_world(poses)
        keys = [Keyframe(p, k.fov, k.time - t0) for p, k in zip(poses, self.keys)]
        return CameraPath(keys, loop=self.loop, width=int(width), height=int(height), fps=float(fps))

    def replace(self, path: CameraPath, from_world=None) -> None:
        """Take the keyframes of ``path`` (poses mapped by from_world, see camera_path)."""
        poses = np.stack([k.c2w for k in path.keyframes])
        if from_world is not None:
            poses = from_world(poses)
        self.keys = [Keyframe(p, k.fov, k.time) for p, k in zip(poses, path.keyframes)]
        self.loop = path.loop
        self.selected = 0 if self.keys else None

    def curve(self, samples_per_second: float = 40.0, max_samples: int = 2000) -> np.ndarray:
        """Camera centres (K, 3) along the smooth path, for drawing; empty below 2 keys."""
        if len(self.keys) < 2:
            return np.zeros((0, 3))
        path = self.camera_path()
        sp = path.spline()
        n = int(np.clip(path.seconds * samples_per_second, 8 * len(self.keys), max_samples))
        return np.array([sp.evaluate(t)[0][:3, 3] for t in np.linspace(0.0, path.seconds, n + 1)])
