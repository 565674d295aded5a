"""Dragging the crop box's faces: the screen drag projected onto a face's axis (against a
closed form, and a handle that stays under the cursor), the handles' places, a drag's
limits, the mouse gesture that routes a drag to a handle (the camera stays) or orbits,
and the handles drawn over the view."""
from __future__ import annotations

import numpy as np
import pytest

from app.gui.camera_control import Interaction
from app.gui.crop_handles import FACES, HandleDrag, drag_along_axis, face_centres, nearest_on_axis, pixel_ray
from app.gui.orbit import OrbitCamera
from app.gui.overlay import ViewCamera, project
from app.gui.scene_overlay import AXIS_COLORS, SceneOverlay
from tests.conftest import look_at

W, H, FOV = 64, 48, 40.0


def test_drag_along_the_x_axis_seen_from_the_side_matches_the_closed_form():
    """Camera at (0, -5, 0) looking at the origin, z up; the axis is the world x axis
    through the origin. The ray through a pixel with camera-space direction (a, c, -1)
    is (0, -5, 0) + s (a, 1, c); its nearest point on the x axis is at x = 5 a / (1 + c^2)
    (a on the image's horizontal line through the centre: the ray meets the axis)."""
    cam = ViewCamera(look_at((0.0, -5.0, 0.0)), FOV, W, H)
    f = cam.focal

    def x_under(u, v):
        a, c = (u - W / 2) / f, -(v - H / 2) / f
        return 5 * a / (1 + c * c)

    x_axis = np.array([1.0, 0.0, 0.0])
    for start, now in (((32, 24), (50, 24)), ((10, 24), (60, 24)), ((40, 5), (12, 40)), ((32, 24), (32, 2))):
        got = drag_along_axis(cam, np.zeros(3), x_axis, start, now)
        assert got == pytest.approx(x_under(*now) - x_under(*start), abs=1e-12)
    assert drag_along_axis(cam, np.zeros(3), x_axis, (32, 24), (32, 2)) == pytest.approx(0.0, abs=1e-12)
    # The y axis points straight at this camera: it cannot be dragged from here.
    assert drag_along_axis(cam, np.zeros(3), np.array([0.0, 1.0, 0.0]), (32, 24), (40, 30)) is None


def test_the_dragged_point_stays_under_the_cursor():
    """Moving the cursor to where origin + s * axis is seen moves the point by exactly s,
    whatever the view and the axis (perspective included)."""
    rng = np.random.default_rng(3)
    checked = 0
    for _ in range(20):
        cam = ViewCamera(look_at(rng.normal(size=3) * 2 + np.array([0, 0, 5])), 50.0, W, H)
        origin = rng.uniform(-0.5, 0.5, 3)
        axis = np.eye(3)[rng.integers(3)]
        s = rng.uniform(-0.6, 0.6)
        u0, v0, _ = project(origin, cam)
        u1, v1, z1 = project(origin + s * axis, cam)
        if z1 <= 0.1 or nearest_on_axis(*pixel_ray(cam, u0, v0), origin, axis) is None:
            continue
        assert drag_along_axis(cam, origin, axis, (u0, v0), (u1, v1)) == pytest.approx(s, abs=1e-9)
        checked += 1
    assert checked >= 15


def test_pixel_ray_is_the_inverse_of_project():
    cam = ViewCamera(look_at((3.0, 1.0, 2.0)), FOV, W, H)
    o, d = pixel_ray(cam, 11.5, 40.25)
    u, v, z = project(o + 2.5 * d, cam)
    assert (u, v) == pytest.approx((11.5, 40.25)) and z > 0 and np.linalg.norm(d) == pytest.approx(1.0)


def test_face_centres():
    c = face_centres((-1.0, -0.5, 0.0), (1.0, 0.5, 2.0))
    np.testing.assert_allclose(c, [[-1, 0, 1], [1, 0, 1], [0, -0.5, 1], [0, 0.5, 1], [0, 0, 0], [0, 0, 2]])
    assert FACES[1] == (0, 1) and FACES[4] == (2, 0)  # x max, z min


