"""Triton: one proposal level of nerfacto's sampling in one pass, without gradients.

For each ray and each of its n intervals (edges u in the lindisp spacing): the interval's
distances, its midpoint, mip-NeRF 360's contraction into the hash grid's cube, the
proposal net (a hash encoding of a few levels with two features each, then a
one-hidden-layer ReLU MLP to the log-density), the density and the interval's
compositing weight. The torch path (NerfactoField._proposal_weights) makes about a dozen
passes over the R x n points and writes each intermediate (positions, features, hidden
units) to memory, and a render's first level alone has 256 points per ray. Here a
point's numbers stay in registers and only the weights are written. The MLP runs in
float32 (the torch path's runs in bf16 under autocast).

One program takes BR rays with all their intervals as a (BR, NP) tile (NP the next power
of two of n), so that the transmittance is a cumulative sum along the tile's rows. The
tile holds one point per thread: at two points a thread the compiler gives each thread
all 255 registers and spills (the hidden layer is a (BR, NP, H) tile), so a
multiprocessor holds one program, with nothing to hide the table reads behind
(docs/real_scenes.md, fifteenth session). And one ray a program (BR = 1 from 32
intervals up, NP / 32 warps): a render's second level (96 intervals, NP 128) ran
faster on 4 warps with one ray than on 8 warps with two (docs/real_scenes.md,
seventeenth session).
Reference: the torch path (tests/test_proposal_kernel.py, through Triton's interpreter).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from models.kernels.hash_encode import _level_features, dense_levels

MAX_WARPS = 16


@triton.jit
def _lindisp_inverse(g):
    """renderer.proposal.lindisp_inverse."""
    return tl.where(g < 0.5, 2.0 * g, 0.5 / (1.0 - tl.minimum(tl.maximum(g, 0.5), 1.0 - 1e-7)))


@triton.jit
def _along(o_ptr, d_ptr, rays, rm, t, axis: tl.constexpr):
    """Coordinate ``axis`` of the points o + t d, (BR, NP)."""
    o = tl.load(o_ptr + rays * 3 + axis, mask=rm, other=0.0)
    d = tl.load(d_ptr + rays * 3 + axis, mask=rm, other=0.0)
    return o[:, None] + d[:, None] * t


@triton.jit
def _contracted01(px, py, pz, INF: tl.constexpr):
    """renderer.contraction.contract (L-inf norm where INF, else L2), then to_unit_cube."""
    if INF:
        nrm = tl.maximum(tl.maximum(tl.abs(px), tl.abs(py)), tl.abs(pz))
    else:
        nrm = tl.sqrt(px * px + py * py + pz * pz)
    safe = tl.maximum(nrm, 1.0)
    s = tl.where(nrm <= 1.0, 1.0, (2.0 - 1.0 / safe) / safe)
    return (px * s + 2.0) * 0.25, (py * s + 2.0) * 0.25, (pz * s + 2.0) * 0.25


@triton.jit
def _proposal_fwd(o_ptr, d_ptr, g0_ptr, gs_ptr, u_ptr, table_ptr, res_ptr, off_ptr,
                  w1_ptr, b1_ptr, w2_ptr, b2_ptr, w_ptr, R, n, mask_t,
                  L: tl.constexpr, DENSE: tl.constexpr, H: tl.constexpr, INF: tl.constexpr, BR: tl.constexpr,
                  NP: tl.constexpr):
    rays = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR)
    k = tl.arange(0, NP)
    rm = rays < R
    m = rm[:, None] & (k[None, :] < n)
    g0 = tl.load(g0_ptr + rays, mask=rm, other=0.0)[:, None]
    gs = tl.load(gs_ptr + rays, mask=rm, other=0.0)[:, None]
    ub = u_ptr + rays[:, None] * (n + 1) + k[None, :]
    ta = _lindisp_inverse(g0 + tl.load(ub, mask=m, other=0.0) * gs)
    tb = _lindisp_inverse(g0 + tl.load(ub + 1, mask=m, other=0.0) * gs)
    mid = 0.5 * (ta + tb)
    px = _along(o_ptr, d_ptr, rays, rm, mid, 0)
    py = _along(o_ptr, d_ptr, rays, rm, mid, 1)
    pz = _along(o_ptr, d_ptr, rays, rm, mid, 2)
    x, y, z = _contracted01(px, py, pz, INF)
    j = tl.arange(0, H)
    hid = tl.zeros((BR, NP, H), dtype=tl.float32) + tl.load(b1_ptr + j)[None, None, :]
    for lvl in tl.static_range(L):
        f0, f1 = _level_features(table_ptr, x, y, z, tl.load(res_ptr + lvl), tl.load(off_ptr + lvl), mask_t, m,
                                 lvl < DENSE)
        hid += f0[:, :, None] * tl.load(w1_ptr + j * (2 * L) + 2 * lvl)[None, None, :]
        hid += f1[:, :, None] * tl.load(w1_ptr + j * (2 * L) + 2 * lvl + 1)[None, None, :]
    hid = tl.maximum(hid, 0.0)
    log_sigma = tl.sum(hid * tl.load(w2_ptr + j)[None, None, :], 2) + tl.load(b2_ptr)
    # sigma * delta, capped where exp(-x) is 0 in float32 anyway: an infinite density
    # would make the exclusive sum below (the inclusive one less the term) inf - inf.
    sd = tl.where(m, tl.minimum(tl.exp(log_sigma) * (tb - ta), 1e4), 0.0)
    trans = tl.exp(-(tl.cumsum(sd, 1) - sd))
    tl.store(w_ptr + rays[:, None] * n + k[None, :], (1.0 - tl.exp(-sd)) * trans, mask=m)


def supports(net) -> bool:
    """Whether the kernel can evaluate this HashDensity: two features per level, one
    hidden layer of a power-of-two width, one output."""
    enc, mlp = net.encoding, net.mlp
    h = mlp[0].out_features
    return (enc.table.shape[1] == 2 and len(mlp) == 3 and mlp[2].out_features == 1
            and h & (h - 1) == 0 and mlp[0].in_features == enc.out_dim)


def block_shape(n: int) -> tuple[int, int]:
    """(points a program holds, warps) for rays of n intervals: one ray a program, one
    point a thread (several short rays share a warp; a very long ray has two points a
    thread past MAX_WARPS warps)."""
    pts = max(32, triton.next_power_of_2(n))
    return pts, min(MAX_WARPS, pts // 32)


def proposal_weights_triton(net, o: torch.Tensor, dirs: torch.Tensor, u: torch.Tensor, g0: torch.Tensor,
                            g1: torch.Tensor, contraction, points_per_program: int | None = None,
                            num_warps: int | None = None) -> torch.Tensor:
    """Compositing weights (R, n) float32 of proposal net ``net`` (models.nerfacto.HashDensity)
    on the intervals ``u`` (R, n + 1) in the lindisp spacing of rays o + t dirs (normalised
    frame, unit dirs) whose spacing runs from g0 to g1 (R, 1): the torch path's result.
    The block shape (points a program holds, its warps; ``block_shape`` unless given) is
    open to bench/bench_kernels.py."""
    enc, lin1, lin2 = net.encoding, net.mlp[0], net.mlp[2]
    n_rays, n = u.shape[0], u.shape[1] - 1
    w = torch.empty(n_rays, n, device=u.device, dtype=torch.float32)
    if n_rays == 0:
        return w
    np2 = triton.next_power_of_2(n)
    pts, warps = block_shape(n)
    br = max(1, (points_per_program or pts) // np2)
    f32 = lambda t: t.detach().float().contiguous()  # noqa: E731
    _proposal_fwd[(triton.cdiv(n_rays, br),)](
        f32(o), f32(dirs), f32(g0.reshape(-1)), f32((g1 - g0).reshape(-1)), f32(u), enc.table.detach().contiguous(),
        enc.res_t, enc.off_t, f32(lin1.weight), f32(lin1.bias), f32(lin2.weight), f32(lin2.bias),
        w, n_rays, n, (1 << enc.log2_hashmap_size) - 1, L=len(enc.resolutions), DENSE=dense_levels(enc),
        H=lin1.out_features, INF=contraction == "inf", BR=br, NP=np2, num_warps=num_warps or warps)
    return w
