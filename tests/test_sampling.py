"""renderer/sampling.py against a numpy float64 inverse-CDF reference and statistics."""
import numpy as np
import torch

from renderer.sampling import hierarchical_samples, sample_pdf, stratified_samples


def _bin_edges(near, far, s):
    """The stratification NeRF uses: S linspace points, bins split at their midpoints
    ([near, m0], [m0, m1], ..., [m_{S-2}, far]), float64."""
    t = np.linspace(near, far, s)
    mids = 0.5 * (t[1:] + t[:-1])
    return np.concatenate([[near], mids]), np.concatenate([mids, [far]])


def test_stratified_deterministic_is_linspace():
    t = stratified_samples(2.0, 6.0, 5, 9, perturb=False)
    assert t.shape == (5, 9)
    np.testing.assert_allclose(t.numpy(), np.broadcast_to(np.linspace(2, 6, 9), (5, 9)), atol=1e-6)
    assert torch.equal(t, stratified_samples(2.0, 6.0, 5, 9, perturb=False))


def test_stratified_perturbed_within_bins_sorted_and_uniform():
    near, far, s, r = 2.0, 6.0, 16, 4000
    g = torch.Generator().manual_seed(1)
    t = stratified_samples(near, far, r, s, perturb=True, generator=g).double().numpy()
    lo, hi = _bin_edges(near, far, s)
    assert np.all(t >= lo - 1e-6) and np.all(t <= hi + 1e-6)
    assert np.all(t >= near) and np.all(t <= far)
    assert np.all(np.diff(t, axis=-1) >= 0)
    # Uniform inside each bin: the relative position has mean 1/2 and variance 1/12.
    u = (t - lo) / (hi - lo)
    se = np.sqrt(1 / 12 / r)
    assert np.all(np.abs(u.mean(0) - 0.5) < 5 * se)
    assert np.all(np.abs(u.var(0) - 1 / 12) < 0.01)
    # Same generator seed, same samples.
    g2 = torch.Generator().manual_seed(1)
    t2 = stratified_samples(near, far, r, s, perturb=True, generator=g2).double().numpy()
    assert np.array_equal(t, t2)


def test_stratified_per_ray_bounds():
    near = torch.tensor([0.0, 1.0, 2.0])
    far = torch.tensor([1.0, 3.0, 10.0])
    t = stratified_samples(near, far, 3, 5, perturb=False)
    for k in range(3):
        np.testing.assert_allclose(t[k].numpy(), np.linspace(float(near[k]), float(far[k]), 5), atol=1e-6)
    g = torch.Generator().manual_seed(0)
    tp = stratified_samples(near, far, 3, 50, perturb=True, generator=g)
    assert torch.all(tp >= near[:, None]) and torch.all(tp <= far[:, None])


def ref_sample_pdf(bins, weights, u, eps=1e-5):
    """Inverse CDF of the piecewise-uniform density, float64, one ray at a time.

    Same eps regularisation as the implementation (it is part of the spec: empty
    rays sample uniformly)."""
    out = np.empty(u.shape)
    for r in range(bins.shape[0]):
        w = weights[r].astype(np.float64) + eps
        cdf = np.concatenate([[0.0], np.cumsum(w / w.sum())])
        out[r] = np.interp(u[r], cdf, bins[r].astype(np.float64))
    return out


def test_sample_pdf_deterministic_matches_reference():
    rng = np.random.default_rng(0)
    r, b, n = 20, 63, 128
    bins = np.sort(rng.uniform(2.0, 6.0, (r, b + 1)), -1)
    bins[:, 0], bins[:, -1] = 2.0, 6.0
    weights = rng.uniform(0.05, 1.0, (r, b))
    weights[:, 10:20] *= 30  # a peak, so the cdf is far from linear
    want = ref_sample_pdf(bins, weights, np.broadcast_to(np.linspace(0, 1, n), (r, n)))
    got64 = sample_pdf(torch.tensor(bins), torch.tensor(weights), n, deterministic=True)
    assert got64.dtype == torch.float64 and got64.shape == (r, n)
    np.testing.assert_allclose(got64.numpy(), want, atol=1e-9)
    # float32: the cdf's rounding (~1e-7) is magnified by 1/pdf in low-mass bins;
    # 5e-5 is ~1e-5 of the depth range [2, 6].
    got = sample_pdf(torch.tensor(bins, dtype=torch.float32), torch.tensor(weights, dtype=torch.float32),
                     n, deterministic=True).numpy()
    np.testing.assert_allclose(got, want, atol=5e-5)
    # Monotone in u, so sorted.
    assert np.all(np.diff(got, axis=-1) >= 0)


