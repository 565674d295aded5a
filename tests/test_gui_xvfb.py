"""The real app (`python main.py gui`) under a private Xvfb server.

It trains a tiny field on a small two-sphere scene, gets a real mouse drag
(xdotool; the app's own input path via --control when xdotool is missing), and
screenshots itself before and after. We assert that the drag moved the camera,
that the frame shown afterwards was rendered for the new camera and differs
on screen, and that training steps advanced while the GUI loop kept drawing
frames. Also: without a display the app exits 3 with a pointer to the CLI.
Skipped only when the Xvfb binary is missing or cannot start.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tests.conftest import CAMERA_ANGLE_X, orbit_poses, write_png, write_transforms

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 24
TINY = {"arch": {"nerf": {"width": 32, "depth": 2, "skips": [], "dir_width": 16}}, "L_xyz": 4, "L_dir": 2,
        "n_coarse": 12, "n_fine": 8, "batch_rays": 256, "lr": 5e-3}
SPHERES = [((0.0, -0.9, 0.0), 0.8, (0.9, 0.15, 0.1)), ((0.0, 0.9, 0.0), 0.8, (0.1, 0.3, 0.95))]


def two_spheres(c2w, size, focal):
    """(N, size, size, 3) views of a red and a blue sphere on white: orbiting changes the picture."""
    j, i = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    d_cam = np.stack([(i - size / 2) / focal, -(j - size / 2) / focal, -np.ones_like(i)], -1)
    out = []
    for m in c2w:
        d = d_cam @ m[:3, :3].T
        img = np.ones((size, size, 3))
        best = np.full((size, size), np.inf)
        for centre, r, colour in SPHERES:
            o = m[:3, 3] - np.asarray(centre)
            a, b, c = (d * d).sum(-1), d @ o, o @ o - r * r
            disc = b * b - a * c
            t = np.where(disc >= 0, (-b - np.sqrt(np.maximum(disc, 0))) / a, np.inf)
            hit = t < best
            img[hit] = colour
            best = np.minimum(best, t)
        out.append(img)
    return np.stack(out).astype(np.float32)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("gui") / "spheres"
    focal = 0.5 * SIZE / np.tan(0.5 * CAMERA_ANGLE_X)
    for split, poses in (("train", orbit_poses(12, elevation_deg=25.0)),
                         ("test", orbit_poses(2, elevation_deg=25.0, offset_deg=15.0))):
        imgs = two_spheres(poses, SIZE, focal)
        frames = []
        for k in range(len(poses)):
            write_png(root / split / f"{k:03d}.png", imgs[k])
            frames.append((f"{split}/{k:03d}.png", poses[k]))
        write_transforms(root / f"transforms_{split}.json", frames)
    return str(root)


def free_display() -> int:
    for n in range(90, 400):
        if not os.path.exists(f"/tmp/.X11-unix/X{n}") and not os.path.exists(f"/tmp/.X{n}-lock"):
            return n
    raise RuntimeError("no free X display number in 90..399")


@pytest.fixture(scope="module")
def xvfb():
    exe = shutil.which("Xvfb")
    if exe is None:
        pytest.skip("Xvfb is not installed (apt-get install xvfb)")
    n = free_display()
    proc = subprocess.Popen([exe, f":{n}", "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sock = f"/tmp/.X11-unix/X{n}"
    for _ in range(200):
        if os.path.exists(sock) or proc.poll() is not None:
            break
        time.sleep(0.05)
    if proc.poll() is not None or not os.path.exists(sock):
        err = proc.stderr.read().decode(errors="replace")[-300:] if proc.poll() is not None else "no socket"
        proc.kill()
        pytest.skip(f"Xvfb could not start on :{n}: {err}")
    yield f":{n}"
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()


class App:
    """The app as a subprocess: JSON lines from stdout into a queue, JSON commands to stdin."""

    def __init__(self, display, args, env_extra=None):
        env = dict(os.environ, DISPLAY=display, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        env.pop("WAYLAND_DISPLAY", None)
        env.update(env_extra or {})
        self.proc = subprocess.Popen([sys.executable, "main.py", "gui", "--stats", "--control", *args],
                                     cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1,
                                     # Ctrl-C as in a terminal, even if this runner ignores SIGINT.
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.lines: queue.Queue = queue.Queue()
        self.stats: list[dict] = []
        self.events: list[dict] = []
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.lines.put(json.loads(line))
            except json.JSONDecodeError:
                pass
        self.lines.put(None)

    def send(self, **cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def wait(self, pred, timeout, what):
        """Next stats line or event satisfying pred (all lines are kept)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                obj = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if obj is None:
                break
            (self.events if "event" in obj else self.stats).append(obj)
            if pred(obj):
                return obj
        self.kill()
        tail = "".join(self.stderr)[-2000:]
        pytest.fail(f"timed out waiting for {what}; last stats {self.stats[-1:]} events {self.events[-3:]}\n"
                    f"stderr:\n{tail}")

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def read_png(path):
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0


