"""What real captures carry, read: each transforms.json camera key (a small file per case),
instant-ngp's aabb_scale / scale / offset, nerfstudio's applied_transform and point cloud,
--skip-missing, images_N folders (transforms.json and LLFF), a COLMAP sparse model read
through pycolmap, and the NDC choice."""
import json
import os

import numpy as np
import pytest

from loaders import DataError, load_scene
from loaders.normalize import Similarity
from tests.conftest import orbit_poses, random_rgba, write_png

W, H = 16, 12


def _capture(root, n=9, size=(W, H), **meta):
    """A transforms.json capture of n RGB views on an orbit; meta: top-level keys, or
    'frames_extra' (a list of per-frame dicts)."""
    poses = orbit_poses(n, radius=3.0)
    extra = meta.pop("frames_extra", [{}] * n)
    frames = []
    for k in range(n):
        rgb = random_rgba(k, max(size))[:size[1], :size[0], :3]
        write_png(os.path.join(root, "images", f"{k:02d}.png"), rgb)
        frames.append({"file_path": f"images/{k:02d}.png", "transform_matrix": poses[k].tolist(), **extra[k]})
    with open(os.path.join(root, "transforms.json"), "w") as f:
        json.dump({**meta, "frames": frames}, f)
    return poses


def _all_cams(sc):
    """Cameras of every view in file order (train and held-out test interleaved back)."""
    tr, te = sc.split("train"), sc.split("test")
    names = tr.names + te.names
    order = np.argsort(names)
    cat = lambda a, b: np.concatenate([a, b])[order]  # noqa: E731
    c1, c2 = tr.cameras, te.cameras
    return {k: cat(getattr(c1, k), getattr(c2, k)) for k in ("fx", "fy", "cx", "cy", "width", "height", "dist")}, \
        c1.kind


def test_fl_xy_and_principal_point(tmp_path):
    _capture(tmp_path, fl_x=20.0, fl_y=22.0, cx=7.0, cy=5.5, w=W, h=H)
    c, kind = _all_cams(load_scene(str(tmp_path)))
    assert kind == "PINHOLE"
    np.testing.assert_allclose([c["fx"][0], c["fy"][0], c["cx"][0], c["cy"][0]], [20.0, 22.0, 7.0, 5.5])


def test_intrinsics_follow_the_images_size(tmp_path):
    # fl_x, cx, cy are for a 32 x 24 capture; the images are 16 x 12: everything halves.
    _capture(tmp_path, fl_x=40.0, fl_y=44.0, cx=15.0, cy=11.0, w=2 * W, h=2 * H)
    c, _ = _all_cams(load_scene(str(tmp_path)))
    np.testing.assert_allclose([c["fx"][0], c["fy"][0], c["cx"][0], c["cy"][0]], [20.0, 22.0, 7.5, 5.5])


def test_camera_angles_x_and_y(tmp_path):
    _capture(tmp_path, fl_x=20.0, camera_angle_x=0.1, camera_angle_y=0.8)
    c, _ = _all_cams(load_scene(str(tmp_path)))
    assert c["fx"][0] == pytest.approx(20.0)  # fl_x wins over camera_angle_x
    assert c["fy"][0] == pytest.approx(0.5 * H / np.tan(0.4))
    assert c["cx"][0] == W / 2 and c["cy"][0] == H / 2


def test_per_frame_intrinsics(tmp_path):
    extra = [{"fl_x": 18.0 + k, "fl_y": 19.0 + k, "cx": 8.0 - 0.1 * k, "cy": 6.0, "w": W, "h": H} for k in range(9)]
    _capture(tmp_path, frames_extra=extra)
    c, _ = _all_cams(load_scene(str(tmp_path)))
    np.testing.assert_allclose(c["fx"], 18.0 + np.arange(9))
    np.testing.assert_allclose(c["cx"], 8.0 - 0.1 * np.arange(9))


@pytest.mark.parametrize("meta,kind,dist", [
    ({"camera_model": "OPENCV", "k1": -0.1, "k2": 0.02, "p1": 0.001, "p2": -0.002},
     "OPENCV", [-0.1, 0.02, 0.001, -0.002, 0.0]),
    ({"k1": 0.05, "k3": 0.01}, "OPENCV", [0.05, 0.0, 0.0, 0.0, 0.01]),  # no camera_model: inferred
    ({"camera_model": "OPENCV_FISHEYE", "k1": 0.1, "k2": -0.02, "k3": 0.003, "k4": -0.001},
     "OPENCV_FISHEYE", [0.1, -0.02, 0.003, -0.001, 0.0]),
    ({"is_fisheye": True, "k1": 0.1, "k2": 0.01}, "OPENCV_FISHEYE", [0.1, 0.01, 0.0, 0.0, 0.0]),  # instant-ngp
    ({"camera_model": "PINHOLE"}, "PINHOLE", [0.0] * 5),
])
def test_distortion_keys(tmp_path, meta, kind, dist):
    _capture(tmp_path, fl_x=20.0, **meta)
    c, got_kind = _all_cams(load_scene(str(tmp_path)))
    assert got_kind == kind
    np.testing.assert_allclose(c["dist"], np.tile(dist, (9, 1)))