def test_sample_pdf_random_matches_pdf_histogram():
    # Bins on [0, 1], two of them with zero mass.
    edges = np.linspace(0.0, 1.0, 9)
    w = np.array([1.0, 2.0, 0.0, 4.0, 1.0, 0.0, 3.0, 5.0])
    r, n = 500, 400  # 200k samples
    g = torch.Generator().manual_seed(1234)
    s = sample_pdf(torch.tensor(edges, dtype=torch.float32).expand(r, 9),
                   torch.tensor(w, dtype=torch.float32).expand(r, 8), n, deterministic=False,
                   generator=g).double().numpy().ravel()
    total = s.size
    assert np.all((s >= 0) & (s <= 1))
    # Half-bins: the density is flat inside each bin, so each half holds pdf/2.
    sub = np.linspace(0.0, 1.0, 17)
    counts, _ = np.histogram(s, sub)
    expected = np.repeat(w / w.sum() / 2, 2) * total
    nz = expected > 0
    chi2 = float((((counts - expected) ** 2)[nz] / expected[nz]).sum())
    # 11 degrees of freedom; P(chi2 > 45) ~ 5e-6, and the seed is fixed.
    assert chi2 < 45, (chi2, counts, expected)
    # Zero-weight bins get only the eps regularisation's share (~1e-5 / 16 of the mass).
    assert counts[~nz].sum() <= 10


def test_sample_pdf_zero_weight_rays_no_nan():
    bins = torch.linspace(2.0, 6.0, 33).expand(4, 33).contiguous()
    weights = torch.zeros(4, 32)
    weights[1, 5] = 1.0  # one ray with a single non-empty bin next to empty ones
    for det in (True, False):
        out = sample_pdf(bins, weights, 64, deterministic=det, generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(out).all()
        assert (out >= 2.0).all() and (out <= 6.0).all()
    out = sample_pdf(bins, weights, 17, deterministic=True)
    # An all-zero ray has a uniform pdf: deterministic samples are evenly spaced.
    np.testing.assert_allclose(out[0].numpy(), np.linspace(2.0, 6.0, 17), atol=1e-4)
    # The single-bin ray puts (almost) everything inside bin 5 = [2.625, 2.75].
    inside = ((out[1] >= 2.625 - 1e-4) & (out[1] <= 2.75 + 1e-4)).float().mean()
    assert inside >= 0.8


def test_hierarchical_samples_sorted_and_contain_coarse():
    r, sc, nf = 6, 16, 32
    t_c = stratified_samples(2.0, 6.0, r, sc, perturb=True, generator=torch.Generator().manual_seed(3))
    rng = np.random.default_rng(0)
    w = torch.tensor(rng.uniform(0, 1, (r, sc)), dtype=torch.float32)
    w[:, 7] = 20.0  # a surface near coarse sample 7
    w.requires_grad_(True)
    for det in (True, False):
        t = hierarchical_samples(t_c, w, nf, deterministic=det, generator=torch.Generator().manual_seed(0))
        assert t.shape == (r, sc + nf)
        assert not t.requires_grad  # sample positions are not differentiated through
        assert torch.all(t[:, 1:] >= t[:, :-1])
        for k in range(r):
            assert np.isin(t_c[k].numpy(), t[k].numpy()).all()
    # The fine samples are the inverse CDF over the coarse midpoints, end weights dropped.
    t = hierarchical_samples(t_c, w, nf, deterministic=True)
    mids = 0.5 * (t_c[:, 1:] + t_c[:, :-1]).double().numpy()
    want = ref_sample_pdf(mids, w.detach()[:, 1:-1].numpy(), np.broadcast_to(np.linspace(0, 1, nf), (r, nf)))
    merged = np.sort(np.concatenate([t_c.double().numpy(), want], -1), -1)
    np.testing.assert_allclose(t.numpy(), merged, atol=1e-5)
    # Most fine samples land in the peak's bin, between the midpoints around sample 7.
    fine_in_peak = ((t >= torch.tensor(mids[:, 6:7])) & (t <= torch.tensor(mids[:, 7:8]))).sum(-1) - 1
    assert (fine_in_peak >= nf // 2).all()
