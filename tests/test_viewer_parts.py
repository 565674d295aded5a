"""The viewer's pure parts: the overlay's projection and drawing (against the renderer's own
rays), picking a camera, the keyframe list and its camera_path.json round trip through a
scene normalisation, the crop sliders' box, and opening paths (what a path is, the
``process`` child process: progress, failure, cancel)."""
from __future__ import annotations

import os
import sys
import textwrap
import time
import types

import numpy as np
import pytest
import torch

from app.gui.capture_process import ProcessJob, classify, output_for, parse_progress
from app.gui.crop_panel import box_from_values
from app.gui.keyframes import KeyframeList, horizontal_fov, vertical_fov
from app.gui.overlay import (OCCLUDED_ALPHA, Layer, ViewCamera, box_segments, clip_near, draw_layer,
                             frustum_segments, lines, project, sample_segments)
from app.gui.scene_overlay import SceneOverlay, pick_camera
from tests.conftest import look_at, write_png, write_transforms


def view(eye=(4.0, 1.0, 2.0), fov=40.0, w=64, h=48) -> ViewCamera:
    return ViewCamera(look_at(eye), fov, w, h)


# -- projection ----------------------------------------------------------------------------------
def test_projection_agrees_with_the_renderers_rays():
    """A point projected to (u, v) at depth z lies on the renderer's ray through (u, v) at t = z."""
    from renderer.rays import rays_from_dirs

    cam = view()
    pts = np.random.default_rng(0).uniform(-1, 1, (50, 3))
    u, v, z = project(pts, cam)
    assert (z > 0).all()
    f = cam.focal
    dirs = torch.tensor(np.stack([(u - cam.width / 2) / f, -(v - cam.height / 2) / f, -np.ones_like(u)], -1),
                        dtype=torch.float64)
    o, d = rays_from_dirs(dirs, torch.tensor(cam.c2w, dtype=torch.float64))
    hit = (o + torch.tensor(z)[:, None] * d).numpy()
    np.testing.assert_allclose(hit, pts, atol=1e-9)


def test_frustum_corners_project_to_the_image_corners():
    """A frustum drawn with a camera's own intrinsics, seen from that camera, outlines its image."""
    cam = view(w=80, h=50)
    f = cam.focal
    seg = frustum_segments(cam.c2w[None], f, f, 40, 25, 80, 50, depth=0.7)
    assert seg.shape == (8, 2, 3)
    np.testing.assert_allclose(seg[:4, 0], np.repeat(cam.c2w[None, :3, 3], 4, 0))  # spokes start at the centre
    u, v, z = project(seg[:4, 1], cam)
    np.testing.assert_allclose(np.stack([u, v], 1), [[0, 0], [80, 0], [80, 50], [0, 50]], atol=1e-9)
    np.testing.assert_allclose(z, 0.7)
    np.testing.assert_allclose(seg[4:, 0], seg[:4, 1])  # the rim joins the corners


def test_box_segments_are_the_twelve_edges():
    seg = box_segments((-1, -2, -3), (1, 2, 3))
    assert seg.shape == (12, 2, 3)
    d = np.abs(seg[:, 1] - seg[:, 0])
    assert ((d > 0).sum(1) == 1).all()  # axis-aligned
    np.testing.assert_allclose(np.sort(d.sum(1)), [2] * 4 + [4] * 4 + [6] * 4)
    assert len({tuple(sorted(map(tuple, s))) for s in seg}) == 12


def test_clip_near_cuts_at_the_near_plane():
    cam = ViewCamera(np.eye(4), 60.0, 32, 32)  # at the origin looking down -z
    segs = np.array([[[0, 0, 1.0], [0, 0, -2.0]],     # crosses: cut at z-depth 0.5
                     [[0, 0, 1.0], [1, 0, 2.0]],      # behind: dropped
                     [[0, 0, -1.0], [0, 1, -3.0]]])   # in front: kept whole
    out, idx = clip_near(segs, cam, near=0.5)
    assert idx.tolist() == [0, 2]
    np.testing.assert_allclose(out[0], [[0, 0, -0.5], [0, 0, -2.0]])
    np.testing.assert_allclose(out[1], segs[2])


