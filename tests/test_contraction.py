"""Scene contraction (renderer/contraction.py) against its closed form, its inverse, and
continuity at the unit sphere / cube; the so(3) exponential (renderer/lie.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from renderer.contraction import contract, to_unit_cube, uncontract
from renderer.lie import apply_rotation, so3_exp


def closed_form(x: np.ndarray, order) -> np.ndarray:
    """Float64, one point at a time: x if ||x|| <= 1 else (2 - 1/||x||) x / ||x||."""
    out = []
    for p in x:
        n = np.abs(p).max() if order == "inf" else np.linalg.norm(p)
        out.append(p if n <= 1 else (2 - 1 / n) * p / n)
    return np.array(out)


@pytest.mark.parametrize("order", ["inf", 2])
def test_contract_matches_closed_form_and_stays_in_the_box(order):
    g = np.random.default_rng(0)
    x = np.concatenate([g.normal(size=(300, 3)) * s for s in (0.3, 1.0, 5.0, 1e3)])
    got = contract(torch.tensor(x, dtype=torch.float64), order).numpy()
    np.testing.assert_allclose(got, closed_form(x, order), rtol=0, atol=1e-12)
    n = np.abs(got).max(-1) if order == "inf" else np.linalg.norm(got, axis=-1)
    assert (n < 2).all()
    back = uncontract(torch.tensor(got), order).numpy()
    np.testing.assert_allclose(back, x, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("order", ["inf", 2])
def test_contract_is_continuous_at_the_unit_boundary(order):
    g = np.random.default_rng(1)
    d = g.normal(size=(200, 3))
    d /= (np.abs(d).max(-1) if order == "inf" else np.linalg.norm(d, axis=-1))[:, None]  # norm exactly 1
    for eps in (1e-3, 1e-6):
        inside = contract(torch.tensor(d * (1 - eps)), order).numpy()
        outside = contract(torch.tensor(d * (1 + eps)), order).numpy()
        # Both sides move by O(eps): no jump across the boundary (the map has slope 1 there
        # along the radius: 2 - 1/r has derivative 1/r^2 = 1 at r = 1).
        assert np.abs(outside - inside).max() <= 2.5 * eps


def test_l_inf_contraction_fills_the_whole_cube():
    # Points far along a cube diagonal reach the cube's corner region, which the L2 ball
    # never does: the reason the L-infinity norm is the default for a hash grid.
    far_diag = torch.tensor([[1e6, 1e6, -1e6]], dtype=torch.float64)
    y = to_unit_cube(contract(far_diag))
    np.testing.assert_allclose(y.numpy(), [[1.0, 1.0, 0.0]], atol=1e-5)
    assert contract(far_diag, 2).norm() < 2.0 and contract(far_diag, 2).abs().max() < 1.2
    with pytest.raises(ValueError, match="order"):
        contract(far_diag, 1)


def test_contract_gradient_is_finite_at_the_origin():
    x = torch.zeros(4, 3, dtype=torch.float64, requires_grad=True)
    contract(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_so3_exp_batched_is_rodrigues_and_orthonormal():
    w = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, math.pi / 2], [1e-5, 2e-5, 0.0], [0.3, -1.1, 0.7]],
                     dtype=torch.float64)
    R = so3_exp(w)
    np.testing.assert_allclose(R[0].numpy(), np.eye(3), atol=1e-15)
    np.testing.assert_allclose(R[1].numpy(), [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-15)
    for r, v in zip(R.numpy(), w.numpy()):
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(r) == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_allclose(r @ v, v, atol=1e-12)  # the axis is fixed
        theta = np.linalg.norm(v)
        assert math.degrees(math.acos(np.clip((np.trace(r) - 1) / 2, -1, 1))) == pytest.approx(
            math.degrees(theta), abs=1e-5)


def test_apply_rotation_is_the_matrix_product_and_ignores_autocast():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(20, 3, generator=g, dtype=torch.float64)
    R = so3_exp(w)
    x = torch.randn(20, 3, generator=g, dtype=torch.float64)
    want = np.einsum("nij,nj->ni", R.numpy(), x.numpy())
    np.testing.assert_allclose(apply_rotation(R, x).numpy(), want, atol=1e-14)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        R32 = so3_exp(w.float())
        got = apply_rotation(R32, x.float())
    assert R32.dtype == got.dtype == torch.float32
    np.testing.assert_allclose(got.double().numpy(), want, atol=1e-5)
