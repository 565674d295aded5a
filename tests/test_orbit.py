"""Orbit camera math against hand-computed poses and an independent orbit formula."""
import math

import numpy as np
import pytest

from app.commands.render import orbit_pose
from app.gui.orbit import MAX_ELEVATION, OrbitCamera, scene_up


def project(c2w, p, focal, cx, cy):
    """Pixel (x right, y down) of world point p seen by camera c2w (OpenGL, looks down -Z)."""
    w2c = np.linalg.inv(np.asarray(c2w, dtype=np.float64))
    xc, yc, zc = (w2c @ np.append(p, 1.0))[:3]
    return np.array([cx + focal * xc / -zc, cy - focal * yc / -zc])


def test_hand_computed_pose_on_x_axis():
    cam = OrbitCamera(radius=4.0, azimuth=0.0, elevation=0.0)
    # Eye at +4 X looking at the origin with +Z up: forward -X, right = forward x up = +Y.
    expected = np.array([[0, 0, 1, 4],
                         [1, 0, 0, 0],
                         [0, 1, 0, 0],
                         [0, 0, 0, 1]], dtype=np.float32)
    m = cam.c2w()
    assert m.dtype == np.float32 and m.shape == (4, 4)
    np.testing.assert_allclose(m, expected, atol=1e-6)


def test_hand_computed_pose_from_above_diagonal():
    cam = OrbitCamera(radius=2.0, azimuth=90.0, elevation=45.0)
    s = math.sqrt(0.5)
    m = cam.c2w()
    np.testing.assert_allclose(m[:3, 3], [0, 2 * s, 2 * s], atol=1e-6)
    np.testing.assert_allclose(m[:3, 2], [0, s, s], atol=1e-6)   # back axis points at the eye
    np.testing.assert_allclose(m[:3, 0], [-1, 0, 0], atol=1e-6)  # right
    np.testing.assert_allclose(m[:3, 1], [0, -s, s], atol=1e-6)  # up on screen


@pytest.mark.parametrize("az,el,r", [(0, 0, 4), (30, 20, 4), (200, -35, 2.5), (315, 80, 6)])
def test_matches_cli_orbit_pose(az, el, r):
    cam = OrbitCamera(radius=r, azimuth=az, elevation=el)
    np.testing.assert_allclose(cam.c2w(), orbit_pose(az, el, r), atol=1e-5)


@pytest.mark.parametrize("az,el,target", [(10, 15, (0, 0, 0)), (123, -40, (0.3, -0.2, 0.5)),
                                          (270, 88, (1, 2, 3))])
def test_orthonormal_and_looks_at_target(az, el, target):
    cam = OrbitCamera(radius=3.0, target=target, azimuth=az, elevation=el)
    m = cam.c2w().astype(np.float64)
    R = m[:3, :3]
    np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-5)
    assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(m[3], [0, 0, 0, 1])
    to_target = np.asarray(target) - m[:3, 3]
    assert np.linalg.norm(to_target) == pytest.approx(3.0, rel=1e-5)
    np.testing.assert_allclose(-R[:, 2], to_target / np.linalg.norm(to_target), atol=1e-5)
    # The target projects to the image centre.
    np.testing.assert_allclose(project(m, np.asarray(target), 100.0, 50.0, 50.0), [50, 50], atol=1e-3)


def test_drag_changes_azimuth_with_sign_and_elevation_clamps():
    cam = OrbitCamera(azimuth=100.0, elevation=10.0, orbit_speed=0.5)
    cam.orbit(20, 0)  # drag right: scene turns right, camera azimuth decreases
    assert cam.azimuth == pytest.approx(90.0)
    cam.orbit(-40, 0)
    assert cam.azimuth == pytest.approx(110.0)
    cam.orbit(0, 10)
    assert cam.elevation == pytest.approx(15.0)
    cam.orbit(0, 10_000)
    assert cam.elevation == MAX_ELEVATION
    cam.orbit(0, -100_000)
    assert cam.elevation == -MAX_ELEVATION
    # Azimuth wraps into [0, 360).
    cam.orbit(2 * 120, 0)
    assert 0 <= cam.azimuth < 360 and cam.azimuth == pytest.approx((110 - 120) % 360)


