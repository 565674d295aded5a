"""loaders/: Blender, instant-ngp and LLFF scenes written to tmp_path; every bad input
is one DataError naming the offending file and the problem."""
import json
import os

import numpy as np
import pytest

from loaders import DataError, load_scene
from loaders.llff import load_llff
from tests.conftest import CAMERA_ANGLE_X, SIZE, orbit_poses, random_rgba, write_png, write_transforms


def _composite_ref(rgba_u8, white):
    """float64 reference: straight alpha over a constant background."""
    x = rgba_u8.astype(np.float64) / 255.0
    return x[..., :3] * x[..., 3:] + (1.0 - x[..., 3:]) * (1.0 if white else 0.0)


def _box2_ref(img):
    h, w = img.shape[:2]
    out = np.zeros((h // 2, w // 2, img.shape[2]))
    for y in range(h // 2):
        for x in range(w // 2):
            out[y, x] = img[2 * y:2 * y + 2, 2 * x:2 * x + 2].mean((0, 1))
    return out


# -- good scenes ----------------------------------------------------------------------

@pytest.mark.parametrize("white", [True, False])
def test_blender_three_splits(blender_dir, white):
    sc = load_scene(blender_dir.root, white_bkgd=white)
    assert set(sc.splits) == {"train", "val", "test"}
    assert (sc.near, sc.far, sc.white_bkgd, sc.ndc) == (2.0, 6.0, white, False)
    assert sc.background == (1.0 if white else 0.0)
    focal = 0.5 * SIZE / np.tan(0.5 * CAMERA_ANGLE_X)
    for split, n in (("train", 3), ("val", 2), ("test", 2)):
        sp = sc.split(split)
        assert sp.images.shape == (n, SIZE, SIZE, 3) and sp.images.dtype == np.float32
        assert sp.c2w.shape == (n, 4, 4) and sp.c2w.dtype == np.float32
        assert sp.focal == pytest.approx(focal)
        np.testing.assert_allclose(sp.c2w, blender_dir.poses[split], atol=1e-6)
        # train file_paths had no extension, val/test had '.png': both resolve.
        assert sp.names == [os.path.join(split, f"r_{i}.png") for i in range(n)]
        for i in range(n):
            np.testing.assert_allclose(sp.images[i], _composite_ref(blender_dir.rgba[split][i], white), atol=1e-6)
    # The fixture makes pixel (0, 0) fully transparent: it is exactly the background.
    assert sc.split("train").images[0, 0, 0].tolist() == [sc.background] * 3


def test_blender_downscale_box_filter(blender_dir):
    sc = load_scene(blender_dir.root, downscale=2)
    sp = sc.split("train")
    assert sp.images.shape == (3, SIZE // 2, SIZE // 2, 3)
    assert sp.focal == pytest.approx(0.25 * SIZE / np.tan(0.5 * CAMERA_ANGLE_X))
    for i in range(3):
        # Composite first, then average: the box filter is linear in the composited colour.
        np.testing.assert_allclose(sp.images[i], _box2_ref(_composite_ref(blender_dir.rgba["train"][i], True)),
                                   atol=1e-6)


def test_instant_ngp_transforms_json_and_holdout(tmp_path):
    root = tmp_path / "ngp"
    poses = orbit_poses(9)
    frames = []
    for k in range(9):
        write_png(root / "images" / f"{k:02d}.png", random_rgba(k)[..., :3])  # RGB, no alpha
        frames.append((f"images/{k:02d}.png", poses[k]))
    # fl_x is in pixels of a 32-px-wide capture ('w'); the images are 16 px, so focal halves.
    write_transforms(root / "transforms.json", frames, camera_angle_x=None, fl_x=40.0, w=32)
    sc = load_scene(str(root))
    tr, te = sc.split("train"), sc.split("test")
    assert tr.focal == pytest.approx(20.0)
    # Every 8th view (0, 8) is held out as test and removed from train.
    assert te.names == ["images/00.png", "images/08.png"]
    assert tr.names == [f"images/{k:02d}.png" for k in range(1, 8)]
    # A capture (fl_x, opaque images): normalised. The orbit's centre, where every camera
    # looks, stays at the origin; the cameras move to the unit sphere; the inverse gives
    # the file's poses back.
    assert sc.kind == "capture" and not sc.ndc
    np.testing.assert_allclose(sc.to_world_poses(te.c2w), poses[[0, 8]], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(tr.c2w[:, :3, 3], axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(sc.normalization.scale, 0.25, atol=1e-6)
    np.testing.assert_allclose(tr.images[0], random_rgba(1)[..., :3] / 255.0, atol=1e-6)
    assert sc.split("val") is te
    assert any("held out" in n for n in sc.notes) and any(n.startswith("NDC off") for n in sc.notes)
    # A path to the json itself works too.
    assert len(load_scene(str(root / "transforms.json")).split("train")) == 7


def _llff_rows(R_llff, t, bounds, hwf=(32.0, 32.0, 40.0)):
    m = np.concatenate([np.asarray(R_llff, float), np.asarray(t, float)[:, None],
                        np.asarray(hwf, float)[:, None]], 1)  # 3x5
    return np.concatenate([m.ravel(), bounds])


# Camera A is the identity in OpenGL axes (right, up, back) = (x, y, z). LLFF stores the
# columns as (down, right, back): down = -y -> [(0,-1,0), (1,0,0), (0,0,1)].
R_A_LLFF = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
# Camera B is rotated 90 degrees about +Y: right = (0,0,-1), up = (0,1,0), back = (1,0,0);
# in LLFF columns (down, right, back) = ((0,-1,0), (0,0,-1), (1,0,0)).
R_B_LLFF = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
RY90 = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])


def _write_llff(root, rows, n_images=None, size=SIZE):
    os.makedirs(root / "images", exist_ok=True)
    np.save(root / "poses_bounds.npy", np.stack(rows))
    for k in range(len(rows) if n_images is None else n_images):
        write_png(root / "images" / f"img{k}.png", random_rgba(10 + k, size)[..., :3])


def _avg_pose_ref(c2w):
    """Mean centre, mean back axis, up orthogonalised (the LLFF 'poses_avg')."""
    z = c2w[:, :3, 2].sum(0)
    z /= np.linalg.norm(z)
    x = np.cross(c2w[:, :3, 1].sum(0), z)
    x /= np.linalg.norm(x)
    return np.stack([x, np.cross(z, x), z], 1), c2w[:, :3, 3].mean(0)


def test_llff_axes_scale_and_recentring(tmp_path):
    root = tmp_path / "llff"
    rows = [_llff_rows(R_A_LLFF, [0.0, 0.0, 1.0], [2.0, 8.0]),
            _llff_rows(R_B_LLFF, [1.0, 0.0, 0.0], [3.0, 9.0])]
    _write_llff(root, rows)
    # The two views are 90 degrees apart: not forward-facing, so NDC is asked for.
    assert not load_scene(str(root)).ndc
    sc = load_scene(str(root), ndc=True)
    assert sc.ndc and (sc.near, sc.far) == (0.0, 1.0) and not sc.white_bkgd
    # View 0 is held out (every 8th), view 1 trains.
    A, B = sc.split("test").c2w[0].astype(np.float64), sc.split("train").c2w[0].astype(np.float64)
    assert sc.split("train").images.shape == (1, SIZE, SIZE, 3)
    # Focal 40 at the 32-px capture height -> 20 at 16 px.
    assert sc.split("train").focal == pytest.approx(20.0)
    # Recentring is a common rigid change of world frame, so the relative pose is
    # preserved: rotation Ry(90) in OpenGL axes, translation scaled by 1 / (0.75 * min bound).
    rel = np.linalg.inv(A) @ B
    np.testing.assert_allclose(rel[:3, :3], RY90, atol=1e-6)
    s = 1.0 / (2.0 * 0.75)
    np.testing.assert_allclose(rel[:3, 3], s * np.array([1.0, 0.0, -1.0]), atol=1e-6)
    # ... and the average camera is now the identity.
    R_avg, c_avg = _avg_pose_ref(np.stack([A, B]))
    np.testing.assert_allclose(R_avg, np.eye(3), atol=1e-6)
    np.testing.assert_allclose(c_avg, 0.0, atol=1e-6)
    for m in (A, B):
        np.testing.assert_allclose(m[:3, :3].T @ m[:3, :3], np.eye(3), atol=1e-6)
        np.testing.assert_allclose(m[3], [0, 0, 0, 1])
    # Metric bounds without NDC: 0.9 * min and max, in the normalised units.
    sc2 = load_llff(str(root), ndc=False)
    s2 = sc2.normalization.scale
    assert (sc2.near, sc2.far) == (pytest.approx(0.9 * 2.0 * s2), pytest.approx(9.0 * s2))


# -- bad inputs: one DataError naming the file and the problem ------------------------------

def _expect(root, fname, *words, **kw):
    with pytest.raises(DataError) as ei:
        load_scene(root, **kw)
    msg = str(ei.value)
    assert fname in msg, msg
    for w in words:
        assert w.lower() in msg.lower(), msg
    assert "\n" not in msg
    return ei.value


def _rewrite_test_json(bd, mutate):
    p = os.path.join(bd.root, "transforms_test.json")
    meta = json.load(open(p))
    mutate(meta)
    with open(p, "w") as f:
        json.dump(meta, f)


def test_malformed_json(blender_dir):
    with open(os.path.join(blender_dir.root, "transforms_test.json"), "w") as f:
        f.write('{"camera_angle_x": 0.69, "frames": [')
    _expect(blender_dir.root, "transforms_test.json", "malformed JSON")


def test_missing_frames(blender_dir):
    _rewrite_test_json(blender_dir, lambda m: m.pop("frames"))
    _expect(blender_dir.root, "transforms_test.json", "frames")


def test_empty_frames(blender_dir):
    _rewrite_test_json(blender_dir, lambda m: m.update(frames=[]))
    _expect(blender_dir.root, "transforms_test.json", "no frames")


def test_missing_image(blender_dir):
    os.remove(os.path.join(blender_dir.root, "test", "r_1.png"))
    e = _expect(blender_dir.root, "r_1.png", "missing")
    assert e.path.endswith(os.path.join("test", "r_1.png"))


def test_images_of_different_sizes(blender_dir):
    write_png(os.path.join(blender_dir.root, "test", "r_1.png"), random_rgba(0, size=8))
    _expect(blender_dir.root, "r_1.png", "8x8", f"{SIZE}x{SIZE}")


def test_splits_of_different_sizes(blender_dir):
    for i in range(2):
        write_png(os.path.join(blender_dir.root, "test", f"r_{i}.png"), random_rgba(i, size=8))
    _expect(blender_dir.root, blender_dir.root, "different image sizes")


def test_nan_in_matrix(blender_dir):
    def mutate(m):
        m["frames"][1]["transform_matrix"][0][3] = float("nan")
    _rewrite_test_json(blender_dir, mutate)
    _expect(blender_dir.root, "transforms_test.json", "frame 1", "NaN")


def test_non_rigid_matrix(blender_dir):
    def mutate(m):
        a = np.array(m["frames"][0]["transform_matrix"])
        a[:3, :3] *= 1.1
        m["frames"][0]["transform_matrix"] = a.tolist()
    _rewrite_test_json(blender_dir, mutate)
    _expect(blender_dir.root, "transforms_test.json", "frame 0", "not rigid")


def test_mirrored_matrix(blender_dir):
    def mutate(m):
        a = np.array(m["frames"][0]["transform_matrix"])
        a[:3, 0] *= -1
        m["frames"][0]["transform_matrix"] = a.tolist()
    _rewrite_test_json(blender_dir, mutate)
    _expect(blender_dir.root, "transforms_test.json", "not rigid")


def test_wrong_matrix_shape(blender_dir):
    _rewrite_test_json(blender_dir, lambda m: m["frames"][0].update(transform_matrix=np.eye(3).tolist()))
    _expect(blender_dir.root, "transforms_test.json", "shape", "4x4")


def test_missing_camera_angle(blender_dir):
    _rewrite_test_json(blender_dir, lambda m: m.pop("camera_angle_x"))
    _expect(blender_dir.root, "transforms_test.json", "camera_angle_x")


@pytest.mark.parametrize("bad", [{"camera_angle_x": "wide"}, {"camera_angle_x": 4.0},
                                 {"fl_x": "long"}, {"fl_x": -3.0}, {"fl_x": 20.0, "w": 0}])
def test_bad_intrinsics(blender_dir, bad):
    def mutate(m):
        m.pop("camera_angle_x")
        m.update(bad)
    _rewrite_test_json(blender_dir, mutate)
    _expect(blender_dir.root, "transforms_test.json", next(iter(bad)))


def test_truncated_png(blender_dir):
    p = os.path.join(blender_dir.root, "test", "r_0.png")
    data = open(p, "rb").read()
    with open(p, "wb") as f:
        f.write(data[: len(data) // 2])
    _expect(blender_dir.root, "r_0.png", "cannot decode")


def test_missing_directory(tmp_path):
    missing = str(tmp_path / "no_such_scene")
    _expect(missing, "no_such_scene", "does not exist")


def test_directory_without_scene(tmp_path):
    _expect(str(tmp_path), str(tmp_path), "transforms")


def test_llff_wrong_shape(tmp_path):
    root = tmp_path / "llff"
    _write_llff(root, [_llff_rows(R_A_LLFF, [0, 0, 1], [2.0, 8.0])])
    np.save(root / "poses_bounds.npy", np.zeros((1, 16)))
    _expect(str(root), "poses_bounds.npy", "(N, 17)")


def test_llff_count_mismatch(tmp_path):
    root = tmp_path / "llff"
    _write_llff(root, [_llff_rows(R_A_LLFF, [0, 0, 1], [2.0, 8.0]),
                       _llff_rows(R_B_LLFF, [1, 0, 0], [2.0, 8.0])], n_images=3)
    _expect(str(root), "images", "3 images", "2 cameras")


def test_llff_non_rigid_pose(tmp_path):
    root = tmp_path / "llff"
    _write_llff(root, [_llff_rows(R_A_LLFF * 2, [0, 0, 1], [2.0, 8.0])])
    _expect(str(root), "poses_bounds.npy", "not rigid")
