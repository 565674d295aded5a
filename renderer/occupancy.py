"""Occupancy grid, packed ray marching and packed compositing (instant-ngp style).

A grid of ``res**3`` cells covers the cube [-bound, bound]^3. Each cell keeps a
running density estimate (``density_grid``); a cell is *occupied* when that
estimate exceeds a threshold. Rays are marched with a constant metric step
``dt`` and only samples that fall in occupied cells are kept, *packed*: one flat
list of samples for the whole batch, each ray's samples contiguous and in
depth order (no padding to a common sample count).

Everything here is a pure function (tensors in, tensors out). On CUDA with
Triton available, ``march_rays`` uses the kernel in renderer/kernels/march.py;
the torch code below is the reference it is tested against and the CPU path.

Conventions: ``dirs`` are unit directions; ``s`` is metric distance along the
ray (callers with un-normalised NeRF directions convert t = s / |d|). Cells are
flattened as ``(ix * res + iy) * res + iz``.
"""
from __future__ import annotations

import math

import torch

# Instant-ngp: a cell is worth sampling when one step through it would absorb
# at least 1% of the light, or when it is denser than the grid's mean.
MIN_OPTICAL_THICKNESS = 0.01


def step_size(bound: float, steps_per_diagonal: int) -> float:
    """Metric step so that the cube's diagonal takes ``steps_per_diagonal`` steps."""
    return 2.0 * bound * math.sqrt(3.0) / steps_per_diagonal


def ray_aabb(rays_o: torch.Tensor, rays_d: torch.Tensor, lo, hi) -> tuple[torch.Tensor, torch.Tensor]:
    """Slab test: (t_near, t_far), each (R,), of the part of o + t d inside the box [lo, hi].

    rays_o, rays_d (R, 3); lo, hi (3,) or numbers. The ray misses when t_far < t_near; a
    ray starting inside has t_near < 0. Components of d that are exactly zero are handled
    explicitly (no 0 * inf = NaN): such a slab either contains the whole ray or none of it.
    """
    # Numbers stay Python scalars: making a tensor of one is a host-to-device copy, which a
    # CUDA graph cannot capture.
    if not isinstance(lo, (int, float)):
        lo = torch.as_tensor(lo, dtype=rays_o.dtype, device=rays_o.device)
    if not isinstance(hi, (int, float)):
        hi = torch.as_tensor(hi, dtype=rays_o.dtype, device=rays_o.device)
    parallel = rays_d == 0
    safe_d = torch.where(parallel, torch.ones_like(rays_d), rays_d)
    t0, t1 = (lo - rays_o) / safe_d, (hi - rays_o) / safe_d
    tmin, tmax = torch.minimum(t0, t1), torch.maximum(t0, t1)
    inside = (rays_o >= lo) & (rays_o <= hi)
    inf = torch.full_like(tmin, math.inf)
    tmin = torch.where(parallel, torch.where(inside, -inf, inf), tmin)
    tmax = torch.where(parallel, torch.where(inside, inf, -inf), tmax)
    return tmin.amax(-1), tmax.amin(-1)


