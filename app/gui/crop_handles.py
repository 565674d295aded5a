"""Dragging the crop box's faces in the view: a handle at the centre of each of the six
faces; dragging one moves that face along its axis while the camera stays put.

The drag is projected onto the axis exactly, perspective included: the face follows the
point of its axis that lies under the mouse (the point of the axis line nearest to the
mouse's ray), so the handle stays under the cursor as long as the cursor stays on the
axis's line on screen, and a drag across that line moves the face by the part of it along
the line. Pure numpy; the GUI glue is HandleDrag (driven by app.gui.camera_control's
Interaction) and app.gui.crop_panel.CropPanel.grab.
"""
from __future__ import annotations

import math

import numpy as np

from app.gui.overlay import ViewCamera

FACES = [(axis, end) for axis in range(3) for end in (0, 1)]  # handle k: axis k // 2, end 0 = min, 1 = max
HANDLE_RADIUS_PX = 12.0  # screen pixels around a handle that grab it
# An axis seen within this angle of end-on moves its face by huge amounts per pixel: no drag.
MIN_AXIS_ANGLE_DEG = 5.0


def face_centres(lo, hi) -> np.ndarray:
    """(6, 3): the centres of the box's faces in FACES order (x min, x max, y min, ...)."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    mid = (lo + hi) / 2
    out = np.tile(mid, (6, 1))
    for k, (axis, end) in enumerate(FACES):
        out[k, axis] = hi[axis] if end else lo[axis]
    return out


def pixel_ray(cam: ViewCamera, u: float, v: float) -> tuple[np.ndarray, np.ndarray]:
    """(origin, unit direction) in the world of the ray through continuous pixel (u, v):
    the points that app.gui.overlay.project maps to (u, v)."""
    m = np.asarray(cam.c2w, np.float64)
    f = cam.focal
    d = m[:3, :3] @ np.array([(u - 0.5 * cam.width) / f, -(v - 0.5 * cam.height) / f, -1.0])
    return m[:3, 3].copy(), d / np.linalg.norm(d)


def nearest_on_axis(ray_o, ray_d, origin, axis):
    """t of the point ``origin + t * axis`` (axis a unit vector) nearest to the ray, or
    None when the axis is within MIN_AXIS_ANGLE_DEG of the ray's direction."""
    o, a = np.asarray(origin, np.float64), np.asarray(axis, np.float64)
    e, d = np.asarray(ray_o, np.float64), np.asarray(ray_d, np.float64)
    b = float(a @ d)  # both unit: b = cos(angle between them)
    denom = 1.0 - b * b
    if denom < math.sin(math.radians(MIN_AXIS_ANGLE_DEG)) ** 2:
        return None
    w = o - e
    return float((b * (d @ w) - a @ w) / denom)


def drag_along_axis(cam: ViewCamera, origin, axis, start, now):
    """How far along ``axis`` (unit) a drag on screen from pixel ``start`` to pixel
    ``now`` (continuous (u, v) of ``cam``'s image) moves a point grabbed near ``origin``:
    the difference of the axis points under the two mouse positions. None when the axis
    is seen end-on."""
    t0 = nearest_on_axis(*pixel_ray(cam, *start), origin, axis)
    t1 = nearest_on_axis(*pixel_ray(cam, *now), origin, axis)
    return None if t0 is None or t1 is None else t1 - t0


class HandleDrag:
    """One face being dragged: ``set_face(k, value)`` is called with the face's new
    coordinate as the mouse moves. cam: the view the handle was grabbed in (the camera
    does not move during the drag); to_px: screen position -> that view's pixel (u, v)."""

    def __init__(self, cam: ViewCamera, k: int, lo, hi, start_pos, to_px, set_face, limit: float, min_size: float):
        self.cam, self.k, self.to_px, self.set_face = cam, k, to_px, set_face
        self.axis_index, self.end = FACES[k]
        self.axis = np.eye(3)[self.axis_index]
        self.origin = face_centres(lo, hi)[k]
        self.start = to_px(start_pos)
        self.value0 = float(self.origin[self.axis_index])
        # The face stays inside the fields' cube and this side of the opposite face.
        other = float((lo if self.end else hi)[self.axis_index])
        self.bounds = (other + min_size, limit) if self.end else (-limit, other - min_size)
        self.value = self.value0

    def move(self, pos) -> None:
        dt = drag_along_axis(self.cam, self.origin, self.axis, self.start, self.to_px(pos))
        if dt is None:
            return
        value = min(max(self.value0 + dt, self.bounds[0]), self.bounds[1])
        if value != self.value:
            self.value = value
            self.set_face(self.k, value)
