"""Loop closure after sequential matching (loaders/sfm.py overlap_scores, loop_pairs and
process's rebuild): the overlap scores against a float64 loop, the seam of an open ring
found and nothing else, and a 360-degree capture matched only to its neighbours closed
end to end."""
import numpy as np
import pytest

from loaders.sfm import loop_pairs, overlap_scores, sequential_pairs


def look_at(centre, target=(0.0, 0.0, 0.0)):
    """World -> camera (3, 4), OpenCV axes (x right, y down, z forward)."""
    z = np.asarray(target, float) - centre
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    return np.concatenate([R, (-R @ centre)[:, None]], 1)


def ring(n, radius=4.0, height=0.5):
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([look_at(np.array([radius * np.cos(t), radius * np.sin(t), height])) for t in a])


def cylinder_points(m, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.uniform(0, 2 * np.pi, m)
    return np.stack([np.cos(a), np.sin(a), rng.uniform(-0.5, 0.5, m)], 1)


INTR = (100.0, 100.0, 64.0, 48.0, 128, 96)


def visible(poses, xyz):
    """(N, M) bool: in front of camera j, inside its frame, and on the cylinder's side that
    faces it (the cylinder hides the rest)."""
    fx, fy, cx, cy, w, h = INTR
    out = np.zeros((len(poses), len(xyz)), bool)
    for j, P in enumerate(poses):
        centre = -P[:, :3].T @ P[:, 3]
        for k, p in enumerate(xyz):
            q = P[:, :3] @ p + P[:, 3]
            faces = p[:2] @ (centre[:2] - p[:2]) > 0
            out[j, k] = faces and q[2] > 0 and 0 <= fx * q[0] / q[2] + cx < w and 0 <= fy * q[1] / q[2] + cy < h
    return out


def test_overlap_scores_match_a_float64_loop():
    poses, xyz = ring(7), cylinder_points(60)
    centres = np.array([-P[:, :3].T @ P[:, 3] for P in poses])
    vis = visible(poses, xyz)
    observed = [np.nonzero(vis[i])[0] for i in range(7)]
    observed[3] = np.zeros(0, int)  # an image that was not registered
    pred, shared = overlap_scores(poses, INTR, observed, xyz, sample=1000)
    ref_p, ref_s = np.zeros((7, 7)), np.zeros((7, 7))
    for i in range(7):
        for j in range(7):
            if len(observed[i]) == 0:
                continue
            n_seen = n_shared = 0
            for k in observed[i]:
                p = xyz[k]
                q = poses[j][:, :3] @ p + poses[j][:, 3]
                ri, rj = p - centres[i], p - centres[j]
                angle = np.degrees(np.arccos(np.clip(ri @ rj / np.linalg.norm(ri) / np.linalg.norm(rj), -1, 1)))
                inside = q[2] > 0 and 0 <= 100 * q[0] / q[2] + 64 < 128 and 0 <= 100 * q[1] / q[2] + 48 < 96
                n_seen += inside and angle <= 60.0
                n_shared += k in observed[j]
            ref_p[i, j], ref_s[i, j] = n_seen / len(observed[i]), n_shared / len(observed[i])
    np.testing.assert_allclose(pred, ref_p, atol=1e-12)
    np.testing.assert_allclose(shared, ref_s, atol=1e-12)
    assert pred[0, 1] > 0.3 and pred[0, 4] == 0.0  # neighbours overlap, the far side does not


def chain_observations(vis, n):
    """Point observations as a sequential matcher's tracks make them on an open ring: a
    point seen across the seam (by images at both ends) becomes two points, one per end."""
    obs_lists, xyz_index = [[] for _ in range(n)], []
    for k in range(vis.shape[1]):
        seen = np.nonzero(vis[:, k])[0]
        parts = [seen] if not (seen.min() < n // 4 and seen.max() > 3 * n // 4) else \
            [seen[seen < n // 2], seen[seen >= n // 2]]
        for part in parts:
            idx = len(xyz_index)
            xyz_index.append(k)
            for i in part:
                obs_lists[i].append(idx)
    return [np.array(o, int) for o in obs_lists], np.array(xyz_index)


@pytest.mark.parametrize("closed", [False, True])
def test_loop_pairs_find_the_seam_of_an_open_ring_and_nothing_else(closed):
    n = 24
    poses, xyz = ring(n), cylinder_points(800, seed=1)
    vis = visible(poses, xyz)
    if closed:
        observed, xyz_of = [np.nonzero(vis[i])[0] for i in range(n)], np.arange(len(xyz))
    else:
        observed, xyz_of = chain_observations(vis, n)
    pred, shared = overlap_scores(poses, INTR, observed, xyz[xyz_of], sample=200)
    pairs = loop_pairs(pred, shared, sequential_pairs(n, 2, quadratic=False), per_image=3)
    if closed:
        assert pairs == []
        return
    assert pairs and (0, n - 1) in pairs
    assert all(i < n // 4 and j > 3 * n // 4 for i, j in pairs), str(pairs)  # only across the seam
    assert len({i for i, _ in pairs} | {j for _, j in pairs}) >= 4


@pytest.fixture(scope="module")
def ring_capture(tmp_path_factory, gl_ctx):
    """30 views all the way round the generator's scene, processed with each image matched
    to its next two only: the first and last views are neighbours that no pair links."""
    pytest.importorskip("pycolmap")
    from assets.make_scene import write_capture
    from loaders.process import ProcessOptions, process_capture

    root = tmp_path_factory.mktemp("ring")
    poses = write_capture(str(root / "photos"), n_views=30, res=192, arc_deg=360.0, ctx=gl_ctx)
    runs = {}
    for closure in (True, False):
        opts = ProcessOptions(matcher="sequential", overlap=2, quadratic=False, loop_closure=closure)
        runs[closure] = process_capture(str(root / "photos"), str(root / f"data_{closure}"), opts)
    return poses, runs, root


def test_a_ring_matched_in_sequence_is_closed_end_to_end(ring_capture):
    import json

    from loaders.normalize import pose_errors

    truth, runs, root = ring_capture

    def errors(closure):
        meta = json.load(open(root / f"data_{closure}" / "transforms.json"))
        est = np.array([f["transform_matrix"] for f in meta["frames"]])
        return pose_errors(est, truth[[int(f["file_path"][-7:-4]) for f in meta["frames"]]])

    loop = runs[True]["loop_closure"]
    assert loop["verified"] >= 1 and loop["rebuilt"], loop
    assert runs[True]["registered"] == 30 and "loop closure" in runs[True]["seconds"]
    assert runs[False]["loop_closure"] == {"candidates": 0, "verified": 0, "rebuilt": False}
    closed, chain = errors(True), errors(False)
    assert np.median(closed["rot_deg"]) < 1.0 and closed["rot_deg"].max() < 2.0
    # The chain's two ends drift apart; linking them pulls the worst camera back.
    assert closed["centre_rel"].max() < 0.8 * chain["centre_rel"].max(), (closed, chain)