def test_unsupported_camera_model_is_named(tmp_path):
    _capture(tmp_path, fl_x=20.0, camera_model="EQUIRECTANGULAR")
    with pytest.raises(DataError, match="EQUIRECTANGULAR.*not supported"):
        load_scene(str(tmp_path))


def test_ngp_aabb_scale_scale_offset(tmp_path):
    from loaders.blender import ngp_aabb

    # instant-ngp maps p to cycle(p * scale + offset) and bounds the scene by the cube of
    # side aabb_scale around (0.5, 0.5, 0.5): in the file's frame the box is centred on
    # (0.5 - offset) / scale with half-side aabb_scale / (2 scale).
    meta = {"aabb_scale": 16, "scale": 0.5, "offset": [0.5, 1.0, 0.0]}
    box = ngp_aabb("t.json", meta)
    np.testing.assert_allclose(box, [[-16.0, -17.0, -15.0], [16.0, 15.0, 17.0]])
    # Check one corner through instant-ngp's own map: it lands on its cube's corner.
    p = box[0] * 0.5 + np.array(meta["offset"])
    assert np.allclose(p[[1, 2, 0]], 0.5 - 8.0)
    assert ngp_aabb("t.json", {}) is None
    poses = _capture(tmp_path, fl_x=20.0, **meta)
    sc = load_scene(str(tmp_path))
    # far reaches the box's farthest corner from the farthest camera (no depths known here).
    corners = np.array([[x, y, z] for x in box[:, 0] for y in box[:, 1] for z in box[:, 2]])
    far = np.linalg.norm(corners[None] - poses[:, None, :3, 3], axis=-1).max() * sc.normalization.scale
    assert sc.far == pytest.approx(far)
    from loaders.assemble import DEFAULT_FAR
    _capture(tmp_path, fl_x=20.0)
    assert load_scene(str(tmp_path)).far == DEFAULT_FAR != pytest.approx(far)  # without the box


def test_nerfstudio_applied_transform_and_points(tmp_path):
    from loaders.ply import points_ply_bytes

    rng = np.random.default_rng(0)
    # The file's poses are applied_transform @ the original (world) poses (nerfstudio's
    # swap of COLMAP's axes here); the point cloud is in the file's frame too.
    applied = np.array([[1.0, 0, 0, 0.5], [0, 0, 1, 0], [0, -1, 0, 2.0]])
    a = Similarity.from_matrix(applied)
    world = orbit_poses(9, radius=3.0)
    pts_world = rng.normal(scale=0.3, size=(200, 3))
    (tmp_path / "sparse_pc.ply").write_bytes(points_ply_bytes(a.points(pts_world),
                                                              rng.integers(0, 255, (200, 3), dtype=np.uint8)))
    _capture(tmp_path, fl_x=20.0, applied_transform=applied.tolist(), ply_file_path="sparse_pc.ply",
             frames_extra=[{}] * 9)
    # Rewrite the frames' poses as the file would hold them.
    meta = json.load(open(tmp_path / "transforms.json"))
    for k, fr in enumerate(meta["frames"]):
        fr["transform_matrix"] = a.poses(world[k]).tolist()
    json.dump(meta, open(tmp_path / "transforms.json", "w"))
    sc = load_scene(str(tmp_path))
    tr = sc.split("train")
    idx = [int(n.split("/")[-1][:2]) for n in tr.names]
    # Results leave the scene in the original (pre-applied_transform) frame.
    np.testing.assert_allclose(sc.to_world_poses(tr.c2w), world[idx], atol=1e-5)
    np.testing.assert_allclose(sc.to_world_points(sc.points), pts_world, atol=1e-5)
    assert sc.points.shape == (200, 3) and sc.point_colors.shape == (200, 3)
    # The points gave depth bounds: near/far come from them, not the defaults.
    d = np.linalg.norm(pts_world[None] - world[:, None, :3, 3], axis=-1) * sc.normalization.scale
    assert d.min() * 0.8 < sc.near < d.min() and d.max() * 0.9 < sc.far <= d.max() * 1.01