def test_drag_right_moves_scene_right_on_screen():
    """Like a turntable: the side of the object facing the camera follows the cursor."""
    cam = OrbitCamera(radius=4.0, azimuth=30.0, elevation=20.0)
    f = cam.focal(100)
    p = cam.target + 0.5 * cam.direction()  # a point between the pivot and the eye
    x_before = project(cam.c2w(), p, f, 50, 50)[0]
    assert x_before == pytest.approx(50, abs=1e-3)
    cam.orbit(10, 0)
    assert project(cam.c2w(), p, f, 50, 50)[0] > x_before + 1


def test_pan_moves_target_in_camera_plane_and_follows_cursor():
    cam = OrbitCamera(radius=4.0, azimuth=40.0, elevation=25.0, fov=50.0)
    m0 = cam.c2w64()
    t0 = cam.target.copy()
    H = 200
    cam.pan(30, -12, H)
    delta = cam.target - t0
    assert abs(delta @ m0[:3, 2]) < 1e-9  # no motion along the view axis
    assert delta @ m0[:3, 0] < 0 and delta @ m0[:3, 1] < 0  # target moves left/down: scene right/up
    # The old pivot now sits (30, -12) pixels from the centre of an H x H view with fov_y = fov.
    f = 0.5 * H / math.tan(math.radians(50.0) / 2)
    np.testing.assert_allclose(project(cam.c2w(), t0, f, H / 2, H / 2), [H / 2 + 30, H / 2 - 12], atol=1e-3)
    # Orientation and radius unchanged.
    np.testing.assert_allclose(cam.c2w()[:3, :3], m0[:3, :3], atol=1e-6)
    assert np.linalg.norm(cam.eye - cam.target) == pytest.approx(4.0)


def test_zoom_changes_radius_and_clamps():
    cam = OrbitCamera(radius=4.0, min_radius=1.0, max_radius=10.0)
    cam.zoom(1)
    assert cam.radius == pytest.approx(3.6)
    cam.zoom(-2)
    assert cam.radius == pytest.approx(4.0 / 0.9)
    cam.zoom(100)
    assert cam.radius == 1.0
    cam.zoom(-1000)
    assert cam.radius == 10.0


def test_focal_from_fov():
    cam = OrbitCamera(fov=90.0)
    assert cam.focal(128) == pytest.approx(64.0)
    cam.set_fov(1000)
    assert cam.fov == 150.0


def test_snap_to_nearest_training_view():
    views = np.stack([orbit_pose(az, 30, 4.0) for az in range(0, 360, 45)])  # 8 cameras
    cam = OrbitCamera(radius=4.0, azimuth=100.0, elevation=35.0)
    assert cam.nearest_view(views) == 2  # az 90 is closest to 100
    i = cam.snap_to_nearest(views)
    assert i == 2
    np.testing.assert_allclose(cam.c2w(), views[2], atol=1e-5)
    assert cam.azimuth == pytest.approx(90.0) and cam.elevation == pytest.approx(30.0)
    cam2 = OrbitCamera(radius=4.0, azimuth=340.0, elevation=10.0)
    assert cam2.snap_to_nearest(views) == 0  # wraps around: 340 is nearer to 0 than to 315


def test_set_from_c2w_round_trip_keeps_pivot_on_axis():
    a = OrbitCamera(radius=3.0, target=(0.2, -0.1, 0.4), azimuth=210.0, elevation=-20.0)
    b = OrbitCamera(radius=5.0, target=(0.2, -0.1, 0.4))
    b.set_from_c2w(a.c2w())
    np.testing.assert_allclose(b.c2w(), a.c2w(), atol=1e-5)
    assert b.radius == pytest.approx(3.0, rel=1e-5)


def test_scene_up_blender_like_cameras():
    views = np.stack([orbit_pose(az, el, 4.0) for az in range(0, 360, 30) for el in (10, 40, 70)])
    np.testing.assert_array_equal(scene_up(views), [0, 0, 1])
    flipped = views.copy()
    flipped[:, :3, 1] *= -1
    np.testing.assert_array_equal(scene_up(flipped), [0, 0, -1])


def test_y_up_orbit_is_level():
    cam = OrbitCamera(radius=2.0, azimuth=0.0, elevation=0.0, up=(0, 1, 0))
    m = cam.c2w()
    assert abs(m[1, 3]) < 1e-6  # eye on the horizon plane y = 0
    np.testing.assert_allclose(m[:3, 1], [0, 1, 0], atol=1e-6)
    with pytest.raises(ValueError):
        OrbitCamera(radius=0)
