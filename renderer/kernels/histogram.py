"""Triton: renderer.proposal.sample_histogram, one program per ray.

The torch version makes about fifteen passes over the (R, B) histogram (padding, sums,
cumulative sum, a concatenation, searchsorted, four gathers), and a render runs two
rounds of it over every ray of the frame. Here a ray's
CDF is built in registers and written once to a scratch row; each quantile's bin is the
count of CDF entries at or below it (what searchsorted with right=True returns), found
by a binary search of the row (log2 B reads a quantile, where comparing each quantile
with every entry took B); the edges and CDF values either side are then read back.
Reference: renderer.proposal.sample_histogram (tests/test_proposal.py, through Triton's
interpreter).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _histogram_fwd(edges_ptr, w_ptr, jit_ptr, cdf_ptr, out_ptr, B, n, padding, eps,
                   BP: tl.constexpr, QP: tl.constexpr, LOG: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    b = tl.arange(0, BP)
    mb = b < B
    w = tl.where(mb, tl.load(w_ptr + r * B + b, mask=mb, other=0.0) + padding, 0.0)
    cdf = tl.minimum(tl.cumsum(w, 0) / tl.maximum(tl.sum(w, 0), eps), 1.0)  # the CDF at edge b + 1
    tl.store(cdf_ptr + r * B + b, cdf, mask=mb)
    tl.debug_barrier()  # the row is read back below by other threads of the program
    k = tl.arange(0, QP)
    mk = k <= n
    q = (k.to(tl.float32) + tl.load(jit_ptr + r)) / (n + 1).to(tl.float32)
    # searchsorted(right=True) over [0, cdf]: 1 for the leading 0, plus the entries <= q,
    # found by a binary search of the (non-decreasing) row: LOG halvings of [lo, hi).
    lo = tl.zeros((QP,), dtype=tl.int32)
    hi = tl.full((QP,), 0, dtype=tl.int32) + B
    for _ in tl.static_range(LOG):
        mid = (lo + hi) // 2
        v = tl.load(cdf_ptr + r * B + mid, mask=mk & (mid < hi), other=2.0)
        go = (mid < hi) & (v <= q)
        lo = tl.where(go, mid + 1, lo)
        hi = tl.where(go | (mid >= hi), hi, mid)
    idx = lo + 1
    below = tl.minimum(tl.maximum(idx - 1, 0), B)
    above = tl.minimum(idx, B)
    c_lo = tl.where(below > 0, tl.load(cdf_ptr + r * B + below - 1, mask=mk & (below > 0), other=0.0), 0.0)
    c_hi = tl.where(above > 0, tl.load(cdf_ptr + r * B + above - 1, mask=mk & (above > 0), other=0.0), 0.0)
    e_lo = tl.load(edges_ptr + r * (B + 1) + below, mask=mk, other=0.0)
    e_hi = tl.load(edges_ptr + r * (B + 1) + above, mask=mk, other=0.0)
    # c_lo <= q < c_hi whenever the two bins differ; where they do not (q past the last
    # CDF entry, 1 less rounding) both edges are the last one and the fraction is moot.
    den = c_hi - c_lo
    frac = tl.minimum(tl.maximum(tl.where(den > 0.0, (q - c_lo) / den, 0.0), 0.0), 1.0)
    tl.store(out_ptr + r * (n + 1) + k, e_lo + frac * (e_hi - e_lo), mask=mk)


def sample_histogram_triton(edges: torch.Tensor, weights: torch.Tensor, n: int, jitter: torch.Tensor | None,
                            padding: float, eps: float) -> torch.Tensor:
    """renderer.proposal.sample_histogram's result, float32 (R, n + 1)."""
    n_rays, n_bins = weights.shape
    out = torch.empty(n_rays, n + 1, device=weights.device, dtype=torch.float32)
    if n_rays == 0:
        return out
    jit = (torch.full((n_rays,), 0.5, device=weights.device) if jitter is None
           else jitter.detach().float().reshape(-1).contiguous())
    cdf = torch.empty(n_rays, n_bins, device=weights.device, dtype=torch.float32)
    _histogram_fwd[(n_rays,)](edges.detach().float().contiguous(), weights.detach().float().contiguous(), jit,
                              cdf, out, n_bins, n, padding, eps, BP=triton.next_power_of_2(n_bins),
                              QP=triton.next_power_of_2(n + 1), LOG=int(n_bins).bit_length(), num_warps=4)
    return out
