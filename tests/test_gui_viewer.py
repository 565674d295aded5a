"""The viewer features of the real app under Xvfb, driven through --control as a user
would: open the embedded scene from the Scene section, move the camera and add three
keyframes, play the path, render a 2-second path video (decoded here: the expected
frame count, consecutive frames differ), and screenshot the window with the training
cameras drawn over the render (their colour is on screen)."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np

from assets import SCENE_DIR
from tests.test_gui_xvfb import TINY, App, read_png, scene, xvfb  # noqa: F401 - fixtures

FPS, SECONDS = 10, 2  # the path: three keyframes one second apart
VIDEO_W, VIDEO_H = 96, 64
TRAIN_RGB = np.array([1.0, 0.66, 0.24])  # app.gui.scene_overlay.TRAIN_COLOR


def train_centres() -> np.ndarray:
    with open(os.path.join(SCENE_DIR, "transforms_train.json"), encoding="utf-8") as f:
        return np.array([fr["transform_matrix"] for fr in json.load(f)["frames"]])[:, :3, 3]


def orbit_eye(state: dict) -> np.ndarray:
    from app.gui.orbit import OrbitCamera

    cam = OrbitCamera(radius=state["radius"], target=state["target"], azimuth=state["azimuth"],
                      elevation=state["elevation"], fov=state["fov"], up=(0.0, 0.0, 1.0))
    return cam.eye


def clickable_camera(s: dict):
    """(index, u, v): the training camera whose centre is shown farthest from any other
    camera's, in the middle of the view, as fractions of the image (the stats' camera)."""
    from app.gui.orbit import OrbitCamera
    from app.gui.overlay import ViewCamera, project

    st = s["camera"]
    cam = OrbitCamera(radius=st["radius"], target=st["target"], azimuth=st["azimuth"], elevation=st["elevation"],
                      fov=st["fov"], up=(0.0, 0.0, 1.0))
    h, w = s["frame_size"]
    c = train_centres()
    u, v, z = project(c, ViewCamera(cam.c2w64(), st["fov"], w, h))
    uv = np.stack([u, v], 1)
    gap = np.linalg.norm(uv[:, None] - uv[None], axis=-1) + np.eye(len(c)) * 1e9
    ok = (z > 0) & (u > 0.15 * w) & (u < 0.85 * w) & (v > 0.15 * h) & (v < 0.85 * h)
    i = int(np.argmax(np.where(ok, gap.min(1), -1)))
    assert ok[i] and gap[i].min() > 0.05 * w, "no training camera stands alone in the view"
    return i, float(u[i] / w), float(v[i] / h)


def stat(app, pred, timeout, what):
    return app.wait(lambda o: "step" in o and pred(o), timeout, what)


def test_open_keyframes_play_video_and_frusta(xvfb, scene, tmp_path):  # noqa: F811
    out_dir = tmp_path / "out"
    app = App(xvfb, ["--data", scene, "--settings", json.dumps(TINY), "--seconds", "400",
                     "--width", "1280", "--height", "800"])
    try:
        app.wait(lambda o: o.get("event") == "start", 60, "app start")
        s = stat(app, lambda o: o["scene_seq"] == 1 and o["uploads"] >= 1, 120, "the first scene on screen")
        # Open the embedded scene from the Scene section (the path typed, then Enter).
        app.send(cmd="set", tag="out_dir", value=str(out_dir))
        app.send(cmd="set", tag="open_path", value=SCENE_DIR)
        s = stat(app, lambda o: o["scene_seq"] == 2 and o["scene"] == os.path.abspath(SCENE_DIR)
                 and o["step"] >= 5 and o["frame_version"] == o["cam_version"], 240,
                 "the embedded scene loaded, training, and shown")
        assert s["error"] is None and s["state"] == "training"
        # Three keyframes, the camera moved between them.
        for k in range(3):
            if k:
                before = s["camera"]["azimuth"]
                app.send(cmd="drag", dx=90, dy=-20)
                moved = lambda o, before=before: not o["dragging"] and abs(o["camera"]["azimuth"] - before) > 10  # noqa: E731
                s = stat(app, moved, 60,
                         f"drag {k}")
            app.send(cmd="click", tag="path_add")
            s = stat(app, lambda o, n=k + 1: o["path_keys"] == n, 30, f"keyframe {k + 1}")
        # Play it in the viewport: the flight ends, and the view was rendered along it.
        v0 = s["cam_version"]
        app.send(cmd="click", tag="path_play")
        s = stat(app, lambda o: o["flights"] >= 1 and not o["playing"], 60, "the path played")
        assert s["cam_version"] > v0 + 1  # more than one pose was sent
        # Render it: 2 s at 10 fps.
        app.send(cmd="set", tag="path_fps", value=FPS)
        app.send(cmd="set", tag="path_size", value=f"{VIDEO_W}x{VIDEO_H}")
        app.send(cmd="click", tag="path_video")
        s = stat(app, lambda o: o["last_video"] is not None and o["job"] is None, 300, "the path video")
        video = s["last_video"]
        assert os.path.dirname(video) == str(out_dir)
        # Frusta over the render (toggle on by default): zoom out to see the cameras around
        # the scene, and screenshot the window.
        app.send(cmd="wheel", clicks=-8)
        app.wait(lambda o: o.get("event") == "wheel_done", 30, "zoomed out")
        s = stat(app, lambda o: o["frame_version"] == o["cam_version"] and o["frame_level"] == o["frame_levels"] - 1,
                 120, "a refined frame")
        app.send(cmd="screenshot", path=str(tmp_path / "viewer.png"))
        app.wait(lambda o: o.get("event") == "screenshot", 30, "screenshot")
        rect = s["image_rect"]
        app.send(cmd="set", tag="ov_cameras", value=False)
        s = stat(app, lambda o: o["overlay_version"] > s["overlay_version"], 30, "cameras hidden")
        s = stat(app, lambda o: o["uploads"] > s["uploads"], 30, "the view composed again")
        app.send(cmd="screenshot", path=str(tmp_path / "no_frusta.png"))
        app.wait(lambda o: o.get("event") == "screenshot", 30, "screenshot without frusta")
        # Click a training camera: the view flies there.
        app.send(cmd="set", tag="ov_cameras", value=True)
        s = stat(app, lambda o: o["frame_version"] == o["cam_version"], 60, "a frame")
        i, u, v = clickable_camera(s)
        flights = s["flights"]
        app.send(cmd="click_view", u=u, v=v)
        s = stat(app, lambda o: o["flights"] > flights and not o["playing"], 60, "the flight to the clicked camera")
        eye = orbit_eye(s["camera"])
        assert np.abs(eye - train_centres()[i]).max() < 1e-3, (eye, train_centres()[i])
        app.send(cmd="quit")
        app.wait(lambda o: o.get("event") == "exit", 30, "clean exit")
        assert app.proc.wait(30) == 0
    finally:
        app.kill()

    import imageio.v3 as iio

    frames = iio.imread(video)
    assert frames.shape == (FPS * SECONDS, VIDEO_H, VIDEO_W, 3), frames.shape
    diffs = np.abs(np.diff(frames.astype(np.float32) / 255.0, axis=0)).mean(axis=(1, 2, 3))
    print("mean abs difference of consecutive frames:", np.round(diffs, 4))
    assert (diffs > 1e-3).all(), diffs

    shot, bare = read_png(tmp_path / "viewer.png"), read_png(tmp_path / "no_frusta.png")
    x, y, w, h = (int(round(v)) for v in rect)
    view, view_bare = shot[y:y + h, x:x + w], bare[y:y + h, x:x + w]
    orange = (np.abs(view - TRAIN_RGB).max(-1) < 0.12).sum()
    orange_bare = (np.abs(view_bare - TRAIN_RGB).max(-1) < 0.12).sum()
    print(f"frustum-coloured pixels: {orange} with the cameras shown, {orange_bare} without")
    assert orange > 300 and orange > 10 * max(orange_bare, 1)
    if os.environ.get("NERFLAB_KEEP_SHOTS"):
        shutil.copy(tmp_path / "viewer.png", os.path.join(os.environ["NERFLAB_KEEP_SHOTS"], "viewer.png"))
