"""models/encoding.py against hand formulas (NeRF's gamma, Tancik et al.'s Fourier features)."""
import math

import numpy as np
import pytest
import torch

from models.encoding import (FourierFeatures, Identity, PositionalEncoding, basic_fourier_features,
                             gaussian_fourier_features, make_encoding)


def ref_pe(p, L, use_pi=True):
    """[p, sin(2^0 pi p), cos(2^0 pi p), ..., sin(2^{L-1} pi p), cos(2^{L-1} pi p)], float64."""
    p = np.asarray(p, np.float64)
    s = math.pi if use_pi else 1.0
    parts = [p]
    for k in range(L):
        parts += [np.sin(2.0 ** k * s * p), np.cos(2.0 ** k * s * p)]
    return np.concatenate(parts, -1)


def test_pe_values_and_order():
    p = torch.tensor([[0.1, -0.25, 0.7], [0.0, 1.0, -1.0]])
    enc = PositionalEncoding(3, 4)
    out = enc(p)
    assert out.shape == (2, 3 * (1 + 2 * 4)) and enc.out_dim == 27
    np.testing.assert_allclose(out.numpy(), ref_pe(p.numpy(), 4), atol=1e-6)
    # Spot-check one entry by hand: block 1 + 2*2 = sin(2^2 pi x), x = 0.1 -> sin(0.4 pi).
    assert out[0, 3 * 5].item() == pytest.approx(math.sin(0.4 * math.pi), abs=1e-6)
    # cos(2^0 pi * -0.25) = cos(pi/4), column 3*2 + 1.
    assert out[0, 7].item() == pytest.approx(math.cos(math.pi / 4), abs=1e-6)


def test_pe_out_dims_nerf_defaults():
    assert PositionalEncoding(3, 10).out_dim == 63
    assert PositionalEncoding(3, 4).out_dim == 27
    for L in range(6):
        enc = PositionalEncoding(3, L)
        assert enc.out_dim == 3 * (1 + 2 * L)
        assert enc(torch.zeros(5, 3)).shape == (5, enc.out_dim)


def test_pe_without_pi_and_without_input():
    p = torch.tensor([[0.3, -2.0, 5.0]], dtype=torch.float64)
    np.testing.assert_allclose(PositionalEncoding(3, 3, use_pi=False)(p).numpy(),
                               ref_pe(p.numpy(), 3, use_pi=False), atol=1e-12)
    enc = PositionalEncoding(3, 3, include_input=False)
    assert enc.out_dim == 18
    # The pi * 2^k frequencies are a float32 buffer: |arg| <= 20 pi -> ~1e-6 rounding.
    np.testing.assert_allclose(enc(p).numpy(), ref_pe(p.numpy(), 3)[:, 3:], atol=1e-5)


def test_pe_L0_is_identity_and_batch_dims():
    x = torch.randn(2, 4, 3)
    assert torch.equal(PositionalEncoding(3, 0)(x), x)
    assert PositionalEncoding(3, 2)(x).shape == (2, 4, 15)
    with pytest.raises(ValueError):
        PositionalEncoding(3, -1)


def test_identity_and_factory():
    x = torch.randn(4, 3)
    ident = make_encoding("none", 3)
    assert isinstance(ident, Identity) and ident.out_dim == 3 and torch.equal(ident(x), x)
    assert isinstance(make_encoding("pe", 3, n_freqs=10), PositionalEncoding)
    assert make_encoding("pe", 3, n_freqs=10).out_dim == 63
    assert make_encoding("basic", 3).out_dim == 6
    assert make_encoding("gaussian", 3, n_features=32).out_dim == 64
    with pytest.raises(ValueError, match="unknown encoding"):
        make_encoding("wavelet", 3)


def test_fourier_feature_values():
    B = torch.tensor([[1.0, 0.0], [0.5, 2.0], [-3.0, 1.0]])
    a = torch.tensor([1.0, 0.5, 2.0])
    enc = FourierFeatures(B, a)
    v = torch.tensor([[0.1, 0.2], [-0.3, 0.05]], dtype=torch.float64)
    proj = 2 * np.pi * v.numpy() @ B.numpy().astype(np.float64).T
    want = np.concatenate([a.numpy() * np.cos(proj), a.numpy() * np.sin(proj)], -1)
    assert enc.out_dim == 6
    np.testing.assert_allclose(enc(v).numpy(), want, atol=1e-7)
    # The basic mapping: B = I -> [cos(2 pi v), sin(2 pi v)].
    basic = basic_fourier_features(2)(v).numpy()
    np.testing.assert_allclose(basic, np.concatenate([np.cos(2 * np.pi * v.numpy()),
                                                      np.sin(2 * np.pi * v.numpy())], -1), atol=1e-7)


def test_fourier_features_stay_float32_under_autocast():
    """A bf16 product b.v would put a sigma = 30 feature's phase off by radians."""
    enc = gaussian_fourier_features(3, 64, 30.0, seed=2)
    v = torch.rand(50, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ref = enc(v.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = enc(v)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, atol=1e-4, rtol=0)


def test_fourier_B_is_fixed_buffer():
    enc = gaussian_fourier_features(3, 16, 5.0, seed=1)
    assert list(enc.parameters()) == []
    assert "B" in enc.state_dict()


def test_gaussian_B_statistics_and_seed():
    sigma = 6.0
    enc = gaussian_fourier_features(3, 4096, sigma, seed=0)
    B = enc.B.double()
    assert B.shape == (4096, 3)
    # 12288 draws: std of the sample std ~ sigma / sqrt(2n) ~ 0.04.
    assert B.std().item() == pytest.approx(sigma, rel=0.03)
    assert abs(B.mean().item()) < 4 * sigma / math.sqrt(B.numel())
    # Gaussian, not uniform: about 68.3% of draws within one sigma.
    assert (B.abs() < sigma).double().mean().item() == pytest.approx(0.6827, abs=0.02)
    assert torch.equal(B, gaussian_fourier_features(3, 4096, sigma, seed=0).B.double())
    assert not torch.equal(B, gaussian_fourier_features(3, 4096, sigma, seed=1).B.double())
    with pytest.raises(ValueError):
        gaussian_fourier_features(3, 16, 0.0)
