"""Triton multiresolution hash encoding, forward and backward.

Reference: models.hashgrid.hash_encode_torch (same spec, plain torch autograd).
One program handles BLOCK points at one level: it computes the 8 corner
indices, gathers their F features as one vector load each, and interpolates.
The backward scatters w * grad into the table with relaxed atomics (no fences:
the adds commute and nothing reads the table until the kernel ends). When the points
need a gradient too (a field that refines its cameras moves the points through them),
a second kernel differentiates the trilinear weights: per level, res_l * sum over
corners of (grad . feature) * dw/dfrac, written per level and summed over the levels
(no atomics: each point's level row is written once).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 128


@triton.jit
def _cell(x, y, z, res):
    """Cell (ix, iy, iz) of points in [0, 1]^3 (clamped) on a level of res cells per side,
    and the position (fx, fy, fz) in [0, 1] within it; the last cell takes x = 1."""
    resf = res.to(tl.float32)
    px = tl.minimum(tl.maximum(x, 0.0), 1.0) * resf
    py = tl.minimum(tl.maximum(y, 0.0), 1.0) * resf
    pz = tl.minimum(tl.maximum(z, 0.0), 1.0) * resf
    ix = tl.minimum(tl.floor(px).to(tl.int32), res - 1)
    iy = tl.minimum(tl.floor(py).to(tl.int32), res - 1)
    iz = tl.minimum(tl.floor(pz).to(tl.int32), res - 1)
    return ix, iy, iz, px - ix.to(tl.float32), py - iy.to(tl.float32), pz - iz.to(tl.float32)


@triton.jit
def _corner(ix, iy, iz, fx, fy, fz, V, dense, mask_t, c: tl.constexpr):
    """Table index (within the level) and trilinear weight of corner c (0..7)."""
    bx: tl.constexpr = c & 1
    by: tl.constexpr = (c >> 1) & 1
    bz: tl.constexpr = (c >> 2) & 1
    cx = ix + bx
    cy = iy + by
    cz = iz + bz
    wx = fx if bx else 1.0 - fx
    wy = fy if by else 1.0 - fy
    wz = fz if bz else 1.0 - fz
    didx = cx + cy * V + cz * V * V
    hidx = (cx.to(tl.uint32) ^ (cy.to(tl.uint32) * 2654435761) ^ (cz.to(tl.uint32) * 805459861)) & mask_t
    idx = tl.where(dense != 0, didx, hidx.to(tl.int32))
    return idx, wx * wy * wz


@triton.jit
def _corner_dw(fx, fy, fz, c: tl.constexpr):
    """The derivative of corner c's trilinear weight by (fx, fy, fz). A function of its
    own, as _corner: a constexpr set inside a static_range loop body cannot be set again
    on the next pass (Triton's compiler refuses; its interpreter does not)."""
    bx: tl.constexpr = c & 1
    by: tl.constexpr = (c >> 1) & 1
    bz: tl.constexpr = (c >> 2) & 1
    wx = fx if bx else 1.0 - fx
    wy = fy if by else 1.0 - fy
    wz = fz if bz else 1.0 - fz
    sx = 1.0 if bx else -1.0
    sy = 1.0 if by else -1.0
    sz = 1.0 if bz else -1.0
    return sx * wy * wz, sy * wx * wz, sz * wx * wy


@triton.jit
def _pick(a, b, bit: tl.constexpr):
    """a where the corner's bit is 0, b where it is 1 (chosen when compiling)."""
    return b if bit else a


@triton.jit
def _level_features(table_ptr, x, y, z, res, off, mask_t, m, DENSE: tl.constexpr):
    """Both features (F = 2, float32) of one level at points x, y, z in [0, 1] (tiles of
    any shape, live where m): the trilinear sum over the cell's 8 corners that _cell,
    _corner and _hash_fwd compute, for the forward-only kernels. Two things differ, both
    for the integer work that bounds a render's lookups (instant-ngp's kernels do the
    same): the level's layout (dense or hashed, ``DENSE``) is known when compiling, so
    only one index formula is computed, and each axis's part of the index (its two
    values per cell) is computed once per level, not once per corner. Indices are int32
    (off: the level's first entry; a table holds far fewer than 2^30 entries)."""
    ix, iy, iz, fx, fy, fz = _cell(x, y, z, res)
    if DENSE:
        v = res + 1
        ax0 = ix + off
        ay0 = iy * v
        az0 = iz * (v * v)
        ax1 = ax0 + 1
        ay1 = ay0 + v
        az1 = az0 + v * v
    else:
        ax0 = ix.to(tl.uint32)
        ay0 = iy.to(tl.uint32) * 2654435761
        az0 = iz.to(tl.uint32) * 805459861
        ax1 = ax0 + 1
        ay1 = ay0 + 2654435761
        az1 = az0 + 805459861
    nd: tl.constexpr = len(fx.shape)
    pair = tl.arange(0, 2)
    mp = tl.expand_dims(m, nd)
    for c in tl.static_range(8):
        ax = _pick(ax0, ax1, c & 1)
        ay = _pick(ay0, ay1, (c >> 1) & 1)
        az = _pick(az0, az1, (c >> 2) & 1)
        if DENSE:
            idx = ax + ay + az
        else:
            idx = ((ax ^ ay ^ az) & mask_t).to(tl.int32) + off
        w = (_pick(1.0 - fx, fx, c & 1) * _pick(1.0 - fy, fy, (c >> 1) & 1)
             * _pick(1.0 - fz, fz, (c >> 2) & 1))
        # An entry's two features as one vector load (one request instead of two).
        v = tl.load(tl.expand_dims(table_ptr + idx * 2, nd) + pair, mask=mp, other=0.0).to(tl.float32)
        if c == 0:
            f = tl.expand_dims(w, nd) * v
        else:
            f += tl.expand_dims(w, nd) * v
    return tl.split(f)


def dense_levels(encoding) -> int:
    """How many of a HashEncoding's levels (its first ones: resolutions grow) are dense,
    the ``DENSE`` that _level_features is compiled for, level by level."""
    n = sum(bool(d) for d in encoding.dense)
    if not all(encoding.dense[:n]):
        raise ValueError(f"dense levels must come first, got {encoding.dense}")
    return n


@triton.jit
def _block(x_ptr, res_ptr, off_ptr, dense_ptr, N, F: tl.constexpr, BLOCK: tl.constexpr):
    """What every kernel here starts with: this program's BLOCK rows (program 0 axis),
    their mask and points; the level (program 1 axis), its resolution, table offset,
    dense flag and vertices per side; the feature lanes; the points' cells."""
    lvl = tl.program_id(1)
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = rows < N
    x = tl.load(x_ptr + rows * 3, mask=m, other=0.0)
    y = tl.load(x_ptr + rows * 3 + 1, mask=m, other=0.0)
    z = tl.load(x_ptr + rows * 3 + 2, mask=m, other=0.0)
    res = tl.load(res_ptr + lvl)
    ix, iy, iz, fx, fy, fz = _cell(x, y, z, res)
    return (rows, m, x, y, z, lvl, res, tl.load(off_ptr + lvl).to(tl.int64), tl.load(dense_ptr + lvl),
            res + 1, tl.arange(0, F), ix, iy, iz, fx, fy, fz)


@triton.jit
def _grad_rows(gout_ptr, rows, m, lvl, f, L: tl.constexpr, F: tl.constexpr):
    """The incoming gradient (BLOCK, F) of these rows' features at this level."""
    return tl.load(gout_ptr + rows[:, None] * (L * F) + lvl * F + f[None, :], mask=m[:, None],
                   other=0.0).to(tl.float32)


@triton.jit
def _hash_fwd(x_ptr, table_ptr, out_ptr, res_ptr, off_ptr, dense_ptr, N, mask_t,
              L: tl.constexpr, F: tl.constexpr, BLOCK: tl.constexpr):
    rows, m, x, y, z, lvl, res, off, dense, V, f, ix, iy, iz, fx, fy, fz = _block(
        x_ptr, res_ptr, off_ptr, dense_ptr, N, F, BLOCK)
    acc = tl.zeros((BLOCK, F), dtype=tl.float32)
    for c in tl.static_range(8):
        idx, w = _corner(ix, iy, iz, fx, fy, fz, V, dense, mask_t, c)
        g = off + idx.to(tl.int64)
        vals = tl.load(table_ptr + g[:, None] * F + f[None, :], mask=m[:, None], other=0.0)
        acc += w[:, None] * vals.to(tl.float32)
    tl.store(out_ptr + rows[:, None] * (L * F) + lvl * F + f[None, :], acc, mask=m[:, None])


@triton.jit
def _hash_bwd(x_ptr, gout_ptr, gtable_ptr, res_ptr, off_ptr, dense_ptr, N, mask_t,
              L: tl.constexpr, F: tl.constexpr, BLOCK: tl.constexpr):
    rows, m, x, y, z, lvl, res, off, dense, V, f, ix, iy, iz, fx, fy, fz = _block(
        x_ptr, res_ptr, off_ptr, dense_ptr, N, F, BLOCK)
    go = _grad_rows(gout_ptr, rows, m, lvl, f, L, F)
    # Zero gradients issue no atomics: the padding samples of a fixed-size step all sit at
    # one point, and 10^5 adds of 0 to the same entries serialised the whole backward.
    # Per row, not per entry: a row-uniform mask keeps the F-wide vector atomics (a
    # per-entry mask made the backward of an unpadded step 50% slower). NaN != 0 stays live.
    live = (m & (tl.sum((go != 0.0).to(tl.int32), 1) > 0))[:, None]
    for c in tl.static_range(8):
        idx, w = _corner(ix, iy, iz, fx, fy, fz, V, dense, mask_t, c)
        g = off + idx.to(tl.int64)
        tl.atomic_add(gtable_ptr + g[:, None] * F + f[None, :], w[:, None] * go, mask=live,
                      sem="relaxed")


@triton.jit
def _hash_bwd_points(x_ptr, gout_ptr, table_ptr, gx_ptr, res_ptr, off_ptr, dense_ptr, N, mask_t,
                     L: tl.constexpr, F: tl.constexpr, BLOCK: tl.constexpr):
    """d loss / d x of one level for BLOCK points, into gx (L, N, 3). Zero where the
    encoding clamps x to [0, 1] (as torch.clamp's gradient, the bounds included)."""
    rows, m, x, y, z, lvl, res, off, dense, V, f, ix, iy, iz, fx, fy, fz = _block(
        x_ptr, res_ptr, off_ptr, dense_ptr, N, F, BLOCK)
    go = _grad_rows(gout_ptr, rows, m, lvl, f, L, F)
    gx = tl.zeros((BLOCK,), dtype=tl.float32)
    gy = tl.zeros((BLOCK,), dtype=tl.float32)
    gz = tl.zeros((BLOCK,), dtype=tl.float32)
    for c in tl.static_range(8):
        idx, _w = _corner(ix, iy, iz, fx, fy, fz, V, dense, mask_t, c)
        vals = tl.load(table_ptr + (off + idx.to(tl.int64))[:, None] * F + f[None, :], mask=m[:, None],
                       other=0.0).to(tl.float32)
        d = tl.sum(vals * go, 1)  # grad . feature of this corner
        dx, dy, dz = _corner_dw(fx, fy, fz, c)
        gx += d * dx
        gy += d * dy
        gz += d * dz
    resf = res.to(tl.float32)
    gx = tl.where((x >= 0.0) & (x <= 1.0), gx * resf, 0.0)
    gy = tl.where((y >= 0.0) & (y <= 1.0), gy * resf, 0.0)
    gz = tl.where((z >= 0.0) & (z <= 1.0), gz * resf, 0.0)
    base = (lvl.to(tl.int64) * N + rows) * 3
    tl.store(gx_ptr + base, gx, mask=m)
    tl.store(gx_ptr + base + 1, gy, mask=m)
    tl.store(gx_ptr + base + 2, gz, mask=m)


class _HashEncodeFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x01, table, meta):
        res_t, off_t, dense_t, n_levels, mask_t = meta
        n = x01.shape[0]
        f = table.shape[1]
        out = torch.empty(n, n_levels * f, device=x01.device, dtype=torch.float32)
        if n > 0:
            grid = (triton.cdiv(n, BLOCK), n_levels)
            _hash_fwd[grid](x01, table, out, res_t, off_t, dense_t, n, mask_t,
                            L=n_levels, F=f, BLOCK=BLOCK, num_warps=4)
        ctx.save_for_backward(x01, table)
        ctx.meta = meta
        ctx.table_shape = table.shape
        return out

    @staticmethod
    def backward(ctx, gout):
        x01, table = ctx.saved_tensors
        res_t, off_t, dense_t, n_levels, mask_t = ctx.meta
        n = x01.shape[0]
        gout = gout.contiguous()
        gtable = gx = None
        grid = (triton.cdiv(n, BLOCK), n_levels)
        if ctx.needs_input_grad[1]:
            gtable = torch.zeros(ctx.table_shape, device=gout.device, dtype=torch.float32)
            if n > 0:
                _hash_bwd[grid](x01, gout, gtable, res_t, off_t, dense_t, n, mask_t,
                                L=n_levels, F=ctx.table_shape[1], BLOCK=BLOCK, num_warps=4)
        if ctx.needs_input_grad[0]:
            per_level = torch.empty(n_levels, n, 3, device=gout.device, dtype=torch.float32)
            if n > 0:
                _hash_bwd_points[grid](x01, gout, table, per_level, res_t, off_t, dense_t, n, mask_t,
                                       L=n_levels, F=ctx.table_shape[1], BLOCK=BLOCK, num_warps=4)
            gx = per_level.sum(0)
        return gx, gtable, None


def hash_encode_triton(x01: torch.Tensor, table: torch.Tensor, res_t: torch.Tensor, off_t: torch.Tensor,
                       dense_t: torch.Tensor, log2_hashmap_size: int) -> torch.Tensor:
    """(N, 3) in [0, 1] -> (N, L * F) float32; same contract as hash_encode_torch."""
    meta = (res_t, off_t, dense_t, int(res_t.shape[0]), (1 << log2_hashmap_size) - 1)
    return _HashEncodeFn.apply(x01.float().contiguous(), table.contiguous(), meta)
