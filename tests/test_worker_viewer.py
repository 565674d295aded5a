"""The worker's viewer commands without a GUI: loading another scene (and failing to),
starting without one, the crop box (every field, across rebuilds, with snapshots),
screenshots at any size, the camera-path video with progress and cancel, and point
clouds inside the crop box."""
from __future__ import annotations

import os

import numpy as np

from app.gui.worker import Worker
from renderer.crop import CropBox
from tests.conftest import look_at
from tests.test_worker import TINY, WAIT, notes_until, steps_after


def test_load_scene_switches_and_a_bad_one_keeps_the_old(worker, blender_dir):
    steps_after(worker, 2)
    first = worker.scene_info.get()
    assert first["seq"] == 1 and set(first["cameras"]) == {"train", "held_out"}
    assert len(first["cameras"]["train"]["c2w"]) == 8
    worker.send("load_scene", path=str(tmp := os.path.join(blender_dir.root, "nowhere")))
    notes = notes_until(worker, lambda n: n[0] == "error")
    assert any(tmp in n[1] for n in notes)
    assert worker.scene_info.get()["seq"] == 1 and worker.status()["state"] == "paused"
    worker.send("train")
    s = steps_after(worker, worker.status()["step"] + 2)  # the old scene trains on
    assert s["error"] is None
    worker.send("load_scene", path=blender_dir.root)
    info = worker.scene_info.wait(lambda i: i["seq"] == 2, WAIT)
    assert info is not None and len(info["cameras"]["train"]["c2w"]) == 3 and info["width"] == 16
    s = worker.wait_status(lambda s: s["step"] >= 2 and s.get("scene") == blender_dir.root, WAIT)
    assert s is not None and s["state"] == "training" and s["error"] is None


def test_worker_without_a_scene_waits_for_one(blender_dir):
    w = Worker(settings=dict(TINY), device="cpu", threads=1).start()
    try:
        assert w.wait_status(lambda s: s["state"] == "no scene", WAIT) is not None
        w.send("train")
        notes_until(w, lambda n: "ignored: no scene" in n[1])
        w.send("load_scene", path=blender_dir.root)
        assert w.wait_status(lambda s: s["step"] >= 1, WAIT) is not None
    finally:
        w.stop(5.0)


def test_crop_box_in_every_field_across_rebuilds_and_snapshots(worker, tmp_path):
    steps_after(worker, 1)
    box = CropBox((-0.5, -0.5, -0.5), (0.5, 0.5, 0.7))
    worker.send("crop", box=box)
    assert worker.wait_status(lambda s: s.get("crop") == box, WAIT) is not None
    assert worker.run_sync(lambda w: [t.model.crop for t in w.trainers]) == [box]
    run_id = worker.status()["run_id"]
    worker.send("settings", L_xyz=3)  # a new network keeps the box
    s = worker.wait_status(lambda s: s["run_id"] > run_id, WAIT)
    assert s["crop"] == box and worker.run_sync(lambda w: w.trainers[0].model.crop) == box
    worker.send("save", path=str(tmp_path / "snap.safetensors"))
    notes_until(worker, lambda n: "snapshot saved" in n[1])
    worker.send("crop", box=None)
    assert worker.wait_status(lambda s: s.get("crop") is None, WAIT) is not None
    worker.send("load", path=str(tmp_path / "snap.safetensors"))
    s = worker.wait_status(lambda s: s.get("crop") == box and s["run_id"] > run_id + 1, WAIT)
    assert s is not None and worker.run_sync(lambda w: w.trainers[0].model.crop) == box


def test_screenshot_at_the_size_asked_for(worker, tmp_path):
    from PIL import Image

    steps_after(worker, 1)
    path = str(tmp_path / "shot.png")
    worker.send("screenshot", path=path, c2w=look_at((4, 0, 1)), fov=40.0, width=40, height=24)
    notes_until(worker, lambda n: "screenshot saved" in n[1] and path in n[1])
    assert Image.open(path).size == (40, 24)
    worker.send("screenshot", path=str(tmp_path / "shot.jpg"), c2w=look_at((4, 0, 1)), fov=40.0, width=40,
                height=24)
    notes_until(worker, lambda n: n[0] == "error" and ".png" in n[1])


def two_key_path(seconds=2.0, fps=5.0, w=32, h=24):
    from app.tools.camera_path import CameraPath, Keyframe

    keys = [Keyframe(look_at((4, 0, 1)), 40.0, 0.0), Keyframe(look_at((0, 4, 1)), 45.0, seconds)]
    return CameraPath(keys, width=w, height=h, fps=fps)


def test_path_video_progress_and_cancel(worker, tmp_path):
    import imageio.v3 as iio

    steps_after(worker, 1)
    path = str(tmp_path / "path.mp4")
    worker.send("path_video", path=path, camera_path=two_key_path())
    notes = notes_until(worker, lambda n: "camera path video written" in n[1])
    assert any(path in n[1] for n in notes) and worker.status()["last_video"] == path
    assert worker.status()["job"] is None
    frames = iio.imread(path)
    assert frames.shape[:3] == (10, 24, 32)
    # A long one, cancelled once it is under way: nothing is written.
    long = str(tmp_path / "long.mp4")
    worker.send("path_video", path=long, camera_path=two_key_path(seconds=60.0, fps=30.0))
    s = worker.wait_status(lambda s: (s.get("job") or {}).get("done", 0) >= 2, WAIT)
    assert s["job"]["name"] == "path video" and s["job"]["total"] == 1800 and s["job"]["path"] == long
    worker.cancel_job()
    notes_until(worker, lambda n: "path video cancelled" in n[1])
    assert not os.path.exists(long) and worker.alive and worker.status()["job"] is None


def test_point_cloud_inside_the_crop_box(worker, tmp_path):
    """With min_opacity 0 every pixel becomes a point at its expected depth. The crop box
    puts all of a ray's weight inside it, so the points of rays through the box land in it
    (the box is convex) and rays that miss it have no weight: only the box's points remain.
    Without the box the points would spread along the rays."""
    from loaders.ply import read_points_ply

    steps_after(worker, 1)
    box = CropBox((-0.3, -0.3, -0.3), (0.3, 0.3, 0.3))
    worker.send("crop", box=box)
    path = str(tmp_path / "points.ply")
    worker.send("export_points", path=path, points=2000, min_opacity=0.0)
    notes = notes_until(worker, lambda n: "point cloud exported" in n[1] and path in n[1])
    assert any("inside the crop box" in n[1] for n in notes)
    xyz, _ = read_points_ply(path)
    xyz = np.asarray(xyz, np.float64)
    assert 0 < len(xyz) < 2000
    assert box.contains_np(xyz + np.sign(xyz) * -1e-6).all()  # float32 rounding at the faces