def test_skip_missing(tmp_path):
    _capture(tmp_path, fl_x=20.0)
    for k in (2, 5):
        os.remove(tmp_path / "images" / f"{k:02d}.png")
    with pytest.raises(DataError) as ei:
        load_scene(str(tmp_path))
    msg = str(ei.value)
    assert "02.png" in msg and "missing" in msg and "2 of 9" in msg and "--skip-missing" in msg
    sc = load_scene(str(tmp_path), skip_missing=True)
    assert len(sc.split("train")) + len(sc.split("test")) == 7
    assert any("2 of 9 frames dropped" in n for n in sc.notes)
    for k in range(9):
        if k not in (2, 5):
            os.remove(tmp_path / "images" / f"{k:02d}.png")
    with pytest.raises(DataError, match="none of the 9"):
        load_scene(str(tmp_path), skip_missing=True)


def test_images_n_folder_is_read_for_downscale(tmp_path):
    _capture(tmp_path, fl_x=20.0, cx=7.0, cy=6.0)
    marker = np.full((H // 2, W // 2, 3), 200, np.uint8)
    for k in range(9):
        write_png(tmp_path / "images_2" / f"{k:02d}.png", marker)
    sc = load_scene(str(tmp_path), downscale=2)
    tr = sc.split("train")
    assert tr.images.shape[1:3] == (H // 2, W // 2)
    np.testing.assert_allclose(tr.images, 200 / 255, atol=1e-6)  # the copy, not a resized original
    assert (tr.cameras.fx[0], tr.cameras.cx[0], tr.cameras.cy[0]) == (10.0, 3.5, 3.0)
    # Without the folder the originals are box-downscaled, with the same intrinsics.
    import shutil
    shutil.rmtree(tmp_path / "images_2")
    tr2 = load_scene(str(tmp_path), downscale=2).split("train")
    assert (tr2.cameras.fx[0], tr2.cameras.cx[0]) == (10.0, 3.5)
    assert not np.allclose(tr2.images, 200 / 255)


def test_llff_images_n_folder(tmp_path):
    from tests.test_loaders import R_A_LLFF, _llff_rows

    rows = [_llff_rows(R_A_LLFF, [0.1 * k, 0.0, 1.0], [2.0, 8.0], hwf=(16.0, 16.0, 20.0)) for k in range(3)]
    np.save(tmp_path / "poses_bounds.npy", np.stack(rows))
    for k in range(3):
        write_png(tmp_path / "images" / f"i{k}.png", random_rgba(k)[..., :3])
        write_png(tmp_path / "images_4" / f"i{k}.png", np.full((4, 4, 3), 50, np.uint8))
    sc = load_scene(str(tmp_path), downscale=4)
    tr = sc.split("train")
    assert tr.images.shape[1:3] == (4, 4) and np.allclose(tr.images, 50 / 255, atol=1e-6)
    assert tr.focal == pytest.approx(20.0 / 4)
    assert sc.ndc  # three cameras looking the same way, with depth bounds: forward-facing


def _write_colmap(root, model="OPENCV", params=(30.0, 31.0, 8.5, 6.2, -0.05, 0.01, 0.001, -0.002), n=5):
    """A small COLMAP model (cameras/images/points3D .bin) in root/sparse/0 with images in
    root/images; returns the true OpenGL c2w (n, 4, 4)."""
    import pycolmap

    rec = pycolmap.Reconstruction()
    cam = pycolmap.Camera.create_from_model_name(1, model, 30.0, W, H)
    cam.params = list(params)
    rec.add_camera_with_trivial_rig(cam)
    c2w_gl = orbit_poses(n, radius=3.0)
    rng = np.random.default_rng(0)
    pts = rng.normal(scale=0.4, size=(30, 3))
    for i in range(n):
        c2w_cv = c2w_gl[i] @ np.diag([1.0, -1, -1, 1])
        w2c = np.linalg.inv(c2w_cv)
        im = pycolmap.Image(name=f"v{i}.png", keypoints=np.zeros((30, 2)), camera_id=1, image_id=i + 1)
        rec.add_image_with_trivial_frame(im, pycolmap.Rigid3d(w2c[:3]))
        write_png(root / "images" / f"v{i}.png", random_rgba(i, W)[:H, :W, :3])
    for k, p in enumerate(pts):
        tr = pycolmap.Track()
        for i in range(n):
            tr.add_element(i + 1, k)
        rec.add_point3D(p, tr, np.array([10, 20, 30], np.uint8))
    os.makedirs(root / "sparse" / "0")
    rec.write(str(root / "sparse" / "0"))
    return c2w_gl, pts


def test_colmap_sparse_model(tmp_path):
    pytest.importorskip("pycolmap")
    c2w, pts = _write_colmap(tmp_path)
    sc = load_scene(str(tmp_path))  # finds sparse/0 and images/
    tr, te = sc.split("train"), sc.split("test")
    assert sc.kind == "capture" and len(tr) + len(te) == 5
    assert tr.cameras.kind == "OPENCV"
    np.testing.assert_allclose([tr.cameras.fx[0], tr.cameras.fy[0], tr.cameras.cx[0], tr.cameras.cy[0]],
                               [30.0, 31.0, 8.5, 6.2])
    np.testing.assert_allclose(tr.cameras.dist[0], [-0.05, 0.01, 0.001, -0.002, 0.0])
    np.testing.assert_allclose(sc.to_world_poses(te.c2w), c2w[[0]], atol=1e-5)
    np.testing.assert_allclose(sc.to_world_poses(tr.c2w), c2w[1:], atol=1e-5)
    np.testing.assert_allclose(np.sort(sc.to_world_points(sc.points), 0), np.sort(pts, 0), atol=1e-5)
    # The model folder itself is accepted too, and SIMPLE_RADIAL maps onto OPENCV's k1.
    sc2 = load_scene(str(tmp_path / "sparse" / "0"))
    assert len(sc2.split("train")) == len(tr)


def test_colmap_simple_radial_and_unsupported(tmp_path):
    pytest.importorskip("pycolmap")
    _write_colmap(tmp_path / "a", "SIMPLE_RADIAL", (30.0, 8.0, 6.0, 0.07))
    tr = load_scene(str(tmp_path / "a")).split("train")
    assert tr.cameras.kind == "OPENCV" and tr.cameras.fy[0] == 30.0
    np.testing.assert_allclose(tr.cameras.dist[0], [0.07, 0, 0, 0, 0])
    _write_colmap(tmp_path / "b", "FOV", (30.0, 30.0, 8.0, 6.0, 0.5))
    with pytest.raises(DataError, match="FOV is not supported"):
        load_scene(str(tmp_path / "b"))


def test_ndc_choice_is_explained_and_can_be_forced(tmp_path):
    _capture(tmp_path, fl_x=20.0)
    sc = load_scene(str(tmp_path))
    assert not sc.ndc and any(n.startswith("NDC off (not forward-facing") and "--ndc" in n for n in sc.notes)
    with pytest.raises(DataError, match="depth bounds"):
        load_scene(str(tmp_path), ndc=True)  # no bounds and no points: NDC has no near plane


def test_stored_normalisation_is_reused(tmp_path):
    _capture(tmp_path, fl_x=20.0)
    t = Similarity(np.eye(3), np.array([1.0, 2.0, 3.0]), 0.5)
    sc = load_scene(str(tmp_path), normalization=t)
    assert sc.normalization is t
    np.testing.assert_allclose(sc.to_world_poses(sc.split("test").c2w)[0], orbit_poses(9, radius=3.0)[0],
                               atol=1e-5)


def test_blender_scenes_keep_their_frame_and_are_objects(blender_dir):
    sc = load_scene(blender_dir.root)
    assert sc.kind == "object" and sc.normalization.is_identity() and (sc.near, sc.far) == (2.0, 6.0)


def test_poses_that_jump_between_adjacent_images_are_named_in_a_note():
    """A block of cameras rotated 120 deg about the subject (structure from motion's error
    on a near-symmetric object) is named by its two seams, in name order whatever order
    the frames came in; a smooth orbit, or one taken out of order and sorted back, gets no note."""
    from loaders.assemble import jump_note

    c2w = orbit_poses(36)  # 10 deg apart
    names = [f"{i:04d}.jpg" for i in range(36)]
    assert jump_note(c2w, names) is None
    shuffled = np.random.default_rng(0).permutation(36)
    assert jump_note(c2w[shuffled], [names[i] for i in shuffled]) is None
    bad = c2w.copy()
    bad[12:20] = orbit_poses(36, offset_deg=120.0)[12:20]
    note = jump_note(bad[shuffled], [names[i] for i in shuffled])
    assert note is not None and "2 pair(s)" in note
    assert "0011.jpg -> 0012.jpg" in note and "0019.jpg -> 0020.jpg" in note
    assert jump_note(c2w, []) is None  # unnamed: in the order given
    assert "2 pair(s)" in jump_note(bad, []) and "11 -> 12" in jump_note(bad, [])
