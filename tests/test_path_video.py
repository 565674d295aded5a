"""render-video along a camera path: the frames are the path's views, counted by fps x seconds."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from app.tools.camera_path import CameraPath, Keyframe, focal_for_fov, save_path
from tests.conftest import look_at
from tests.test_video import DEMO, demo, read_mp4  # noqa: F401 (demo is a fixture)


def three_key_path(radius: float) -> CameraPath:
    """Three keyframes over 2 s around the embedded scene, the field of view narrowing."""
    eyes = [(radius, 0.0, 0.4 * radius), (0.3 * radius, radius, 0.6 * radius), (-radius, 0.2 * radius, 0.3 * radius)]
    keys = [Keyframe(look_at(e), fov, t) for e, fov, t in zip(eyes, (40.0, 35.0, 30.0), (0.0, 1.2, 2.0))]
    return CameraPath(keys, width=32, height=24, fps=10)


def test_path_video_has_fps_times_seconds_frames_that_change(demo, tmp_path):  # noqa: F811
    from app.commands.render import to_uint8
    from app.tools.video import render_path_video

    path = three_key_path(demo.scene.scene_radius)
    calls = []
    out = render_path_video(demo, str(tmp_path / "p.mp4"), path, progress=lambda d, t: calls.append(d))
    got = read_mp4(out)
    assert got.shape == (20, 24, 32, 3) and calls == list(range(1, 21))
    step = np.abs(np.diff(got.astype(float), axis=0)).mean(axis=(1, 2, 3))
    assert (step > 0.5).all(), step  # every frame differs from the one before
    # Each decoded frame is the render of the path's pose and fov at its time.
    ref = np.stack([to_uint8(demo.render(c2w, 24, 32, focal_for_fov(24, fov), keys=("rgb",))["rgb"].numpy())
                    for c2w, fov in path.frames()])
    err = np.abs(got.astype(float) - ref.astype(float)).mean(axis=(1, 2, 3))
    assert (err < 6).all(), err


def test_cli_renders_a_path_file(tmp_path, capsys):
    from app.cli import main
    from app.engine.runs import load_run

    trainer, _, _ = load_run(DEMO, "cpu")
    pj = tmp_path / "camera_path.json"
    save_path(three_key_path(trainer.scene.scene_radius), str(pj))
    out = tmp_path / "v.mp4"
    rc = main(["render-video", DEMO, "--path", str(pj), "--fps", "6", "--size", "20x16", "--out", str(out),
               "--device", "cpu"])
    assert rc == 0 and f"wrote {out}" in capsys.readouterr().out
    assert read_mp4(out).shape == (12, 16, 20, 3)  # 6 fps x 2 s


@pytest.mark.parametrize("args,words", [
    (["--path", "missing.json"], "missing.json"),
    (["--size", "10xq"], "--size"),
    (["--crop", "1,2,3"], "--crop"),
    (["--fps", "0", "--path", "x.json"], "--fps"),
])
def test_cli_path_errors(tmp_path, capsys, args, words):
    from app.cli import main

    rc = main(["render-video", DEMO, *args, "--out", str(tmp_path / "v.mp4"), "--device", "cpu"])
    assert rc == 2 and words in capsys.readouterr().err
    assert not (tmp_path / "v.mp4").exists()


def test_path_poses_are_in_the_captures_frame(demo, tmp_path, monkeypatch):  # noqa: F811
    """With a normalisation, the frames rendered are the file's poses taken into the scene."""
    from loaders.normalize import Similarity
    from app.tools.video import render_path_video

    path = three_key_path(2.0)
    path.fps = 2
    norm = Similarity(np.eye(3), np.array([0.1, -0.2, 0.0]), 2.0)  # capture -> scene
    monkeypatch.setattr(demo.scene, "normalization", norm)
    seen = []
    monkeypatch.setattr(demo, "render", lambda c2w, h, w, f, keys: seen.append(c2w) or
                        {"rgb": torch.zeros(h, w, 3)})
    render_path_video(demo, str(tmp_path / "n.gif"), path)
    for got, (c2w, _) in zip(seen, path.frames()):
        np.testing.assert_allclose(got[:3, 3], 2.0 * c2w[:3, 3] + [0.1, -0.2, 0.0], atol=1e-5)
        np.testing.assert_allclose(got[:3, :3], c2w[:3, :3], atol=1e-6)
    assert len(seen) == 4
