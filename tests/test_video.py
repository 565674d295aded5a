"""Orbit videos: frames decoded back match direct renders; GIF fallback without ffmpeg."""
from __future__ import annotations

import os
import subprocess
import sys

import imageio.v2 as imageio
import imageio.v3 as iio
import numpy as np
import pytest

from app.tools.video import Cancelled, orbit_poses, render_orbit_video

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "assets", "demo_run")


@pytest.fixture(scope="module")
def demo():
    from app.engine.runs import load_run

    trainer, _, _ = load_run(DEMO, "cpu")
    return trainer


def read_mp4(path) -> np.ndarray:
    with imageio.get_reader(str(path), format="FFMPEG") as r:
        return np.stack([f for f in r.iter_data()])  # list(r) would trust nframes=inf


def direct_frames(trainer, n, size, elevation=30.0):
    from app.commands.render import to_uint8

    return np.stack([to_uint8(trainer.render(c2w, size, size, keys=("rgb",))["rgb"].numpy())
                     for c2w in orbit_poses(n, elevation, trainer.scene.scene_radius)])


def test_orbit_poses_circle_the_origin():
    p = orbit_poses(8, 30.0, 4.0)
    eye = p[:, :3, 3]
    np.testing.assert_allclose(np.linalg.norm(eye, axis=1), 4.0, rtol=1e-6)
    np.testing.assert_allclose(eye[:, 2], 4.0 * np.sin(np.radians(30)), rtol=1e-6)
    az = np.degrees(np.arctan2(eye[:, 1], eye[:, 0])) % 360
    np.testing.assert_allclose(az, np.arange(8) * 45.0, atol=1e-4)
    # Each camera looks at the origin: its -Z axis points from the eye to (0, 0, 0).
    np.testing.assert_allclose(-p[:, :3, 2], -eye / 4.0, atol=1e-6)


def test_mp4_has_the_frames_that_were_rendered(demo, tmp_path):
    path = tmp_path / "orbit.mp4"
    calls = []
    out = render_orbit_video(demo, str(path), frames=5, fps=10, size=32,
                             progress=lambda d, t: calls.append((d, t)))
    assert out == str(path) and path.is_file()
    assert calls == [(i, 5) for i in range(1, 6)]
    got = read_mp4(path)
    assert got.shape == (5, 32, 32, 3)
    ref = direct_frames(demo, 5, 32)
    err = np.abs(got.astype(float) - ref.astype(float)).mean(axis=(1, 2, 3))  # per frame, 0..255
    assert (err < 6).all(), err  # lossy H.264 on a 32 px image (measured ~3)
    # Frames are in orbit order: each decoded frame is closest to its own render.
    cross = np.abs(got[:, None].astype(float) - ref[None].astype(float)).mean(axis=(2, 3, 4))
    assert (cross.argmin(1) == np.arange(5)).all(), cross
    assert not any(n.startswith(".tmp-") for n in os.listdir(tmp_path))


def test_odd_size_is_rounded_to_even(demo, tmp_path):
    path = render_orbit_video(demo, str(tmp_path / "odd.mp4"), frames=2, size=33)
    assert read_mp4(path).shape == (2, 32, 32, 3)


def test_gif_fallback_when_ffmpeg_is_missing(demo, tmp_path, monkeypatch, capsys):
    import imageio_ffmpeg

    def no_ffmpeg():
        raise RuntimeError("No ffmpeg exe could be found.")
    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", no_ffmpeg)
    out = render_orbit_video(demo, str(tmp_path / "orbit.mp4"), frames=3, size=16)
    assert out == str(tmp_path / "orbit.gif")
    said = capsys.readouterr().out
    assert "ffmpeg is not available" in said and out in said
    assert sorted(os.listdir(tmp_path)) == ["orbit.gif"]
    frames = iio.imread(out, index=None)
    assert frames.shape[:3] == (3, 16, 16)
    np.testing.assert_array_equal(frames[..., :3], direct_frames(demo, 3, 16))  # GIF is lossless here


def test_fallback_is_announced(demo, tmp_path, monkeypatch):
    import app.tools.video

    monkeypatch.setattr(app.tools.video, "ffmpeg_exe", lambda: None)
    said = []
    out = render_orbit_video(demo, str(tmp_path / "v.mp4"), frames=2, size=16, log=said.append)
    assert out.endswith("v.gif") and len(said) == 1 and "GIF" in said[0] and out in said[0]


def test_cancel_leaves_nothing(demo, tmp_path):
    with pytest.raises(Cancelled):
        render_orbit_video(demo, str(tmp_path / "c.mp4"), frames=4, size=16,
                           progress=lambda d, t: d < 2 and None)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("kw,match", [
    (dict(frames=0), "frames must be"),
    (dict(size=4), "size must be"),
    (dict(size=100000), "size must be"),
    (dict(fps=0), "fps must be"),
    (dict(elevation=90), "elevation must be"),
    (dict(radius=-1.0), "radius must be"),
    (dict(path_name="v.txt"), "unsupported video type"),
])
def test_bad_arguments(demo, tmp_path, kw, match):
    name = kw.pop("path_name", "v.mp4")
    with pytest.raises(ValueError, match=match):
        render_orbit_video(demo, str(tmp_path / name), **kw)
    assert os.listdir(tmp_path) == []


def cli(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "main.py", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_render_video(tmp_path):
    out = tmp_path / "orbit.mp4"
    proc = cli("render-video", DEMO, "--frames", 3, "--size", 24, "--out", out, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout
    assert read_mp4(out).shape == (3, 24, 24, 3)


@pytest.mark.parametrize("args,word", [
    (["--frames", "-3"], "--frames"),
    (["--size", "100000"], "--size"),
    (["--fps", "0"], "--fps"),
    (["--out", "video.xyz"], "video.xyz"),
])
def test_cli_bad_values(tmp_path, capsys, args, word):
    if args[0] == "--out":
        args = ["--out", tmp_path / args[1]]
    else:
        args = args + ["--out", tmp_path / "v.mp4"]
    from app.cli import main

    # In process (the subprocess path is covered above): argument errors are raised
    # before the run is loaded, so these are cheap.
    assert main(["render-video", DEMO, *map(str, args), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and word in lines[0] and "Traceback" not in err, err
    assert os.listdir(tmp_path) == []


def test_forward_facing_runs_are_refused(tmp_path):
    from tests.conftest import make_trainer

    tr = make_trainer()
    tr.scene.ndc = True
    with pytest.raises(ValueError, match="forward-facing"):
        render_orbit_video(tr, str(tmp_path / "f.mp4"), frames=2, size=16)
    assert os.listdir(tmp_path) == []


def test_huge_gif_is_refused_before_rendering(demo, tmp_path, monkeypatch):
    import app.tools.video

    monkeypatch.setattr(app.tools.video, "ffmpeg_exe", lambda: None)
    monkeypatch.setattr(demo, "render", lambda *a, **k: pytest.fail("rendered a frame"))
    with pytest.raises(ValueError, match="GiB of memory"):
        render_orbit_video(demo, str(tmp_path / "v.mp4"), frames=5000, size=512, log=None)
    with pytest.raises(ValueError, match="GiB of memory"):
        render_orbit_video(demo, str(tmp_path / "v.gif"), frames=5000, size=512)
    assert os.listdir(tmp_path) == []
