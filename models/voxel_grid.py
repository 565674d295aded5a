"""Sparse voxel grids (Plenoxels, svox2): pure building blocks, each tested on its own.

A grid has R cells per axis over a box, so n = R + 1 vertices per axis; values live on
vertices and are interpolated trilinearly inside each cell. Only *active* vertices hold
values: ``links`` (n, n, n) int32 maps a vertex to its row in packed parameter arrays
(M, C), or -1 for an inactive vertex, which reads as 0 (svox2's layout). A 512^3 grid
is then 0.5 GB of links plus M rows, where a dense grid of 28 floats a vertex would be
15 GB.

Coordinates here are *grid units*: vertex (i, j, k) sits at (i, j, k), cell (i, j, k)
spans [i, i+1) x [j, j+1) x [k, k+1). ``grid_rays`` maps world rays into them.

The reference renderer (``render_reference``) is the CPU path and what the Triton
kernels (models/kernels/plenoxel_render.py) are tested against; both take their samples
on the same lattice t0 + (k + offset) * step, so they see the same samples.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from renderer.occupancy import ray_aabb

# Offsets (8, 3) of a cell's corners; corner c = (i, j, k) with bit pattern c = 4i + 2j + k.
CORNERS = torch.tensor([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)])


# -- interpolation ------------------------------------------------------------------------
def trilinear_corners(p: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Corner vertices and trilinear weights for points p (N, 3) in grid units.

    p's coordinates run over [0, n - 1] on a grid of n^3 vertices (values outside are
    clamped onto the boundary cell's faces). Returns flat vertex indices (N, 8),
    index = (i * n + j) * n + k, and weights (N, 8) summing to 1.
    """
    base = p.floor().clamp(0, n - 2)
    frac = (p - base).clamp(0.0, 1.0)
    base = base.long()
    offs = CORNERS.to(p.device)
    c = base[:, None, :] + offs  # (N, 8, 3)
    idx = (c[..., 0] * n + c[..., 1]) * n + c[..., 2]
    w = torch.where(offs.bool(), frac[:, None, :], 1.0 - frac[:, None, :]).prod(-1)
    return idx, w


