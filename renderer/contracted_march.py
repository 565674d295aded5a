"""Occupancy-grid marching through contracted space, for fast renders of an unbounded field.

A proposal-sampled field (models/nerfacto.py) spends most of a render on its proposal
nets and on a fixed number of field samples per ray, wherever the surface is. A trained
field's empty space is known, though: instant-ngp renders its unbounded scenes by
marching cascaded occupancy grids with steps that grow with distance and stopping each
ray once it is opaque. Here the cascades are one grid over the contracted cube
[-2, 2]^3 (renderer/contraction.py): its inner half is the unit cube at full resolution,
its shell holds all of space beyond, coarser with distance, as the cascades are.

Steps are uniform in the lindisp spacing of renderer/proposal.py (linear in distance up
to 1, in disparity beyond), which makes them nearly uniform in contracted space. Ray r's
interval [t0, t1] is cut into ``n_steps`` intervals of equal spacing; interval k has its
sample at spacing g0 + (k + jitter) h, h = (g1 - g0) / n_steps, and stands for the
distance between its edges (``dt``, which grows with distance). Samples in unoccupied
cells are dropped and the rest packed (renderer/occupancy.py's conventions: sorted ray
ids, each ray's samples contiguous and in order).

The grid is baked from the field's density (``bake_occupancy``): a cell is occupied when
one step through it, at the length a ray takes there, would absorb at least
``min_opacity`` of the light (instant-ngp's rule), then dilated by one cell so that a
surface the cell's few density probes missed is still marched.

Pure functions; the torch code is the reference of the Triton kernel
(renderer/kernels/march.py, ``march_contracted_triton``) and the CPU path.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F

from renderer.contraction import contract, uncontract
from renderer.occupancy import cell_coords, cell_index
from renderer.proposal import lindisp, lindisp_inverse

BOUND = 2.0  # the contracted cube is [-BOUND, BOUND]^3
ORDER_CODES = {"inf": 0, 2: 2}


def step_spacing(t0: torch.Tensor, t1: torch.Tensor, n_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(g0, h), each (R,): the spacing at each ray's start and the spacing of one step."""
    g0 = lindisp(t0.float())
    return g0, (lindisp(t1.float()) - g0) * (1.0 / n_steps)


def march_contracted_torch(rays_o: torch.Tensor, dirs: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor,
                           occ: torch.Tensor, res: int, order, n_steps: int, jitter: torch.Tensor,
                           ray_chunk: int = 2048) -> dict[str, torch.Tensor]:
    """Packed samples of rays (R, 3) (unit ``dirs``, normalised frame) over [t0, t1] (R,)
    against ``occ`` (res^3,) uint8 on the contracted cube; jitter (R,) in [0, 1).

    Returns ray_ids (N,) int64 sorted, t (N,) and dt (N,) float32 (sample distance and the
    length of its interval), offsets (R,) and counts (R,) int64."""
    n_rays, dev = rays_o.shape[0], rays_o.device
    g0, h = step_spacing(t0, t1, n_steps)
    k = torch.arange(n_steps, device=dev, dtype=torch.float32)
    counts = torch.zeros(n_rays, dtype=torch.int64, device=dev)
    parts = []
    for a in range(0, n_rays, ray_chunk):
        b = min(n_rays, a + ray_chunk)
        ga, ha = g0[a:b, None], h[a:b, None]
        t = lindisp_inverse(ga + (k + jitter[a:b, None]) * ha)  # (r, K)
        dt = lindisp_inverse(ga + (k + 1.0) * ha) - lindisp_inverse(ga + k * ha)
        y = contract(rays_o[a:b, None, :].float() + dirs[a:b, None, :].float() * t[..., None], order)
        keep = occ[cell_index(y, BOUND, res)] != 0
        counts[a:b] = keep.sum(1)
        r_idx, k_idx = keep.nonzero(as_tuple=True)
        parts.append((r_idx + a, t[r_idx, k_idx], dt[r_idx, k_idx]))
    if parts:
        ray_ids, t_all, dt_all = (torch.cat(p) for p in zip(*parts))
    else:
        ray_ids = torch.zeros(0, dtype=torch.int64, device=dev)
        t_all = dt_all = torch.zeros(0, device=dev)
    return {"ray_ids": ray_ids, "t": t_all, "dt": dt_all, "offsets": torch.cumsum(counts, 0) - counts,
            "counts": counts}


