"""PE inspector (transformer sinusoidal encoding, rotation property) and kernel
inspector (stationary kernels of Fourier-feature mappings), against independent
references: float64 loops, least-squares fits and closed forms."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from app.lab import inspectors as ins
from app.lab.lab2d import loglinear_fourier_features
from app.gui.rasterplot import colormap, heatmap_image, line_plot_image
from models.encoding import FourierFeatures, Identity, PositionalEncoding, basic_fourier_features, \
    gaussian_fourier_features


# ----------------------------------------------------------------------------- transformer PE

def test_transformer_pe_matches_vaswani_loop():
    P, d = 30, 16
    pe = ins.transformer_pe(P, d)
    for pos in range(P):
        for i in range(d // 2):
            ang = pos / 10000 ** (2 * i / d)
            assert pe[pos, 2 * i] == pytest.approx(math.sin(ang), abs=1e-14)
            assert pe[pos, 2 * i + 1] == pytest.approx(math.cos(ang), abs=1e-14)
    for bad in [(10, 7), (0, 8), (10, 0)]:
        with pytest.raises(ValueError):
            ins.transformer_pe(*bad)


def test_rotation_matrix_equals_least_squares_fit():
    """Fit M (d x d, unconstrained) to PE(pos+k) ~ M PE(pos) over many positions: the
    data alone must give the block-diagonal rotation, whatever pos is."""
    d, P, k = 8, 400, 3
    pe = ins.transformer_pe(P, d, base=100.0)  # base 100: every pair turns enough to be identifiable
    X, Y = pe[:-k], pe[k:]
    Mt, *_ = np.linalg.lstsq(X, Y, rcond=None)
    np.testing.assert_allclose(Mt.T, ins.rotation_matrix(k, d, base=100.0), atol=1e-8)


def test_rotation_check_numbers():
    rows = ins.rotation_check(100, 128, (1, 5, 10, 99))
    assert [r["k"] for r in rows] == [1, 5, 10, 99]
    for r in rows:
        assert r["max_err"] < 1e-12 and r["orth_err"] < 1e-12
        assert r["det"] == pytest.approx(1.0, abs=1e-12) and r["off_block"] == 0.0
        assert r["pos_independent_err"] < 1e-12
    # A wrong rotation must be caught: M_k applied for the wrong k.
    pe = ins.transformer_pe(50, 16)
    assert np.abs(pe[:-2] @ ins.rotation_matrix(3, 16).T - pe[2:]).max() > 1e-2
    with pytest.raises(ValueError):
        ins.rotation_check(10, 8, (10,))
    text = ins.format_rotation_check(rows)
    assert len(text.splitlines()) == 5


def test_similarity_depends_on_distance_only():
    P, d = 60, 32
    pe = ins.transformer_pe(P, d)
    closed = ins.pe_similarity_by_distance(d, P - 1)
    for ref in (0, 17, 59):
        np.testing.assert_allclose(ins.pe_similarity(pe, ref), closed[np.abs(np.arange(P) - ref)], atol=1e-12)
    assert closed[0] == pytest.approx(d / 2)
    assert closed[1] < closed[0]


# ----------------------------------------------------------------------------- kernels

ENCODINGS = {
    "gaussian": lambda: gaussian_fourier_features(2, 64, 7.0, seed=3),
    "basic": lambda: basic_fourier_features(2),
    "loglinear": lambda: loglinear_fourier_features(2, 32, 20.0),
    "nerf_pe": lambda: PositionalEncoding(2, 6),
    "nerf_pe_nopi": lambda: PositionalEncoding(2, 4, include_input=False, use_pi=False),
    "weighted": lambda: FourierFeatures(torch.tensor([[1.0, 2.0], [-3.0, 0.5], [0.0, 4.0]]),
                                        torch.tensor([0.5, 2.0, 1.0])),
}


@pytest.mark.parametrize("name", sorted(ENCODINGS))
def test_kernel_is_the_dot_product_and_stationary(name):
    enc = ENCODINGS[name]()
    B, a = ins.mapping_spectrum(enc)
    rng = np.random.default_rng(1)
    v1, v2 = rng.random((200, 2)), rng.random((200, 2))
    emp = ins.empirical_kernel(enc, v1, v2)
    np.testing.assert_allclose(emp, ins.induced_kernel(B, a, v1 - v2), atol=1e-12)
    # Stationarity: shifting both points changes nothing.
    shift = rng.random((1, 2))
    np.testing.assert_allclose(ins.empirical_kernel(enc, v1 + shift, v2 + shift), emp, atol=1e-12)
    # The unnormalised kernel is the raw dot product.
    assert ins.induced_kernel(B, a, np.zeros((1, 2)), normalise=False)[0] == pytest.approx(float((a ** 2).sum()))


def test_nerf_pe_spectrum_matches_module():
    for use_pi in (True, False):
        B, a = ins.mapping_spectrum(PositionalEncoding(3, 5, use_pi=use_pi))
        B0, a0 = ins.nerf_pe_spectrum(3, 5, use_pi=use_pi)
        np.testing.assert_allclose(B, B0, rtol=1e-6)
        np.testing.assert_array_equal(a, a0)
    with pytest.raises(ValueError):
        ins.mapping_spectrum(Identity(2))


def test_fwhm_closed_forms():
    # basic: h(dx, 0) = (1 + cos 2 pi dx) / 2 -> half maximum at dx = 1/4.
    B, a = ins.mapping_spectrum(basic_fourier_features(2))
    assert ins.kernel_fwhm(B, a) == pytest.approx(0.5, abs=1e-6)
    # Gaussian RFF, many features: h -> exp(-2 pi^2 sigma^2 dx^2), FWHM = 2 sqrt(ln 2 / 2) / (pi sigma).
    for sigma in (2.0, 10.0):
        B, a = ins.mapping_spectrum(gaussian_fourier_features(2, 8000, sigma, seed=0))
        want = 2 * math.sqrt(math.log(2) / 2) / (math.pi * sigma)
        assert ins.kernel_fwhm(B, a, max_dist=0.3, n=1501) == pytest.approx(want, rel=0.03)
    # A kernel that never falls to half: inf.
    assert ins.kernel_fwhm(np.array([[0.01, 0.0]]), np.ones(1), max_dist=1.0) == math.inf


def test_more_sigma_or_bands_narrows_the_kernel():
    widths = []
    for sigma in (1, 2.5, 5, 10, 20, 40):
        B, a = ins.mapping_spectrum(gaussian_fourier_features(2, 256, sigma, seed=0))
        widths.append(ins.kernel_fwhm(B, a))
    assert all(w1 > w2 for w1, w2 in zip(widths, widths[1:])), widths
    # Same directions, scaled: the width scales exactly as 1 / sigma.
    assert widths[0] / widths[3] == pytest.approx(10.0, rel=1e-3)
    pe_w = [ins.kernel_fwhm(*ins.nerf_pe_spectrum(1, L)) for L in (2, 4, 6, 8, 10)]
    assert all(w1 > w2 for w1, w2 in zip(pe_w, pe_w[1:])), pe_w


def test_kernel_slice_shape_and_peak():
    B, a = ins.mapping_spectrum(gaussian_fourier_features(2, 32, 5.0))
    x, h = ins.kernel_slice(B, a, 0.5, 101)
    assert x.shape == h.shape == (101,)
    assert h[50] == pytest.approx(1.0) and h.max() == pytest.approx(1.0)
    np.testing.assert_allclose(h, h[::-1], atol=1e-12)  # h(-dx) = h(dx)


# ----------------------------------------------------------------------------- raster plots + CLI

def test_raster_plots():
    c = colormap(np.array([0.0, 1.0, np.nan]))
    np.testing.assert_array_equal(c[0], [68, 1, 84])
    np.testing.assert_array_equal(c[1], [253, 231, 37])
    np.testing.assert_array_equal(c[2], [0, 0, 0])
    h = heatmap_image(np.arange(12.0).reshape(3, 4), title="t", scale=10)
    assert h.dtype == np.uint8 and h.ndim == 3 and h.shape[2] == 3 and h.shape[0] > 30
    x = np.linspace(0, 1, 20)
    p = line_plot_image([(x, x ** 2, "sq"), (x, np.full(20, np.nan), "empty")], size=(300, 200))
    assert p.shape == (200, 300, 3)
    assert len(np.unique(p.reshape(-1, 3), axis=0)) > 3  # something was drawn


def test_inspect_pe_cli(tmp_path, capsys):
    from app.cli import main

    out = tmp_path / "pe"
    rc = main(["inspect-pe", "--d-model", "32", "--max-pos", "40", "--offsets", "1,7", "--sigmas", "2,8",
               "--bands", "2,6", "--n-features", "64", "--out", str(out)])
    assert rc == 0
    assert sorted(os.listdir(out)) == sorted(["pe_heatmap.png", "pe_similarity.png", "pe_rotation_M.png",
                                              "kernel_gaussian.png", "kernel_pe.png", "kernel_gaussian_2d.png"])
    text = capsys.readouterr().out
    rows = [ln.split() for ln in text.strip().splitlines()[-2:]]
    assert [r[0] for r in rows] == ["1", "7"]
    assert all(float(r[2]) < 1e-12 and float(r[3]) < 1e-12 for r in rows)


@pytest.mark.parametrize("args, msg", [(["--d-model", "31"], "even"), (["--offsets", "0"], "positive"),
                                       (["--max-pos", "10", "--offsets", "10"], "1..9"),
                                       (["--sigmas", "a,b"], "--sigmas")])
def test_inspect_pe_cli_bad_input(tmp_path, capsys, args, msg):
    from app.cli import main

    out = tmp_path / "pe"
    assert main(["inspect-pe", "--out", str(out)] + args) == 2
    assert msg in capsys.readouterr().err
    assert not out.exists()