def test_samples_leave_no_gaps_and_have_the_3d_points_depth():
    """Each sample is the image of a point of the 3D segment at the depth it gives (1/z
    interpolated on screen), and samples are at most a pixel apart along the major axis."""
    cam = view()
    seg = np.array([[[0.0, -1.0, 0.5], [0.3, 1.0, -0.5]]])
    u, v, z, which = sample_segments(seg, cam, scale=10.0)
    step = np.maximum(np.abs(np.diff(u)), np.abs(np.diff(v))) * 10.0
    assert (which == 0).all() and step.max() <= 1.0
    f = cam.focal  # back-project each sample and check it lies on the segment
    p_cam = np.stack([(u - cam.width / 2) * z / f, -(v - cam.height / 2) * z / f, -z], -1)
    p = p_cam @ cam.c2w[:3, :3].T + cam.c2w[:3, 3]
    a, b = seg[0]
    t = (p - a) @ (b - a) / ((b - a) @ (b - a))
    np.testing.assert_allclose(p, a + t[:, None] * (b - a), atol=1e-9)
    assert t.min() > -1e-9 and t.max() < 1 + 1e-9


def test_draw_layer_depth_test():
    """A line across a surface that covers the left half of the view at depth 2: behind it
    (depth 3) the line is faint on the left and solid on the right; in front (depth 1) solid."""
    cam = ViewCamera(np.eye(4), 90.0, 40, 40)
    depth, acc = np.full((40, 40), 2.0, np.float32), np.zeros((40, 40), np.float32)
    acc[:, :20] = 1.0
    red = (1.0, 0.0, 0.0, 1.0)
    for z, left_alpha in ((3.0, OCCLUDED_ALPHA), (1.0, 1.0)):
        out = np.zeros((40, 40, 4), np.float32)
        layer = lines([[[-0.8 * z, 0.0, -z], [0.8 * z, 0.0, -z]]], red)  # spans u in [4, 36] at row 20
        n = draw_layer(out, (0, 0, 40, 40), layer, cam, depth, acc)
        assert n > 30
        row = out[20, :, 0]
        np.testing.assert_allclose(row[6:18], left_alpha)
        np.testing.assert_allclose(row[22:34], 1.0)
        assert out[10, :, 0].max() == 0  # nothing drawn off the line


def test_draw_layer_scales_into_its_rect_and_hides_occluded_points():
    cam = ViewCamera(np.eye(4), 90.0, 20, 10)
    depth, acc = np.full((10, 20), 2.0), np.ones((10, 20))
    pts = np.array([[0.0, 0.0, -1.0], [0.0, 0.0, -3.0]])  # in front of / behind the surface
    layer = Layer(points=pts[:1], point_colors=np.array([[0, 1, 0, 1]], np.float32), point_size=1)
    out = np.zeros((30, 60, 4), np.float32)
    draw_layer(out, (10, 5, 40, 20), layer, cam, depth, acc)  # image pixel (10, 5) -> texture (30, 15)
    assert out[15, 30, 1] == 1.0 and out[..., 1].sum() == 1.0
    out[:] = 0
    layer.points = pts[1:]
    assert draw_layer(out, (10, 5, 40, 20), layer, cam, depth, acc) == 0


def test_pick_camera_nearest_in_front_within_radius():
    cam = view(eye=(0.0, -5.0, 0.0))
    centres = np.array([[0.0, 0.0, 0.0], [0.3, 0.0, 0.0], [0.0, -10.0, 0.0]])  # the last one is behind
    u, v, _ = project(centres, cam)
    assert pick_camera(centres, cam, u[1] + 2, v[1], radius=5) == 1
    assert pick_camera(centres, cam, u[1] + 20, v[1], radius=5) is None
    assert pick_camera(centres[2:], cam, cam.width / 2, cam.height / 2, radius=1e9) is None


def test_scene_overlay_layers_follow_the_toggles():
    c2w = np.stack([look_at((4, 0, 1)), look_at((0, 4, 1))])
    cams = {"c2w": c2w, "fx": np.full(2, 50.0), "fy": np.full(2, 50.0), "cx": np.full(2, 32.0),
            "cy": np.full(2, 24.0), "width": np.full(2, 64.0), "height": np.full(2, 48.0)}
    info = {"cameras": {"train": cams, "held_out": {k: v[:1] for k, v in cams.items()}}, "radius": 4.0,
            "points": np.zeros((5, 3)), "point_colors": np.zeros((5, 3), np.uint8), "ndc": False}
    ov = SceneOverlay(None)
    ov.set_scene(info)
    assert len(ov.layer().segments) == 3 * 8 and len(ov.layer().points) == 0
    v = ov.version
    ov.toggle("points", True)
    ov.toggle("cameras", False)
    assert ov.version > v and len(ov.layer().segments) == 0 and len(ov.layer().points) == 5
    frame = types.SimpleNamespace(size=(48, 64), c2w=look_at((0, -6, 0)), fov=40.0, kind="view",
                                  images=[{"depth": np.ones((48, 64)), "acc": np.ones((48, 64))}])
    (layer, vc, depth, acc), = ov.overlays_for(frame)
    assert vc.width == 64 and vc.height == 48 and depth is not None
    info["ndc"] = True  # no z-depth in NDC: drawn untested
    assert ov.overlays_for(frame)[0][2] is None


