"""2D coordinate-MLP lab: split geometry, mappings against float64 loops, image
loading, PSNR bookkeeping, the spectral-bias ordering, the background session and
the `lab2d` CLI."""
from __future__ import annotations

import contextlib
import math
import os
import time

import numpy as np
import pytest
import torch
from PIL import Image

from app.lab.lab2d import (MAPPINGS, ImageError, LabConfig, LabSession, MappingRun, format_table, load_image,
                       loglinear_fourier_features, make_mapping, parse_mappings, pixel_coords, side_by_side,
                       split_every_other, train_mapping)
from app.engine.metrics import psnr


@contextlib.contextmanager
def one_thread():
    # One thread: deterministic reductions and no OpenMP stalls on a busy CPU.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def synthetic(n: int = 32) -> np.ndarray:
    """(n, n, 3) image of sinusoids at 3-7 cycles per unit: below the Nyquist limit of
    the (n/2)^2 training grid (n/4 cycles), so it is learnable from the even pixels,
    but high enough that a plain MLP is slow to fit it (spectral bias)."""
    v = pixel_coords(n).astype(np.float64)
    x, y = v[..., 0], v[..., 1]
    img = np.stack([0.5 + 0.3 * np.sin(2 * np.pi * (3 * x + 5 * y)) + 0.15 * np.cos(2 * np.pi * 7 * x),
                    0.5 + 0.35 * np.cos(2 * np.pi * (6 * y - 2 * x)),
                    0.5 + 0.2 * np.sin(2 * np.pi * 4 * x) * np.sin(2 * np.pi * 5 * y)
                    + 0.1 * np.cos(2 * np.pi * 7 * y)],
                   -1)
    return np.clip(img, 0, 1).astype(np.float32)


# ----------------------------------------------------------------------------- geometry

def test_pixel_coords_match_the_papers_grid():
    c = pixel_coords(8)
    assert c.shape == (8, 8, 2) and c.dtype == np.float32
    assert c.min() == 0 and c.max() < 1
    assert c[2, 5, 0] == 5 / 8 and c[2, 5, 1] == 2 / 8  # (x = column, y = row)


def test_split_every_other():
    rng = np.random.default_rng(0)
    img = rng.random((8, 8, 3), dtype=np.float32)
    sp = split_every_other(img)
    assert sp.train_xy.shape == (16, 2) and sp.test_xy.shape == (48, 2)
    # The train set is the paper's linspace(0, 1, S/2 + 1)[:-1] grid on the even pixels.
    g = np.linspace(0, 1, 5)[:-1]
    assert np.allclose(np.sort(np.unique(sp.train_xy[:, 0])), g)
    np.testing.assert_array_equal(sp.train_rgb.reshape(4, 4, 3), img[::2, ::2])
    # Train and test are disjoint and cover every pixel once.
    keys = {tuple(v) for v in np.concatenate([sp.train_xy, sp.test_xy]).tolist()}
    assert len(keys) == 64
    with pytest.raises(ValueError):
        split_every_other(img[:7, :7])


# ----------------------------------------------------------------------------- mappings

def test_loglinear_pe_against_float64_loop():
    sigma, n = 10.0, 8  # m = 4 frequencies per axis
    enc = loglinear_fourier_features(2, n, sigma)
    v = np.array([[0.1, 0.7], [0.93, 0.05], [0.5, 0.5]])
    got = enc(torch.tensor(v, dtype=torch.float32)).double().numpy()
    m = n // 2
    for r, (vx, vy) in enumerate(v):
        projs = [sigma ** (j / m) * vx for j in range(m)] + [sigma ** (j / m) * vy for j in range(m)]
        want = [math.cos(2 * math.pi * p) for p in projs] + [math.sin(2 * math.pi * p) for p in projs]
        np.testing.assert_allclose(got[r], want, atol=2e-5)


def test_make_mapping_shapes_and_gaussian_scale():
    cfg = LabConfig(n_features=64, sigma=3.0)
    dims = {k: make_mapping(k, cfg).out_dim for k in MAPPINGS}
    assert dims == {"none": 2, "basic": 4, "pe": 128, "gaussian": 128}
    big = make_mapping("gaussian", LabConfig(n_features=20000, sigma=3.0))
    assert abs(float(big.B.std()) - 3.0) < 0.05
    with pytest.raises(ValueError):
        make_mapping("fourier", cfg)
    assert parse_mappings(" pe,none,pe ") == ["pe", "none"]
    with pytest.raises(ValueError):
        parse_mappings("none,rff")


# ----------------------------------------------------------------------------- images

def test_load_image_crops_centre_and_converts(tmp_path):
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, 10:30] = (200, 100, 50)  # the centre square; the sides stay black
    p = tmp_path / "wide.png"
    Image.fromarray(a).save(p)
    img = load_image(str(p), 20)
    assert img.shape == (20, 20, 3) and img.dtype == np.float32
    np.testing.assert_allclose(img[0, 0], np.array([200, 100, 50]) / 255, atol=1e-6)
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(grey)
    assert np.allclose(load_image(str(grey), 4), 128 / 255, atol=1e-2)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(rgba)  # fully transparent -> white
    assert np.allclose(load_image(str(rgba), 8), 1.0)


def test_load_image_errors_name_the_file(tmp_path):
    with pytest.raises(ImageError, match="does not exist"):
        load_image(str(tmp_path / "missing.png"), 8)
    with pytest.raises(ImageError, match="directory"):
        load_image(str(tmp_path), 8)
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(ImageError, match="notes.png"):
        load_image(str(bad), 8)


