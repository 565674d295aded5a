"""`main.py render` as a screenshot: any camera, any W x H, a chosen field of view, the crop box."""
from __future__ import annotations

import json
import math

import imageio.v3 as iio
import numpy as np

from app.cli import main
from tests.conftest import look_at
from tests.test_video import DEMO


def test_any_pose_size_and_fov(tmp_path):
    from app.commands.render import to_uint8
    from app.engine.runs import load_run

    c2w = look_at((3.0, 2.0, 2.0))
    out = tmp_path / "shot.png"
    assert main(["render", DEMO, "--pose", json.dumps(c2w.tolist()), "--size", "40x24", "--fov", "30",
                 "--out", str(out), "--device", "cpu"]) == 0
    img = iio.imread(out)
    assert img.shape == (24, 40, 3)
    t, _, _ = load_run(DEMO, "cpu")
    focal = 12.0 / math.tan(math.radians(15.0))  # half the height over tan(half the vertical fov)
    ref = to_uint8(t.render(c2w.astype(np.float32), 24, 40, focal, keys=("rgb",))["rgb"].numpy())
    assert np.array_equal(img, ref)
    # A crop box away from everything leaves the background only.
    assert main(["render", DEMO, "--pose", json.dumps(c2w.tolist()), "--size", "16", "--crop", "5,5,5,6,6,6",
                 "--out", str(out), "--device", "cpu"]) == 0
    img = iio.imread(out)
    assert img.shape == (16, 16, 3) and (img == 255).all()


def test_bad_size_and_fov(tmp_path, capsys):
    for args, words in ((["--size", "40x"], "--size"), (["--size", "4x40"], "--size"), (["--fov", "180"], "--fov")):
        assert main(["render", DEMO, *args, "--out", str(tmp_path / "x.png"), "--device", "cpu"]) == 2
        assert words in capsys.readouterr().err
