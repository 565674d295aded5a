"""renderer/compositing.py against a float64 loop and the constant-density closed form."""
import math

import numpy as np
import pytest
import torch

from renderer.compositing import FAR_DELTA, alpha_weights, composite, deltas_from_t


def ref_composite(sigma, rgb, t, rays_d, background=None, last_delta=FAR_DELTA):
    """Python loop, float64, with the transmittance written as an explicit product
    T_i = prod_{j<i} (1 - alpha_j)."""
    sigma, rgb, t, rays_d = (np.asarray(a, np.float64) for a in (sigma, rgb, t, rays_d))
    n_rays, n_samples = sigma.shape
    out_rgb, out_depth, out_acc = np.zeros((n_rays, 3)), np.zeros(n_rays), np.zeros(n_rays)
    weights = np.zeros((n_rays, n_samples))
    for r in range(n_rays):
        norm = math.sqrt(float((rays_d[r] ** 2).sum()))
        alphas = []
        for i in range(n_samples):
            dt = (t[r, i + 1] - t[r, i]) if i + 1 < n_samples else last_delta
            alphas.append(1.0 - math.exp(-sigma[r, i] * dt * norm))
        for i in range(n_samples):
            T = 1.0
            for j in range(i):
                T *= 1.0 - alphas[j]
            weights[r, i] = T * alphas[i]
        acc = weights[r].sum()
        out_rgb[r] = (weights[r][:, None] * rgb[r]).sum(0)
        if background is not None:
            bg = np.broadcast_to(np.asarray(background, np.float64), (n_rays, 3))[r]
            out_rgb[r] += (1.0 - acc) * bg
        out_acc[r] = acc
        out_depth[r] = (weights[r] * t[r]).sum() / max(acc, 1e-10)
    return out_rgb, out_depth, out_acc, weights


