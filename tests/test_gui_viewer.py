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


def stats_view(s: dict):
    """The pinhole of the frame a stats line reports (its orbit camera and frame size)."""
    from app.gui.orbit import OrbitCamera
    from app.gui.overlay import ViewCamera

    st = s["camera"]
    cam = OrbitCamera(radius=st["radius"], target=st["target"], azimuth=st["azimuth"], elevation=st["elevation"],
                      fov=st["fov"], up=(0.0, 0.0, 1.0))
    h, w = s["frame_size"]
    return ViewCamera(cam.c2w64(), st["fov"], w, h)


def standing_alone(points: np.ndarray, cam, what: str, margin: float = 0.15, gap_min: float = 0.05):
    """(index, u, v pixels): of ``points`` seen in the middle of the view, the one shown
    farthest from any other."""
    from app.gui.overlay import project

    w, h = cam.width, cam.height
    u, v, z = project(points, cam)
    uv = np.stack([u, v], 1)
    gap = np.linalg.norm(uv[:, None] - uv[None], axis=-1) + np.eye(len(points)) * 1e9
    ok = (z > 0) & (u > margin * w) & (u < (1 - margin) * w) & (v > margin * h) & (v < (1 - margin) * h)
    i = int(np.argmax(np.where(ok, gap.min(1), -1)))
    assert ok[i] and gap[i].min() > gap_min * w, f"no {what} stands alone in the view"
    return i, float(u[i]), float(v[i])


def clickable_camera(s: dict):
    """(index, u, v): the training camera whose centre is shown farthest from any other
    camera's, in the middle of the view, as fractions of the image (the stats' camera)."""
    cam = stats_view(s)
    i, u, v = standing_alone(train_centres(), cam, "training camera")
    return i, u / cam.width, v / cam.height


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


def test_dragging_a_crop_handle_moves_its_face(xvfb, scene):  # noqa: F811
    """The crop box on, a drag from one of its face handles moves that face along its axis
    by what the projection says (the sliders, hence the worker's box, follow) and leaves
    the camera; a drag anywhere else still orbits and leaves the box."""
    from app.gui.crop_handles import FACES, drag_along_axis, face_centres

    app = App(xvfb, ["--data", scene, "--settings", json.dumps(TINY), "--seconds", "300",
                     "--width", "1280", "--height", "800"])
    try:
        app.wait(lambda o: o.get("event") == "start", 60, "app start")
        stat(app, lambda o: o["scene_seq"] == 1 and o["uploads"] >= 1, 120, "the scene on screen")
        app.send(cmd="set", tag="crop_on", value=True)
        for a in "xyz":
            app.send(cmd="set", tag=f"crop_min_{a}", value=-1.0)
            app.send(cmd="set", tag=f"crop_max_{a}", value=1.0)
        box = {"min": [-1.0] * 3, "max": [1.0] * 3}
        s = stat(app, lambda o: o["crop"] == box, 30, "the crop box set")
        s = stat(app, lambda o: o["frame_version"] == o["cam_version"] and o["uploads"] > s["uploads"], 60,
                 "the box drawn over a frame")
        cam = stats_view(s)
        lo, hi = np.array(box["min"]), np.array(box["max"])
        k, u, v = standing_alone(face_centres(lo, hi), cam, "crop handle", margin=0.1, gap_min=0.08)
        axis_i, end = FACES[k]
        axis = np.eye(3)[axis_i]
        # Drag along the axis as it runs on screen, 15 % of the image's width.
        from app.gui.overlay import project
        u1, v1, _ = project(face_centres(lo, hi)[k] + 0.1 * axis, cam)
        direction = np.array([u1 - u, v1 - v]) / np.hypot(u1 - u, v1 - v)
        d_img = 0.15 * cam.width * direction
        per_px = s["image_rect"][2] / cam.width  # screen pixels per image pixel
        want = (hi if end else lo)[axis_i] + drag_along_axis(cam, face_centres(lo, hi)[k], axis, (u, v),
                                                              (u + d_img[0], v + d_img[1]))
        want = float(np.clip(want, -1.5, 1.5))
        camera = s["camera"]
        app.send(cmd="drag", u=u / cam.width, v=v / cam.height, dx=d_img[0] * per_px, dy=d_img[1] * per_px)
        app.wait(lambda o: o.get("event") == "drag_done", 30, "the handle dragged")
        # The worker takes the newest box between steps: wait for the last one of the drag.
        side = "max" if end else "min"
        s = stat(app, lambda o: not o["dragging"] and abs(o["crop"][side][axis_i] - want) < 0.01, 30,
                 f"the {side} {'xyz'[axis_i]} face at {want:.4f}")
        got = s["crop"][side][axis_i]
        print(f"face {'xyz'[axis_i]} {side}: {(hi if end else lo)[axis_i]} -> {got:.4f} (projection says {want:.4f})")
        assert abs(got - (hi if end else lo)[axis_i]) > 0.1
        moved = {"min": list(lo), "max": list(hi)}
        moved[side][axis_i] = got
        assert s["crop"] == moved  # the other five faces stayed
        assert s["camera"] == camera  # the camera did not orbit
        # Elsewhere (the view's centre is the box's centre, no handle there) a drag orbits.
        app.send(cmd="drag", dx=80, dy=0)
        s = stat(app, lambda o: not o["dragging"] and abs(o["camera"]["azimuth"] - camera["azimuth"]) > 10, 30,
                 "an orbit")
        assert s["crop"] == moved
        app.send(cmd="quit")
        app.wait(lambda o: o.get("event") == "exit", 30, "clean exit")
        assert app.proc.wait(30) == 0
    finally:
        app.kill()
