"""Where along each ray the field is queried.

All functions are pure: tensors in, tensors out, shapes in the docstrings.
"""
from __future__ import annotations

import torch


def stratified_samples(near: torch.Tensor | float, far: torch.Tensor | float, n_rays: int,
                       n_samples: int, perturb: bool, device=None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Depths t (R, S) in [near, far]: one sample per equal-width bin.

    With perturb the sample is uniform inside its bin (training: a continuous
    representation is seen); without it, the bin midpoints' left edges as in
    NeRF's evaluation (linspace including near and far).
    """
    near_t = torch.as_tensor(near, dtype=torch.float32, device=device).reshape(-1, 1)
    far_t = torch.as_tensor(far, dtype=torch.float32, device=device).reshape(-1, 1)
    u = torch.linspace(0.0, 1.0, n_samples, device=device)
    t = near_t * (1.0 - u) + far_t * u
    t = t.expand(n_rays, n_samples)
    if perturb:
        mids = 0.5 * (t[:, 1:] + t[:, :-1])
        upper = torch.cat([mids, t[:, -1:]], -1)
        lower = torch.cat([t[:, :1], mids], -1)
        r = torch.rand(t.shape, device=device, generator=generator)
        t = lower + (upper - lower) * r
    return t.contiguous()


def sample_pdf(bins: torch.Tensor, weights: torch.Tensor, n_samples: int, deterministic: bool,
               generator: torch.Generator | None = None, eps: float = 1e-5) -> torch.Tensor:
    """Inverse-CDF importance samples (R, n_samples) from a piecewise-constant pdf.

    bins (R, B+1) are bin edges, weights (R, B) the unnormalised mass of each bin.
    ``eps`` keeps rays with all-zero weight sampling uniformly instead of NaN.
    """
    weights = weights + eps
    pdf = weights / weights.sum(-1, keepdim=True)
    cdf = torch.cumsum(pdf, -1)
    cdf = torch.cat([torch.zeros_like(cdf[:, :1]), cdf], -1)  # (R, B+1)
    n_rays = cdf.shape[0]
    if deterministic:
        u = torch.linspace(0.0, 1.0, n_samples, device=bins.device, dtype=cdf.dtype).expand(n_rays, n_samples)
    else:
        u = torch.rand(n_rays, n_samples, device=bins.device, dtype=cdf.dtype, generator=generator)
    u = u.contiguous()
    idx = torch.searchsorted(cdf, u, right=True)
    below = (idx - 1).clamp(min=0)
    above = idx.clamp(max=cdf.shape[-1] - 1)
    cdf_lo, cdf_hi = cdf.gather(1, below), cdf.gather(1, above)
    bin_lo, bin_hi = bins.gather(1, below), bins.gather(1, above)
    denom = cdf_hi - cdf_lo
    # A bin with (numerically) zero mass contributes its left edge rather than 0/0.
    denom = torch.where(denom < eps, torch.ones_like(denom), denom)
    frac = (u - cdf_lo) / denom
    return bin_lo + frac * (bin_hi - bin_lo)


def hierarchical_samples(t_coarse: torch.Tensor, weights: torch.Tensor, n_fine: int,
                         deterministic: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fine depths (R, S_c + n_fine): coarse depths merged with importance samples.

    Bins are the midpoints between coarse samples; the end weights are dropped
    because those half-bins have no midpoint on one side (as in NeRF).
    """
    mids = 0.5 * (t_coarse[:, 1:] + t_coarse[:, :-1])
    t_new = sample_pdf(mids, weights[:, 1:-1].detach(), n_fine, deterministic, generator)
    t_all, _ = torch.sort(torch.cat([t_coarse, t_new.detach()], -1), -1)
    return t_all
