"""Real spherical harmonics (models/sh.py) against closed forms, scipy and orthonormality."""
import math

import numpy as np
import pytest
import torch

from models.sh import C0, C1, C2, eval_sh, num_coeffs, sh_basis


def _closed_form(x, y, z):
    """The 9 real SH in PlenOctrees order, written from the textbook formulas
    (not from the module's constants)."""
    pi = math.pi
    return [
        0.5 * math.sqrt(1 / pi),
        -math.sqrt(3 / (4 * pi)) * y,
        math.sqrt(3 / (4 * pi)) * z,
        -math.sqrt(3 / (4 * pi)) * x,
        0.5 * math.sqrt(15 / pi) * x * y,
        -0.5 * math.sqrt(15 / pi) * y * z,
        0.25 * math.sqrt(5 / pi) * (3 * z * z - 1),
        -0.5 * math.sqrt(15 / pi) * x * z,
        0.25 * math.sqrt(15 / pi) * (x * x - y * y),
    ]


def test_constants_match_known_values():
    assert C0 == pytest.approx(0.28209479, abs=1e-8)
    assert C1 == pytest.approx(0.48860251, abs=1e-8)
    assert C2 == pytest.approx((1.09254843, -1.09254843, 0.31539157, -1.09254843, 0.54627421), abs=1e-8)


@pytest.mark.parametrize("d", [(0, 0, 1), (1, 0, 0), (0, 1, 0), (0, 0, -1),
                               (1 / math.sqrt(3),) * 3, (0.6, 0.0, 0.8), (0.36, -0.48, 0.8)])
def test_basis_matches_closed_forms(d):
    got = sh_basis(torch.tensor([d], dtype=torch.float64), 2)[0].numpy()
    np.testing.assert_allclose(got, _closed_form(*d), atol=1e-12)


def test_hand_values():
    # z axis: only the zonal terms survive; Y20 = 1/4 sqrt(5/pi) * 2.
    b = sh_basis(torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64), 2)[0]
    np.testing.assert_allclose(b.numpy(), [0.28209479, 0, 0.48860251, 0, 0, 0, 0.63078313, 0, 0], atol=1e-8)
    # x axis: -C1, and Y20 = -C2[2], Y22 = C2[4].
    b = sh_basis(torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64), 2)[0]
    np.testing.assert_allclose(b.numpy(), [0.28209479, 0, 0, -0.48860251, 0, 0, -0.31539157, 0, 0.54627421],
                               atol=1e-8)


def _real_sh_scipy(l, m, theta, phi):
    """Real SH from scipy's complex Y_l^m (Condon-Shortley phase included):
    sqrt(2) Re Y_l^|m| for m > 0, sqrt(2) Im Y_l^|m| for m < 0."""
    from scipy.special import sph_harm_y

    y = sph_harm_y(l, abs(m), theta, phi)
    if m == 0:
        return y.real
    return math.sqrt(2) * (y.real if m > 0 else y.imag)


def test_basis_matches_scipy():
    pytest.importorskip("scipy.special")
    rng = np.random.default_rng(0)
    v = rng.normal(size=(64, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    theta, phi = np.arccos(v[:, 2]), np.arctan2(v[:, 1], v[:, 0])
    ref = np.stack([_real_sh_scipy(l, m, theta, phi) for l in range(3) for m in range(-l, l + 1)], -1)
    got = sh_basis(torch.from_numpy(v), 2).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-12)


def test_orthonormal_on_sphere():
    # Gauss-Legendre in cos(theta) x uniform phi integrates these degree <= 4
    # polynomial products exactly.
    u, wu = np.polynomial.legendre.leggauss(8)
    phi = np.arange(16) * 2 * np.pi / 16
    U, P = np.meshgrid(u, phi, indexing="ij")
    s = np.sqrt(1 - U ** 2)
    dirs = np.stack([s * np.cos(P), s * np.sin(P), U], -1).reshape(-1, 3)
    w = (wu[:, None] * np.full(16, 2 * np.pi / 16)).reshape(-1)
    b = sh_basis(torch.from_numpy(dirs), 2).numpy()
    gram = (b * w[:, None]).T @ b
    np.testing.assert_allclose(gram, np.eye(9), atol=1e-12)


def test_lower_degrees_are_prefixes():
    d = torch.nn.functional.normalize(torch.randn(10, 3, generator=torch.Generator().manual_seed(1)), dim=-1)
    full = sh_basis(d, 2)
    for deg in (0, 1):
        assert sh_basis(d, deg).shape == (10, num_coeffs(deg))
        torch.testing.assert_close(sh_basis(d, deg), full[:, :num_coeffs(deg)])


def test_eval_sh_is_the_weighted_sum():
    g = torch.Generator().manual_seed(2)
    d = torch.nn.functional.normalize(torch.randn(5, 3, generator=g, dtype=torch.float64), dim=-1)
    coeffs = torch.randn(5, 3, 9, generator=g, dtype=torch.float64)
    out = eval_sh(coeffs, d)
    assert out.shape == (5, 3)
    for r in range(5):
        ref = [sum(coeffs[r, c, k].item() * _closed_form(*d[r].tolist())[k] for k in range(9)) for c in range(3)]
        np.testing.assert_allclose(out[r].numpy(), ref, atol=1e-12)
    # A constant (degree-0) colour c is recovered from coefficient c / C0 in every direction.
    const = torch.zeros(5, 3, 9, dtype=torch.float64)
    const[..., 0] = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64) / C0
    torch.testing.assert_close(eval_sh(const, d), torch.tensor([[0.2, 0.5, 0.9]] * 5, dtype=torch.float64))


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="degree"):
        num_coeffs(4)
    with pytest.raises(ValueError, match="1, 4, 9 or 16"):
        eval_sh(torch.zeros(2, 3, 5), torch.zeros(2, 3))
