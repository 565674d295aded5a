"""Differentiable volume rendering (emission-absorption quadrature, NeRF eq. 3)."""
from __future__ import annotations

import torch

# Stands in for the infinite last interval: the ray leaves the volume after its
# final sample, so that sample absorbs whatever opacity it has.
FAR_DELTA = 1e10


def deltas_from_t(t: torch.Tensor, rays_d: torch.Tensor, last_delta: float = FAR_DELTA) -> torch.Tensor:
    """Metric interval lengths (R, S) between consecutive samples t (R, S).

    Scaled by |d| so density is per world unit even when d is not unit length.
    """
    delta = t[:, 1:] - t[:, :-1]
    delta = torch.cat([delta, torch.full_like(delta[:, :1], last_delta)], -1)
    return delta * rays_d.norm(dim=-1, keepdim=True)


def alpha_weights(sigma: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample weights w = T * alpha and transmittance T, both (R, S).

    alpha_i = 1 - exp(-sigma_i delta_i); T_i = prod_{j<i} (1 - alpha_j), computed
    as exp(-cumsum(sigma delta)) which is exact and avoids a cumprod of tiny values.
    """
    sd = sigma * delta
    alpha = 1.0 - torch.exp(-sd)
    accum = torch.cumsum(sd, -1)
    trans = torch.exp(-torch.cat([torch.zeros_like(accum[:, :1]), accum[:, :-1]], -1))
    return alpha * trans, trans


def composite(sigma: torch.Tensor, rgb: torch.Tensor, t: torch.Tensor, rays_d: torch.Tensor,
              background: torch.Tensor | float | None = None,
              last_delta: float = FAR_DELTA) -> dict[str, torch.Tensor]:
    """Composite samples along rays.

    sigma (R, S) >= 0, rgb (R, S, 3), t (R, S) sorted depths, rays_d (R, 3).
    background: scalar or (3,) / (R, 3) colour seen through the remaining transmittance.
    Returns rgb (R, 3), depth (R,) (expected t of termination, normalised by
    opacity so empty rays do not read as near), acc (R,), weights (R, S).
    """
    delta = deltas_from_t(t, rays_d, last_delta)
    weights, _ = alpha_weights(sigma, delta)
    acc = weights.sum(-1)
    color = (weights[..., None] * rgb).sum(-2)
    if background is not None:
        color = color + (1.0 - acc)[..., None] * torch.as_tensor(background, dtype=color.dtype,
                                                                 device=color.device)
    depth = (weights * t).sum(-1) / acc.clamp(min=1e-10)
    return {"rgb": color, "depth": depth, "acc": acc, "weights": weights}


def evaluate_front_to_back(evaluate, delta: torch.Tensor, tau_stop: float, round_size: int = 16):
    """Density (R, S) and colour (R, S, 3) of R rays' S samples, evaluated in rounds of
    ``round_size`` samples from the front, each round only for the rays whose optical depth
    so far is below ``tau_stop`` (early ray termination: -log of the transmittance left).
    A sample behind that point could add at most exp(-tau_stop) to its ray's colour, so it
    is not evaluated: it gets zero density and colour, and compositing gives it no weight.

    evaluate(rays (M,), lo, hi) -> (sigma (M, hi - lo), rgb (M, hi - lo, 3)), or the same
    flattened ray by ray, of samples lo to hi of those rays; delta (R, S) the samples' interval lengths. Returns sigma, rgb and
    the number of samples evaluated (an int: the loop reads the optical depths on the host)."""
    n_rays, n = delta.shape
    sigma = delta.new_zeros(n_rays, n)
    rgb = delta.new_zeros(n_rays, n, 3)
    tau = delta.new_zeros(n_rays)
    rays = torch.arange(n_rays, device=delta.device)
    lo, used = 0, 0
    while lo < n and rays.numel():
        hi = min(n, lo + round_size)
        s, c = evaluate(rays, lo, hi)
        s = s.reshape(rays.numel(), hi - lo)
        sigma[rays, lo:hi] = s.to(sigma.dtype)
        rgb[rays, lo:hi] = c.reshape(rays.numel(), hi - lo, 3).to(rgb.dtype)
        tau[rays] += (s.detach().to(tau.dtype) * delta[rays, lo:hi]).sum(1)
        used += rays.numel() * (hi - lo)
        rays = rays[tau[rays] < tau_stop]
        lo = hi
    return sigma, rgb, used
