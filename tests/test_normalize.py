"""loaders/normalize.py: the scene normalisation does not depend on the frame the poses
come in (a rigid transform and a scale of the input give the same normalised cameras),
puts the focus at the origin, world up on +Z and the cameras on the fixed radius;
Similarity algebra; Umeyama against known transforms; pose errors."""
import numpy as np
import pytest

from loaders.normalize import (CAMERA_RADIUS, Similarity, focus_point, forward_facing_angle, normalize_cameras,
                               pose_errors, rotation_angle_deg, umeyama)
from tests.conftest import look_at


def random_rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def random_similarity(rng) -> Similarity:
    return Similarity(random_rotation(rng), rng.normal(size=3) * 5, float(np.exp(rng.normal())))


def partial_orbit(n=12, centre=(0.3, -0.2, 0.1), radius=3.0, up=(0, 0, 1)):
    """Cameras on a 150 degree arc at two heights, all looking at centre, world up ``up``
    (a phone capture around an object)."""
    c = np.asarray(centre, float)
    out = []
    for k in range(n):
        az = np.radians(-75 + 150 * k / (n - 1))
        el = np.radians(25 if k % 2 else 40)
        eye = c + radius * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        out.append(look_at(eye, c, up))
    return np.stack(out)


def forward_rig(n=9, rng=None):
    """Forward-facing cameras (LLFF-like): a small grid of positions, all looking down -Z."""
    rng = rng or np.random.default_rng(0)
    out = []
    for k in range(n):
        m = np.eye(4)
        m[:3, :3] = Similarity.identity().R
        m[:3, 3] = [0.2 * (k % 3), 0.15 * (k // 3), 0.02 * rng.normal()]
        out.append(m)
    return np.stack(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_orbit_normalisation_is_invariant_to_a_similarity_of_the_input(seed):
    rng = np.random.default_rng(seed)
    c2w = partial_orbit()
    depth = np.tile([1.5, 4.5], (len(c2w), 1))
    base = normalize_cameras(c2w, depth)
    t = random_similarity(rng)
    moved = normalize_cameras(t.poses(c2w), depth * t.scale)
    np.testing.assert_allclose(moved.poses(t.poses(c2w)), base.poses(c2w), atol=1e-9)
    # The two world -> scene maps differ by exactly the similarity applied.
    np.testing.assert_allclose((moved @ t).matrix, base.matrix, atol=1e-9)


def test_forward_normalisation_is_invariant_and_is_the_llff_frame():
    rng = np.random.default_rng(5)
    c2w = forward_rig()
    depth = np.tile([2.0, 9.0], (len(c2w), 1))
    base = normalize_cameras(c2w, depth, forward=True)
    t = random_similarity(rng)
    moved = normalize_cameras(t.poses(c2w), depth * t.scale, forward=True)
    np.testing.assert_allclose(moved.poses(t.poses(c2w)), base.poses(c2w), atol=1e-9)
    out = base.poses(c2w)
    # The mean camera is the origin looking down -Z, the nearest depth at 1 / 0.75.
    np.testing.assert_allclose(out[:, :3, 3].mean(0), 0.0, atol=1e-9)
    assert base.scale == pytest.approx(1 / (2.0 * 0.75))
    with pytest.raises(ValueError, match="depth"):
        normalize_cameras(c2w, None, forward=True)


def test_orbit_lands_centred_up_and_on_the_radius():
    rng = np.random.default_rng(3)
    world = Similarity(random_rotation(rng), rng.normal(size=3), 7.0)  # an arbitrary SfM frame
    c2w = world.poses(partial_orbit())
    n = normalize_cameras(c2w)
    out = n.poses(c2w)
    np.testing.assert_allclose(np.linalg.norm(out[:, :3, 3], axis=1).max(), CAMERA_RADIUS, atol=1e-9)
    # Every optical axis passes through the origin: the point they look at.
    d = -out[:, :3, 2]
    o = out[:, :3, 3]
    miss = np.linalg.norm(np.cross(d, -o), axis=1)
    assert miss.max() < 1e-9
    # The cameras' up vectors (the orbit's world +Z) are +Z again, and the first camera is
    # on the -Y side looking towards +Y.
    up = out[:, :3, 1].mean(0)
    assert up[2] / np.linalg.norm(up) > 0.99
    assert -out[0, 1, 2] > 0 and abs(out[0, 0, 2]) < 1e-9


def test_focus_point_and_its_fallbacks():
    c2w = partial_orbit(centre=(1.0, 2.0, 3.0))
    np.testing.assert_allclose(focus_point(c2w), [1.0, 2.0, 3.0], atol=1e-9)
    fwd = forward_rig()
    assert focus_point(fwd) is None  # parallel axes do not meet
    assert forward_facing_angle(fwd) == pytest.approx(0.0, abs=1e-6)
    assert forward_facing_angle(c2w) > 60
    # Without a focus, depths place the centre in front of the cameras.
    n = normalize_cameras(fwd, np.tile([4.0, 6.0], (len(fwd), 1)))
    centre_world = n.inverse().points(np.zeros(3))
    assert centre_world[2] == pytest.approx(fwd[:, 2, 3].mean() - 5.0, abs=1e-6)


def test_similarity_algebra():
    rng = np.random.default_rng(7)
    a, b = random_similarity(rng), random_similarity(rng)
    x = rng.normal(size=(5, 3))
    np.testing.assert_allclose((a @ b).points(x), a.points(b.points(x)), atol=1e-9)
    np.testing.assert_allclose(a.inverse().points(a.points(x)), x, atol=1e-9)
    np.testing.assert_allclose(Similarity.from_matrix(a.matrix).matrix, a.matrix, atol=1e-12)
    np.testing.assert_allclose(Similarity.from_json(a.to_json()).matrix, a.matrix, atol=1e-12)
    poses = partial_orbit(4)
    moved = a.poses(poses)
    np.testing.assert_allclose(moved[:, :3, :3].transpose(0, 2, 1) @ moved[:, :3, :3], np.tile(np.eye(3), (4, 1, 1)),
                               atol=1e-9)  # a camera stays rigid
    np.testing.assert_allclose(a.inverse().poses(moved), poses, atol=1e-9)
    shear = np.eye(4)
    shear[0, 1] = 0.3
    for bad in (shear, np.diag([1.0, 1.0, -1.0, 1.0]), np.zeros((2, 2))):
        with pytest.raises(ValueError):
            Similarity.from_matrix(bad)


@pytest.mark.parametrize("seed", [0, 1])
def test_umeyama_recovers_a_known_similarity(seed):
    rng = np.random.default_rng(seed)
    src = rng.normal(size=(20, 3))
    t = random_similarity(rng)
    got = umeyama(src, t.points(src))
    np.testing.assert_allclose(got.matrix, t.matrix, atol=1e-9)
    # With noise: close, and the least-squares optimum (no nearby similarity does better).
    dst = t.points(src) + rng.normal(scale=1e-3, size=src.shape)
    est = umeyama(src, dst)
    err = ((est.points(src) - dst) ** 2).sum()
    for eps in (1e-4, -1e-4):
        wiggle = Similarity(est.R, est.t + eps, est.scale * (1 + eps))
        assert ((wiggle.points(src) - dst) ** 2).sum() > err
    # Mirrored points: the best rotation, never a reflection.
    mir = src * [1, 1, -1]
    assert np.linalg.det(umeyama(src, mir).R) == pytest.approx(1.0)
    assert umeyama(src, t.points(src), with_scale=False).scale == 1.0
    with pytest.raises(ValueError):
        umeyama(src[:2], src[:2])


def test_pose_errors_see_through_a_similarity_and_measure_a_perturbation():
    rng = np.random.default_rng(4)
    ref = partial_orbit()
    est = random_similarity(rng).poses(ref)
    e = pose_errors(est, ref)
    assert e["rot_deg"].max() < 1e-6 and e["centre_rel"].max() < 1e-9
    # Turn one camera by 2 degrees about its own axis: only its rotation error moves.
    c = np.cos(np.radians(2)), np.sin(np.radians(2))
    bump = np.eye(4)
    bump[:2, :2] = [[c[0], -c[1]], [c[1], c[0]]]
    est[3] = est[3] @ bump
    e = pose_errors(est, ref)
    assert e["rot_deg"][3] == pytest.approx(2.0, abs=1e-6) and np.delete(e["rot_deg"], 3).max() < 1e-6
    assert rotation_angle_deg(np.eye(3)) == pytest.approx(0.0)


def test_robust_pose_errors_ignore_a_wrong_block():
    from loaders.normalize import view_jumps

    rng = np.random.default_rng(8)
    ref = partial_orbit(20)
    est = random_similarity(rng).poses(ref)
    # Cameras 5..8 put on the wrong side (a half turn about the vertical through the focus),
    # what repetitive texture can make structure from motion do.
    flip = Similarity(np.diag([-1.0, -1.0, 1.0]), np.zeros(3), 1.0)
    bad = ref.copy()
    bad[5:9] = flip.poses(ref[5:9])
    plain = pose_errors(bad, ref)
    robust = pose_errors(bad, ref, robust=True)
    good = np.r_[0:5, 9:20]
    assert np.median(plain["rot_deg"][good]) > 1.0  # the wrong block drags the plain fit
    assert robust["rot_deg"][good].max() < 1e-4 and robust["centre_rel"][good].max() < 1e-9
    assert robust["inliers"].tolist() == [i in good for i in range(20)]
    assert (robust["rot_deg"][5:9] > 90).all()
    assert view_jumps(bad).tolist() == [4, 8] and view_jumps(est).tolist() == []
