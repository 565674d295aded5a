"""Triton kernels for the Plenoxels grid: fused march + trilinear SH gather + compositing,
its backward, and the max-weight pass pruning uses. Reference: models.voxel_grid's
render_reference and max_weights_reference (tests/test_plenoxel_kernels.py compares them,
on a CPU through TRITON_INTERPRET=1).

Layout (svox2's cuvol renderer, rewritten for Triton): each lane of a program is one ray,
and a program walks BLOCK rays through the grid together. A step

* looks its cell's block up in the coarse occupancy (64^3 blocks whatever the
  resolution) and, when the block is empty, jumps past it in one stride that stays on the
  sample lattice (empty-space skipping with the grid itself as the occupancy structure);
* otherwise gathers the 8 corner links and densities ([BLOCK, 8] tiles), and where the
  interpolated density is positive the 8 corners' SH rows ([BLOCK, CH] tiles, CH = 3K
  padded to a power of two), evaluates max(SH . basis + 0.5, 0) and composites;
* stops a ray once its transmittance is below stop_t (early termination).

No per-sample buffer is ever written: the backward pass marches the rays again (svox2's
"remat samples") and gets the gradient of each sample from the output colour, as
dC/dsigma_i = delta * (T_{i+1} c_i.g - sum_{j>i} w_j c_j.g - T_N bg.g), where the sum is
C.g minus what the march has composited so far. Gradients are added with atomics into the
parameters' .grad buffers.

Renders without gradients (views, evaluation) go through a third kernel, _frame_kernel:
the same samples composited in the same order, but written for throughput. Every value is
a per-ray scalar, one ray per thread (in the tiles above each thread repeats the per-ray
arithmetic of its rays); lanes run through empty space in a loop of their own, which reads
only a coarse map and a bit per cell of the cells that can have positive density, before
any gather; the SH gather runs only when some lane's density is positive.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# Rays per program and warps per program. 8 rays over 4 warps keeps the backward at ~150
# registers without spills (ptxas, sm_90a) and gives a 5000-ray batch ~2500 warps; a
# benchmark may change these before the first launch.
BLOCK = 8
NUM_WARPS = 4
# The same for the frame kernel (renders without gradients), one ray per thread, and its
# register cap (None: the compiler's choice).
FRAME_BLOCK = 64
FRAME_WARPS = 2
FRAME_MAXNREG = None


@triton.jit
def _load_ray(ray_ptr, ray, rmask):
    base = ray_ptr + ray.to(tl.int64) * 10
    ox = tl.load(base + 0, mask=rmask, other=0.0)
    oy = tl.load(base + 1, mask=rmask, other=0.0)
    oz = tl.load(base + 2, mask=rmask, other=0.0)
    dx = tl.load(base + 3, mask=rmask, other=1.0)
    dy = tl.load(base + 4, mask=rmask, other=1.0)
    dz = tl.load(base + 5, mask=rmask, other=1.0)
    ts = tl.load(base + 6, mask=rmask, other=0.0)
    te = tl.load(base + 7, mask=rmask, other=0.0)
    wps = tl.load(base + 8, mask=rmask, other=0.0)
    return ox, oy, oz, dx, dy, dz, ts, te, wps


@triton.jit
def _block_rays(ray_ptr, n_rays, BLOCK: tl.constexpr):
    """This program's BLOCK rays, their mask and their packed parameters (_load_ray)."""
    ray = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    rmask = ray < n_rays
    ox, oy, oz, dx, dy, dz, ts, te, wps = _load_ray(ray_ptr, ray, rmask)
    return ray, rmask, ox, oy, oz, dx, dy, dz, ts, te, wps


@triton.jit
def _accumulators(BLOCK: tl.constexpr):
    """A forward render's running sums per ray: transmittance 1, then zero colour (r, g,
    b), depth, Cauchy sparsity and sample count."""
    z = tl.zeros([BLOCK], dtype=tl.float32)
    return tl.full([BLOCK], 1.0, tl.float32), z, z, z, z, z, z