# -- keyframes --------------------------------------------------------------------------------------
def test_fov_conversions_are_inverse():
    v = vertical_fov(60.0, 1280, 720)
    assert v < 60.0 and abs(horizontal_fov(v, 1280, 720) - 60.0) < 1e-9
    assert abs(vertical_fov(50.0, 100, 100) - 50.0) < 1e-12


def test_keyframe_list_edits():
    k = KeyframeList()
    poses = [look_at((4, 0, i)) for i in range(3)]
    for p in poses:
        k.add(p, 40.0)
    assert [x.time for x in k.keys] == [0.0, 1.0, 2.0] and k.selected == 2
    assert k.move(2, -1) == 1  # pose moves, times stay
    np.testing.assert_allclose(k.keys[1].c2w, poses[2])
    assert [x.time for x in k.keys] == [0.0, 1.0, 2.0]
    assert k.move(0, -1) == 0
    with pytest.raises(ValueError, match="between its neighbours"):
        k.set_time(1, 2.5)
    k.set_time(1, 0.4)
    with pytest.raises(ValueError, match="fov"):
        k.set_fov(0, 0.0)
    k.delete(1)
    assert len(k) == 2 and k.selected == 1
    assert len(k.labels()) == 2 and "t   2.00 s" in k.labels()[1]
    curve = k.curve()
    np.testing.assert_allclose(curve[0], poses[0][:3, 3], atol=1e-12)
    np.testing.assert_allclose(curve[-1], poses[1][:3, 3], atol=1e-12)


def test_keyframes_round_trip_through_camera_path_json_in_the_capture_frame(tmp_path):
    """Saved in the capture's frame (the normalisation undone), loaded back into the scene's."""
    from app.tools.camera_path import load_path, save_path
    from loaders.normalize import Similarity

    a = np.radians(30)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    norm = Similarity(rot, np.array([0.5, -1.0, 2.0]), 0.25)
    k = KeyframeList()
    for i, fov in enumerate((35.0, 40.0, 50.0)):
        k.add(look_at((3.0 * np.cos(i), 3.0 * np.sin(i), 1.0)), fov)
    k.set_time(2, 3.5)
    cp = k.camera_path(norm.inverse().poses, 320, 240, 12)
    np.testing.assert_allclose(cp.keyframes[1].c2w, norm.inverse().poses(k.keys[1].c2w), atol=1e-12)
    save_path(cp, str(tmp_path / "camera_path.json"))
    back = KeyframeList()
    back.replace(load_path(str(tmp_path / "camera_path.json")), norm.poses)
    assert [x.time for x in back.keys] == [0.0, 1.0, 3.5] and [x.fov for x in back.keys] == [35.0, 40.0, 50.0]
    for x, y in zip(back.keys, k.keys):
        np.testing.assert_allclose(x.c2w, y.c2w, atol=1e-9)


def test_crop_box_from_sliders():
    assert box_from_values(False, [-1] * 3, [1] * 3) is None
    b = box_from_values(True, [-1, 0.5, -0.2], [1, 0.5, 0.3])  # y max dragged onto y min
    assert b.lo == (-1.0, 0.5, -0.2) and b.hi[1] > b.lo[1] and b.hi[0] == 1.0


# -- opening paths ------------------------------------------------------------------------------------
def test_classify_paths(tmp_path):
    img = np.zeros((8, 8, 3), np.uint8)
    scene = tmp_path / "scene"
    write_png(scene / "r_0.png", img)
    write_transforms(scene / "transforms_train.json", [("r_0", np.eye(4))])
    assert classify(str(scene)) == ("scene", str(scene))
    assert classify(str(scene / "transforms_train.json"))[0] == "scene"
    llff = tmp_path / "llff"
    llff.mkdir()
    np.save(llff / "poses_bounds.npy", np.zeros((2, 17)))
    assert classify(str(llff))[0] == "scene"
    photos = tmp_path / "photos"
    write_png(photos / "a.jpg", img)
    assert classify(str(photos)) == ("photos", str(photos))
    capture = tmp_path / "capture"
    write_png(capture / "images" / "a.png", img)
    assert classify(str(capture)) == ("photos", str(capture / "images"))
    assert output_for(str(capture / "images")) == str(tmp_path / "capture_dataset")
    video = tmp_path / "clip.MP4"
    video.write_bytes(b"")
    assert classify(str(video)) == ("video", str(video))
    assert output_for(str(video)) == str(tmp_path / "clip_dataset")
    (tmp_path / "empty").mkdir()
    for bad, match in ((tmp_path / "empty", "found no"), (photos / "a.jpg", "single image"),
                       (tmp_path / "nope", "no such")):
        with pytest.raises(ValueError, match=match):
            classify(str(bad))


