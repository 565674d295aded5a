"""Opening photos and a video in the real app under Xvfb, as a person would: the path
typed into the Scene section's Open box. The app runs ``main.py process`` as a child
process and shows its stages; we cancel one run (the app keeps training the scene it had,
and nothing is left where the dataset would go), let the next one finish (the dataset is
loaded, its cameras drawn over the render, and it trains), then open a video of the same
views the same way.

The capture is the project's own scene on a noise backdrop (assets/make_scene.py
write_capture), 20 views of 192 px along a half orbit, written as JPEGs without poses;
the video is those frames as an H.264 mp4. Skipped without pycolmap, without a standalone
OpenGL context to render the capture, or without Xvfb."""
from __future__ import annotations

import glob
import json
import os
import re

import numpy as np
import pytest

from tests.test_gui_viewer import stat
from tests.test_gui_xvfb import TINY, App, scene, xvfb  # noqa: F401 - fixtures

pytest.importorskip("pycolmap")

N_VIEWS, RES, ARC_DEG = 20, 192, 180.0
FRUSTUM_SEGMENTS = 8  # per camera: app.gui.overlay.frustum_segments
PROCESS_S = 240  # generous: structure from motion on 2 shared cores, next to the app training


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    """(photos folder, video path) of the same N_VIEWS views."""
    from assets import make_scene as ms

    try:
        ctx = ms.create_context()
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"no standalone OpenGL context to render the capture: {e}")
    root = tmp_path_factory.mktemp("open_capture")
    try:
        ms.write_capture(str(root / "photos"), n_views=N_VIEWS, res=RES, arc_deg=ARC_DEG, ctx=ctx)
    finally:
        ctx.release()
    video = str(root / "clip.mp4")
    write_mp4(video, sorted(glob.glob(str(root / "photos" / "*.jpg"))))
    return str(root / "photos"), video


def write_mp4(path: str, images: list[str], fps: float = 10.0) -> None:
    import imageio.v3 as iio
    import imageio_ffmpeg

    frames = [iio.imread(p) for p in images]
    h, w = frames[0].shape[:2]
    writer = imageio_ffmpeg.write_frames(path, (w, h), fps=fps, codec="libx264", quality=8,
                                         macro_block_size=16, ffmpeg_log_level="error")
    writer.send(None)
    for f in frames:
        writer.send(np.ascontiguousarray(f))
    writer.close()


def notes(app) -> list[str]:
    return [e["text"] for e in app.events if e.get("event") == "note"]


def leftovers(out: str) -> list[str]:
    """The dataset folder and any hidden build folder of it."""
    parent, name = os.path.dirname(out), os.path.basename(out)
    return [f for f in os.listdir(parent) if f == name or f.startswith(f".{name}.partial")]


def registered(out: str) -> int:
    with open(os.path.join(out, "transforms.json"), encoding="utf-8") as f:
        return len(json.load(f)["frames"])


def process_to_the_end(app, before_seq: int, what: str) -> tuple[dict, set]:
    """Wait until the run the app shows has finished and its dataset is loaded and
    training; the stages it showed on the way."""
    stages = set()

    def seen(o):
        p = o.get("process")
        if p and p["stage"]:
            assert p["shown"] and p["state"] == "running", p
            stages.add(p["stage"])
        return o["scene_seq"] == before_seq + 1
    s = stat(app, seen, PROCESS_S, f"{what} processed and loaded")
    s = stat(app, lambda o: o["scene_seq"] == before_seq + 1 and o["step"] >= 5 and o["uploads"] > 0
             and o["frame_version"] == o["cam_version"], 180, f"{what}: training and shown")
    return s, stages


def check_loaded(s: dict, out: str) -> None:
    """The loaded scene is the processed folder, with a camera (drawn as a frustum) per
    registered view."""
    assert s["scene"] == out and s["error"] is None and s["state"] == "training", s
    n = registered(out)
    assert n >= 0.9 * N_VIEWS, n
    assert sum(s["views"].values()) == n and s["views"]["train"] >= 0.75 * n, s["views"]
    assert s["overlay_segments"] == FRUSTUM_SEGMENTS * n  # the frusta, nothing else (no crop box, no path)


def test_open_photos_cancel_then_process_and_a_video(xvfb, scene, capture):  # noqa: F811
    photos, video = capture
    app = App(xvfb, ["--data", scene, "--settings", json.dumps(TINY), "--seconds", "600",
                     "--width", "1280", "--height", "800"])
    try:
        app.wait(lambda o: o.get("event") == "start", 60, "app start")
        s = stat(app, lambda o: o["scene_seq"] == 1 and o["step"] >= 3 and o["uploads"] >= 1, 120,
                 "the first scene training and on screen")
        first = s["scene"]

        # Open the photos, and cancel while structure from motion runs.
        app.send(cmd="set", tag="open_path", value=photos)
        s = stat(app, lambda o: bool((o["process"] or {}).get("text")), 120, "the process run's first stage shown")
        p = s["process"]
        out = p["out"]
        assert out == os.path.join(os.path.dirname(photos), "photos_dataset"), out
        assert p["shown"] and p["state"] == "running" and re.fullmatch(r".+: \d+( / \d+)?", p["text"]), p
        app.send(cmd="click", tag="process_cancel")
        s = stat(app, lambda o: o["process"] is None, 60, "the run cancelled")
        assert any("cancelled; nothing was written" in t for t in notes(app)), notes(app)
        assert not any(t.startswith("processed ") for t in notes(app))
        assert leftovers(out) == []
        step = s["step"]
        s = stat(app, lambda o: o["step"] >= step + 5, 120, "the first scene still training")
        assert s["scene_seq"] == 1 and s["scene"] == first and s["state"] == "training" and s["error"] is None

        # Open them again and let the run finish: the dataset loads and trains.
        app.send(cmd="set", tag="open_path", value=photos)
        s, stages = process_to_the_end(app, 1, "the photos")
        print("photos: stages shown", sorted(stages), "views", s["views"], "step", s["step"])
        assert {"features", "mapping"} <= stages and any(x.startswith("matching") for x in stages), stages
        assert any(t.startswith(f"processed {photos} into {out}") for t in notes(app)), notes(app)
        check_loaded(s, out)
        assert [f for f in os.listdir(os.path.dirname(out)) if f.startswith(".")] == []  # no build folder

        # A video of the same views, opened the same way.
        app.send(cmd="set", tag="open_path", value=video)
        s, stages = process_to_the_end(app, 2, "the video")
        print("video: stages shown", sorted(stages), "views", s["views"], "step", s["step"])
        vout = os.path.join(os.path.dirname(video), "clip_dataset")
        assert any(x.startswith("frames") for x in stages), stages
        check_loaded(s, vout)

        app.send(cmd="quit")
        app.wait(lambda o: o.get("event") == "exit", 30, "clean exit")
        assert app.proc.wait(30) == 0
    finally:
        app.kill()
