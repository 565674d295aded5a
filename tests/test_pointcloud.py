"""Point-cloud export against an analytic solid sphere whose surface is known exactly."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from app.tools.pointcloud import Cancelled, export_points, pick_pixels
from models.field import Field
from renderer.compositing import composite
from renderer.crop import CropBox
from renderer.rays import ndc_rays, ndc_to_world
from renderer.sampling import stratified_samples
from tests.conftest import make_sphere_scene

RADIUS = 0.8


class SolidSphere(Field):
    """sigma = 200 inside RADIUS (opaque within a few hundredths), red for x > 0 else blue;
    crop applied like every field's render path."""

    DEFAULTS = {}

    def __init__(self):
        super().__init__()
        self.config = {}
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # an optimiser needs a parameter

    def density(self, x):
        return 200.0 * (x.norm(dim=-1) < RADIUS).float()

    def render_rays(self, rays_o, rays_d, near, far, background=None, train=False):
        t = stratified_samples(near, far, rays_o.shape[0], 400, perturb=False)
        pts = rays_o[:, None] + rays_d[:, None] * t[..., None]
        red = (pts[..., :1] > 0).float()
        rgb = torch.cat([red, torch.zeros_like(red), 1 - red], -1)
        sigma = self.crop_density(pts, self.density(pts), train)
        return composite(sigma, rgb, t, rays_d, background)


def sphere_trainer():
    from app.engine.trainer import TrainConfig, Trainer

    return Trainer(make_sphere_scene(n_views=6, size=24), TrainConfig(device="cpu"), model=SolidSphere())


def read_points(path):
    """Independent reader of a binary little-endian point PLY (x y z float, rgb uchar, no faces)."""
    data = open(path, "rb").read()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    assert not any(h.startswith("element face") for h in header)
    n = int(next(h for h in header if h.startswith("element vertex")).split()[2])
    dt = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1")])
    assert len(data) == end + n * dt.itemsize
    v = np.frombuffer(data, dt, n, end)
    return np.stack([v["x"], v["y"], v["z"]], 1).astype(np.float64), np.stack([v["r"], v["g"], v["b"]], 1)