def test_parse_progress_lines():
    assert parse_progress("features:  42%|####2     | 21/50 [00:03<00:04,  6.10image/s]") == ("features", 21, 50)
    assert parse_progress("matching (sequential): 100%|##########| 7/7 [00:01<00:00]") == \
        ("matching (sequential)", 7, 7)
    assert parse_progress("frames (scan): 12 frame [00:02, 5.9 frame/s]") == ("frames (scan)", 12, None)
    assert parse_progress("registered 60 / 71 images (84.5 %), 1200 points") is None


FAKE_PROCESS = textwrap.dedent("""
    import os, sys, tempfile, time
    from tqdm import tqdm
    out, mode = sys.argv[1], sys.argv[2]
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(out) + ".partial-", dir=os.path.dirname(out))
    try:
        for stage, n in (("features", 5), ("matching (exhaustive)", 4)):
            for _ in tqdm(range(n), desc=stage, unit="image", mininterval=0):
                time.sleep(0.02 if mode != "slow" else 0.5)
        if mode == "fail":
            print("error: only 2 of 9 images could be placed; try: more overlap")
            sys.exit(2)
        open(os.path.join(tmp, "transforms.json"), "w").write("{}")
        os.rename(tmp, out)
    except BaseException:
        import shutil; shutil.rmtree(tmp, ignore_errors=True); raise
    print("dataset written to", out)
""")


def run_fake(tmp_path, mode: str, cancel_after: float | None = None) -> ProcessJob:
    script = tmp_path / "fake_process.py"
    script.write_text(FAKE_PROCESS)
    out = tmp_path / f"out_{mode}"
    job = ProcessJob(str(tmp_path / "photos"), str(out), [sys.executable, str(script), str(out), mode]).start()
    t0 = time.monotonic()
    stages = set()
    while job.poll() == "running" and time.monotonic() - t0 < 60:
        stage = job.progress()[0]
        if stage:
            stages.add(stage)
        if cancel_after is not None and stage and time.monotonic() - t0 > cancel_after:
            job.cancel()
        time.sleep(0.02)
    job.stages_seen = stages
    return job


def test_process_job_done_with_stages(tmp_path):
    job = run_fake(tmp_path, "ok")
    assert job.state == "done" and os.path.isfile(os.path.join(job.out, "transforms.json"))
    assert job.progress() == ("matching (exhaustive)", 4, 4)
    assert "features" in job.stages_seen
    assert any("dataset written to" in line for line in job.log)


def test_process_job_failure_says_why_and_leaves_nothing(tmp_path):
    job = run_fake(tmp_path, "fail")
    assert job.state == "failed" and "could be placed" in job.error
    assert not os.path.exists(job.out) and not [p for p in os.listdir(tmp_path) if ".partial-" in p]


def test_process_job_cancel_leaves_nothing(tmp_path):
    job = run_fake(tmp_path, "slow", cancel_after=0.3)
    assert job.state == "cancelled"
    assert not os.path.exists(job.out) and not [p for p in os.listdir(tmp_path) if ".partial-" in p]


def test_view_bounds_follow_the_camera_distance():
    """A view farther out than the training cameras sees the scene as far behind its near
    plane as they did; closer in, near shrinks and far stays; NDC keeps its bounds."""
    from app.gui.render_schedule import view_bounds

    scene = types.SimpleNamespace(near=2.0, far=6.0, scene_radius=4.0, ndc=False)
    at = lambda d: look_at((0.0, -d, 0.0))  # noqa: E731
    assert view_bounds(scene, at(4.0)) == pytest.approx((2.0, 6.0))
    assert view_bounds(scene, at(10.0)) == pytest.approx((8.0, 12.0))
    assert view_bounds(scene, at(3.0)) == pytest.approx((1.0, 6.0))
    assert view_bounds(scene, at(0.5)) == pytest.approx((0.1, 6.0))
    scene.ndc = True
    assert view_bounds(scene, at(10.0)) == (2.0, 6.0)
