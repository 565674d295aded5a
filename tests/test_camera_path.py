"""Camera paths: the spline through the keys (C1 in position, rotation and fov), and
nerfstudio's camera_path.json both ways."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from app.tools.camera_path import (CameraPath, Keyframe, hermite, load_path, path_from_json, path_to_json,
                                   quat_exp, quat_from_matrix, quat_log, quat_mul, quat_to_matrix, save_path)
from loaders.scene import DataError
from tests.conftest import look_at


def rot_log(r: np.ndarray) -> np.ndarray:
    """Rotation vector of a 3x3 rotation matrix, independently of the quaternion code."""
    c = np.clip((np.trace(r) - 1) / 2, -1, 1)
    a = math.acos(c)
    w = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    return w / 2 if a < 1e-9 else a / (2 * math.sin(a)) * w


def rot_z(a: float) -> np.ndarray:
    return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1.0]])


def sample_path(loop=False, tension=0.0) -> CameraPath:
    eyes = [(4, 0, 1), (0.5, 3.5, 2.0), (-3, 1, 0.5), (-1, -3.5, 1.5)]
    times = [0.0, 0.7, 1.9, 2.4]  # uneven on purpose
    ups = [(0, 0, 1), (0.2, 0, 1), (0, 0.3, 1), (0, 0, 1)]
    keys = [Keyframe(look_at(e, up=u), fov, t) for e, u, fov, t in zip(eyes, ups, (50, 40, 65, 55), times)]
    return CameraPath(keys, loop=loop, loop_seconds=0.9, tension=tension, width=64, height=48, fps=10)


def test_quaternion_helpers_agree_with_matrices():
    rng = np.random.default_rng(0)
    for _ in range(50):
        v = rng.normal(size=3) * rng.uniform(0, 3)
        q = quat_exp(v)
        r = quat_to_matrix(q)
        np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-12)
        np.testing.assert_allclose(rot_log(r), quat_log(q), atol=1e-9)
        np.testing.assert_allclose(quat_to_matrix(quat_from_matrix(r)), r, atol=1e-12)
        w = rng.normal(size=3)
        np.testing.assert_allclose(quat_to_matrix(quat_mul(q, quat_exp(w))), r @ quat_to_matrix(quat_exp(w)),
                                   atol=1e-12)
    for a in (math.pi - 1e-9, 0.0):  # the stable branch near 180 degrees, and the identity
        r = rot_z(a) @ np.diag([1.0, 1.0, 1.0])
        np.testing.assert_allclose(quat_to_matrix(quat_from_matrix(r)), r, atol=1e-9)


@pytest.mark.parametrize("loop", [False, True])
def test_spline_passes_through_its_keys(loop):
    path = sample_path(loop)
    sp = path.spline()
    for k in path.keyframes:
        c2w, fov = sp.evaluate(k.time)
        np.testing.assert_allclose(c2w, k.c2w, atol=1e-12)
        assert fov == pytest.approx(k.fov, abs=1e-12)
    if loop:  # the closing segment ends on the first key again
        c2w, fov = sp.evaluate(path.keyframes[-1].time + path.loop_seconds)
        np.testing.assert_allclose(c2w, path.keyframes[0].c2w, atol=1e-12)


def one_sided_rates(sp, t, e):
    """(left, right) derivatives at t of position, fov and rotation (body angular velocity),
    by second-order one-sided differences (error O(e^2), so a jump of O(e) would show)."""
    c2w0, f0 = sp.evaluate(t)

    def g(s):  # position, fov and rotation relative to t's, all zero at s = 0
        c2w, f = sp.evaluate(t + s)
        return np.concatenate([c2w[:3, 3] - c2w0[:3, 3], [f - f0], rot_log(c2w0[:3, :3].T @ c2w[:3, :3])])
    right = (4 * g(e) - g(2 * e)) / (2 * e)
    left = (-4 * g(-e) + g(-2 * e)) / (2 * e)
    return left, right


@pytest.mark.parametrize("loop,tension", [(False, 0.0), (False, 0.4), (True, 0.0)])
def test_spline_is_c1_at_its_keys(loop, tension):
    path = sample_path(loop, tension)
    sp = path.spline()
    times = [k.time for k in path.keyframes]
    inner = times[1:-1] if not loop else times + [times[-1] + path.loop_seconds]
    for t in inner:
        left, right = one_sided_rates(sp, t, 1e-4)
        assert np.abs(left).max() > 0.1  # the camera is moving there
        np.testing.assert_allclose(left, right, rtol=1e-5, atol=1e-5, err_msg=f"t = {t}")


def test_the_c1_check_sees_a_kink(monkeypatch):
    """Without exp's Jacobian the segments' angular velocities at a key disagree: the check
    above must see that kink."""
    import app.tools.camera_path as cp

    monkeypatch.setattr(cp, "right_jacobian_inv", lambda v: np.eye(3))
    left, right = one_sided_rates(sample_path().spline(), 0.7, 1e-4)
    assert np.abs(left - right).max() > 1e-2


def test_rotations_about_one_axis_follow_the_scalar_spline():
    """Keys turning about +Z only: the angle must be the scalar Catmull-Rom of the angles
    (an independent reference: the rotation code reduces to it when rotations commute)."""
    angles, times = [0.0, 0.9, 1.2, 2.6, 2.9], [0.0, 1.0, 1.5, 3.0, 3.2]
    keys = [Keyframe(np.block([[rot_z(a), np.zeros((3, 1))], [np.zeros((1, 3)), 1]]), 50, t)
            for a, t in zip(angles, times)]
    sp = CameraPath(keys).spline()
    h = np.diff(times)
    d = np.diff(angles) / h
    m = [None] + [(h[i] * d[i - 1] + h[i - 1] * d[i]) / (h[i - 1] + h[i]) for i in range(1, 4)] + [None]
    m[0], m[4] = (3 * d[0] - m[1]) / 2, (3 * d[3] - m[3]) / 2
    for t in np.linspace(0, 3.2, 41):
        i = min(int(np.searchsorted(times, t, side="right")) - 1, 3)
        ref = hermite(angles[i], angles[i + 1], m[i], m[i + 1], h[i], t - times[i])
        r = sp.evaluate(t)[0][:3, :3]
        assert math.atan2(r[1, 0], r[0, 0]) == pytest.approx(ref, abs=1e-9), t


def test_straight_even_keys_move_at_constant_speed():
    keys = [Keyframe(look_at((x, -4, 1), target=(x, 0, 1)), 50, float(i)) for i, x in enumerate((0, 1, 2, 3))]
    sp = CameraPath(keys).spline()
    for t in np.linspace(0, 3, 13):
        c2w, _ = sp.evaluate(t)
        np.testing.assert_allclose(c2w[:3, 3], [t, -4, 1], atol=1e-12)
        np.testing.assert_allclose(c2w[:3, :3], keys[0].c2w[:3, :3], atol=1e-12)


def test_frames_count_and_times():
    path = sample_path()
    assert path.seconds == pytest.approx(2.4) and path.n_frames == 24
    frames = path.frames()
    assert len(frames) == 24
    np.testing.assert_allclose(frames[0][0], path.keyframes[0].c2w, atol=1e-12)
    np.testing.assert_allclose(frames[7][0], path.keyframes[1].c2w, atol=1e-9)  # 0.7 s at 10 fps


@pytest.mark.parametrize("loop", [False, True])
def test_written_path_reads_back_exactly(tmp_path, loop):
    path = sample_path(loop, tension=0.25)
    f = tmp_path / "camera_path.json"
    save_path(path, str(f))
    back = load_path(str(f))
    assert (back.loop, back.loop_seconds, back.tension, back.width, back.height, back.fps) == \
        (path.loop, path.loop_seconds if loop else back.loop_seconds, path.tension, 64, 48, 10)
    assert len(back.keyframes) == len(path.keyframes)
    for a, b in zip(path.keyframes, back.keyframes):
        assert np.array_equal(a.c2w, b.c2w) and a.fov == b.fov and a.time == b.time
    # What nerfstudio's ns-render reads: every frame, row-major 4x4, the render's size and length.
    raw = json.loads(f.read_text())
    assert len(raw["camera_path"]) == round(raw["fps"] * raw["seconds"]) == path.n_frames
    frame = np.array(raw["camera_path"][0]["camera_to_world"]).reshape(4, 4)
    np.testing.assert_allclose(frame, path.keyframes[0].c2w, atol=1e-12)
    assert raw["camera_type"] == "perspective" and raw["is_cycle"] == loop


def test_hand_written_nerfstudio_file_is_read(tmp_path):
    """As nerfstudio's render panel writes it (no 'time' keys: times from the transitions)."""
    m0 = [1, 0, 0, 0.5, 0, 1, 0, -0.25, 0, 0, 1, 3, 0, 0, 0, 1]
    c, s = math.cos(0.3), math.sin(0.3)
    m1 = [c, 0, s, 2, 0, 1, 0, 0, -s, 0, c, 2.5, 0, 0, 0, 1]
    m2 = [1, 0, 0, 1, 0, c, -s, 1, 0, s, c, 2, 0, 0, 0, 1]
    text = f"""{{
      "default_fov": 75.0, "default_transition_sec": 2.0,
      "keyframes": [
        {{"matrix": {m0}, "fov": 75.0, "aspect": 1.7777, "override_transition_enabled": false,
          "override_transition_sec": null}},
        {{"matrix": {m1}, "fov": 60.0, "aspect": 1.7777, "override_transition_enabled": true,
          "override_transition_sec": 1.5}},
        {{"matrix": {m2}, "fov": 75.0, "aspect": 1.7777, "override_transition_enabled": false,
          "override_transition_sec": null}}
      ],
      "camera_type": "perspective", "render_height": 1080.0, "render_width": 1920.0, "fps": 24.0,
      "seconds": 3.5, "is_cycle": false, "smoothness_value": 0.0,
      "camera_path": [{{"camera_to_world": {m0}, "fov": 75.0, "aspect": 1.7777}}]
    }}"""
    f = tmp_path / "ns.json"
    f.write_text(text)
    p = load_path(str(f))
    assert (p.width, p.height, p.fps, p.loop) == (1920, 1080, 24.0, False)
    assert [k.time for k in p.keyframes] == [0.0, 1.5, 3.5]
    assert [k.fov for k in p.keyframes] == [75.0, 60.0, 75.0]
    assert p.seconds == 3.5 and p.n_frames == 84
    np.testing.assert_array_equal(p.keyframes[1].c2w, np.array(m1, dtype=float).reshape(4, 4))
    # A file with frames only (older exporters): the frames become evenly spaced keys.
    g = tmp_path / "frames.json"
    g.write_text(json.dumps({"render_height": 48, "render_width": 64, "fps": 10, "seconds": 2.0,
                             "camera_path": [{"camera_to_world": m, "fov": 50} for m in (m0, m1, m2)]}))
    q = load_path(str(g))
    assert [k.time for k in q.keyframes] == [0.0, 1.0, 2.0] and q.n_frames == 20


