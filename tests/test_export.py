"""Mesh export against analytic fields whose surface is known exactly."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from torch import nn

from app.tools.export import (DEFAULT_THRESHOLD, density_grid, export_mesh, extract_surface, grid_axes,
                        ply_bytes, write_ply)
from renderer.compositing import composite
from renderer.sampling import stratified_samples


class Sphere(nn.Module):
    """sigma(x) = peak inside radius R (hard step, or a logistic edge of width ``soft``);
    colour red where x > 0, blue where x < 0, so vertex colours can be checked."""

    def __init__(self, radius=0.8, peak=50.0, soft=0.0, center=(0.0, 0.0, 0.0)):
        super().__init__()
        self.radius, self.peak, self.soft = radius, peak, soft
        self.register_buffer("center", torch.tensor(center, dtype=torch.float32))

    def density(self, x):
        r = (x - self.center).norm(dim=-1)
        if self.soft:
            return self.peak * torch.sigmoid((self.radius - r) / self.soft)
        return self.peak * (r < self.radius).float()

    def color(self, x):
        red = (x[..., :1] > self.center[0]).float()
        return torch.cat([red, torch.zeros_like(red), 1 - red], -1)

    def render_rays(self, rays_o, rays_d, near, far, background=None, train=False):
        t = stratified_samples(near, far, rays_o.shape[0], 64, perturb=False)
        pts = rays_o[:, None] + rays_d[:, None] * t[..., None]
        return composite(self.density(pts), self.color(pts), t, rays_d, background)


def read_ply(path):
    """Independent minimal reader for the binary little-endian PLY we write."""
    with open(path, "rb") as f:
        data = f.read()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    assert header[0] == "ply" and header[1] == "format binary_little_endian 1.0"
    counts, props, cur = {}, {"vertex": [], "face": []}, None
    for line in header:
        w = line.split()
        if w[0] == "element":
            cur = w[1]
            counts[cur] = int(w[2])
        elif w[0] == "property":
            props[cur].append(tuple(w[1:]))
    types = {"float": "<f4", "uchar": "u1", "int": "<i4"}
    vdt = np.dtype([(p[-1], types[p[0]]) for p in props["vertex"]])
    assert props["face"] == [("list", "uchar", "int", "vertex_indices")]
    fdt = np.dtype([("n", "u1"), ("idx", "<i4", (3,))])
    nv, nf = counts["vertex"], counts["face"]
    v = np.frombuffer(data, vdt, nv, end)
    f = np.frombuffer(data, fdt, nf, end + nv * vdt.itemsize)
    assert len(data) == end + nv * vdt.itemsize + nf * fdt.itemsize, "trailing or missing bytes"
    assert (f["n"] == 3).all()
    xyz = np.stack([v["x"], v["y"], v["z"]], 1)
    rgb = np.stack([v["red"], v["green"], v["blue"]], 1) if "red" in v.dtype.names else None
    return xyz, f["idx"], rgb, header


def test_density_grid_matches_direct_evaluation_in_float64():
    m = Sphere(soft=0.1)
    res, bbox = 9, ((-1.0, -0.5, -1.5), (1.0, 1.5, 0.5))
    g = density_grid(m, res, bbox, chunk=7)  # chunk not dividing res^3 on purpose
    xs, ys, zs = grid_axes(res, bbox)
    ref = np.empty((res, res, res))
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            for k, z in enumerate(zs):
                r = math.sqrt(x * x + y * y + z * z)
                ref[i, j, k] = 50.0 / (1.0 + math.exp(-(0.8 - r) / 0.1))
    np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("soft,threshold,expect_r", [
    (0.0, DEFAULT_THRESHOLD, 0.8),                  # hard edge: surface somewhere in the boundary voxel
    (0.05, 25.0, 0.8),                              # logistic edge: level 25 is exactly r = 0.8
    (0.05, 10.0, 0.8 + 0.05 * math.log(4.0)),       # 50 sigmoid(z) = 10 -> z = -ln 4
])
def test_sphere_mesh_radius_within_a_voxel(tmp_path, soft, threshold, expect_r):
    res = 64
    voxel = 3.0 / (res - 1)
    center = (0.1, -0.2, 0.05)  # off-centre so an axis mix-up would show
    path = tmp_path / "s.ply"
    info = export_mesh(Sphere(soft=soft, center=center), str(path), res=res, threshold=threshold)
    xyz, faces, rgb, header = read_ply(path)
    assert info["vertices"] == len(xyz) > 100 and info["faces"] == len(faces) > 100
    assert info["threshold"] == threshold and info["path"] == str(path)
    r = np.linalg.norm(xyz - np.asarray(center), axis=1)
    tol = voxel if soft == 0 else 0.1 * voxel
    assert abs(r.mean() - expect_r) < tol, (r.mean(), expect_r)
    assert np.abs(r - expect_r).max() < voxel
    # Every face is wound counter-clockwise seen from outside.
    a, b, c = xyz[faces[:, 0]], xyz[faces[:, 1]], xyz[faces[:, 2]]
    n = np.cross(b - a, c - a)
    assert ((n * ((a + b + c) / 3 - np.asarray(center))).sum(1) > 0).all()
    # Colours come from the field: red hemisphere at +x, blue at -x.
    dx = xyz[:, 0] - center[0]
    right, left = rgb[dx > 0.2], rgb[dx < -0.2]
    assert len(right) and len(left)
    assert (right[:, 0] > 200).all() and (right[:, 2] < 55).all()
    assert (left[:, 2] > 200).all() and (left[:, 0] < 55).all()
    assert (rgb[:, 1] == 0).all()


def test_outward_normals_and_no_colours(tmp_path):
    # A smooth edge: on a hard step the grid gradient (hence the normal) is only rough.
    v, f, n = extract_surface(density_grid(Sphere(soft=0.1), 32, chunk=4096), 10.0)
    radial = v / np.linalg.norm(v, axis=1, keepdims=True)
    assert ((n * radial).sum(1) > 0.99).all()
    info = export_mesh(Sphere(), str(tmp_path / "g.ply"), res=32, threshold=10.0, colors=False)
    xyz, faces, rgb, header = read_ply(tmp_path / "g.ply")
    assert rgb is None and len(xyz) == info["vertices"]
    assert not any(name.startswith(".tmp-") for name in os.listdir(tmp_path))


def test_ply_bytes_exact_layout():
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32)
    c = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    b = ply_bytes(v, np.array([[0, 1, 2]]), c)
    head = (b"ply\nformat binary_little_endian 1.0\nelement vertex 3\nproperty float x\n"
            b"property float y\nproperty float z\nproperty uchar red\nproperty uchar green\n"
            b"property uchar blue\nelement face 1\nproperty list uchar int vertex_indices\nend_header\n")
    body = b""
    for p, col in zip(v, c):
        body += p.astype("<f4").tobytes() + col.tobytes()
    body += bytes([3]) + np.array([0, 1, 2], "<i4").tobytes()
    assert b == head + body


def test_default_threshold_is_printed(tmp_path, capsys):
    info = export_mesh(Sphere(), str(tmp_path / "d.ply"), res=16)
    assert info["threshold"] == DEFAULT_THRESHOLD
    assert f"threshold: {DEFAULT_THRESHOLD:g}" in capsys.readouterr().out


@pytest.mark.parametrize("kwargs,match", [
    (dict(threshold=60.0), "no surface at threshold 60"),       # above the peak density
    (dict(threshold=float("nan")), "threshold must be a finite"),
    (dict(res=1), "res must be between"),
    (dict(res=5000), "res must be between"),
    (dict(bbox=((0, 0, 0), (1, -1, 1))), "min < max"),
])
def test_bad_arguments_raise_and_write_nothing(tmp_path, kwargs, match):
    path = tmp_path / "bad.ply"
    with pytest.raises(ValueError, match=match):
        export_mesh(Sphere(), str(path), **({"res": 16} | kwargs))
    assert os.listdir(tmp_path) == []


def test_nan_density_is_a_clear_error(tmp_path):
    class NaNField(Sphere):
        def density(self, x):
            d = super().density(x)
            return torch.where(x[:, 0] > 1.0, torch.full_like(d, float("nan")), d)
    with pytest.raises(ValueError, match="NaN"):
        export_mesh(NaNField(), str(tmp_path / "n.ply"), res=16, threshold=10)
    assert os.listdir(tmp_path) == []


def test_forward_facing_runs_are_refused(tmp_path):
    from tests.conftest import make_trainer

    tr = make_trainer()
    tr.scene.ndc = True
    with pytest.raises(ValueError, match="NDC"):
        export_mesh(tr, str(tmp_path / "f.ply"), res=8)
    assert os.listdir(tmp_path) == []


def test_write_ply_rejects_bad_indices(tmp_path):
    with pytest.raises(ValueError, match="out of range"):
        write_ply(str(tmp_path / "x.ply"), np.zeros((3, 3), np.float32), np.array([[0, 1, 3]]))
    assert os.listdir(tmp_path) == []


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "assets", "demo_run")


def test_progress_covers_both_stages(tmp_path):
    calls = []
    info = export_mesh(Sphere(), str(tmp_path / "p.ply"), res=16, threshold=10,
                       chunk=1000, progress=lambda d, t: calls.append((d, t)))
    grid = [c for c in calls if c[1] == 16 ** 3]
    colours = [c for c in calls if c[1] == info["vertices"]]
    assert grid[-1] == (4096, 4096) and len(grid) == 5
    assert colours[-1] == (info["vertices"], info["vertices"]) and len(grid) + len(colours) == len(calls)


def test_cli_export_mesh_on_the_demo_run(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "m.ply"
    proc = subprocess.run([sys.executable, "main.py", "export-mesh", DEMO, "--res", "24", "--out", str(out),
                           "--device", "cpu"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr
    assert "threshold: 10" in proc.stdout + proc.stderr
    xyz, faces, rgb, header = read_ply(out)
    assert f"wrote {out}: {len(xyz)} vertices, {len(faces)} faces" in proc.stdout
    assert len(faces) > 100 and np.abs(xyz).max() <= 1.5 + 1e-5
    # The trained field has the scene's objects: the red sphere shows up in the colours.
    assert ((rgb[:, 0] > 120) & (rgb[:, 1] < 60) & (rgb[:, 2] < 60)).sum() > 10


@pytest.mark.parametrize("args,words", [
    (["--res", "0"], ["--res"]),
    (["--res", "100000"], ["--res"]),
    (["--threshold", "nan"], ["--threshold"]),
    (["--bbox", "1,2,3"], ["--bbox", "6"]),
    (["--bbox", "0,0,0,1,-1,1"], ["--bbox", "min < max"]),
    (["--threshold", "1e6"], ["no surface at threshold 1e+06"]),
])
def test_cli_bad_values(tmp_path, capsys, args, words):
    from app.cli import main

    out = tmp_path / "m.ply"
    assert main(["export-mesh", DEMO, "--res", "8", *args, "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], lines[0]
    assert os.listdir(tmp_path) == []


def test_cli_out_must_be_ply(tmp_path, capsys):
    from app.cli import main

    assert main(["export-mesh", DEMO, "--out", str(tmp_path / "m.obj")]) == 2
    assert "m.obj" in capsys.readouterr().err and os.listdir(tmp_path) == []


def _closed(faces) -> bool:
    """Every edge is shared by exactly two faces."""
    e = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(e, axis=0, return_counts=True)
    return bool((counts == 2).all())


def test_crop_box_bounds_the_mesh_and_closes_the_cut(tmp_path):
    from renderer.crop import CropBox

    res, radius = 64, 0.8
    voxel = 3.0 / (res - 1)
    export_mesh(Sphere(radius=radius), str(tmp_path / "whole.ply"), res=res, threshold=10.0, colors=False)
    whole, wf, _, _ = read_ply(tmp_path / "whole.ply")
    np.testing.assert_allclose(whole.min(0), -radius, atol=voxel)
    np.testing.assert_allclose(whole.max(0), radius, atol=voxel)
    box = CropBox((-1.0, -0.3, -2.0), (0.25, 2.0, 0.5))  # cuts at x = 0.25, y = -0.3, z = 0.5
    m = Sphere(radius=radius)
    m.crop = box  # the field's own box is used when none is passed
    info = export_mesh(m, str(tmp_path / "cut.ply"), res=res, threshold=10.0, colors=False)
    cut, cf, _, header = read_ply(tmp_path / "cut.ply")
    assert info["vertices"] == len(cut) and any(h.startswith("comment crop") for h in header)
    # Inside the box, and reaching its cutting faces (a cap one voxel in) and the sphere elsewhere.
    assert box.contains_np(cut).all()
    np.testing.assert_allclose(cut.max(0), [0.25, radius, 0.5], atol=1.5 * voxel)
    np.testing.assert_allclose(cut.min(0), [-radius, -0.3, -radius], atol=1.5 * voxel)
    assert _closed(wf) and _closed(cf)


def test_crop_box_outside_the_export_box_is_an_error(tmp_path):
    from renderer.crop import CropBox

    with pytest.raises(ValueError, match="does not overlap"):
        export_mesh(Sphere(), str(tmp_path / "x.ply"), res=8, crop=CropBox((2, 2, 2), (3, 3, 3)))
    assert not os.listdir(tmp_path)


def test_cli_export_mesh_takes_a_crop_box(tmp_path):
    from app.cli import main
    from renderer.crop import CropBox

    demo = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "demo_run")
    out = tmp_path / "m.ply"
    assert main(["export-mesh", demo, "--out", str(out), "--res", "24", "--no-colors",
                 "--crop=-1,-1,-0.5,0.2,1,1", "--device", "cpu"]) == 0
    xyz, _, _, _ = read_ply(out)
    assert len(xyz) and CropBox((-1, -1, -0.5), (0.2, 1, 1)).contains_np(xyz).all()
    assert xyz[:, 0].max() > 0.0  # reaches towards the cut
