"""Triton packed ray marching; reference: renderer.occupancy.march_rays_torch.

One program per ray; its candidate steps are the lanes of a block, so each
block tests BLOCK steps against the occupancy grid at once and compacts the
occupied ones with a prefix sum. Two launches: count, then (after an exclusive
scan of the counts gives each ray its offset) write. Floating-point fusion is
off so every sample position, and hence every cell decision, is bit-identical
to the torch reference's separately rounded multiply and add.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 256


@triton.jit
def _load_ray(o_ptr, d_ptr, r):
    """Ray r's origin and direction, from (R, 3) buffers."""
    return (tl.load(o_ptr + r * 3), tl.load(o_ptr + r * 3 + 1), tl.load(o_ptr + r * 3 + 2),
            tl.load(d_ptr + r * 3), tl.load(d_ptr + r * 3 + 1), tl.load(d_ptr + r * 3 + 2))


@triton.jit
def _march_kernel(o_ptr, d_ptr, s0_ptr, s1_ptr, j_ptr, occ_ptr, offs_ptr, cnt_ptr, s_out, r_out,
                  dt, inv_dt, bound, inv_cell, res,
                  MAX_STEPS: tl.constexpr, WRITE: tl.constexpr, BLOCK: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    ox, oy, oz, dx, dy, dz = _load_ray(o_ptr, d_ptr, r)
    s0 = tl.load(s0_ptr + r)
    s1 = tl.load(s1_ptr + r)
    jit = tl.load(j_ptr + r)
    n_f = tl.ceil((s1 - s0) * inv_dt)
    n_f = tl.minimum(tl.maximum(n_f, 0.0), MAX_STEPS * 1.0)
    n = n_f.to(tl.int32)
    if WRITE:
        base = tl.load(offs_ptr + r)
        # Rays dropped by the sample budget (count 0) write nothing.
        n = tl.where(tl.load(cnt_ptr + r) > 0, n, 0)
    total = tl.zeros((), dtype=tl.int32)
    # A fixed trip count with a branch, rather than range(0, n): the Triton interpreter
    # (used to test this kernel on CPU) cannot take a loaded value as a loop bound.
    for k0 in range(0, MAX_STEPS, BLOCK):
        if k0 < n:
            k = k0 + tl.arange(0, BLOCK)
            s = s0 + (k.to(tl.float32) + jit) * dt
            valid = (k < n) & (s < s1)
            cx = tl.floor(((ox + dx * s) + bound) * inv_cell).to(tl.int32)
            cy = tl.floor(((oy + dy * s) + bound) * inv_cell).to(tl.int32)
            cz = tl.floor(((oz + dz * s) + bound) * inv_cell).to(tl.int32)
            cx = tl.minimum(tl.maximum(cx, 0), res - 1)
            cy = tl.minimum(tl.maximum(cy, 0), res - 1)
            cz = tl.minimum(tl.maximum(cz, 0), res - 1)
            cell = (cx * res + cy) * res + cz
            occ = tl.load(occ_ptr + cell, mask=valid, other=0)
            valid = valid & (occ != 0)
            vi = valid.to(tl.int32)
            if WRITE:
                pos = base + (total + tl.cumsum(vi, 0) - vi).to(tl.int64)
                tl.store(s_out + pos, s, mask=valid)
                tl.store(r_out + pos, r, mask=valid)
            total += tl.sum(vi, 0)
    if not WRITE:
        tl.store(cnt_ptr + r, total)


def _launch_pair(rays_o, dirs, s_start, s_end, occ, bound, res, dt, max_steps, jitter, fit, alloc):
    """Count launch, ``fit(raw counts (R,) int64) -> (counts, fits)``, then the write launch
    into the (ray_ids, s) buffers that ``alloc(counts, offsets)`` returns."""
    n_rays = rays_o.shape[0]
    dev = rays_o.device
    o = rays_o.float().contiguous()
    d = dirs.float().contiguous()
    s0 = s_start.float().contiguous()
    s1 = s_end.float().contiguous()
    j = jitter.float().contiguous()
    occ = occ.contiguous()
    args = (float(dt), float(1.0 / dt), float(bound), float(res / (2.0 * bound)), int(res))
    counts32 = torch.empty(n_rays, dtype=torch.int32, device=dev)
    dummy_f = torch.empty(1, device=dev)
    dummy_i = torch.empty(1, dtype=torch.int64, device=dev)
    _march_kernel[(n_rays,)](o, d, s0, s1, j, occ, dummy_i, counts32, dummy_f, dummy_i, *args,
                             MAX_STEPS=int(max_steps), WRITE=False, BLOCK=BLOCK, num_warps=4,
                             enable_fp_fusion=False)
    raw = counts32.long()
    counts, fits = fit(raw)
    offsets = torch.cumsum(counts, 0) - counts
    r_out, s_out = alloc(counts, offsets)
    if r_out.numel() > 0:
        _march_kernel[(n_rays,)](o, d, s0, s1, j, occ, offsets, counts, s_out, r_out, *args,
                                 MAX_STEPS=int(max_steps), WRITE=True, BLOCK=BLOCK, num_warps=4,
                                 enable_fp_fusion=False)
    return raw, counts, fits, offsets, r_out, s_out


def march_rays_triton(rays_o, dirs, s_start, s_end, occ, bound, res, dt, max_steps, jitter,
                      max_samples=None) -> dict[str, torch.Tensor]:
    """Same contract as renderer.occupancy.march_rays_torch."""
    from renderer.occupancy import _fit_budget

    dev = rays_o.device
    if rays_o.shape[0] == 0:
        e = torch.zeros(0, dtype=torch.int64, device=dev)
        return {"ray_ids": e, "s": torch.zeros(0, device=dev), "offsets": e, "counts": e,
                "fits": e.bool()}

    def alloc(counts, offsets):
        total = int((offsets[-1] + counts[-1]).item())  # the one host sync of this path
        return (torch.empty(total, dtype=torch.int64, device=dev), torch.empty(total, device=dev))

    _, counts, fits, offsets, r_out, s_out = _launch_pair(
        rays_o, dirs, s_start, s_end, occ, bound, res, dt, max_steps, jitter,
        lambda raw: _fit_budget(raw, max_samples), alloc)
    return {"ray_ids": r_out, "s": s_out, "offsets": offsets, "counts": counts, "fits": fits}


def march_rays_triton_static(rays_o, dirs, s_start, s_end, occ, bound, res, dt, max_steps, jitter,
                             capacity: int) -> dict[str, torch.Tensor]:
    """Same contract as renderer.occupancy.march_rays_static (R >= 1): the same two launches,
    but the write goes into a ``capacity``-slot buffer, so nothing waits for the count."""
    from renderer.occupancy import _fit_budget

    n_rays = rays_o.shape[0]
    dev = rays_o.device

    def alloc(counts, offsets):
        return (torch.full((capacity,), n_rays, dtype=torch.int64, device=dev),
                torch.zeros(capacity, device=dev))

    raw, counts, fits, _, r_out, s_out = _launch_pair(
        rays_o, dirs, s_start, s_end, occ, bound, res, dt, max_steps, jitter,
        lambda raw: _fit_budget(raw, capacity), alloc)
    return {"ray_ids": r_out, "s": s_out, "fits": fits, "marched": raw.sum(), "kept": counts.sum()}


@triton.jit
def _lindisp_inverse(g):
    """renderer.proposal.lindisp_inverse."""
    far = 0.5 / (1.0 - tl.minimum(tl.maximum(g, 0.5), 1.0 - 1e-7))
    return tl.where(g < 0.5, 2.0 * g, far)


@triton.jit
def _march_contracted_kernel(o_ptr, d_ptr, g0_ptr, h_ptr, j_ptr, occ_ptr, offs_ptr, cnt_ptr, t_out, dt_out,
                             r_out, inv_cell, res, N_STEPS: tl.constexpr, ORDER: tl.constexpr,
                             WRITE: tl.constexpr, BLOCK: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    ox, oy, oz, dx, dy, dz = _load_ray(o_ptr, d_ptr, r)
    g0 = tl.load(g0_ptr + r)
    h = tl.load(h_ptr + r)
    jit = tl.load(j_ptr + r)
    if WRITE:
        base = tl.load(offs_ptr + r)
    total = tl.zeros((), dtype=tl.int32)
    for k0 in range(0, N_STEPS, BLOCK):
        kf = (k0 + tl.arange(0, BLOCK)).to(tl.float32)
        valid = (k0 + tl.arange(0, BLOCK)) < N_STEPS
        t = _lindisp_inverse(g0 + (kf + jit) * h)
        px = ox + dx * t
        py = oy + dy * t
        pz = oz + dz * t
        if ORDER == 0:
            n = tl.maximum(tl.maximum(tl.abs(px), tl.abs(py)), tl.abs(pz))
        else:
            n = tl.sqrt(px * px + py * py + pz * pz)
        safe = tl.maximum(n, 1.0)
        f = tl.where(n <= 1.0, 1.0, 2.0 - 1.0 / safe)
        cx = tl.floor((tl.where(n <= 1.0, px, f * (px / safe)) + 2.0) * inv_cell).to(tl.int32)
        cy = tl.floor((tl.where(n <= 1.0, py, f * (py / safe)) + 2.0) * inv_cell).to(tl.int32)
        cz = tl.floor((tl.where(n <= 1.0, pz, f * (pz / safe)) + 2.0) * inv_cell).to(tl.int32)
        cx = tl.minimum(tl.maximum(cx, 0), res - 1)
        cy = tl.minimum(tl.maximum(cy, 0), res - 1)
        cz = tl.minimum(tl.maximum(cz, 0), res - 1)
        occ = tl.load(occ_ptr + (cx * res + cy) * res + cz, mask=valid, other=0)
        valid = valid & (occ != 0)
        vi = valid.to(tl.int32)
        if WRITE:
            pos = base + (total + tl.cumsum(vi, 0) - vi).to(tl.int64)
            dt = _lindisp_inverse(g0 + (kf + 1.0) * h) - _lindisp_inverse(g0 + kf * h)
            tl.store(t_out + pos, t, mask=valid)
            tl.store(dt_out + pos, dt, mask=valid)
            tl.store(r_out + pos, r, mask=valid)
        total += tl.sum(vi, 0)
    if not WRITE:
        tl.store(cnt_ptr + r, total)


def march_contracted_triton(rays_o, dirs, t0, t1, occ, res, order, n_steps, jitter) -> dict[str, torch.Tensor]:
    """Same contract as renderer.contracted_march.march_contracted_torch: a count launch, an
    exclusive scan for the offsets, a write launch."""
    from renderer.contracted_march import BOUND, ORDER_CODES, step_spacing

    n_rays, dev = rays_o.shape[0], rays_o.device
    e = torch.zeros(0, dtype=torch.int64, device=dev)
    if n_rays == 0:
        return {"ray_ids": e, "t": e.float(), "dt": e.float(), "offsets": e, "counts": e}
    g0, h = step_spacing(t0, t1, n_steps)
    o, d = rays_o.float().contiguous(), dirs.float().contiguous()
    g0, h, j, occ = g0.contiguous(), h.contiguous(), jitter.float().contiguous(), occ.contiguous()
    consts = dict(N_STEPS=int(n_steps), ORDER=ORDER_CODES[order], BLOCK=BLOCK, num_warps=4,
                  enable_fp_fusion=False)
    cell = (float(res / (2.0 * BOUND)), int(res))
    counts32 = torch.empty(n_rays, dtype=torch.int32, device=dev)
    dummy_f = torch.empty(1, device=dev)
    _march_contracted_kernel[(n_rays,)](o, d, g0, h, j, occ, e, counts32, dummy_f, dummy_f, e, *cell,
                                        WRITE=False, **consts)
    counts = counts32.long()
    offsets = torch.cumsum(counts, 0) - counts
    total = int((offsets[-1] + counts[-1]).item())  # the one host sync
    ray_ids = torch.empty(total, dtype=torch.int64, device=dev)
    t_out, dt_out = torch.empty(total, device=dev), torch.empty(total, device=dev)
    if total > 0:
        _march_contracted_kernel[(n_rays,)](o, d, g0, h, j, occ, offsets, counts32, t_out, dt_out, ray_ids,
                                            *cell, WRITE=True, **consts)
    return {"ray_ids": ray_ids, "t": t_out, "dt": dt_out, "offsets": offsets, "counts": counts}
