"""Proposal sampling stages (renderer/proposal.py) against float64 loops and analytic cases."""
from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

from renderer.proposal import (anneal_power, distortion_loss, envelope, interlevel_loss, lindisp,
                               lindisp_inverse, sample_histogram, spacing_to_distance, uniform_edges)
from tests.conftest import needs_triton, run_in_triton_interpreter


def random_histogram(seed: int, n_rays: int = 6, bins: int = 9):
    g = torch.Generator().manual_seed(seed)
    widths = torch.rand(n_rays, bins, generator=g, dtype=torch.float64) + 0.05
    edges = torch.cat([torch.zeros(n_rays, 1, dtype=torch.float64), widths.cumsum(-1)], -1)
    edges = edges / edges[:, -1:]
    w = torch.rand(n_rays, bins, generator=g, dtype=torch.float64) ** 3
    w[0] = 0.0  # a ray with no mass: padding alone decides
    w[1, 3:] = 0.0  # bins without mass
    return edges, w


def inverse_cdf_loop(edges, w, n, jitter, padding):
    """Float64 reference, one ray and one quantile at a time."""
    out = np.zeros((edges.shape[0], n + 1))
    for r in range(edges.shape[0]):
        p = w[r] + padding
        p = p / p.sum()
        cdf = np.concatenate([[0.0], np.cumsum(p)])
        for k in range(n + 1):
            q = (k + jitter[r]) / (n + 1)
            b = 0
            while b + 1 < len(p) and cdf[b + 1] <= q:
                b += 1
            frac = (q - cdf[b]) / (cdf[b + 1] - cdf[b])
            out[r, k] = edges[r, b] + frac * (edges[r, b + 1] - edges[r, b])
    return out


@pytest.mark.parametrize("deterministic", [True, False])
def test_sample_histogram_matches_float64_inverse_cdf_loop(deterministic):
    edges, w = random_histogram(0)
    n = 13
    jit = None if deterministic else torch.rand(edges.shape[0], 1, generator=torch.Generator().manual_seed(3),
                                                dtype=torch.float64)
    got = sample_histogram(edges, w, n, jit, padding=0.01)
    j = np.full(edges.shape[0], 0.5) if jit is None else jit[:, 0].numpy()
    want = inverse_cdf_loop(edges.numpy(), w.numpy(), n, j, 0.01)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-12)
    assert (got[:, 1:] >= got[:, :-1]).all()  # sorted edges
    assert not got.requires_grad


@needs_triton
def test_triton_sample_histogram_matches_the_float64_loop_in_interpreter():
    """The kernel (renderer/kernels/histogram.py) against the same float64 loop: bins with
    no mass, a ray with none at all, zero padding (a flat CDF step: the 0 / 0 case), more
    bins than one chunk of its search, and a bin count that is no power of two."""
    code = textwrap.dedent("""
        import numpy as np
        import torch
        from renderer.proposal import sample_histogram
        from tests.test_proposal import inverse_cdf_loop, random_histogram
        for bins, n, padding, jittered in ((9, 13, 0.01, False), (45, 20, 0.01, True), (40, 7, 0.0, True)):
            edges, w = random_histogram(bins, bins=bins)
            if padding == 0.0:
                w[0] = 1.0
                w[2:, 5:9] = 0.0
            g = torch.Generator().manual_seed(bins)
            jit = torch.rand(edges.shape[0], 1, generator=g, dtype=torch.float64) if jittered else None
            got = sample_histogram(edges.float(), w.float(), n, None if jit is None else jit.float(), padding)
            assert got.dtype == torch.float32 and got.shape == (edges.shape[0], n + 1)
            j = np.full(edges.shape[0], 0.5) if jit is None else jit[:, 0].numpy()
            want = inverse_cdf_loop(edges.numpy(), w.numpy(), n, j, padding)
            err = np.abs(got.numpy() - want).max()
            assert err < 2e-5, (bins, err)
        print("OK")
    """)
    run_in_triton_interpreter(code)


def test_sample_histogram_puts_samples_where_the_mass_is():
    edges = torch.linspace(0, 1, 11).expand(4, 11)
    w = torch.zeros(4, 10)
    w[:, 7] = 1.0
    new = sample_histogram(edges, w, 64, None, padding=0.0)
    mids = 0.5 * (new[:, 1:] + new[:, :-1])
    assert ((mids >= 0.7) & (mids <= 0.8)).all()