# ----------------------------------------------------------------------------- training

def test_evaluate_psnr_on_the_right_pixels():
    img = synthetic(16)
    cfg = LabConfig(size=16, steps=3, width=16, n_features=8)
    run = MappingRun("pe", split_every_other(img), cfg)
    with one_thread():
        run.step()
    tr, te, pred = run.evaluate(torch.from_numpy(img))
    mask = np.zeros((16, 16), bool)
    mask[::2, ::2] = True
    assert tr == pytest.approx(psnr(pred[mask][None], img[mask][None]), abs=1e-4)
    assert te == pytest.approx(psnr(pred[~mask][None], img[~mask][None]), abs=1e-4)
    assert pred.shape == (16, 16, 3) and (pred > 0).all() and (pred < 1).all()  # sigmoid output


def test_spectral_bias_ordering_on_a_high_frequency_image():
    """Fourier features beat the plain MLP on held-out pixels (the paper's Table 1
    ordering, small): none < PE and none < Gaussian RFF, by a clear margin."""
    img = synthetic(32)
    cfg = LabConfig(size=32, steps=300, width=128, n_features=64, pe_sigma=8.0, sigma=3.0, eval_every=300)
    with one_thread():
        res = {k: train_mapping(k, img, cfg) for k in ("none", "pe", "gaussian")}
    none, pe, gauss = (res[k].test_psnr for k in ("none", "pe", "gaussian"))
    assert pe > none + 3, (none, pe)
    assert gauss > none + 3, (none, gauss)
    assert res["pe"].train_psnr > res["none"].train_psnr
    assert res["pe"].curve[-1][0] == 300
    text = format_table(list(res.values()))
    assert text.splitlines()[0].split()[:2] == ["mapping", "steps"] and len(text.splitlines()) == 4


def test_training_is_deterministic():
    img = synthetic(16)
    cfg = LabConfig(size=16, steps=15, width=32, n_features=16, eval_every=15)
    with one_thread():
        a = train_mapping("gaussian", img, cfg)
        b = train_mapping("gaussian", img, cfg)
    np.testing.assert_array_equal(a.pred, b.pred)


def test_side_by_side_layout():
    img = synthetic(16)
    cfg = LabConfig(size=16, steps=2, width=8, n_features=8, eval_every=2)
    with one_thread():
        res = [train_mapping(k, img, cfg) for k in ("none", "basic")]
    out = side_by_side(img, res, tile=32)
    assert out.dtype == np.uint8 and out.shape[1] == 3 * 32 + 2 * 6 and out.shape[0] > 32
    np.testing.assert_array_equal(out[:32:2, :32:2], (img * 255 + 0.5).astype(np.uint8))


def test_session_runs_in_background_and_stops():
    img = synthetic(16)
    s = LabSession()
    s.start(img, ["none", "pe"], LabConfig(size=16, steps=12, width=16, n_features=8, eval_every=4, threads=1),
            preview_every=4)
    deadline = time.time() + 60
    while s.running and time.time() < deadline:
        time.sleep(0.05)
    snap = s.snapshot()
    assert not snap["running"] and snap["error"] is None
    for k in ("none", "pe"):
        r = snap["runs"][k]
        assert r["step"] == 12 and r["pred"].shape == (16, 16, 3)
        assert [c[0] for c in r["curve"]] == [1, 4, 8, 12]
    # A long run stops promptly when asked.
    s.start(img, ["gaussian"], LabConfig(size=16, steps=10 ** 6, width=16, n_features=8, threads=1))
    time.sleep(0.2)
    t0 = time.time()
    s.stop()
    assert not s.running and time.time() - t0 < 30
    assert s.snapshot()["runs"]["gaussian"]["step"] < 10 ** 6
    with pytest.raises(ValueError):
        s.start(img, [], LabConfig(size=16))


def test_session_reports_errors_instead_of_dying():
    s = LabSession()
    s.start(np.zeros((16, 16, 3), np.float32), ["pe"], LabConfig(size=16, steps=5, device="meta", threads=1))
    deadline = time.time() + 30
    while s.running and time.time() < deadline:
        time.sleep(0.05)
    snap = s.snapshot()
    assert not snap["running"] and snap["error"]


# ----------------------------------------------------------------------------- CLI

def test_cli_writes_table_and_images(tmp_path, capsys):
    from app.cli import main

    src = tmp_path / "img.png"
    Image.fromarray((synthetic(24) * 255).astype(np.uint8)).save(src)
    out = tmp_path / "out"
    rc = main(["lab2d", "--image", str(src), "--size", "16", "--steps", "4", "--eval-every", "2",
               "--width", "16", "--n-features", "8", "--threads", "1", "--out", str(out)])
    assert rc == 0
    assert sorted(os.listdir(out)) == ["curves.png", "lab2d.png", "results.json"]
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-5].split()[:2] == ["mapping", "steps"]
    assert [ln.split()[0] for ln in lines[-4:]] == list(MAPPINGS)
    with Image.open(out / "lab2d.png") as im:
        assert im.size[0] == 5 * 16 + 4 * 6


@pytest.mark.parametrize("args, msg", [
    (["--image", "/nonexistent/x.png"], "does not exist"),
    (["--mappings", "none,fft"], "--mappings"),
    (["--size", "15"], "even"),
])
def test_cli_bad_input_is_one_clean_error_and_no_output(tmp_path, capsys, args, msg):
    from app.cli import main

    out = tmp_path / "out"
    rc = main(["lab2d", "--steps", "2", "--out", str(out)] + args)
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and msg in err[-1]
    assert not out.exists()