def drag_of(k, lo=(-1.0, -1.0, -1.0), hi=(1.0, 1.0, 1.0)):
    """A HandleDrag of face k seen from (0, -5, 0); screen position = pixel."""
    cam = ViewCamera(look_at((0.0, -5.0, 0.0)), FOV, W, H)
    calls = []
    u, v, _ = project(face_centres(lo, hi)[k], cam)
    d = HandleDrag(cam, k, np.array(lo), np.array(hi), (u, v), lambda p: p, lambda k, x: calls.append((k, x)),
                   limit=1.5, min_size=0.01)
    return d, (u, v), cam, calls


def test_handle_drag_moves_its_face_within_the_limits():
    d, (u, v), cam, calls = drag_of(1)  # x max, at (1, 0, 0): the axis runs along the image's x
    u_to, v_to, _ = project(np.array([1.3, 0.0, 0.0]), cam)
    d.move((u_to, v_to))
    assert calls[-1][0] == 1 and calls[-1][1] == pytest.approx(1.3, abs=1e-9)
    d.move((u_to + 500, v))  # far right: clamped at the fields' cube
    assert calls[-1][1] == 1.5
    d.move((-500, v))  # far left: stops short of the x min face
    assert calls[-1][1] == pytest.approx(-1.0 + 0.01)
    n = len(calls)
    d.move((-600, v))  # still clamped: nothing new to say
    assert len(calls) == n
    d, _, _, calls = drag_of(0)  # x min dragged right stops short of x max
    d.move((1000, v))
    assert calls[-1] == (0, pytest.approx(1.0 - 0.01))


class Grabbed:
    def __init__(self):
        self.moves = []

    def move(self, pos):
        self.moves.append(pos)


def test_a_left_drag_on_a_handle_moves_it_and_not_the_camera():
    cam = OrbitCamera(radius=4.0, azimuth=30.0)
    changes, clicks = [], []
    handle = Grabbed()
    on_handle = lambda pos: pos[0] < 10  # noqa: E731 - a handle covers x < 10
    it = Interaction(cam, changes.append, hit=lambda p: True, view_height=lambda: 100.0,
                     on_click=lambda b, p: clicks.append(b), grab=lambda p: handle if on_handle(p) else None)
    state = cam.state()
    it.press("left", (5, 5))
    for x in (8, 20, 40):
        it.move((x, 5))
    it.release()
    assert handle.moves == [(8, 5), (20, 5), (40, 5)] and cam.state() == state and changes == [] and clicks == []
    it.press("left", (50, 5))  # elsewhere: the camera orbits
    it.move((80, 5))
    it.release()
    assert cam.state()["azimuth"] != state["azimuth"] and changes == [True, False] and len(handle.moves) == 3
    it.press("right", (5, 5))  # another button on a handle pans, as before
    it.move((5, 30))
    it.release()
    assert len(handle.moves) == 3 and changes[-1] is False and cam.state()["target"] != state["target"]
    it.press("left", (5, 5))  # a click (no move) on a handle is still a click
    it.release()
    assert clicks == ["left"]


def test_crop_layer_draws_a_handle_per_face_in_its_axis_colour():
    from renderer.crop import CropBox

    ov = SceneOverlay(None)
    ov.set_scene({"cameras": {}, "radius": 4.0, "ndc": False})
    ov.toggle("cameras", False)
    ov.set_crop(CropBox((-1.0, -0.5, 0.0), (1.0, 0.5, 2.0)))
    layer = ov.layer()
    assert len(layer.segments) == 12 and len(layer.points) == 14
    np.testing.assert_allclose(layer.points[8:], face_centres((-1.0, -0.5, 0.0), (1.0, 0.5, 2.0)))
    np.testing.assert_allclose(layer.point_colors[8:], AXIS_COLORS[[0, 0, 1, 1, 2, 2]])