def test_gui_trains_drags_and_screenshots(xvfb, scene, tmp_path):
    app = App(xvfb, ["--data", scene, "--res-scale", "2", "--settings", json.dumps(TINY),
                     "--seconds", "240", "--width", "1280", "--height", "800"])
    try:
        start = app.wait(lambda o: o.get("event") == "start", 60, "app start")
        assert start["viewport"] == [1280, 800]
        # Trained a little and showing a refined frame of the initial camera.
        s = app.wait(lambda o: "step" in o and o["step"] >= 30 and o["uploads"] >= 1
                     and o["frame_version"] == o["cam_version"] and o["frame_level"] == o["frame_levels"] - 1,
                     120, "training steps and a full-resolution frame")
        before_cam, rect = s["camera"], s["image_rect"]
        app.send(cmd="screenshot", path=str(tmp_path / "before.png"))
        app.wait(lambda o: o.get("event") == "screenshot", 30, "first screenshot")
        cam_version_before = s["cam_version"]
        frames_before, step_before = s["gui_frames"], s["step"]

        x0, y0 = rect[0] + rect[2] / 2, rect[1] + rect[3] / 2
        dx = 150
        if shutil.which("xdotool"):
            env = dict(os.environ, DISPLAY=xvfb)
            run = lambda *a: subprocess.run(["xdotool", *map(str, a)], env=env, check=True, timeout=10)
            run("mousemove", int(x0), int(y0))
            time.sleep(0.3)
            run("mousedown", 1)
            for k in range(1, 11):
                run("mousemove", int(x0 + dx * k / 10), int(y0))
                time.sleep(0.05)
            run("mouseup", 1)
        else:
            app.send(cmd="drag", dx=dx, dy=0)
        # The drag rotated the camera (drag right: azimuth decreases by 0.4 deg per pixel) ...
        s = app.wait(lambda o: "camera" in o and o["camera"] and not o["dragging"]
                     and abs(o["camera"]["azimuth"] - before_cam["azimuth"]) > 20, 60, "camera to follow the drag")
        az_change = (before_cam["azimuth"] - s["camera"]["azimuth"]) % 360
        assert 0.4 * dx * 0.5 < az_change < 0.4 * dx * 1.5, (before_cam, s["camera"])
        # ... and a frame rendered for the moved camera reached the screen, refined to full size.
        s = app.wait(lambda o: "step" in o and o["cam_version"] > cam_version_before
                     and o["frame_version"] == o["cam_version"] and o["frame_level"] == o["frame_levels"] - 1,
                     120, "a refined frame for the dragged camera")
        app.send(cmd="screenshot", path=str(tmp_path / "after.png"))
        app.wait(lambda o: o.get("event") == "screenshot", 30, "second screenshot")
        # Training went on while the GUI kept drawing.
        s = app.wait(lambda o: "step" in o and o["step"] >= step_before + 5 and o["gui_frames"] >= frames_before + 20,
                     120, "more steps and more GUI frames")
        assert s["state"] == "training" and s["error"] is None
        app.send(cmd="quit")
        ex = app.wait(lambda o: o.get("event") == "exit", 30, "clean exit")
        assert ex["worker_stopped"] is True
        assert app.proc.wait(30) == 0
    finally:
        app.kill()
    a, b = read_png(tmp_path / "before.png"), read_png(tmp_path / "after.png")
    assert a.shape == b.shape == (800, 1280, 3)
    x, y, w, h = (int(round(v)) for v in rect)
    va, vb = a[y + 4:y + h - 30, x + 4:x + w - 4], b[y + 4:y + h - 30, x + 4:x + w - 4]  # skip the overlay text
    assert va.std() > 0.02, "the render area is blank"
    diff = np.abs(va - vb).mean()
    print(f"viewport mean abs diff after the drag: {diff:.3f}; render std {va.std():.3f}")
    if os.environ.get("NERFLAB_KEEP_SHOTS"):
        for name in ("before.png", "after.png"):
            shutil.copy(tmp_path / name, os.path.join(os.environ["NERFLAB_KEEP_SHOTS"], name))
    assert diff > 0.02, f"the viewport did not change after the drag (mean abs diff {diff:.4f})"
    # The rest of the window is drawn too (side panel, not a blank screen).
    assert a[:, x + w + 20:].std() > 0.05


def test_ctrl_c_closes_the_window_like_its_close_button(xvfb, scene):
    """SIGINT while training: the loop ends, the worker stops, exit 130 within seconds, and
    the terminal is told why."""
    app = App(xvfb, ["--data", scene, "--settings", json.dumps(TINY), "--seconds", "240"])
    try:
        app.wait(lambda o: "step" in o and o["step"] >= 3 and o["uploads"] >= 1, 120, "training and a frame")
        t0 = time.monotonic()
        app.proc.send_signal(signal.SIGINT)
        ex = app.wait(lambda o: o.get("event") == "exit", 30, "exit after SIGINT")
        rc = app.proc.wait(30)
        took = time.monotonic() - t0
    finally:
        app.kill()
    assert ex["interrupted"] is True and ex["worker_stopped"] is True
    assert rc in (0, 130) and took < 10.0, (rc, took)
    time.sleep(0.2)  # the stderr reader thread
    assert "interrupted (Ctrl-C)" in "".join(app.stderr)


def test_no_display_exits_3_with_cli_hint():
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    t = subprocess.run([sys.executable, "main.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert t.returncode == 3
    assert "no display" in t.stderr and "python main.py train --help" in t.stderr
    assert "Traceback" not in t.stderr


def test_unreachable_display_exits_3():
    n = free_display()
    env = dict(os.environ, DISPLAY=f":{n}")
    t = subprocess.run([sys.executable, "main.py", "gui"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    assert t.returncode == 3 and f":{n}" in t.stderr and "python main.py train --help" in t.stderr
