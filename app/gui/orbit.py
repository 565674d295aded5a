"""Orbit camera for the GUI (pyglm), producing OpenGL camera-to-world matrices.

The camera sits on a sphere of ``radius`` around ``target`` and always looks at
it; ``azimuth`` turns around the world ``up`` axis and ``elevation`` tilts
towards it. With up = +Z (Blender scenes) the eye is

    target + radius * (cos el cos az, cos el sin az, sin el)

exactly like ``app.commands.render.orbit_pose``. ``c2w()`` returns a (4, 4)
float32 numpy matrix in the NeRF/OpenGL convention (camera looks down -Z, +Y up
on screen) that ``Trainer.render`` accepts as-is.
"""
from __future__ import annotations

import math

import numpy as np

try:  # PyGLM >= 2.8 prefers the package path; older releases only have the bare module
    from pyglm import glm
except ImportError:  # pragma: no cover
    import glm

MAX_ELEVATION = 89.0  # degrees: at +-90 the view direction is parallel to up and lookAt degenerates


def _axis_basis(up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors e1, e2 with e1 x e2 = up, for measuring azimuth around ``up``.

    e1 is the world axis least aligned with up (the first such on ties), so for
    up = +Z azimuth 0 points along +X and azimuth 90 along +Y.
    """
    axis = np.eye(3)[int(np.argmin(np.abs(up)))]
    e1 = axis - up * float(axis @ up)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(up, e1)
    return e1, e2


def scene_up(c2w: np.ndarray) -> np.ndarray:
    """World up (3,) of a capture: the signed world axis closest to the mean camera up.

    c2w (N, 4, 4). Blender scenes give +Z; cameras rarely roll, so the mean of
    their +Y axes is a robust estimate, snapped to an axis to keep orbits level.
    """
    mean_up = np.asarray(c2w, dtype=np.float64)[:, :3, 1].sum(0)
    i = int(np.argmax(np.abs(mean_up)))
    up = np.zeros(3)
    up[i] = 1.0 if mean_up[i] >= 0 else -1.0
    return up


class OrbitCamera:
    """Orbit / pan / zoom state. Angles in degrees, fov is the horizontal field of view.

    Mouse gestures map to: ``orbit(dx, dy)`` (left drag), ``pan(dx, dy, view_h)``
    (right/middle drag), ``zoom(clicks)`` (wheel), ``spin(dt)`` (auto-orbit).
    """

    def __init__(self, radius: float = 4.0, target=(0.0, 0.0, 0.0), azimuth: float = 0.0,
                 elevation: float = 30.0, fov: float = 40.0, up=(0.0, 0.0, 1.0),
                 min_radius: float | None = None, max_radius: float | None = None,
                 orbit_speed: float = 0.4):
        if not radius > 0:
            raise ValueError(f"radius must be > 0, got {radius}")
        up = np.asarray(up, dtype=np.float64)
        self.up = up / np.linalg.norm(up)
        self._e1, self._e2 = _axis_basis(self.up)
        self.target = np.asarray(target, dtype=np.float64).copy()
        self.radius = float(radius)
        self.min_radius = float(min_radius) if min_radius is not None else 0.05 * radius
        self.max_radius = float(max_radius) if max_radius is not None else 20.0 * radius
        self.azimuth = float(azimuth)
        self.elevation = float(np.clip(elevation, -MAX_ELEVATION, MAX_ELEVATION))
        self.fov = float(fov)
        self.orbit_speed = float(orbit_speed)  # degrees per pixel of drag

    # -- pose ---------------------------------------------------------------------------
    def direction(self) -> np.ndarray:
        """Unit vector (3,) from target to eye."""
        az, el = math.radians(self.azimuth), math.radians(self.elevation)
        return (math.cos(el) * math.cos(az) * self._e1 + math.cos(el) * math.sin(az) * self._e2
                + math.sin(el) * self.up)

    @property
    def eye(self) -> np.ndarray:
        return self.target + self.radius * self.direction()

    def c2w64(self) -> np.ndarray:
        """Camera-to-world (4, 4) float64 (for camera maths that must not lose precision)."""
        view = glm.lookAt(glm.dvec3(*self.eye), glm.dvec3(*self.target), glm.dvec3(*self.up))
        # np.array of a glm matrix is already row-major (row i = i-th row of the math matrix).
        return np.array(glm.inverse(view), dtype=np.float64)

    def c2w(self) -> np.ndarray:
        """Camera-to-world (4, 4) float32, OpenGL convention (looks down -Z)."""
        return self.c2w64().astype(np.float32)

    def focal(self, width: int) -> float:
        """Focal length in pixels for an image ``width`` pixels wide."""
        return 0.5 * width / math.tan(0.5 * math.radians(self.fov))

    def set_fov(self, fov: float) -> None:
        self.fov = float(np.clip(fov, 5.0, 150.0))

    # -- gestures -------------------------------------------------------------------------
    def orbit(self, dx: float, dy: float) -> None:
        """Drag by (dx, dy) pixels: dragging right turns the scene right (camera azimuth
        decreases); dragging down raises the camera (looks more from above)."""
        self.azimuth = (self.azimuth - self.orbit_speed * dx) % 360.0
        self.elevation = float(np.clip(self.elevation + self.orbit_speed * dy,
                                       -MAX_ELEVATION, MAX_ELEVATION))

    def pan(self, dx: float, dy: float, view_height: float) -> None:
        """Move the target in the camera plane so the point at the target depth follows
        the cursor: one pixel of a ``view_height``-pixel view spans
        2 r tan(fov_y / 2) / view_height world units (square pixels, fov_y = fov here)."""
        m = self.c2w64()
        right, cam_up = m[:3, 0], m[:3, 1]
        scale = 2.0 * self.radius * math.tan(0.5 * math.radians(self.fov)) / max(view_height, 1.0)
        # Dragging right moves the scene right, i.e. the target (and camera) left.
        self.target = self.target - right * dx * scale + cam_up * dy * scale

    def zoom(self, clicks: float, factor: float = 0.9) -> None:
        """Wheel: each click forward (positive) multiplies the radius by ``factor``; clamped."""
        self.radius = float(np.clip(self.radius * factor ** clicks, self.min_radius, self.max_radius))

    def spin(self, dt: float, degrees_per_second: float = 30.0) -> None:
        """Auto-orbit: advance the azimuth by ``dt`` seconds of rotation."""
        self.azimuth = (self.azimuth + degrees_per_second * dt) % 360.0

    # -- dataset cameras ------------------------------------------------------------------
    def set_from_c2w(self, c2w: np.ndarray) -> None:
        """Adopt a camera pose: the new target is the point of its optical axis nearest
        the current target, so views that look at the scene centre keep it as pivot."""
        m = np.asarray(c2w, dtype=np.float64)
        eye, forward = m[:3, 3], -m[:3, 2] / np.linalg.norm(m[:3, 2])
        depth = float((self.target - eye) @ forward)
        if depth <= 1e-6:  # camera faces away from the pivot: orbit a point in front of it
            depth = self.radius
        self.target = eye + depth * forward
        self.radius = float(np.clip(depth, self.min_radius, self.max_radius))
        d = -forward  # target -> eye
        self.elevation = float(np.clip(math.degrees(math.asin(np.clip(d @ self.up, -1, 1))),
                                       -MAX_ELEVATION, MAX_ELEVATION))
        self.azimuth = math.degrees(math.atan2(d @ self._e2, d @ self._e1)) % 360.0

    def nearest_view(self, c2ws: np.ndarray) -> int:
        """Index of the camera in c2ws (N, 4, 4) whose centre is closest to the eye."""
        centres = np.asarray(c2ws, dtype=np.float64)[:, :3, 3]
        return int(np.argmin(np.linalg.norm(centres - self.eye, axis=-1)))

    def snap_to_nearest(self, c2ws: np.ndarray) -> int:
        """Jump to the nearest dataset camera; returns its index."""
        i = self.nearest_view(c2ws)
        self.set_from_c2w(c2ws[i])
        return i

    def state(self) -> dict:
        return {"azimuth": self.azimuth, "elevation": self.elevation, "radius": self.radius,
                "target": [float(v) for v in self.target], "fov": self.fov}