@pytest.mark.parametrize("edit,words", [
    (lambda d: d.pop("keyframes") and d.pop("camera_path"), "no 'keyframes'"),
    (lambda d: d["keyframes"][1].update(matrix=[1, 2, 3]), "keyframe 1: 'matrix' needs 16"),
    (lambda d: d["keyframes"][1].update(matrix=[2.0] + [0.0] * 15), "keyframe 1"),
    (lambda d: d["keyframes"][2].update(time=0.1), "keyframe 2: time"),
    (lambda d: d["keyframes"][0].update(fov=0), "fov"),
    (lambda d: d.update(camera_type="fisheye"), "fisheye"),
    (lambda d: d.update(fps="fast"), "'fps' must be a number"),
])
def test_bad_files_name_the_file_and_problem(tmp_path, edit, words):
    d = path_to_json(sample_path())
    edit(d)
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(d))
    with pytest.raises(DataError, match=words) as exc:
        load_path(str(f))
    assert str(f) in str(exc.value)


def test_single_keyframe_holds_still():
    p = CameraPath([Keyframe(look_at((3, 0, 1)), 45, 0.0)], fps=10)
    assert p.n_frames == 1
    with pytest.raises(DataError, match="no keyframes"):
        CameraPath([]).check()
    p.loop, p.loop_seconds = True, 2.0
    frames = p.frames()
    assert len(frames) == 20
    for c2w, fov in frames:
        np.testing.assert_allclose(c2w, p.keyframes[0].c2w, atol=1e-12)
        assert fov == 45


def test_path_from_json_rejects_non_objects():
    with pytest.raises(DataError, match="JSON object"):
        path_from_json([1, 2])