def _random_inputs(seed, n_rays=7, n_samples=12, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    sigma = torch.rand(n_rays, n_samples, generator=g, dtype=dtype) * 4.0
    sigma[0] = 0.0  # an empty ray
    sigma[1, 3] = 50.0  # an (almost) opaque sample
    rgb = torch.rand(n_rays, n_samples, 3, generator=g, dtype=dtype)
    t, _ = torch.sort(2.0 + 4.0 * torch.rand(n_rays, n_samples, generator=g, dtype=dtype), -1)
    rays_d = torch.randn(n_rays, 3, generator=g, dtype=dtype)
    return sigma, rgb, t, rays_d


@pytest.mark.parametrize("background", [None, 1.0, (0.2, 0.5, 0.9), "per-ray"])
@pytest.mark.parametrize("last_delta", [FAR_DELTA, 0.3])
def test_composite_matches_float64_loop(background, last_delta):
    sigma, rgb, t, rays_d = _random_inputs(0)
    if isinstance(background, str):
        background = torch.rand(sigma.shape[0], 3, generator=torch.Generator().manual_seed(9))
    out = composite(sigma, rgb, t, rays_d, background, last_delta=last_delta)
    bg_np = None if background is None else np.asarray(background)
    want_rgb, want_depth, want_acc, want_w = ref_composite(sigma, rgb, t, rays_d, bg_np, last_delta)
    np.testing.assert_allclose(out["weights"].numpy(), want_w, atol=2e-6)
    np.testing.assert_allclose(out["rgb"].numpy(), want_rgb, atol=2e-6)
    np.testing.assert_allclose(out["acc"].numpy(), want_acc, atol=2e-6)
    np.testing.assert_allclose(out["depth"].numpy(), want_depth, atol=2e-5)
    assert out["rgb"].shape == (7, 3) and out["depth"].shape == (7,) and out["acc"].shape == (7,)
    # The empty ray: no opacity, colour is the background, depth 0 (not NaN).
    assert out["acc"][0] == 0 and out["depth"][0] == 0


def test_alpha_weights_transmittance_is_explicit_product():
    sigma, _, t, rays_d = _random_inputs(1, dtype=torch.float64)
    delta = deltas_from_t(t, rays_d, last_delta=0.7)
    w, trans = alpha_weights(sigma, delta)
    alpha = 1.0 - torch.exp(-sigma * delta)
    for i in range(sigma.shape[1]):
        T = torch.prod(1.0 - alpha[:, :i], -1)
        assert torch.allclose(trans[:, i], T, atol=1e-12)
        assert torch.allclose(w[:, i], T * alpha[:, i], atol=1e-12)


def test_deltas_scale_with_direction_norm():
    t = torch.tensor([[1.0, 1.5, 3.0]])
    d = torch.tensor([[0.0, 3.0, 4.0]])  # |d| = 5
    assert deltas_from_t(t, d, last_delta=2.0).tolist() == [[2.5, 7.5, 10.0]]


def _truncated_exp_mean(rate, near, far):
    """Mean of an exponential(rate) starting at near, truncated to [near, far]."""
    L = far - near
    return near + 1.0 / rate - L * math.exp(-rate * L) / (1.0 - math.exp(-rate * L))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("sigma0,dnorm", [(0.5, 1.0), (1.3, 1.0), (0.5, 2.5)])
def test_constant_density_closed_form(dtype, sigma0, dnorm):
    near, far, n = 2.0, 6.0, 4000
    # Samples are left edges of n equal intervals; last_delta makes the last one end at far.
    t = torch.linspace(near, far, n + 1, dtype=torch.float64)[:-1].to(dtype)[None]
    step = (far - near) / n
    sigma = torch.full_like(t, sigma0)
    rgb = torch.full((1, n, 3), 0.25, dtype=dtype)
    d = torch.tensor([[0.0, 0.0, -dnorm]], dtype=dtype)  # |d| = dnorm: t is not metric distance
    out = composite(sigma, rgb, t, d, background=1.0, last_delta=step)
    rate = sigma0 * dnorm  # per unit of t
    acc = 1.0 - math.exp(-rate * (far - near))
    tol = 1e-9 if dtype == torch.float64 else 2e-5
    assert out["acc"].item() == pytest.approx(acc, abs=tol)
    assert out["rgb"][0].tolist() == pytest.approx([0.25 * acc + (1 - acc)] * 3, abs=tol)
    # Left-endpoint quadrature of E[t]: bias < one interval.
    assert out["depth"].item() == pytest.approx(_truncated_exp_mean(rate, near, far), abs=step)

    # Default infinite last interval: that sample absorbs the rest; the others still hold
    # 1 - exp(-rate (far - near)) when the samples span [near, far] inclusively.
    t2 = torch.linspace(near, far, n + 1, dtype=dtype)[None]
    out2 = composite(torch.full_like(t2, sigma0), torch.full((1, n + 1, 3), 0.25, dtype=dtype), t2, d)
    assert out2["acc"].item() == pytest.approx(1.0, abs=tol)
    assert out2["weights"][0, :-1].sum().item() == pytest.approx(acc, abs=tol)
    assert out2["weights"][0, -1].item() == pytest.approx(1 - acc, abs=tol)


def test_weights_nonnegative_and_sum_at_most_one():
    g = torch.Generator().manual_seed(5)
    sigma = torch.rand(256, 64, generator=g) ** 4 * 200  # from empty to very dense
    t, _ = torch.sort(torch.rand(256, 64, generator=g) * 4 + 2, -1)
    rgb = torch.rand(256, 64, 3, generator=g)
    out = composite(sigma, rgb, t, torch.randn(256, 3, generator=g))
    w = out["weights"]
    assert torch.isfinite(w).all() and (w >= 0).all()
    assert (w.sum(-1) <= 1 + 1e-6).all()
    assert ((out["rgb"] >= 0) & (out["rgb"] <= 1 + 1e-6)).all()
    assert ((out["depth"] >= 2 - 1e-5) & (out["depth"] <= 6 + 1e-5)).all()


def test_background_blending():
    # One sample with alpha = 1 - e^{-1}: colour = a * c + (1 - a) * bg.
    t = torch.tensor([[1.0, 2.0]])
    sigma = torch.tensor([[1.0, 0.0]])
    rgb = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    d = torch.tensor([[1.0, 0.0, 0.0]])
    a = 1 - math.exp(-1.0)
    for bg, want in [(None, [a, 0, 0]), (0.0, [a, 0, 0]), (1.0, [1.0, 1 - a, 1 - a]),
                     (torch.tensor([0.0, 0.0, 1.0]), [a, 0, 1 - a])]:
        out = composite(sigma, rgb, t, d, bg)
        assert out["rgb"][0].tolist() == pytest.approx(want, abs=1e-6), bg


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(2)
    sigma = (torch.rand(2, 4, generator=g, dtype=torch.float64) + 0.1).requires_grad_()
    rgb = torch.rand(2, 4, 3, generator=g, dtype=torch.float64).requires_grad_()
    t = (torch.tensor([[2.0, 2.5, 3.1, 4.0], [2.0, 3.0, 3.3, 5.0]], dtype=torch.float64)).requires_grad_()
    d = torch.tensor([[0.0, 0.6, -0.8], [1.0, 1.0, 0.0]], dtype=torch.float64)

    def f(s, c, tt):
        o = composite(s, c, tt, d, background=0.3, last_delta=0.5)
        return o["rgb"], o["depth"], o["acc"]

    assert torch.autograd.gradcheck(f, (sigma, rgb, t), eps=1e-6, atol=1e-6)
    # And the colour gradient reaches sigma with the default (infinite) last interval too.
    o = composite(sigma, rgb, t.detach(), d)
    o["rgb"].sum().backward()
    assert sigma.grad is not None and torch.isfinite(sigma.grad).all() and sigma.grad.abs().sum() > 0