@triton.jit
def _composite(sraw, live, r, g, b, t, wps, delta, trans, acc_r, acc_g, acc_b, depth, cauchy):
    """One sample into a forward render's sums: alpha from the density (clamped at 0)
    over the step, colour with the +0.5 offset and ReLU, depth along the ray, the Cauchy
    sparsity term; lanes that are not ``live`` change nothing."""
    sigma = tl.maximum(sraw, 0.0)
    e = tl.exp(-sigma * delta)
    wgt = tl.where(live, trans * (1.0 - e), 0.0)
    acc_r += wgt * tl.maximum(r + 0.5, 0.0)
    acc_g += wgt * tl.maximum(g + 0.5, 0.0)
    acc_b += wgt * tl.maximum(b + 0.5, 0.0)
    depth += wgt * t * wps
    cauchy += tl.where(live, tl.log(1.0 + 2.0 * sigma * sigma), 0.0)
    return tl.where(live, trans * e, trans), acc_r, acc_g, acc_b, depth, cauchy


@triton.jit
def _axis(o, d, t, R):
    """Clamped position, cell (float) and in-cell fraction along one axis."""
    p = tl.minimum(tl.maximum(o + t * d, 0.0), R * 1.0)
    c = tl.minimum(tl.floor(p), R - 1.0)
    return p, c, p - c


@triton.jit
def _exit(p, c, d, BS: tl.constexpr):
    """Distance along the ray to the far face of the coarse block holding cell c."""
    b0 = tl.floor(c / BS) * BS
    far = tl.where(d > 0, b0 + BS, b0)
    safe = tl.where(d == 0, 1.0, d)
    return tl.where(d == 0, 1e30, (far - p) / safe)


@triton.jit
def _step(ox, oy, oz, dx, dy, dz, t, active, occ_ptr, R, RC, step, BS: tl.constexpr):
    """One lattice position: cell coords and fractions, whether the coarse block is occupied
    (go), and the lattice index increment to the next position worth visiting."""
    px, cx, fx = _axis(ox, dx, t, R)
    py, cy, fy = _axis(oy, dy, t, R)
    pz, cz, fz = _axis(oz, dz, t, R)
    bx = (cx / BS).to(tl.int32)
    by = (cy / BS).to(tl.int32)
    bz = (cz / BS).to(tl.int32)
    occ = tl.load(occ_ptr + (bx * RC + by) * RC + bz, mask=active, other=0)
    go = active & (occ != 0)
    dist = tl.minimum(tl.minimum(_exit(px, cx, dx, BS), _exit(py, cy, dy, BS)), _exit(pz, cz, dz, BS))
    # Jump to the first lattice point past the block; the 0.01 keeps rounding from jumping
    # over a point just inside the next block (landing just short costs one more step).
    skip = tl.maximum(tl.ceil(dist / step - 0.01), 1.0)
    inc = tl.where(go, 1.0, skip)
    return cx.to(tl.int32), cy.to(tl.int32), cz.to(tl.int32), fx, fy, fz, go, inc