def test_uniform_edges_and_lindisp_spacing():
    e = uniform_edges(3, 4, None)
    np.testing.assert_allclose(e.numpy(), np.tile([0, 0.25, 0.5, 0.75, 1.0], (3, 1)))
    j = torch.tensor([[0.0], [0.5], [0.999]])
    ej = uniform_edges(3, 4, j)
    assert (ej[:, 0] == 0).all() and (ej[:, -1] == 1).all() and (ej[:, 1:] >= ej[:, :-1]).all()
    np.testing.assert_allclose(ej[1].numpy(), e[1].numpy())
    t = torch.tensor([0.0, 0.5, 1.0, 2.0, 10.0, 1e6], dtype=torch.float64)
    np.testing.assert_allclose(lindisp(t).numpy(), [0, 0.25, 0.5, 0.75, 0.95, 1 - 0.5e-6])
    np.testing.assert_allclose(lindisp_inverse(lindisp(t[:-1])).numpy(), t[:-1].numpy(), rtol=1e-12)
    near, far = torch.tensor([[0.2]]), torch.tensor([[1000.0]])
    d = spacing_to_distance(torch.tensor([[0.0, 1.0]]), near, far)
    np.testing.assert_allclose(d.numpy(), [[0.2, 1000.0]], rtol=1e-4)


def test_envelope_against_a_float64_overlap_loop():
    edges, _ = random_histogram(1, bins=7)
    env_edges, env_w = random_histogram(2, bins=5)
    got = envelope(edges, env_edges, env_w).numpy()
    e, c, w = edges.numpy(), env_edges.numpy(), env_w.numpy()
    for r in range(e.shape[0]):
        for i in range(e.shape[1] - 1):
            a, b = e[r, i], e[r, i + 1]
            want = sum(w[r, k] for k in range(w.shape[1]) if c[r, k + 1] > a and c[r, k] < b)
            assert got[r, i] == pytest.approx(want, abs=1e-12)


def test_interlevel_loss_is_zero_exactly_when_the_proposal_bounds_the_weights():
    g = torch.Generator().manual_seed(4)
    prop_edges = torch.linspace(0, 1, 9, dtype=torch.float64).expand(5, 9)
    prop_w = torch.rand(5, 8, generator=g, dtype=torch.float64)
    # Fine intervals: each coarse one split in four, with weights that sum to at most the
    # coarse weight: the coarse histogram bounds them.
    edges = torch.linspace(0, 1, 33, dtype=torch.float64).expand(5, 33)
    share = torch.rand(5, 8, 4, generator=g, dtype=torch.float64)
    share = share / share.sum(-1, keepdim=True)
    w = (prop_w[..., None] * share).reshape(5, 32)
    prop_w.requires_grad_(True)
    assert interlevel_loss(edges, w, prop_edges, prop_w).item() == 0.0
    # One fine interval heavier than its coarse bin: positive, and the gradient raises that bin.
    w2 = w.clone()
    w2[2, 9] = prop_w[2, 2].item() + 0.3
    loss = interlevel_loss(edges, w2, prop_edges, prop_w)
    assert loss.item() > 0
    loss.backward()
    assert prop_w.grad[2, 2] < 0 and prop_w.grad.abs().sum() == -prop_w.grad[2, 2]
    # Reference value: the one violating interval's (w - bound)^2 / w, averaged over 5 x 32.
    want = 0.3 ** 2 / (w2[2, 9].item() + 1e-7) / (5 * 32)
    assert loss.item() == pytest.approx(want, rel=1e-9)


def test_distortion_loss_matches_the_double_sum():
    edges, w = random_histogram(5, n_rays=4, bins=12)
    w = w / w.sum(-1, keepdim=True).clamp(min=1e-9)
    got = distortion_loss(edges, w).item()
    e, ww = edges.numpy(), w.numpy()
    total = 0.0
    for r in range(e.shape[0]):
        m = 0.5 * (e[r, 1:] + e[r, :-1])
        total += sum(ww[r, i] * ww[r, j] * abs(m[i] - m[j]) for i in range(len(m)) for j in range(len(m)))
        total += sum(ww[r, i] ** 2 * (e[r, i + 1] - e[r, i]) for i in range(len(m))) / 3
    assert got == pytest.approx(total / e.shape[0], rel=1e-12)
    # A single delta-like peak costs less than the same mass split between two far bins.
    peak = torch.zeros(1, 12, dtype=torch.float64)
    peak[0, 5] = 1.0
    split = torch.zeros(1, 12, dtype=torch.float64)
    split[0, 1] = split[0, 10] = 0.5
    grid = torch.linspace(0, 1, 13, dtype=torch.float64)[None]
    assert distortion_loss(grid, peak) < distortion_loss(grid, split)


def test_anneal_power_schedule():
    assert anneal_power(0) == 0.0 and anneal_power(1000) == 1.0 and anneal_power(5000) == 1.0
    assert 0.5 < anneal_power(100) < anneal_power(300) < 1.0  # the bias curve rises fast