def test_pick_pixels_distinct_and_reproducible():
    a = pick_pixels(10, 12, 50, torch.Generator().manual_seed(3))
    b = pick_pixels(10, 12, 50, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and len(set(a.tolist())) == 50 and a.max() < 120
    assert torch.equal(pick_pixels(4, 5, 100, torch.Generator()), torch.arange(20))


def test_points_lie_on_the_surface_with_its_colours(tmp_path):
    t = sphere_trainer()
    calls = []
    info = export_points(t, str(tmp_path / "p.ply"), points=3000, progress=lambda d, n: calls.append(d))
    xyz, rgb = read_points(tmp_path / "p.ply")
    assert info["points"] == len(xyz) > 500 and calls == list(range(1, 7))
    r = np.linalg.norm(xyz, axis=1)
    spacing = 4.0 / 399  # (far - near) / samples, along rays of length >= 1
    assert np.abs(r - RADIUS).max() < 2 * spacing, np.abs(r - RADIUS).max()
    right, left = rgb[xyz[:, 0] > 0.05], rgb[xyz[:, 0] < -0.05]
    assert len(right) and len(left)
    assert (right[:, 0] == 255).all() and (right[:, 2] == 0).all()
    assert (left[:, 2] == 255).all() and (left[:, 0] == 0).all()


def test_crop_box_bounds_the_points_and_shows_the_cut(tmp_path):
    t = sphere_trainer()
    export_points(t, str(tmp_path / "whole.ply"), points=3000)
    whole, _ = read_points(tmp_path / "whole.ply")
    box = CropBox((-2, -2, -2), (0.3, 2, 2))
    t.model.crop = box
    export_points(t, str(tmp_path / "cut.ply"), points=3000)
    cut, _ = read_points(tmp_path / "cut.ply")
    assert whole[:, 0].max() > 0.7 and whole[:, 0].min() < -0.7
    assert box.contains_np(cut).all() and cut[:, 0].min() < -0.7
    # The box cuts the solid sphere: cameras on the +x side now see a flat face at x = 0.3.
    face = np.abs(cut[:, 0] - 0.3) < 0.02
    assert face.sum() > 20
    assert np.linalg.norm(cut[face, 1:], axis=1).max() < math.sqrt(RADIUS ** 2 - 0.3 ** 2) + 0.03


def test_points_come_out_in_the_captures_frame(tmp_path):
    from loaders.normalize import Similarity

    a = math.radians(30)
    rot = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    trans = np.array([0.2, -0.1, 0.4])
    t = sphere_trainer()
    export_points(t, str(tmp_path / "f.ply"), points=800)
    t.scene.normalization = Similarity(rot, trans, 0.5)  # capture -> scene: 0.5 * rot @ x + trans
    export_points(t, str(tmp_path / "i.ply"), points=800)
    field, _ = read_points(tmp_path / "f.ply")
    capture, _ = read_points(tmp_path / "i.ply")
    np.testing.assert_allclose(capture, ((field - trans) / 0.5) @ rot, atol=1e-5)


def test_nothing_opaque_is_an_error_and_cancel_writes_nothing(tmp_path):
    t = sphere_trainer()
    t.model.crop = CropBox((5, 5, 5), (6, 6, 6))
    with pytest.raises(ValueError, match="inside the crop box"):
        export_points(t, str(tmp_path / "e.ply"), points=100)
    t.model.crop = None
    with pytest.raises(Cancelled):
        export_points(t, str(tmp_path / "c.ply"), points=100, progress=lambda d, n: d < 2)
    with pytest.raises(ValueError, match=".ply"):
        export_points(t, str(tmp_path / "x.xyz"))
    assert not list(tmp_path.iterdir())


def test_ndc_to_world_inverts_the_warp():
    # Rays from near-plane points (z = -1): t = 0 is the origin, and the NDC ray stays on the world ray.
    o = torch.tensor([[0.0, 0.0, -1.0], [0.3, -0.2, -1.0]])
    d = torch.tensor([[0.0, 0.0, -1.0], [0.1, 0.05, -1.0]])
    h, w, f = 30, 40, 35.0
    on, dn = ndc_rays(h, w, f, 1.0, o, d)
    for t in (0.0, 0.25, 0.5, 0.9):
        p = ndc_to_world(on + t * dn, h, w, f)
        s = (p - o)[:, 2] / d[:, 2]
        torch.testing.assert_close(p, o + s[:, None] * d, atol=1e-5, rtol=1e-5)
        # Along the optical axis NDC z = -1 + 2t, i.e. world depth 1 / (1 - t).
        assert p[0, 2].item() == pytest.approx(-1.0 / (1.0 - t), rel=1e-5)


def test_cli_export_points_on_the_demo_run(tmp_path, capsys):
    from app.cli import main
    from tests.test_video import DEMO

    out = tmp_path / "pts.ply"
    rc = main(["export-points", DEMO, "--out", str(out), "--points", "400", "--split", "test",
               "--min-opacity", "0.5", "--crop=-1,-1,-0.2,1,1,1.5", "--device", "cpu"])
    assert rc == 0 and f"wrote {out}" in capsys.readouterr().out
    xyz, rgb = read_points(out)
    assert len(xyz) > 20
    assert CropBox((-1, -1, -0.2), (1, 1, 1.5)).contains_np(xyz).all()


@pytest.mark.parametrize("args,words", [
    (["--out", "x.obj"], ".ply"),
    (["--points", "0"], "--points"),
    (["--min-opacity", "2"], "--min-opacity"),
    (["--crop", "0,0,0,1,1"], "--crop"),
    (["--split", "nosplit"], "nosplit"),
])
def test_cli_export_points_errors(tmp_path, capsys, args, words):
    from app.cli import main
    from tests.test_video import DEMO

    argv = ["export-points", DEMO, "--out", str(tmp_path / "p.ply"), *args, "--device", "cpu"]
    assert main(argv) == 2 and words in capsys.readouterr().err
    assert not (tmp_path / "p.ply").exists()
