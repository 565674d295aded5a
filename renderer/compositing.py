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


def composite_intervals(sigma: torch.Tensor, rgb: torch.Tensor, t: torch.Tensor,
                        weights: bool = False) -> dict[str, torch.Tensor]:
    """Composite samples taken on intervals: sigma (R, S) and rgb (R, S, 3) on the
    intervals between the distances t (R, S + 1) (nerfacto's samples; every interval has
    its own length, the last one too). Returns rgb (R, 3) (no background), acc (R,),
    depth_sum (R,) = sum of weight x interval midpoint (the caller normalises it), and
    with ``weights`` the weights (R, S). Without gradients or weights, from the Triton
    kernel where it runs (renderer/kernels/composite.py): a render needs only the sums."""
    if not weights and not torch.is_grad_enabled():
        from renderer import kernels

        def run():
            from renderer.kernels.composite import composite_intervals_triton
            return composite_intervals_triton(sigma, rgb, t)
        sums = kernels.run_or_none("composite", sigma, run)
        if sums is not None:
            return {"rgb": sums[:, :3], "acc": sums[:, 3], "depth_sum": sums[:, 4]}
    w = alpha_weights(sigma, t[:, 1:] - t[:, :-1])[0]
    out = {"rgb": (w[..., None] * rgb).sum(1), "acc": w.sum(-1),
           "depth_sum": (w * 0.5 * (t[:, 1:] + t[:, :-1])).sum(-1)}
    if weights:
        out["weights"] = w
    return out


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
