"""Proposal sampling of mip-NeRF 360 (Barron et al. 2022), as nerfstudio's nerfacto uses it.

A ray is cut into intervals by sorted *edges* (R, n + 1); a step function along the ray
is one weight per interval (R, n). A cheap proposal density network is evaluated on
uniform intervals, its compositing weights are a histogram, and the next, finer set of
intervals is drawn from that histogram by inverse transform sampling; after one or two
such rounds the radiance field is evaluated only where the proposals put mass.

Edges live in a normalised *spacing* u in [0, 1] between the ray's near and far
distances, linear up to distance 1 and linear in disparity beyond (``lindisp``), so
uniform intervals reach the far background with few samples and resampling happens in
that same space. The proposals get no gradient from the photometric loss (the edges are
sampled, not differentiated); they are trained by ``interlevel_loss`` to bound the
radiance field's weights from above. ``distortion_loss`` is mip-NeRF 360's regulariser
that pulls each ray's weights into one compact peak (fewer floaters).

All functions are pure, on padded (R, n) tensors; shapes in the docstrings.
"""
from __future__ import annotations

import torch

# Added to every histogram bin before resampling (nerfstudio's histogram_padding): the
# next round keeps a few samples everywhere, so content a proposal has not found yet
# can still be seen and pull the proposal towards it.
HISTOGRAM_PADDING = 0.01
EPS = 1e-7


def lindisp(t: torch.Tensor) -> torch.Tensor:
    """Spacing g(t): t / 2 for t < 1, 1 - 1 / (2 t) beyond (continuous with slope 1/2 at
    t = 1): linear near the camera, linear in disparity 1 / t far away. g(inf) = 1."""
    return torch.where(t < 1.0, 0.5 * t, 1.0 - 0.5 / t.clamp(min=1.0))


def lindisp_inverse(g: torch.Tensor) -> torch.Tensor:
    """t from g = lindisp(t), g in [0, 1)."""
    return torch.where(g < 0.5, 2.0 * g, 0.5 / (1.0 - g.clamp(0.5, 1.0 - 1e-7)))


def spacing_to_distance(u: torch.Tensor, near: torch.Tensor, far: torch.Tensor) -> torch.Tensor:
    """Distances (R, k) of spacings u (R, k) in [0, 1], u = 0 at near and 1 at far (R, 1),
    uniform in lindisp in between."""
    g0, g1 = lindisp(near), lindisp(far)
    return lindisp_inverse(g0 + u * (g1 - g0))


def uniform_edges(n_rays: int, n: int, jitter: torch.Tensor | None, device=None) -> torch.Tensor:
    """Edges (R, n + 1) of n intervals covering [0, 1]. Without jitter, the n equal
    intervals; with jitter (R, 1) in [0, 1), each inner edge moves by (jitter - 1/2) / n
    (one offset per ray, nerfstudio's single jitter): a stratified sample that still
    covers [0, 1] with intervals of equal length apart from the first and the last."""
    base = torch.arange(n + 1, device=device, dtype=torch.float32).expand(n_rays, n + 1)
    if jitter is None:
        return base / n
    e = ((base + (jitter - 0.5)) / n).clamp(0.0, 1.0)
    e[:, 0], e[:, -1] = 0.0, 1.0
    return e


def sample_histogram(edges: torch.Tensor, weights: torch.Tensor, n: int, jitter: torch.Tensor | None,
                     padding: float = HISTOGRAM_PADDING) -> torch.Tensor:
    """n intervals (edges (R, n + 1)) drawn from the step function ``weights`` (R, B) on
    ``edges`` (R, B + 1) by inverse transform sampling.

    The pdf is (weights + padding), normalised, constant inside each bin. Quantiles are
    stratified: q_k = (k + jitter) / (n + 1), k = 0..n, with one jitter (R, 1) in [0, 1)
    per ray, or jitter 1/2 (None: deterministic, for rendering). The new edges are the
    inverse CDF at those quantiles; they are returned detached (no gradient flows through
    where samples are put). On CUDA a Triton kernel computes the same in one pass.
    """
    def run():  # the same in one pass (renderer/kernels/histogram.py)
        from renderer.kernels.histogram import sample_histogram_triton
        return sample_histogram_triton(edges, weights, n, jitter, padding, EPS)

    from renderer import kernels
    if edges.dtype == torch.float32 and (out := kernels.run_or_none("sample_histogram", edges, run)) is not None:
        return out
    edges = edges.detach()
    weights = weights.detach().to(torch.promote_types(edges.dtype, torch.float32))
    w = weights + padding
    pdf = w / w.sum(-1, keepdim=True).clamp(min=EPS)
    cdf = torch.cumsum(pdf, -1).clamp(max=1.0)
    cdf = torch.cat([torch.zeros_like(cdf[:, :1]), cdf], -1)  # (R, B + 1)
    n_rays = edges.shape[0]
    k = torch.arange(n + 1, device=edges.device, dtype=cdf.dtype).expand(n_rays, n + 1)
    j = torch.full((n_rays, 1), 0.5, device=edges.device, dtype=cdf.dtype) if jitter is None else jitter
    q = ((k + j) / (n + 1)).contiguous()
    idx = torch.searchsorted(cdf.contiguous(), q, right=True)
    last = cdf.shape[-1] - 1
    below, above = (idx - 1).clamp(0, last), idx.clamp(0, last)
    c0, c1 = cdf.gather(1, below), cdf.gather(1, above)
    e0, e1 = edges.gather(1, below), edges.gather(1, above)
    frac = torch.nan_to_num((q - c0) / (c1 - c0), 0.0).clamp(0.0, 1.0)
    return (e0 + frac * (e1 - e0)).detach()