@triton.jit
def _density(cx, cy, cz, fx, fy, fz, go, links_ptr, dens_ptr, n):
    """Corner rows lk8 [BLOCK, 8] (-1 inactive), trilinear weights w8 and raw density."""
    offs = tl.arange(0, 8)
    a = offs // 4
    b = (offs // 2) % 2
    c = offs % 2
    base = (cx.to(tl.int64) * n + cy) * n + cz
    idx = base[:, None] + (a * n * n + b * n + c)[None, :]
    lk8 = tl.load(links_ptr + idx, mask=go[:, None], other=-1)
    wx = tl.where(a[None, :] == 1, fx[:, None], 1.0 - fx[:, None])
    wy = tl.where(b[None, :] == 1, fy[:, None], 1.0 - fy[:, None])
    wz = tl.where(c[None, :] == 1, fz[:, None], 1.0 - fz[:, None])
    w8 = wx * wy * wz
    dv = tl.load(dens_ptr + lk8.to(tl.int64), mask=go[:, None] & (lk8 >= 0), other=0.0)
    return lk8, w8, tl.sum(w8 * dv, axis=1)


@triton.jit
def _corner(lk8, w8, c: tl.constexpr):
    offs = tl.arange(0, 8)
    sel = offs[None, :] == c
    return tl.sum(tl.where(sel, lk8, 0), axis=1), tl.sum(tl.where(sel, w8, 0.0), axis=1)


@triton.jit
def _colour_pre(lk8, w8, live, sh_ptr, bt, ch, K: tl.constexpr):
    """Pre-activation colour (r, g, b) of the live lanes: SH interpolated from the 8 corners."""
    coeff = tl.zeros(bt.shape, dtype=tl.float32)
    chm = ch < 3 * K
    for c in tl.static_range(8):
        lk, wc = _corner(lk8, w8, c)
        m = live & (lk >= 0)
        v = tl.load(sh_ptr + lk.to(tl.int64)[:, None] * (3 * K) + ch[None, :],
                    mask=m[:, None] & chm[None, :], other=0.0)
        coeff += wc[:, None] * v
    prod = coeff * bt
    r = tl.sum(tl.where(ch[None, :] < K, prod, 0.0), axis=1)
    g = tl.sum(tl.where((ch[None, :] >= K) & (ch[None, :] < 2 * K), prod, 0.0), axis=1)
    b = tl.sum(tl.where((ch[None, :] >= 2 * K) & chm[None, :], prod, 0.0), axis=1)
    return r, g, b


@triton.jit
def _basis_tile(basis_ptr, ray, rmask, ch, K: tl.constexpr):
    """[BLOCK, CH] tile whose column c holds basis[c % K] (c < 3K), 0 in the padding."""
    return tl.load(basis_ptr + ray.to(tl.int64)[:, None] * K + (ch % K)[None, :],
                   mask=rmask[:, None] & (ch < 3 * K)[None, :], other=0.0)


@triton.jit
def _fwd_kernel(ray_ptr, basis_ptr, bg_ptr, links_ptr, dens_ptr, sh_ptr, occ_ptr, out_ptr,
                n_rays, R, RC, step, stop_t, max_iter,
                BS: tl.constexpr, K: tl.constexpr, CH: tl.constexpr, BLOCK: tl.constexpr):
    ray, rmask, ox, oy, oz, dx, dy, dz, ts, te, wps = _block_rays(ray_ptr, n_rays, BLOCK)
    ch = tl.arange(0, CH)
    bt = _basis_tile(basis_ptr, ray, rmask, ch, K)
    n = R + 1
    delta = step * wps
    trans, acc_r, acc_g, acc_b, depth, cauchy, k = _accumulators(BLOCK)
    t = ts
    active = rmask & (t < te)
    it = 0
    while (tl.max(active.to(tl.int32), axis=0) > 0) & (it < max_iter):
        cx, cy, cz, fx, fy, fz, go, inc = _step(ox, oy, oz, dx, dy, dz, t, active, occ_ptr, R, RC, step, BS)
        lk8, w8, sraw = _density(cx, cy, cz, fx, fy, fz, go, links_ptr, dens_ptr, n)
        live = go & (sraw > 0)
        r, g, b = _colour_pre(lk8, w8, live, sh_ptr, bt, ch, K)
        trans, acc_r, acc_g, acc_b, depth, cauchy = _composite(sraw, live, r, g, b, t, wps, delta, trans,
                                                               acc_r, acc_g, acc_b, depth, cauchy)
        k += tl.where(active, inc, 0.0)
        t = ts + k * step
        active = active & (t < te) & (trans >= stop_t)
        it += 1
    _store_out(out_ptr, bg_ptr, ray, rmask, acc_r, acc_g, acc_b, trans, depth, cauchy)


@triton.jit
def _bwd_kernel(ray_ptr, basis_ptr, links_ptr, dens_ptr, sh_ptr, occ_ptr, out_ptr, grad_ptr,
                dgrad_ptr, shgrad_ptr, n_rays, R, RC, step, stop_t, max_iter,
                BS: tl.constexpr, K: tl.constexpr, CH: tl.constexpr, BLOCK: tl.constexpr):
    ray, rmask, ox, oy, oz, dx, dy, dz, ts, te, wps = _block_rays(ray_ptr, n_rays, BLOCK)
    ch = tl.arange(0, CH)
    chm = ch < 3 * K
    bt = _basis_tile(basis_ptr, ray, rmask, ch, K)
    n = R + 1
    delta = step * wps
    out = out_ptr + ray.to(tl.int64) * 6
    gb = grad_ptr + ray.to(tl.int64) * 4
    g_r = tl.load(gb + 0, mask=rmask, other=0.0)
    g_g = tl.load(gb + 1, mask=rmask, other=0.0)
    g_b = tl.load(gb + 2, mask=rmask, other=0.0)
    g_c = tl.load(gb + 3, mask=rmask, other=0.0)
    # C.g, background included: the part of the output still to come after each sample.
    accum = (tl.load(out + 0, mask=rmask, other=0.0) * g_r + tl.load(out + 1, mask=rmask, other=0.0) * g_g
             + tl.load(out + 2, mask=rmask, other=0.0) * g_b)
    trans = tl.full([BLOCK], 1.0, tl.float32)
    k = tl.zeros([BLOCK], dtype=tl.float32)
    t = ts
    active = rmask & (t < te)
    it = 0
    while (tl.max(active.to(tl.int32), axis=0) > 0) & (it < max_iter):
        cx, cy, cz, fx, fy, fz, go, inc = _step(ox, oy, oz, dx, dy, dz, t, active, occ_ptr, R, RC, step, BS)
        lk8, w8, sraw = _density(cx, cy, cz, fx, fy, fz, go, links_ptr, dens_ptr, n)
        live = go & (sraw > 0)
        sigma = tl.maximum(sraw, 0.0)
        r, g, b = _colour_pre(lk8, w8, live, sh_ptr, bt, ch, K)
        e = tl.exp(-sigma * delta)
        wgt = tl.where(live, trans * (1.0 - e), 0.0)
        t_next = trans * e
        cdot = tl.maximum(r + 0.5, 0.0) * g_r + tl.maximum(g + 0.5, 0.0) * g_g + tl.maximum(b + 0.5, 0.0) * g_b
        accum -= wgt * cdot
        gsig = delta * (t_next * cdot - accum) + g_c * 4.0 * sigma / (1.0 + 2.0 * sigma * sigma)
        gsig = tl.where(live, gsig, 0.0)
        tl.atomic_add(dgrad_ptr + lk8.to(tl.int64), w8 * gsig[:, None], mask=live[:, None] & (lk8 >= 0))
        # d out / d pre-activation of each colour channel, spread over the basis.
        gr = tl.where(r + 0.5 > 0, wgt * g_r, 0.0)
        gg = tl.where(g + 0.5 > 0, wgt * g_g, 0.0)
        gbl = tl.where(b + 0.5 > 0, wgt * g_b, 0.0)
        gsel = tl.where(ch[None, :] < K, gr[:, None], tl.where(ch[None, :] < 2 * K, gg[:, None], gbl[:, None]))
        gtile = gsel * bt
        for c in tl.static_range(8):
            lk, wc = _corner(lk8, w8, c)
            m = live & (lk >= 0)
            tl.atomic_add(shgrad_ptr + lk.to(tl.int64)[:, None] * (3 * K) + ch[None, :], wc[:, None] * gtile,
                          mask=m[:, None] & chm[None, :])
        trans = tl.where(live, t_next, trans)
        k += tl.where(active, inc, 0.0)
        t = ts + k * step
        active = active & (t < te) & (trans >= stop_t)
        it += 1


@triton.jit
def _weights_kernel(ray_ptr, links_ptr, dens_ptr, occ_ptr, wmax_ptr, n_rays, R, RC, step, stop_t, max_iter,
                    BS: tl.constexpr, BLOCK: tl.constexpr):
    ray, rmask, ox, oy, oz, dx, dy, dz, ts, te, wps = _block_rays(ray_ptr, n_rays, BLOCK)
    n = R + 1
    delta = step * wps
    trans = tl.full([BLOCK], 1.0, tl.float32)
    k = tl.zeros([BLOCK], dtype=tl.float32)
    t = ts
    active = rmask & (t < te)
    it = 0
    while (tl.max(active.to(tl.int32), axis=0) > 0) & (it < max_iter):
        cx, cy, cz, fx, fy, fz, go, inc = _step(ox, oy, oz, dx, dy, dz, t, active, occ_ptr, R, RC, step, BS)
        lk8, w8, sraw = _density(cx, cy, cz, fx, fy, fz, go, links_ptr, dens_ptr, n)
        live = go & (sraw > 0)
        e = tl.exp(-tl.maximum(sraw, 0.0) * delta)
        wgt = trans * (1.0 - e)
        tl.atomic_max(wmax_ptr + lk8.to(tl.int64), tl.broadcast_to(wgt[:, None], lk8.shape),
                      mask=live[:, None] & (lk8 >= 0))
        trans = tl.where(live, trans * e, trans)
        k += tl.where(active, inc, 0.0)
        t = ts + k * step
        active = active & (t < te) & (trans >= stop_t)
        it += 1


@triton.jit
def _probe(ox, oy, oz, dx, dy, dz, t, active, occ_ptr, bits_ptr, R, RC, step, BS: tl.constexpr):
    """The frame kernel's look at lattice position t: cell coords and fractions, whether the
    cell can hold density (go: its coarse block and then its own bit in the cell mask), and
    for the other lanes the lattice increment past the empty block, or the empty cell, that
    t is in (the rule of _step: the first lattice point past it)."""
    px, cx, fx = _axis(ox, dx, t, R)
    py, cy, fy = _axis(oy, dy, t, R)
    pz, cz, fz = _axis(oz, dz, t, R)
    ix = cx.to(tl.int32)
    iy = cy.to(tl.int32)
    iz = cz.to(tl.int32)
    occ = tl.load(occ_ptr + ((ix // BS) * RC + iy // BS) * RC + iz // BS, mask=active, other=0)
    blk = active & (occ != 0)
    cell = (ix.to(tl.int64) * R + iy) * R + iz
    byte = tl.load(bits_ptr + (cell >> 3), mask=blk, other=0).to(tl.int32)
    go = blk & (((byte >> (cell & 7).to(tl.int32)) & 1) != 0)
    size = tl.where(blk, 1.0, BS * 1.0)
    dist = tl.minimum(tl.minimum(_exit_of(px, cx, dx, size), _exit_of(py, cy, dy, size)), _exit_of(pz, cz, dz, size))
    skip = tl.maximum(tl.ceil(dist / step - 0.01), 1.0)
    return ix, iy, iz, fx, fy, fz, go, skip


@triton.jit
def _exit_of(p, c, d, size):
    """_exit with the box size a per-lane value (a coarse block or a single cell)."""
    b0 = tl.floor(c / size) * size
    far = tl.where(d > 0, b0 + size, b0)
    safe = tl.where(d == 0, 1.0, d)
    return tl.where(d == 0, 1e30, (far - p) / safe)


@triton.jit
def _lane_corner(links_ptr, dens_ptr, idx, wx, wy, wz, go):
    """One corner for a lane's cell: its row (-1 inactive), trilinear weight, weighted density."""
    lk = tl.load(links_ptr + idx, mask=go, other=-1)
    w = wx * wy * wz
    return lk, w, w * tl.load(dens_ptr + lk.to(tl.int64), mask=go & (lk >= 0), other=0.0)


@triton.jit
def _lane_sh(cr, cg, cb, sh_ptr, lk, w, live, j, K: tl.constexpr):
    """Adds corner lk's weighted SH coefficient j of each colour to (cr, cg, cb)."""
    m = live & (lk >= 0)
    row = sh_ptr + lk.to(tl.int64) * (3 * K) + j
    cr += w * tl.load(row, mask=m, other=0.0)
    cg += w * tl.load(row + K, mask=m, other=0.0)
    cb += w * tl.load(row + 2 * K, mask=m, other=0.0)
    return cr, cg, cb


@triton.jit
def _frame_kernel(ray_ptr, basis_ptr, bg_ptr, links_ptr, dens_ptr, sh_ptr, occ_ptr, bits_ptr, out_ptr,
                  n_rays, R, RC, step, stop_t, max_iter,
                  BS: tl.constexpr, K: tl.constexpr, BLOCK: tl.constexpr):
    """_fwd_kernel for renders without gradients: the same samples composited in the same
    order, one ray per thread with every value a per-lane scalar (the tiles of the training
    kernels make each thread repeat the per-ray arithmetic of its rays), lanes first running
    through empty space in a cheap loop (coarse blocks, then single cells of the cell mask,
    which holds the cells that can have positive density), the gathers only where a lane
    sits in such a cell, and the colour gather only when a density is positive. A lane
    stops after max_iter lattice moves of its own (_fwd_kernel's cap counts the program's
    moves; neither is ever reached)."""
    ray, rmask, ox, oy, oz, dx, dy, dz, ts, te, wps = _block_rays(ray_ptr, n_rays, BLOCK)
    n = R + 1
    nn = n * n
    delta = step * wps
    trans, acc_r, acc_g, acc_b, depth, cauchy, k = _accumulators(BLOCK)
    moves = tl.zeros([BLOCK], dtype=tl.int32)
    t = ts
    active = rmask & (t < te)
    while tl.max(active.to(tl.int32), axis=0) > 0:
        ix, iy, iz, fx, fy, fz, go, skip = _probe(ox, oy, oz, dx, dy, dz, t, active, occ_ptr, bits_ptr, R, RC,
                                                  step, BS)
        empty = active & ~go
        while tl.max(empty.to(tl.int32), axis=0) > 0:
            k += tl.where(empty, skip, 0.0)
            moves += empty.to(tl.int32)
            t = ts + k * step
            active = active & (t < te) & (moves < max_iter)
            ix, iy, iz, fx, fy, fz, go, skip = _probe(ox, oy, oz, dx, dy, dz, t, active, occ_ptr, bits_ptr, R,
                                                      RC, step, BS)
            empty = active & ~go
        # Corner c = 4a + 2b + c' sits at (ix + a, iy + b, iz + c'), as in _density.
        base = (ix.to(tl.int64) * n + iy) * n + iz
        gx = 1.0 - fx
        gy = 1.0 - fy
        gz = 1.0 - fz
        l0, w0, s0 = _lane_corner(links_ptr, dens_ptr, base, gx, gy, gz, go)
        l1, w1, s1 = _lane_corner(links_ptr, dens_ptr, base + 1, gx, gy, fz, go)
        l2, w2, s2 = _lane_corner(links_ptr, dens_ptr, base + n, gx, fy, gz, go)
        l3, w3, s3 = _lane_corner(links_ptr, dens_ptr, base + n + 1, gx, fy, fz, go)
        l4, w4, s4 = _lane_corner(links_ptr, dens_ptr, base + nn, fx, gy, gz, go)
        l5, w5, s5 = _lane_corner(links_ptr, dens_ptr, base + nn + 1, fx, gy, fz, go)
        l6, w6, s6 = _lane_corner(links_ptr, dens_ptr, base + nn + n, fx, fy, gz, go)
        l7, w7, s7 = _lane_corner(links_ptr, dens_ptr, base + nn + n + 1, fx, fy, fz, go)
        sraw = s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7
        live = go & (sraw > 0)
        if tl.max(live.to(tl.int32), axis=0) > 0:
            r = tl.zeros([BLOCK], dtype=tl.float32)
            g = tl.zeros([BLOCK], dtype=tl.float32)
            b = tl.zeros([BLOCK], dtype=tl.float32)
            for j in range(K):
                cr = tl.zeros([BLOCK], dtype=tl.float32)
                cg = tl.zeros([BLOCK], dtype=tl.float32)
                cb = tl.zeros([BLOCK], dtype=tl.float32)
                cr, cg, cb = _lane_sh(cr, cg, cb, sh_ptr, l0, w0, live, j, K)
                cr, cg, cb = _lane_sh(cr, cg, cb, sh_ptr, l1, w1, live, j, K)
                cr, cg, cb = _lane_sh(cr, cg, cb, sh_ptr, l2, w2, live, j, K)
                cr, cg, cb = _lane_sh(cr, cg, cb, sh_ptr, l3, w3, live, j, K)
                cr, cg, cb = _lane_sh(cr, cg, cb, sh_ptr, l4, w4, live, j, K)
                cr, cg, cb = _lane_sh(cr, cg, cb, sh_ptr, l5, w5, live, j, K)
                cr, cg, cb = _lane_sh(cr, cg, cb, sh_ptr, l6, w6, live, j, K)
                cr, cg, cb = _lane_sh(cr, cg, cb, sh_ptr, l7, w7, live, j, K)
                bj = tl.load(basis_ptr + ray.to(tl.int64) * K + j, mask=live, other=0.0)
                r += cr * bj
                g += cg * bj
                b += cb * bj
            trans, acc_r, acc_g, acc_b, depth, cauchy = _composite(sraw, live, r, g, b, t, wps, delta, trans,
                                                                   acc_r, acc_g, acc_b, depth, cauchy)
        k += tl.where(active, 1.0, 0.0)
        moves += active.to(tl.int32)
        t = ts + k * step
        active = active & (t < te) & (trans >= stop_t) & (moves < max_iter)
    _store_out(out_ptr, bg_ptr, ray, rmask, acc_r, acc_g, acc_b, trans, depth, cauchy)


@triton.jit
def _store_out(out_ptr, bg_ptr, ray, rmask, acc_r, acc_g, acc_b, trans, depth, cauchy):
    bg_base = bg_ptr + ray.to(tl.int64) * 3
    out = out_ptr + ray.to(tl.int64) * 6
    tl.store(out + 0, acc_r + trans * tl.load(bg_base + 0, mask=rmask, other=0.0), mask=rmask)
    tl.store(out + 1, acc_g + trans * tl.load(bg_base + 1, mask=rmask, other=0.0), mask=rmask)
    tl.store(out + 2, acc_b + trans * tl.load(bg_base + 2, mask=rmask, other=0.0), mask=rmask)
    tl.store(out + 3, depth, mask=rmask)
    tl.store(out + 4, 1.0 - trans, mask=rmask)
    tl.store(out + 5, cauchy, mask=rmask)


# -- launchers ----------------------------------------------------------------------------------
def pack_rays(rays: dict, offset: torch.Tensor, step: float) -> torch.Tensor:
    """(R, 10) float32 rows for the kernels from models.voxel_grid.grid_rays' dict."""
    t_start = rays["t0"] + offset * step
    return torch.cat([rays["o"], rays["d"], t_start[:, None], rays["t1"][:, None], rays["wps"][:, None],
                      torch.zeros_like(t_start)[:, None]], 1).float().contiguous()


def _max_iter(res: int, step: float) -> int:
    # The box diagonal in samples, plus slack for the lattice offset and skips.
    return int(3 ** 0.5 * res / step) + 8


def _grid_args(grid: dict) -> tuple:
    return (grid["links"], grid["density"], grid["sh"], grid["occ"])


def _render(kernel, grid: dict, packed: torch.Tensor, basis: torch.Tensor, background: torch.Tensor,
            step: float, stop_t: float, extra: tuple, block: int, **meta) -> torch.Tensor:
    """Launch a forward-render kernel (R, 6 out) over the packed rays, BLOCK rays a program;
    ``extra`` pointers go between the grid's and the output's."""
    n_rays = packed.shape[0]
    out = torch.empty(n_rays, 6, device=packed.device, dtype=torch.float32)
    if n_rays == 0:
        return out
    links, dens, sh, occ = _grid_args(grid)
    kernel[(triton.cdiv(n_rays, block),)](
        packed, basis.float().contiguous(), background.float().contiguous(), links, dens, sh, occ, *extra,
        out, n_rays, grid["res"], occ.shape[0], float(step), float(stop_t), _max_iter(grid["res"], step),
        BS=grid["block"], K=basis.shape[1], BLOCK=block, **meta)
    return out


def render_forward(grid: dict, packed: torch.Tensor, basis: torch.Tensor, background: torch.Tensor,
                   step: float, stop_t: float) -> torch.Tensor:
    """(R, 6): r, g, b (background included), depth (world), acc, cauchy."""
    return _render(_fwd_kernel, grid, packed, basis, background, step, stop_t, (), BLOCK,
                   CH=triton.next_power_of_2(3 * basis.shape[1]), num_warps=NUM_WARPS)


def render_frame(grid: dict, packed: torch.Tensor, basis: torch.Tensor, background: torch.Tensor,
                 step: float, stop_t: float) -> torch.Tensor:
    """render_forward's output without gradients, through _frame_kernel. grid additionally
    holds "bits" (pack_bits of voxel_grid.positive_cells), and its "occ" / "block" are the
    coarse blocks of those cells (models.plenoxels builds and caches them per frame grid)."""
    return _render(_frame_kernel, grid, packed, basis, background, step, stop_t, (grid["bits"],), FRAME_BLOCK,
                   num_warps=FRAME_WARPS, **({"maxnreg": FRAME_MAXNREG} if FRAME_MAXNREG else {}))


def render_backward(grid: dict, packed: torch.Tensor, basis: torch.Tensor, out: torch.Tensor,
                    grad: torch.Tensor, dgrad: torch.Tensor, shgrad: torch.Tensor, step: float,
                    stop_t: float) -> None:
    """Adds d loss / d density and d loss / d SH into dgrad (M, 1) and shgrad (M, 3K), given
    the forward output (R, 6) and grad (R, 4): d loss / d (r, g, b, cauchy)."""
    n_rays = packed.shape[0]
    if n_rays == 0:
        return
    links, dens, sh, occ = _grid_args(grid)
    k = basis.shape[1]
    _bwd_kernel[(triton.cdiv(n_rays, BLOCK),)](
        packed, basis.float().contiguous(), links, dens, sh, occ, out, grad.float().contiguous(), dgrad, shgrad,
        n_rays, grid["res"], occ.shape[0], float(step), float(stop_t), _max_iter(grid["res"], step),
        BS=grid["block"], K=k, CH=triton.next_power_of_2(3 * k), BLOCK=BLOCK, num_warps=NUM_WARPS)


def max_weights(grid: dict, packed: torch.Tensor, step: float, stop_t: float, wmax: torch.Tensor) -> None:
    """Raises wmax (M,) to the largest rendering weight of any sample in a cell each row's
    vertex is a corner of (the reference: models.voxel_grid.max_weights_reference)."""
    n_rays = packed.shape[0]
    if n_rays == 0:
        return
    links, dens, _, occ = _grid_args(grid)
    _weights_kernel[(triton.cdiv(n_rays, BLOCK),)](
        packed, links, dens, occ, wmax, n_rays, grid["res"], occ.shape[0], float(step), float(stop_t),
        _max_iter(grid["res"], step), BS=grid["block"], BLOCK=BLOCK, num_warps=NUM_WARPS)


class GridRender(torch.autograd.Function):
    """rgb, depth, acc, cauchy (R,) of packed rays through the grid. Only rgb and cauchy carry
    gradients; they go into density.grad and sh.grad in place (see the module docstring)."""

    @staticmethod
    def forward(ctx, density, sh, packed, basis, background, grid, step, stop_t):
        out = render_forward(grid, packed, basis, background, step, stop_t)
        ctx.save_for_backward(packed, basis, out)
        ctx.params, ctx.grid, ctx.step, ctx.stop_t = (density, sh), grid, step, stop_t
        rgb, depth, acc, cauchy = out[:, :3].clone(), out[:, 3].clone(), out[:, 4].clone(), out[:, 5].clone()
        ctx.mark_non_differentiable(depth, acc)
        return rgb, depth, acc, cauchy

    @staticmethod
    def backward(ctx, g_rgb, g_depth, g_acc, g_cauchy):
        packed, basis, out = ctx.saved_tensors
        n = packed.shape[0]
        grad = torch.zeros(n, 4, device=packed.device)
        if g_rgb is not None:
            grad[:, :3] = g_rgb
        if g_cauchy is not None:
            grad[:, 3] = g_cauchy
        from models.voxel_grid import grad_buffer
        density, sh = ctx.params
        render_backward(ctx.grid, packed, basis, out, grad, grad_buffer(density), grad_buffer(sh),
                        ctx.step, ctx.stop_t)
        return None, None, None, None, None, None, None, None
