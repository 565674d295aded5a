"""Triton density-only pass of the hash model: packed samples -> raw density, fused.

Why: sample compaction (models/hashgrid.py, ``compact``) evaluates the density of up to
3 x 2^18 marched samples per step without gradients. Unfused, that pass gathers the
sample positions, writes an (N, L * F) encoding, a bf16 copy, an (N, hidden) layer and
an (N, 1 + geo) output, and reads each back. Here one program takes BLOCK samples from
ray origin + s * direction through the encoding (the gathers of models/kernels/
hash_encode.py), the first layer, the ReLU and the density row of the second layer,
and writes one float per sample.

Reference: HashGridModel's torch path, density_net(encoding(x))[:, 0]
(tests/test_hashgrid.py runs both in Triton's CPU interpreter).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from models.kernels.hash_encode import _cell, _corner

BLOCK = 64


@triton.jit
def _density_raw(o_ptr, d_ptr, rid_ptr, s_ptr, table_ptr, res_ptr, off_ptr, dense_ptr, w1_ptr, w2_ptr,
                 out_ptr, N, mask_t, bound, scale,
                 L: tl.constexpr, F: tl.constexpr, H: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = rows < N
    rid = tl.load(rid_ptr + rows, mask=m, other=0).to(tl.int64)
    s = tl.load(s_ptr + rows, mask=m, other=0.0)
    # Same expression as HashGridModel._points then _features: (o + d * s + b) * (0.5 / b).
    x = (tl.load(o_ptr + rid * 3, mask=m, other=0.0) + tl.load(d_ptr + rid * 3, mask=m, other=0.0) * s
         + bound) * scale
    y = (tl.load(o_ptr + rid * 3 + 1, mask=m, other=0.0) + tl.load(d_ptr + rid * 3 + 1, mask=m, other=0.0) * s
         + bound) * scale
    z = (tl.load(o_ptr + rid * 3 + 2, mask=m, other=0.0) + tl.load(d_ptr + rid * 3 + 2, mask=m, other=0.0) * s
         + bound) * scale
    f = tl.arange(0, F)
    hc = tl.arange(0, H)
    h = tl.zeros((BLOCK, H), dtype=tl.float32)
    for lvl in tl.static_range(L):
        res = tl.load(res_ptr + lvl)
        off = tl.load(off_ptr + lvl).to(tl.int64)
        dense = tl.load(dense_ptr + lvl)
        ix, iy, iz, fx, fy, fz = _cell(x, y, z, res)
        enc = tl.zeros((BLOCK, F), dtype=tl.float32)
        for c in tl.static_range(8):
            idx, w = _corner(ix, iy, iz, fx, fy, fz, res + 1, dense, mask_t, c)
            g = off + idx.to(tl.int64)
            vals = tl.load(table_ptr + g[:, None] * F + f[None, :], mask=m[:, None], other=0.0)
            enc += w[:, None] * vals.to(tl.float32)
        # This level's F encoding columns times their F rows of W1^T: (BLOCK, F) @ (F, H).
        w1 = tl.load(w1_ptr + hc[None, :] * (L * F) + lvl * F + f[:, None])  # (F, H)
        h += tl.sum(enc[:, :, None] * w1[None, :, :], 1)
    w2 = tl.load(w2_ptr + hc)
    raw = tl.sum(tl.maximum(h, 0.0) * w2[None, :], 1)
    tl.store(out_ptr + rows, raw, mask=m)


def density_raw_triton(rays_o: torch.Tensor, dirs: torch.Tensor, ray_ids: torch.Tensor, s: torch.Tensor,
                       bound: float, encoding, w1: torch.Tensor, w2_row: torch.Tensor) -> torch.Tensor:
    """Raw density (N,) float32 (before the exponential) of packed samples: rays_o, dirs (R, 3),
    ray_ids (N,) into them, s (N,) distances; encoding a models.hashgrid.HashEncoding;
    w1 (H, L * F) the first layer's weight, w2_row (H,) the second layer's density row."""
    n = s.shape[0]
    out = torch.empty(n, device=s.device, dtype=torch.float32)
    if n == 0:
        return out
    table = encoding.table.detach()
    hidden, n_in = w1.shape
    n_levels, n_feat = int(encoding.res_t.shape[0]), int(table.shape[1])
    if n_in != n_levels * n_feat or hidden & (hidden - 1) != 0:
        raise ValueError(f"fused density needs a power-of-two hidden width and {n_levels * n_feat} inputs, "
                         f"got a {tuple(w1.shape)} first layer")
    _density_raw[(triton.cdiv(n, BLOCK),)](
        rays_o.float().contiguous(), dirs.float().contiguous(), ray_ids.contiguous(), s.float().contiguous(),
        table.contiguous(), encoding.res_t, encoding.off_t, encoding.dense_t,
        w1.detach().float().contiguous(), w2_row.detach().float().contiguous(), out, n,
        (1 << encoding.log2_hashmap_size) - 1, float(bound), float(0.5 / bound),
        L=n_levels, F=n_feat, H=hidden, BLOCK=BLOCK, num_warps=4)
    return out