def envelope(edges: torch.Tensor, env_edges: torch.Tensor, env_weights: torch.Tensor) -> torch.Tensor:
    """(R, M): for each interval of ``edges`` (R, M + 1), the sum of ``env_weights`` (R, B)
    over the intervals of ``env_edges`` (R, B + 1) that overlap it (share more than a
    point): the most weight the coarser step function can put there."""
    cum = torch.cat([torch.zeros_like(env_weights[:, :1]), torch.cumsum(env_weights, -1)], -1)
    a, b = edges[:, :-1].contiguous(), edges[:, 1:].contiguous()
    # Env intervals entirely at or before a: their ends are <= a. Env intervals that start
    # before b: their starts are < b. The overlapping ones lie between the two counts.
    k_lo = torch.searchsorted(env_edges[:, 1:].contiguous(), a, right=True)
    k_hi = torch.searchsorted(env_edges[:, :-1].contiguous(), b, right=False)
    k_hi = torch.maximum(k_hi, k_lo)
    return cum.gather(1, k_hi) - cum.gather(1, k_lo)


def interlevel_loss(edges: torch.Tensor, weights: torch.Tensor, prop_edges: torch.Tensor,
                    prop_weights: torch.Tensor) -> torch.Tensor:
    """mip-NeRF 360's proposal loss (eq. 13), mean over rays and intervals:
    max(0, w - bound)^2 / w, where bound is the proposal's ``envelope`` over each interval
    of the radiance field's step function (edges (R, M + 1), weights (R, M)). Zero when the
    proposal bounds the weights everywhere. Only the proposal is trained by it: the
    radiance field's side is detached."""
    w = weights.detach()
    bound = envelope(edges.detach(), prop_edges.detach(), prop_weights)
    return ((w - bound).clamp(min=0.0) ** 2 / (w + EPS)).mean()


def distortion_loss(edges: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """mip-NeRF 360's distortion loss (eq. 15), mean over rays, in O(n) per ray:

        sum_ij w_i w_j |m_i - m_j| + 1/3 sum_i w_i^2 (e_{i+1} - e_i),

    m_i the interval midpoints (sorted, so the double sum is 2 sum_i w_i (m_i W_i - M_i)
    with W_i, M_i the sums of w_j and w_j m_j over j < i). edges (R, n + 1) in the
    normalised spacing, weights (R, n)."""
    mid = 0.5 * (edges[:, 1:] + edges[:, :-1])
    width = edges[:, 1:] - edges[:, :-1]
    wm = weights * mid
    w_before = torch.cumsum(weights, -1) - weights
    wm_before = torch.cumsum(wm, -1) - wm
    inter = 2.0 * (weights * (mid * w_before - wm_before)).sum(-1)
    intra = (weights ** 2 * width).sum(-1) / 3.0
    return (inter + intra).mean()


def anneal_power(step: int, slope: float = 10.0, steps: int = 1000) -> float:
    """The exponent proposal weights are raised to before resampling (mip-NeRF 360 eq. 18,
    nerfstudio's proposal_weights_anneal): near 0 at step 0, so the first rounds sample
    almost uniformly while the proposals know nothing, rising to 1 over ``steps``."""
    x = min(max(step / steps, 0.0), 1.0)
    return slope * x / ((slope - 1.0) * x + 1.0)