def march_contracted(rays_o, dirs, t0, t1, occ, res: int, order, n_steps: int,
                     jitter: torch.Tensor) -> dict[str, torch.Tensor]:
    """``march_contracted_torch``'s samples, by the Triton kernel on CUDA (torch otherwise,
    or when the kernel fails: it is then disabled for the run, as renderer.occupancy's)."""
    def run():
        from renderer.kernels.march import march_contracted_triton
        return march_contracted_triton(rays_o, dirs, t0, t1, occ, res, order, n_steps, jitter)

    from renderer import kernels
    out = kernels.run_or_none("march_contracted", rays_o, run)
    if out is not None:
        return out
    return march_contracted_torch(rays_o, dirs, t0, t1, occ, res, order, n_steps, jitter)


def cell_step_lengths(res: int, order, step_spacing_h: float, device=None) -> torch.Tensor:
    """(res^3,) the length of one march step in each cell: 2 h max(1, t)^2 (the lindisp
    spacing's slope is 1/2 up to distance 1 and 1 / (2 t^2) beyond) at t = 1 + the cell
    centre's distance from the origin, about the farthest a camera of the unit cube can be
    from it: the longest step a ray takes there, so that no cell is judged by a step
    shorter than its rays take."""
    idx = torch.arange(res ** 3, device=device)
    centre = (cell_coords(idx, res).float() + 0.5) * (2.0 * BOUND / res) - BOUND
    t = 1.0 + uncontract(centre, order).norm(dim=-1)
    return 2.0 * step_spacing_h * t.clamp(min=1.0) ** 2


@torch.no_grad()
def bake_occupancy(density_fn, res: int, order, step_spacing_h: float, min_opacity: float = 0.01,
                   points_per_cell: int = 2, seed: int = 0, chunk: int = 1 << 20,
                   device=None) -> torch.Tensor:
    """(res^3,) uint8 occupancy of the contracted cube: cells where the largest density of
    ``points_per_cell`` random points (``density_fn``: contracted points (N, 3) -> sigma
    (N,) per normalised unit) times the cell's step length reaches ``min_opacity``
    (-log(1 - opacity) in optical thickness), dilated by one cell."""
    g = torch.Generator(device=device or "cpu").manual_seed(seed)
    cells = res ** 3
    idx = torch.arange(cells, device=device)
    best = torch.zeros(cells, device=device)
    for _ in range(points_per_cell):
        u = torch.rand(cells, 3, generator=g, device=device)
        y = (cell_coords(idx, res).float() + u) * (2.0 * BOUND / res) - BOUND
        sigma = torch.cat([density_fn(y[a:a + chunk]).float() for a in range(0, cells, chunk)])
        best = torch.maximum(best, torch.nan_to_num(sigma, nan=float("inf")))
    thick = best * cell_step_lengths(res, order, step_spacing_h, best.device)
    occ = (thick >= -torch.log1p(torch.tensor(-min_opacity))).float().reshape(1, 1, res, res, res)
    return (F.max_pool3d(occ, 3, stride=1, padding=1) > 0).reshape(-1).to(torch.uint8)


def render_marched(radiance, rays_o: torch.Tensor, dirs: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor,
                   occ: torch.Tensor, res: int, order, n_steps: int, tau_stop: float
                   ) -> tuple[dict[str, torch.Tensor], int]:
    """Composite rays (R, 3) over [t0, t1] (R,) through the occupied cells of ``occ``, front
    to back with early termination at optical depth ``tau_stop``. ``radiance(ray_ids (M,),
    points (M, 3))`` -> (sigma (M,) per unit length, rgb (M, 3)). Returns
    renderer.occupancy.composite_rounds' sums (rgb without background, acc, depth_s, tau)
    and the samples evaluated."""
    from renderer.occupancy import composite_rounds

    half = torch.full((rays_o.shape[0],), 0.5, device=rays_o.device)
    pk = march_contracted(rays_o, dirs, t0, t1, occ, res, order, n_steps, half)
    ray_ids, t = pk["ray_ids"], pk["t"]

    def evaluate(sel):
        rid = ray_ids[sel]
        return radiance(rid, rays_o[rid] + dirs[rid] * t[sel, None])

    return composite_rounds(evaluate, ray_ids, t, pk["dt"], pk["offsets"], pk["counts"], rays_o.shape[0],
                            tau_stop)