def corner_rows(links: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Active rows (N, 8) and weights (N, 8) of points p (N, 3) in grid units; inactive
    corners get weight 0 and row 0 (any valid row may stand in for them)."""
    idx, w = trilinear_corners(p, links.shape[0])
    rows = links.reshape(-1)[idx].long()
    live = rows >= 0
    return rows.clamp(min=0), w * live.to(w.dtype)


class _Interpolate(torch.autograd.Function):
    """Weighted 8-corner gather whose backward writes ONE (M, C) gradient (plain indexing
    would give every corner's gather its own dense zero-filled gradient)."""

    @staticmethod
    def forward(ctx, data, rows, w):
        out = torch.zeros(rows.shape[0], data.shape[1], dtype=data.dtype, device=data.device)
        for c in range(rows.shape[1]):
            out.addcmul_(data.index_select(0, rows[:, c]), w[:, c:c + 1])
        ctx.save_for_backward(rows, w)
        ctx.n_rows = data.shape[0]
        return out

    @staticmethod
    def backward(ctx, grad_out):
        rows, w = ctx.saved_tensors
        grad = torch.zeros(ctx.n_rows, grad_out.shape[1], dtype=grad_out.dtype, device=grad_out.device)
        for c in range(rows.shape[1]):
            grad.index_add_(0, rows[:, c], grad_out * w[:, c:c + 1])
        return grad, None, None


def interpolate(data: torch.Tensor, rows: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum_c w[:, c] * data[rows[:, c]] -> (N, C) for data (M, C), rows/w (N, 8)."""
    return _Interpolate.apply(data, rows, w.to(data.dtype))


# -- structure: links, occupancy, dilation, upsampling -------------------------------------
def build_links(active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(links (n, n, n) int32, vertices (M,) int64) for an active mask (n, n, n): rows are
    numbered in flat vertex order, vertices[r] is row r's flat vertex index."""
    flat = active.reshape(-1)
    vertices = flat.nonzero().squeeze(1)
    links = torch.full(flat.shape, -1, dtype=torch.int32, device=flat.device)
    links[vertices] = torch.arange(vertices.numel(), dtype=torch.int32, device=flat.device)
    return links.view(active.shape), vertices


def row_vertices(links: torch.Tensor) -> torch.Tensor:
    """Inverse of links: flat vertex index (M,) of each row."""
    flat = links.reshape(-1).long()
    active = (flat >= 0).nonzero().squeeze(-1)
    out = torch.empty(int(active.numel()), dtype=torch.long, device=links.device)
    out[flat[active]] = active
    return out


def _or_neighbours(m: torch.Tensor, dim: int) -> torch.Tensor:
    out = m.clone()
    n = m.shape[dim]
    out.narrow(dim, 1, n - 1).logical_or_(m.narrow(dim, 0, n - 1))
    out.narrow(dim, 0, n - 1).logical_or_(m.narrow(dim, 1, n - 1))
    return out


def dilate(mask: torch.Tensor, iterations: int = 1) -> torch.Tensor:
    """Grow a (n, n, n) bool mask by one vertex (26-neighbourhood) per iteration. The box
    maximum is separable, so three boolean passes do it (a float max_pool3d of a 513^3
    grid would take 1 GB)."""
    for _ in range(iterations):
        for dim in range(3):
            mask = _or_neighbours(mask, dim)
    return mask


def cells_touching(vertices: torch.Tensor) -> torch.Tensor:
    """(n-1)^3 bool for a vertex mask (n, n, n): the cells with one of their 8 corners set."""
    a = vertices
    for dim in range(3):
        n = a.shape[dim]
        a = a.narrow(dim, 0, n - 1) | a.narrow(dim, 1, n - 1)
    return a


def cell_occupancy(links: torch.Tensor) -> torch.Tensor:
    """(n-1)^3 bool: a cell can hold density only if one of its 8 corners is active."""
    return cells_touching(links >= 0)


def positive_cells(links: torch.Tensor, row_vertex: torch.Tensor, density: torch.Tensor) -> torch.Tensor:
    """(n-1)^3 bool: the cells with a corner of positive raw density (row_vertex from
    row_vertices(links), density (M,) or (M, 1)). Elsewhere the trilinear density is a
    non-negative mix of values <= 0, so sigma = ReLU is 0 at every point of the cell: a
    render may skip such cells without changing a pixel (the frame kernel does)."""
    mask = torch.zeros(links.numel(), dtype=torch.bool, device=links.device)
    mask[row_vertex[density.reshape(-1) > 0]] = True
    return cells_touching(mask.view(links.shape))


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A bool tensor as uint8 bits in flat order: bit i % 8 of byte i // 8 is element i (a
    512^3 cell mask in 16 MB, small enough to stay in a GPU's L2 cache)."""
    flat = mask.reshape(-1)
    pad = -flat.numel() % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    b = flat.view(-1, 8).to(torch.uint8)
    out = b[:, 0].clone()
    for i in range(1, 8):
        out |= b[:, i] << i
    return out


def coarse_occupancy(cells: torch.Tensor, block: int) -> torch.Tensor:
    """(ceil(R / block))^3 uint8: which blocks of block^3 cells hold any occupied cell (the
    kernels skip empty blocks in one stride instead of sample by sample)."""
    r = cells.shape[0]
    rc = -(-r // block)
    pad = rc * block - r
    c = F.pad(cells, (0, pad, 0, pad, 0, pad)) if pad else cells
    return c.view(rc, block, rc, block, rc, block).any(5).any(3).any(1).to(torch.uint8)


def upsample_support(active: torch.Tensor) -> torch.Tensor:
    """Vertices (2n-1)^3 of the doubled grid whose interpolated value can be non-zero: old
    vertex v sits at 2v, and a new vertex interpolates from the old ones within one step
    along each axis, so this is the dilation of the old mask placed at even positions."""
    n = active.shape[0]
    u = torch.zeros((2 * n - 1,) * 3, dtype=torch.bool, device=active.device)
    u[::2, ::2, ::2] = active
    return dilate(u, 1)


@torch.no_grad()
def resample(links: torch.Tensor, data: list[torch.Tensor], vertices: torch.Tensor, n_new: int,
             chunk: int = 1 << 22) -> list[torch.Tensor]:
    """Values of ``data`` (each (M, C), on ``links``' grid) at the vertices (K,) (flat
    indices) of the grid with n_new = 2n - 1 vertices per axis that doubles it.

    The old grid's trilinear field is reproduced exactly: every new vertex lies on an old
    cell's corner, edge, face or centre, where the interpolant is what a doubled grid
    interpolates again. Chunked so a 512^3 resample stays within a few GB."""
    outs = [torch.empty(vertices.shape[0], d.shape[1], device=d.device) for d in data]
    for s in range(0, vertices.shape[0], chunk):
        v = vertices[s:s + chunk]
        p = torch.stack([v // (n_new * n_new), (v // n_new) % n_new, v % n_new], -1).float() * 0.5
        rows, w = corner_rows(links, p)
        for d, o in zip(data, outs):
            o[s:s + chunk] = interpolate(d, rows, w)
    return outs


# -- rays ---------------------------------------------------------------------------------
def grid_rays(rays_o: torch.Tensor, rays_d: torch.Tensor, near, far, lo: torch.Tensor,
              hi: torch.Tensor, res: int) -> dict[str, torch.Tensor]:
    """World rays (R, 3) (rays_d of any length; near/far in its units) -> grid-space rays.

    Returns o, d (R, 3) origin and UNIT direction in grid units, t0, t1 (R,) the segment
    inside the box and [near, far] in grid units along d (t1 <= t0: a miss), wps (R,) world
    length per grid unit along the ray, dirs (R, 3) unit world directions and d_norm (R,).
    """
    d_norm = rays_d.norm(dim=-1)
    dirs = rays_d / d_norm[:, None]
    t_in, t_out = ray_aabb(rays_o, dirs, lo, hi)
    near_w = torch.as_tensor(near, dtype=dirs.dtype, device=dirs.device) * d_norm
    far_w = torch.as_tensor(far, dtype=dirs.dtype, device=dirs.device) * d_norm
    t_in, t_out = torch.maximum(t_in, near_w), torch.minimum(t_out, far_w)
    scale = res / (hi - lo)
    dg = dirs * scale
    length = dg.norm(dim=-1)
    hit = t_out > t_in
    t0 = torch.where(hit, t_in * length, torch.zeros_like(t_in))
    t1 = torch.where(hit, t_out * length, torch.zeros_like(t_in))
    return {"o": (rays_o - lo) * scale, "d": dg / length[:, None], "t0": t0, "t1": t1,
            "wps": 1.0 / length, "dirs": dirs, "d_norm": d_norm}


def sample_lattice(t0: torch.Tensor, t1: torch.Tensor, offset: torch.Tensor, step: float):
    """t (R, S) = t0 + (k + offset) * step for k < S, and valid (R, S) = t < t1."""
    span = (t1 - t0).clamp(min=0.0)
    n = max(1, int(math.ceil(float(span.max()) / step)) + 1) if span.numel() else 1
    k = torch.arange(n, device=t0.device, dtype=t0.dtype)
    t = t0[:, None] + (k[None, :] + offset[:, None]) * step
    return t, t < t1[:, None]


# -- the reference renderer ------------------------------------------------------------------
def occupied_samples(rays: dict, offset: torch.Tensor, step: float, cells: torch.Tensor):
    """The lattice of grid_rays' rays restricted to occupied cells: t (R, S), sel (N, 2) the
    (ray, sample) index of each sample in an occupied cell, pts (N, 3) its position."""
    t, valid = sample_lattice(rays["t0"], rays["t1"], offset, step)
    sel = valid.nonzero()
    pts = rays["o"][sel[:, 0]] + rays["d"][sel[:, 0]] * t[sel[:, 0], sel[:, 1]][:, None]
    c = pts.floor().clamp(0, cells.shape[0] - 1).long()
    keep = cells[c[:, 0], c[:, 1], c[:, 2]]
    return t, sel[keep], pts[keep]


def _transmittance(sig: torch.Tensor, delta: torch.Tensor, stop_t: float):
    """(sd, T before each sample, live) for densities sig (R, S): live samples have sigma > 0
    and T >= stop_t in front of them (the kernels' early termination)."""
    with torch.no_grad():
        sd = sig * delta
        t_before = torch.exp(-(torch.cumsum(sd, -1) - sd))
        live = (sig > 0) & (t_before >= stop_t)
    return sd, t_before, live


def render_reference(links: torch.Tensor, density: torch.Tensor, sh: torch.Tensor, cells: torch.Tensor,
                     rays: dict, offset: torch.Tensor, step: float, stop_t: float, basis: torch.Tensor,
                     background: torch.Tensor) -> dict[str, torch.Tensor]:
    """Volume-render grid-space rays (from grid_rays) through a sparse grid, in torch.

    density (M, 1) raw (sigma = ReLU), sh (M, 3K) laid out [colour][basis], basis (R, K)
    the SH basis of each ray's direction, background (R, 3). A sample's colour is
    max(SH + 0.5, 0) (svox2's). Samples in empty cells are skipped; once the transmittance
    in front of a sample is below stop_t the sample and all after it are skipped (early
    termination, as the kernels do). Returns rgb, depth (world, along unit rays), acc,
    cauchy (R,) = sum over evaluated samples of log(1 + 2 sigma^2), weights (R, S), t (R, S)
    in grid units.
    """
    n_rays = rays["o"].shape[0]
    t, sel, pts = occupied_samples(rays, offset, step, cells)
    rows, w = corner_rows(links, pts)
    sigma = F.relu(interpolate(density, rows, w)[:, 0])
    sig = torch.zeros_like(t).index_put((sel[:, 0], sel[:, 1]), sigma)
    delta = step * rays["wps"][:, None]
    _, _, live_full = _transmittance(sig, delta, stop_t)
    live = live_full[sel[:, 0], sel[:, 1]]
    sd = torch.where(live_full, sig * delta, torch.zeros_like(sig))
    tau = torch.cumsum(sd, -1)
    weights = torch.exp(-(tau - sd)) * (1.0 - torch.exp(-sd))
    k = basis.shape[-1]
    coeffs = interpolate(sh, rows[live], w[live]).view(-1, 3, k)
    rgb_live = F.relu((coeffs * basis[sel[live, 0]][:, None, :]).sum(-1) + 0.5)
    rgb = torch.zeros(*t.shape, 3, dtype=rgb_live.dtype, device=t.device)
    rgb = rgb.index_put((sel[live, 0], sel[live, 1]), rgb_live)
    trans = torch.exp(-tau[:, -1]) if tau.shape[1] else torch.ones(n_rays, device=t.device)
    out_rgb = (weights[..., None] * rgb).sum(1) + trans[:, None] * background
    depth = (weights * t).sum(1) * rays["wps"]
    cauchy = torch.zeros(n_rays, device=t.device).index_add(0, sel[live, 0], torch.log1p(2 * sigma[live] ** 2))
    return {"rgb": out_rgb, "depth": depth, "acc": 1.0 - trans, "cauchy": cauchy, "weights": weights, "t": t}


@torch.no_grad()
def max_weights_reference(links: torch.Tensor, density: torch.Tensor, cells: torch.Tensor, rays: dict,
                          step: float, stop_t: float) -> torch.Tensor:
    """Per row (M,): the largest rendering weight T * alpha of any sample (on the lattice with
    offset 0.5) of these rays in a cell the row's vertex is a corner of, marching each ray only
    until its transmittance falls below stop_t (svox2's grid_weight_render). 0 if none."""
    t, sel, pts = occupied_samples(rays, torch.full_like(rays["t0"], 0.5), step, cells)
    idx, tw = trilinear_corners(pts, links.shape[0])
    rows = links.reshape(-1)[idx].long()
    ok = rows >= 0
    sigma = F.relu((density[rows.clamp(min=0), 0] * tw * ok).sum(1))
    sig = torch.zeros_like(t).index_put((sel[:, 0], sel[:, 1]), sigma)
    sd, t_before, live = _transmittance(sig, step * rays["wps"][:, None], stop_t)
    wt = torch.where(live, t_before * (1.0 - torch.exp(-sd)), torch.zeros_like(sd))[sel[:, 0], sel[:, 1]]
    out = torch.zeros(density.shape[0], device=density.device)
    return out.scatter_reduce_(0, rows[ok], wt[:, None].expand_as(rows)[ok], reduce="amax")


# -- total variation ------------------------------------------------------------------------
def grad_buffer(p: torch.Tensor) -> torch.Tensor:
    """p.grad, created as zeros when missing: the grid kernels add into it in place."""
    if p.grad is None:
        p.grad = torch.zeros_like(p)
    return p.grad


class _SparseTV(torch.autograd.Function):
    """Total variation of sampled rows whose gradient goes straight into data.grad (as
    svox2's inplace_tv_grad does): through autograd it would be a fresh (M, C) buffer a step,
    added onto the rendering gradient; at 512^3 that is a GB memset and a GB add per term."""

    @staticmethod
    def forward(ctx, data, rows, nbs, scale, eps):
        val = data.detach()[rows]  # (B, C)
        nb = data.detach()[nbs.clamp(min=0)] * (nbs >= 0)[..., None]  # (3, B, C): inactive -> 0
        diff = nb - val
        norm = torch.sqrt((diff * diff).sum(0) + eps)  # (B, C)
        ctx.save_for_backward(rows, nbs, diff, norm)
        ctx.param, ctx.scale = data, scale
        return (norm.sum() * scale).to(data.dtype)

    @staticmethod
    def backward(ctx, g):
        rows, nbs, diff, norm = ctx.saved_tensors
        gd = diff * (g * ctx.scale / norm)  # (3, B, C): d/d neighbour
        grad = grad_buffer(ctx.param)
        grad.index_add_(0, rows, -gd.sum(0))
        for a in range(3):
            ok = nbs[a] >= 0
            grad.index_add_(0, nbs[a][ok], gd[a][ok])
        return None, None, None, None, None


def tv_neighbours(links: torch.Tensor, vertices: torch.Tensor) -> torch.Tensor:
    """(3, B) rows of the +x, +y, +z neighbours of flat vertices (B,); -1 where inactive. On
    the grid's far faces the vertex itself stands in (a zero difference)."""
    n = links.shape[0]
    flat = links.reshape(-1)
    i, j, k = vertices // (n * n), (vertices // n) % n, vertices % n
    out = []
    for coord, stride in ((i, n * n), (j, n), (k, 1)):
        nb = torch.where(coord < n - 1, vertices + stride, vertices)
        out.append(flat[nb].long())
    return torch.stack(out)


def sparse_tv(data: torch.Tensor, links: torch.Tensor, rows: torch.Tensor, row_vertex: torch.Tensor,
              scale: float, eps: float = 1e-9) -> torch.Tensor:
    """scale * mean over rows (B,) of the sum over channels of sqrt(eps + dx^2 + dy^2 + dz^2),
    forward differences to the +x/+y/+z neighbours (an inactive one reads 0): Plenoxels
    eq. 4 on a random subset, as svox2 evaluates it (its tv_grad_sparse divides the weight
    by the number of cells drawn). The gradient is added to data.grad in place."""
    nbs = tv_neighbours(links, row_vertex[rows])
    return _SparseTV.apply(data, rows, nbs, float(scale) / max(rows.numel(), 1), float(eps))