def march_interval(rays_o: torch.Tensor, dirs: torch.Tensor, bound: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The interval (s0, s1), each (R,), that a ray marcher walks through [-bound, bound]^3:
    ray_aabb's, with the entry clamped at 0 (a camera inside the box starts at its own
    position) and misses as the empty interval s0 == s1 == 0, so fixed-shape kernels need
    no branch for them."""
    t0, t1 = ray_aabb(rays_o, dirs, -bound, bound)
    s0 = t0.clamp(min=0.0)
    hit = t1 > s0
    zero = torch.zeros_like(s0)
    return torch.where(hit, s0, zero), torch.where(hit, t1, zero)


def cell_index(x: torch.Tensor, bound: float, res: int) -> torch.Tensor:
    """Flat cell index (N,) int64 of points x (N, 3); points outside are clamped to the border."""
    inv = res / (2.0 * bound)
    c = ((x + bound) * inv).floor().clamp(0, res - 1).long()
    return (c[..., 0] * res + c[..., 1]) * res + c[..., 2]


def cell_coords(idx: torch.Tensor, res: int) -> torch.Tensor:
    """Integer cell coordinates (M, 3) int64 of flat indices (M,)."""
    return torch.stack([idx // (res * res), (idx // res) % res, idx % res], -1)


def random_points_in_cells(idx: torch.Tensor, res: int, bound: float,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """One uniform random world point (M, 3) inside each cell of ``idx`` (M,)."""
    u = torch.rand(idx.shape[0], 3, device=idx.device, generator=generator)
    return (cell_coords(idx, res).float() + u) * (2.0 * bound / res) - bound


def ema_update(grid: torch.Tensor, idx: torch.Tensor, values: torch.Tensor, decay: float) -> torch.Tensor:
    """New density grid (C,): every cell decays, sampled cells rise to their new value.

    ``grid_new = max(grid * decay, splat)``, where splat holds the maximum of the
    ``values`` (M,) landing in each cell (0 for cells not sampled). A maximum rather
    than a mean keeps thin structures on as soon as anything in a cell is dense.
    """
    splat = torch.zeros_like(grid).scatter_reduce(0, idx, values.to(grid.dtype), "amax", include_self=True)
    return torch.maximum(grid * decay, splat)


def occupancy_threshold(grid: torch.Tensor, dt: float,
                        min_optical_thickness: float = MIN_OPTICAL_THICKNESS) -> torch.Tensor:
    """Density (0-dim tensor) above which a cell counts as occupied: min(0.01 / dt, mean)."""
    return torch.clamp(grid.mean(), max=min_optical_thickness / dt)


def occupied(grid: torch.Tensor, threshold: torch.Tensor | float) -> torch.Tensor:
    """Occupancy (C,) uint8 from a density grid (C,).

    A grid with no cell above the threshold (a field whose density is zero everywhere,
    e.g. a ReLU MLP early in training) marks every cell occupied: skipping everything
    would leave no sample, hence no gradient, to bring the density back.
    """
    occ = grid > threshold
    return torch.where(occ.any(), occ, torch.ones_like(occ)).to(torch.uint8)


# --------------------------------------------------------------------------------------
# Marching
# --------------------------------------------------------------------------------------

class OccupancyGrid(torch.nn.Module):
    """The occupancy estimator every field shares (nerfacc's OccupancyGrid, instant-ngp's
    density grid): a res^3 grid over [-bound, bound]^3 of decayed maxima of the field's
    density, thresholded into a uint8 mask. It knows no model: ``update`` takes the field's
    density as a callback.

    ``persistent``: saved with checkpoints (a resumed run keeps skipping the same space).
    """

    def __init__(self, res: int, bound: float, persistent: bool = True):
        super().__init__()
        self.res, self.bound = int(res), float(bound)
        cells = self.res ** 3
        self.register_buffer("density_grid", torch.zeros(cells), persistent=persistent)
        self.register_buffer("occupancy", torch.ones(cells, dtype=torch.uint8), persistent=persistent)

    def cells_to_update(self, all_cells: bool) -> torch.Tensor:
        """Every cell, or (instant-ngp's rule once warmed up) a quarter of the cells at random
        plus as many of the occupied ones."""
        cells, dev = self.density_grid.shape[0], self.density_grid.device
        if all_cells:
            return torch.arange(cells, device=dev)
        n = cells // 4
        uniform = torch.randint(0, cells, (n,), device=dev)
        occ_idx = self.occupancy.nonzero().squeeze(1)
        if occ_idx.numel() == 0:
            return uniform
        return torch.cat([uniform, occ_idx[torch.randint(0, occ_idx.numel(), (n,), device=dev)]])

    @torch.no_grad()
    def update(self, density_fn, step: float, decay: float, idx: torch.Tensor | None = None,
               chunk: int = 1 << 20) -> None:
        """Density at one random point in each cell of idx (default: all), decay-max into the
        grid, re-threshold. ``step``: the marching step, whose opacity sets the threshold."""
        idx = self.cells_to_update(True) if idx is None else idx
        pts = random_points_in_cells(idx, self.res, self.bound)
        sigma = torch.cat([density_fn(pts[a:a + chunk]).float() for a in range(0, pts.shape[0], chunk)])
        self.density_grid.copy_(ema_update(self.density_grid, idx, sigma, decay))
        self.occupancy.copy_(occupied(self.density_grid, occupancy_threshold(self.density_grid, step)))

    def occupied_at(self, x: torch.Tensor) -> torch.Tensor:
        """(N,) bool: x (N, 3) lies inside the cube, in an occupied cell."""
        return (x.abs() <= self.bound).all(-1) & (self.occupancy[cell_index(x, self.bound, self.res)] != 0)


def march_rays(rays_o: torch.Tensor, dirs: torch.Tensor, s_start: torch.Tensor, s_end: torch.Tensor,
               occ: torch.Tensor, bound: float, res: int, dt: float, max_steps: int,
               jitter: torch.Tensor, max_samples: int | None = None) -> dict[str, torch.Tensor]:
    """Packed samples of rays (R, 3) against occupancy ``occ`` (res^3,) uint8.

    Candidate k (0 <= k < max_steps) of ray r sits at s = s_start + (k + jitter) * dt
    and is kept when s < s_end and its cell is occupied. ``jitter`` (R,) in [0, 1):
    random for training, 0.5 for evaluation.

    Returns ray_ids (N,) int64 sorted, s (N,) float32 increasing within a ray,
    offsets (R,) int64 (index of each ray's first sample), counts (R,) int64,
    fits (R,) bool. With ``max_samples``, rays whose samples would not all fit
    (in ray order) are dropped whole (count 0, fits False) so that no ray is
    rendered from a truncated sample list.
    """
    def run():
        from renderer.kernels.march import march_rays_triton
        return march_rays_triton(rays_o, dirs, s_start, s_end, occ, bound, res, dt, max_steps, jitter, max_samples)

    from renderer import kernels
    out = kernels.run_or_none("march_rays", rays_o, run)
    if out is not None:
        return out
    return march_rays_torch(rays_o, dirs, s_start, s_end, occ, bound, res, dt, max_steps, jitter,
                            max_samples)


def march_rays_static(rays_o: torch.Tensor, dirs: torch.Tensor, s_start: torch.Tensor,
                      s_end: torch.Tensor, occ: torch.Tensor, bound: float, res: int, dt: float,
                      max_steps: int, jitter: torch.Tensor, capacity: int) -> dict[str, torch.Tensor]:
    """``march_rays`` with fixed output shapes and, on CUDA, no host sync (CUDA-graph capturable).

    Samples are packed into a buffer of exactly ``capacity`` slots. Rays whose samples
    would not all fit are dropped whole, as with ``max_samples``; the slots after the
    last sample are padding: ray id R (one past the last ray, so ``ray_ids`` stays
    sorted) at s = 0. Callers evaluate the padding and discard ray R.

    Returns ray_ids (capacity,) int64, s (capacity,) float32, fits (R,) bool, marched
    (0-dim int64: samples all rays asked for) and kept (0-dim int64: samples packed).
    """
    def run():
        from renderer.kernels.march import march_rays_triton_static
        return march_rays_triton_static(rays_o, dirs, s_start, s_end, occ, bound, res, dt, max_steps, jitter,
                                        capacity)

    from renderer import kernels
    out = kernels.run_or_none("march_rays_static", rays_o, run)
    if out is not None:
        return out
    n_rays = rays_o.shape[0]
    dev = rays_o.device
    pk = march_rays_torch(rays_o, dirs, s_start, s_end, occ, bound, res, dt, max_steps, jitter)
    counts, fits = _fit_budget(pk["counts"], capacity)
    keep = fits[pk["ray_ids"]]
    n = int(counts.sum().item())
    ray_ids = torch.full((capacity,), n_rays, dtype=torch.int64, device=dev)
    s = torch.zeros(capacity, device=dev)
    ray_ids[:n] = pk["ray_ids"][keep]
    s[:n] = pk["s"][keep]
    return {"ray_ids": ray_ids, "s": s, "fits": fits, "marched": pk["counts"].sum(),
            "kept": counts.sum()}


def _fit_budget(counts: torch.Tensor, max_samples: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(counts (R,) with the rays that overflow ``max_samples`` set to 0, fits (R,) bool)."""
    if max_samples is None:
        return counts, torch.ones_like(counts, dtype=torch.bool)
    fits = torch.cumsum(counts, 0) <= max_samples
    return torch.where(fits, counts, torch.zeros_like(counts)), fits


def march_rays_torch(rays_o, dirs, s_start, s_end, occ, bound, res, dt, max_steps, jitter,
                     max_samples=None, ray_chunk: int = 8192) -> dict[str, torch.Tensor]:
    """Reference marching: every candidate of a chunk of rays at once, then a mask."""
    n_rays = rays_o.shape[0]
    dev = rays_o.device
    counts = torch.zeros(n_rays, dtype=torch.int64, device=dev)
    kept_s, kept_r = [], []
    # Steps each ray can need; never more than max_steps. A product with 1/dt, not a
    # division, because the kernel computes exactly this.
    n_steps = torch.ceil((s_end - s_start) * (1.0 / dt)).clamp(0, max_steps)
    for a in range(0, n_rays, ray_chunk):
        b = min(n_rays, a + ray_chunk)
        k_max = int(n_steps[a:b].max().item()) if b > a else 0
        if k_max == 0:
            continue
        k = torch.arange(k_max, device=dev, dtype=torch.float32)
        # Same operation order as the kernel so both pick identical cells.
        s = s_start[a:b, None] + (k[None, :] + jitter[a:b, None]) * dt  # (r, K)
        valid = (k[None, :] < n_steps[a:b, None]) & (s < s_end[a:b, None])
        pts = rays_o[a:b, None, :] + dirs[a:b, None, :] * s[..., None]  # (r, K, 3)
        valid &= occ[cell_index(pts, bound, res)] != 0
        counts[a:b] = valid.sum(1)
        r_idx, k_idx = valid.nonzero(as_tuple=True)
        kept_s.append(s[r_idx, k_idx])
        kept_r.append(r_idx + a)
    s_all = torch.cat(kept_s) if kept_s else torch.zeros(0, device=dev)
    r_all = torch.cat(kept_r) if kept_r else torch.zeros(0, dtype=torch.int64, device=dev)
    fitted, fits = _fit_budget(counts, max_samples)
    if max_samples is not None:
        keep = fits[r_all]
        s_all, r_all, counts = s_all[keep], r_all[keep], fitted
    offsets = torch.cumsum(counts, 0) - counts
    return {"ray_ids": r_all, "s": s_all.float(), "offsets": offsets, "counts": counts, "fits": fits}


# --------------------------------------------------------------------------------------
# Compositing
# --------------------------------------------------------------------------------------

def first_index(ray_ids: torch.Tensor, n_rays: int) -> torch.Tensor:
    """Index (R,) of each ray's first sample in sorted ``ray_ids`` (N,) (N for absent rays)."""
    return torch.searchsorted(ray_ids, torch.arange(n_rays, device=ray_ids.device, dtype=ray_ids.dtype))


def optical_depth_before(sd: torch.Tensor, ray_ids: torch.Tensor, n_rays: int) -> torch.Tensor:
    """Exclusive per-ray cumulative sum (N,) of optical thicknesses sd (N,) of packed samples
    with sorted ray_ids (N,), all < n_rays: the optical depth in front of each sample within
    its ray. float32 (float64 for a float64 sd), differentiable in sd.

    One global cumsum minus its value at the ray's first sample, in float64 so that the
    subtraction keeps full float32 accuracy after 2^18 samples of large optical depth.
    """
    if sd.shape[0] == 0:
        return sd.float()
    return _OpticalDepthBefore.apply(sd, ray_ids, n_rays)


class _OpticalDepthBefore(torch.autograd.Function):
    """Why a Function: autograd of the gather formula is two index_adds (float64 atomics,
    most of them onto the few addresses of padding rays); the gradient
    d/d sd_j = sum of g_i over the later samples i of j's ray is instead one inclusive
    cumsum C of g read at the ray's last sample minus at j: C[last_j] - C[j]. Gathers only."""

    @staticmethod
    def forward(ctx, sd, ray_ids, n_rays):
        n = sd.shape[0]
        bounds = torch.searchsorted(ray_ids, torch.arange(n_rays + 1, device=ray_ids.device,
                                                          dtype=ray_ids.dtype))  # (R + 1,)
        sd64 = sd.detach().double()
        excl = torch.cumsum(sd64, 0) - sd64
        first = bounds[:-1].clamp(max=n - 1)
        out = excl - excl.index_select(0, first).index_select(0, ray_ids)
        ctx.save_for_backward(ray_ids, bounds)
        ctx.out_dtype = sd.dtype
        return out.to(torch.promote_types(sd.dtype, torch.float32))

    @staticmethod
    def backward(ctx, g):
        ray_ids, bounds = ctx.saved_tensors
        n = g.shape[0]
        incl = torch.cumsum(g.double(), 0)
        last = (bounds[1:] - 1).clamp(min=0, max=n - 1).index_select(0, ray_ids)  # (N,)
        return (incl.index_select(0, last) - incl).to(ctx.out_dtype), None, None


def compact_static(keep: torch.Tensor, ray_ids: torch.Tensor, s: torch.Tensor, n_rays: int,
                   capacity: int) -> dict[str, torch.Tensor]:
    """Pack the samples where keep (M,) is true into exactly ``capacity`` slots, fixed shapes,
    no host sync. ray_ids (M,) sorted, padding slots carry ray id ``n_rays``; rays whose kept
    samples do not all fit are dropped whole, as in ``march_rays_static``.

    Returns ray_ids (capacity,), s (capacity,), fits (n_rays,) bool and kept (0-dim int64).
    """
    dev = s.device
    m = ray_ids.shape[0]
    keep = keep & (ray_ids < n_rays)
    # Gathers only, no scatter: an index_add or index_put sends every dropped and padding
    # sample (10^5 of them) to one address, and those writes serialise on the GPU.
    incl = torch.cumsum(keep.long(), 0)  # (M,) kept samples up to and including each
    ck = torch.cat([incl.new_zeros(1), incl])  # (M + 1,)
    bounds = torch.searchsorted(ray_ids, torch.arange(n_rays + 1, device=dev, dtype=ray_ids.dtype))
    per_ray = ck[bounds[1:]] - ck[bounds[:-1]]  # (R,) kept samples of each ray
    upto = torch.cumsum(per_ray, 0)
    fits = upto <= capacity
    # fits is a prefix of the rays (upto never decreases), so the packed samples are the
    # first n_kept kept ones: slot k holds the sample where the running count reaches k + 1.
    n_kept = torch.where(fits, upto, torch.zeros_like(upto)).max() if n_rays > 0 else incl.new_zeros(())
    out_ids = torch.full((capacity,), n_rays, dtype=ray_ids.dtype, device=dev)
    out_s = torch.zeros(capacity, dtype=s.dtype, device=dev)
    if m == 0:
        return {"ray_ids": out_ids, "s": out_s, "fits": fits, "kept": n_kept}
    slots = torch.arange(capacity, device=dev, dtype=incl.dtype)
    src = torch.searchsorted(incl, slots + 1).clamp(max=m - 1)
    used = slots < n_kept
    return {"ray_ids": torch.where(used, ray_ids.index_select(0, src), out_ids),
            "s": torch.where(used, s.index_select(0, src), out_s), "fits": fits, "kept": n_kept}


def spread_padding(ray_ids: torch.Tensor, n_rays: int, group: int = 32) -> tuple[torch.Tensor, int]:
    """Padding slots of a fixed-size sample buffer (ray id >= n_rays, all at the end) get ray
    ids n_rays + j // group, j their rank among the padding; the ids stay sorted.

    Why: per-ray reductions (the compositing index_adds and their backward) otherwise pile
    every padding sample onto the one address of ray n_rays, and those atomics serialise.
    Returns ray_ids (N,) and the number of padding rays, ceil(N / group).
    """
    n = ray_ids.shape[0]
    pad = ray_ids >= n_rays
    j = torch.arange(n, device=ray_ids.device, dtype=ray_ids.dtype) - (~pad).sum()
    ids = torch.where(pad, n_rays + torch.div(j.clamp(min=0), group, rounding_mode="floor"), ray_ids)
    return ids, max(1, -(-n // group))


def composite_packed(sigma: torch.Tensor, rgb: torch.Tensor, s: torch.Tensor, delta: float,
                     ray_ids: torch.Tensor, n_rays: int, tau0: torch.Tensor | None = None
                     ) -> dict[str, torch.Tensor]:
    """Emission-absorption compositing of packed samples (NeRF eq. 3).

    sigma (N,), rgb (N, 3), s (N,) sample distances, each sample standing for a
    segment of length ``delta``; ray_ids (N,) sorted. ``tau0`` (R,) is optical
    depth already accumulated in front of these samples (early-termination rounds).

    Returns rgb (R, 3) (no background), acc (R,), depth_s (R,) = sum w*s (not
    normalised), tau (R,) optical depth of these samples, weights (N,).
    Transmittance comes from ``optical_depth_before``.
    """
    sd = sigma.float() * delta  # (N,)
    n = sd.shape[0]
    dev = sd.device
    if n == 0:
        z = torch.zeros(n_rays, device=dev)
        return {"rgb": torch.zeros(n_rays, 3, device=dev), "acc": z, "depth_s": z, "tau": z,
                "weights": sd}
    tau_in = optical_depth_before(sd, ray_ids, n_rays)
    if tau0 is not None:
        tau_in = tau_in + tau0.index_select(0, ray_ids)
    w = (1.0 - torch.exp(-sd)) * torch.exp(-tau_in)  # (N,)
    z1 = torch.zeros(n_rays, device=dev, dtype=w.dtype)
    acc = z1.index_add(0, ray_ids, w)
    depth_s = z1.index_add(0, ray_ids, w * s)
    color = torch.zeros(n_rays, 3, device=dev, dtype=w.dtype).index_add(0, ray_ids, w[:, None] * rgb.float())
    tau = z1.index_add(0, ray_ids, sd)
    return {"rgb": color, "acc": acc, "depth_s": depth_s, "tau": tau, "weights": w}


def composite_rounds(evaluate, ray_ids: torch.Tensor, s: torch.Tensor, delta, offsets: torch.Tensor,
                     counts: torch.Tensor, n_rays: int, tau_stop: float, first_round: int = 16
                     ) -> tuple[dict[str, torch.Tensor], int]:
    """Front-to-back rounds over a packed march (ray_ids (N,) sorted, s (N,), each ray's
    ``offsets`` and ``counts`` (R,)): the first ``first_round`` samples of every ray, then
    twice as many of the rays still transparent, and so on; a ray leaves once its optical
    depth reaches ``tau_stop`` (early termination: -log of the transmittance left).
    ``evaluate(sel)`` gives (sigma (M,), rgb (M, 3)) of the packed samples ``sel`` (M,);
    ``delta`` is one segment length or (N,) per sample.

    Returns (rgb (R, 3), acc, depth_s and tau (R,) summed over the rounds, as
    composite_packed's) and the number of samples evaluated."""
    dev = s.device
    z = torch.zeros(n_rays, device=dev)
    total = {"rgb": torch.zeros(n_rays, 3, device=dev), "acc": z.clone(), "depth_s": z.clone(), "tau": z.clone()}
    if s.shape[0] == 0:
        return total, 0
    rank = torch.arange(s.shape[0], device=dev) - offsets[ray_ids]
    per_sample = isinstance(delta, torch.Tensor)
    alive = counts > 0
    lo, size, used = 0, first_round, 0
    max_count = int(counts.max().item())
    while lo < max_count:
        hi = lo + size
        sel = ((rank >= lo) & (rank < hi) & alive[ray_ids]).nonzero().squeeze(1)
        if sel.numel() == 0:
            break
        sigma, rgb = evaluate(sel)
        part = composite_packed(sigma, rgb, s[sel], delta[sel] if per_sample else delta, ray_ids[sel],
                                n_rays, tau0=total["tau"])
        for k in total:
            total[k] = total[k] + part[k]
        used += sel.numel()
        alive = alive & (counts > hi) & (total["tau"] < tau_stop)
        lo, size = hi, size * 2
    return total, used
