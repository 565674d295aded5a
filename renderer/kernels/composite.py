"""Triton: renderer.compositing.composite_intervals without gradients, one pass per ray.

A render composites 48 samples on each of 640 k rays. The torch version makes about ten
passes over the (R, S) samples (products, two exponentials, a cumulative sum, a
concatenation, three weighted sums) and writes each one out, and its cumulative sum along
short rows is slow on a GPU (docs/real_scenes.md). Here a tile of rays is read once and
only the per-ray sums are written.
Reference: renderer.compositing.composite_intervals's torch path and a float64 loop
(tests/test_composite_intervals.py, through Triton's interpreter).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

POINTS_PER_PROGRAM = 512


@triton.jit
def _composite_fwd(sigma_ptr, rgb_ptr, t_ptr, out_ptr, R, S, BR: tl.constexpr, SP: tl.constexpr):
    rays = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR)
    k = tl.arange(0, SP)
    rm = rays < R
    m = rm[:, None] & (k[None, :] < S)
    sample = rays[:, None] * S + k[None, :]
    sig = tl.load(sigma_ptr + sample, mask=m, other=0.0)
    ta = tl.load(t_ptr + rays[:, None] * (S + 1) + k[None, :], mask=m, other=0.0)
    tb = tl.load(t_ptr + rays[:, None] * (S + 1) + k[None, :] + 1, mask=m, other=0.0)
    sd = sig * (tb - ta)
    # w = (1 - exp(-sigma delta)) * exp(-(the optical depth before the sample)).
    w = (1.0 - tl.exp(-sd)) * tl.exp(-(tl.cumsum(sd, 1) - sd))
    base = out_ptr + rays * 5
    tl.store(base + 3, tl.sum(w, 1), mask=rm)
    tl.store(base + 4, tl.sum(w * 0.5 * (ta + tb), 1), mask=rm)
    for c in tl.static_range(3):
        col = tl.load(rgb_ptr + sample * 3 + c, mask=m, other=0.0)
        tl.store(base + c, tl.sum(w * col, 1), mask=rm)


def composite_intervals_triton(sigma: torch.Tensor, rgb: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(R, 5) float32: the composited colour (3), the opacity and the weighted midpoint
    distance of each ray (composite_intervals's sums)."""
    n_rays, s = sigma.shape
    out = torch.empty(n_rays, 5, device=sigma.device, dtype=torch.float32)
    if n_rays == 0:
        return out
    sp = triton.next_power_of_2(s)
    br = max(1, POINTS_PER_PROGRAM // sp)
    f32 = lambda v: v.detach().float().contiguous()  # noqa: E731
    _composite_fwd[(triton.cdiv(n_rays, br),)](f32(sigma), f32(rgb), f32(t), out, n_rays, s, BR=br, SP=sp,
                                               num_warps=4)
    return out
