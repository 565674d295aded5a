"""Plenoxels (Fridovich-Keil, Yu et al. 2022): a voxel grid of densities and
spherical-harmonic colours, rendered with the same volume renderer as NeRF.

Representation (true sparsity, as svox2 does it, but in plain PyTorch):

* The grid has ``resolution`` cells per axis over the box ``bbox``, so
  (resolution + 1)^3 vertices. Values live on vertices and are interpolated
  trilinearly from the 8 corners of the cell a point falls in.
* ``links`` (n, n, n) maps each vertex to a row of the compact parameter
  tensors ``density_data`` (M, 1) and ``sh_data`` (M, 3 * (degree+1)^2), or -1
  for a pruned vertex. A pruned vertex reads as zero density and zero SH, which
  is also how svox2 treats missing voxels. Only the M active rows are
  parameters, so the optimiser's cost (Adam touches every parameter every step)
  shrinks with pruning: on the shared 2-core CPU one Adam step over a dense
  129^3 grid (58 M values) took 0.7-0.8 s, while the pruned embedded scene at
  128^3 keeps ~235 K vertices and a whole training step takes ~130 ms.
* Cells whose 8 corners are all pruned cannot contribute, so ray samples in
  them are dropped before any interpolation ("empty space skipping").

Density is ReLU(interpolated raw value) as in Plenoxels. Colour is
sigmoid(SH(d)) rather than Plenoxels' clamp_min(SH(d) + 0.5, 0): the sigmoid
keeps every rendered colour inside [0, 1] and never has a zero gradient, while
the clamp kills the gradient of any voxel whose colour goes negative in a
channel. A zero SH vector is mid-grey in both.

The official code optimises with RMSprop (density lr ~30) and SGD-like SH
updates inside its CUDA kernels. Here the Trainer's Adam drives both. Adam moves
each parameter by about its lr per step whatever the gradient scale, and ReLU
densities must reach tens (sigma = 50 makes a half-voxel step at 64^3 70 %
opaque), so the density group gets 100 x the run's lr and SH 10 x (with the
CLI's and GUI's lr 1e-2: 1.0 and 0.1; the SH rate is DVGO's for its colour
grid). Measured on lego at 100 px after 300 steps at 64^3 (PSNR on 3 held-out
views; density x / SH x): 30/5 22.9, 100/5 23.8, 300/10 23.9, 100/10 24.8, and
100/10 with the weaker TV weights below 26.0.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.field import Field, StepContext, StepRequests, TrainPolicy, check_options
from models.sh import num_coeffs, sh_basis
from renderer.occupancy import ray_aabb
from renderer.compositing import alpha_weights, composite

# Offsets (8, 3) of a cell's corners; corner c = (i, j, k) with bit pattern c = 4i + 2j + k.
_CORNERS = torch.tensor([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)])

CPU_MAX_RESOLUTION = 128
CUDA_MAX_RESOLUTION = 256


# ---------------------------------------------------------------------------------------
# Pure building blocks (each tested on its own in tests/test_plenoxels.py)
# ---------------------------------------------------------------------------------------
def trilinear_corners(p: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Corner vertices and trilinear weights for points p (N, 3) in vertex units.

    p's coordinates run over [0, n - 1] on a grid of n^3 vertices (values outside
    are clamped onto the boundary cell's faces). Returns flat vertex indices
    (N, 8), index = (i * n + j) * n + k, and weights (N, 8) summing to 1.
    """
    base = p.floor().clamp(0, n - 2)
    frac = (p - base).clamp(0.0, 1.0)
    base = base.long()
    offs = _CORNERS.to(p.device)
    c = base[:, None, :] + offs  # (N, 8, 3)
    idx = (c[..., 0] * n + c[..., 1]) * n + c[..., 2]
    w = torch.where(offs.bool(), frac[:, None, :], 1.0 - frac[:, None, :]).prod(-1)
    return idx, w


class _Interpolate(torch.autograd.Function):
    """Weighted 8-corner gather whose backward writes ONE (M, C) gradient.

    Plain indexing would give every corner's index_select its own dense (M, C)
    zero-filled gradient, summed afterwards: 8 full-grid passes per step.
    Positions are not optimised, so rows and w need no gradient.
    """

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
    """sum_c w[:, c] * data[rows[:, c]] -> (N, C) for data (M, C), rows/w (N, 8).

    Rows of -1 (pruned vertices) must already have weight 0 (any valid row may
    stand in for them).
    """
    return _Interpolate.apply(data, rows, w.to(data.dtype))


def tv_loss(data: torch.Tensor, links: torch.Tensor, rows: torch.Tensor | None = None,
            eps: float = 1e-8, row_vertex: torch.Tensor | None = None) -> torch.Tensor:
    """Total variation of a sparse vertex grid (Plenoxels eq. 4), averaged over vertices.

    data (M, C); links (n, n, n) vertex -> row or -1 (a pruned vertex counts as 0);
    rows (B,) the active rows to evaluate (None: all); row_vertex (M,) the
    inverse of links if the caller has it cached. Per vertex v and channel c:
    sqrt(dx^2 + dy^2 + dz^2 + eps) - sqrt(eps) with dx = value(v + e_x) - value(v)
    (forward differences), summed over channels and averaged over the vertices
    that have all three forward neighbours (those on the far faces are covered by
    their predecessors). The sqrt(eps) offset makes a constant grid exactly 0
    while keeping the gradient finite there.
    """
    n = links.shape[0]
    flat_links = links.reshape(-1).long()
    if row_vertex is None:
        row_vertex = _row_vertices(links)
    if rows is None:
        rows = torch.arange(data.shape[0], device=data.device)
    v = row_vertex[rows]
    i, j, k = v // (n * n), (v // n) % n, v % n
    inner = (i < n - 1) & (j < n - 1) & (k < n - 1)
    rows, v = rows[inner], v[inner]
    if rows.numel() == 0:
        return data.sum() * 0.0
    # One gather for the vertex and its three forward neighbours keeps the
    # backward to a single dense gradient buffer.
    nbs = torch.stack([flat_links[v + step] for step in (n * n, n, 1)])  # (3, B)
    vals = data[torch.cat([rows, nbs.clamp(min=0).reshape(-1)])]
    val = vals[:rows.shape[0]]
    nb_val = vals[rows.shape[0]:].view(3, rows.shape[0], -1) * (nbs >= 0).unsqueeze(-1).to(data.dtype)
    sq = ((nb_val - val) ** 2).sum(0)
    return (torch.sqrt(sq + eps) - math.sqrt(eps)).sum(-1).mean()


def _row_vertices(links: torch.Tensor) -> torch.Tensor:
    """Inverse of links: flat vertex index (M,) of each active row."""
    flat = links.reshape(-1).long()
    active = (flat >= 0).nonzero().squeeze(-1)
    out = torch.empty(int(active.numel()), dtype=torch.long, device=links.device)
    out[flat[active]] = active
    return out


def upsample_vertices(dense: torch.Tensor) -> torch.Tensor:
    """(n, n, n, C) vertex values -> (2n-1, 2n-1, 2n-1, C) by trilinear interpolation.

    The new vertices are the old ones plus all edge, face and cell midpoints, and
    the field is trilinear inside each old cell, so the upsampled grid describes
    exactly the same interpolated function (doubling the cell count, not the
    vertex count, is what makes this exact).
    """
    n = dense.shape[0]
    x = dense.permute(3, 0, 1, 2).unsqueeze(0)
    up = F.interpolate(x, size=(2 * n - 1,) * 3, mode="trilinear", align_corners=True)
    return up.squeeze(0).permute(1, 2, 3, 0).contiguous()


def dilate(mask: torch.Tensor, iterations: int = 1) -> torch.Tensor:
    """Grow a (n, n, n) boolean mask by one vertex (26-neighbourhood) per iteration."""
    m = mask.float()[None, None]
    for _ in range(iterations):
        m = F.max_pool3d(m, 3, stride=1, padding=1)
    return m[0, 0] > 0


def cell_occupancy(links: torch.Tensor) -> torch.Tensor:
    """(n-1)^3 bool: a cell can hold density only if one of its 8 corners is active."""
    act = (links >= 0).float()[None, None]
    return F.max_pool3d(act, 2, stride=1)[0, 0] > 0


# ---------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------
class Plenoxels(Field):
    """Sparse voxel grid of density + SH colour with coarse-to-fine upsampling.

    config keys:
      resolution      cells per axis NOW (updated on upsampling so checkpoints rebuild)
      max_resolution  upsampling cap; None = 128 on CPU, 256 on CUDA (never above that)
      upsample_steps  steps after which the grid is pruned and its resolution doubled
      prune_steps     steps after which empty / invisible voxels are pruned
      bbox            [x0, y0, z0, x1, y1, z1] (or a number r for [-r, r]^3); outside is empty
      sh_degree       0..3 (27 colour values per vertex at 2, the paper's)
      step_ratio      ray step in voxels (0.5 = half a voxel)
      n_coarse        if set, overrides step_ratio: samples across the longest bbox side
      n_fine          accepted for the common set_samples interface; unused
      density_init    initial raw density of every vertex
      density_lr_scale, sh_lr_scale   per-group lr = scale * run lr
      tv_density, tv_sh   weights of the total-variation terms
      tv_fraction     fraction of active vertices drawn each step for the TV estimate
      prune_alpha     prune vertices whose opacity across one voxel is below this
      prune_transmittance  prune vertices seen by sampled training rays only at T below this
      prune_rays      training rays used to estimate transmittance when pruning
      dilation        keep-mask dilation (voxels) so surfaces can still grow
    """

    LABEL = "Plenoxels (voxels + SH)"
    POLICY = TrainPolicy(lr=1e-2)
    STOP_T = 1e-4  # transmittance below which colours are not evaluated
    # Changed by upsampling and restored from the checkpoint's tensor shapes, so a
    # resumed run (built at the starting resolution) may load a later one.
    STATE_OPTIONS = ("resolution",)

    # Schedule: prune early and often while the grid is still mostly empty space (a
    # step's cost is proportional to the active vertices and samples in occupied
    # cells), 64^3 -> 128^3 at step 600 (-> 256^3 at 2000 on CUDA only).
    DEFAULTS = dict(resolution=64, max_resolution=None, upsample_steps=[600, 2000],
                    prune_steps=[10, 30, 100, 200, 400, 800, 1500, 2500],
                    bbox=[-1.5, -1.5, -1.5, 1.5, 1.5, 1.5], sh_degree=2, step_ratio=0.5, n_coarse=None,
                    n_fine=None, density_init=0.1, density_lr_scale=100.0, sh_lr_scale=10.0,
                    tv_density=1e-5, tv_sh=1e-4, tv_fraction=0.1, prune_alpha=0.01,
                    prune_transmittance=0.01, prune_rays=131072, dilation=1)

    def __init__(self, **config):
        super().__init__()
        c = self.config = check_options(type(self), config)
        c["bbox"] = self._check_bbox(c["bbox"])
        for key in ("upsample_steps", "prune_steps"):
            try:
                c[key] = sorted(int(s) for s in c[key])
            except (TypeError, ValueError):
                raise ValueError(f"{key} must be a list of step numbers, got {c[key]!r}") from None
        for key in ("prune_rays", "dilation"):
            if not (isinstance(c[key], int) and c[key] >= 0):
                raise ValueError(f"{key} must be an integer >= 0, got {c[key]!r}")
        res = c["resolution"]
        if not (isinstance(res, int) and 2 <= res <= CUDA_MAX_RESOLUTION):
            raise ValueError(f"resolution must be an integer in 2..{CUDA_MAX_RESOLUTION}, got {res!r}")
        if res > CPU_MAX_RESOLUTION and not torch.cuda.is_available():
            raise ValueError(f"resolution {res} needs CUDA: a {res + 1}^3 grid with its Adam state "
                             f"takes {self._grid_bytes(res) * 4 / 2**30:.1f} GB; the CPU limit is "
                             f"{CPU_MAX_RESOLUTION}")
        if c["max_resolution"] is not None and not (2 <= c["max_resolution"] <= CUDA_MAX_RESOLUTION):
            raise ValueError(f"max_resolution must be in 2..{CUDA_MAX_RESOLUTION}, got {c['max_resolution']}")
        num_coeffs(c["sh_degree"])  # validates the degree
        for key in ("step_ratio", "density_lr_scale", "sh_lr_scale"):
            if not c[key] > 0:
                raise ValueError(f"{key} must be > 0, got {c[key]}")
        for key in ("tv_density", "tv_sh", "prune_alpha", "prune_transmittance"):
            if not c[key] >= 0:
                raise ValueError(f"{key} must be >= 0, got {c[key]}")
        if not 0 < c["tv_fraction"] <= 1:
            raise ValueError(f"tv_fraction must be in (0, 1], got {c['tv_fraction']}")
        if c["n_coarse"] is not None and c["n_coarse"] < 2:
            raise ValueError(f"n_coarse must be >= 2, got {c['n_coarse']}")

        n = res + 1
        n_sh = 3 * num_coeffs(c["sh_degree"])
        self.density_data = nn.Parameter(torch.full((n ** 3, 1), float(c["density_init"])))
        self.sh_data = nn.Parameter(torch.zeros(n ** 3, n_sh))
        self.register_buffer("links", torch.arange(n ** 3, dtype=torch.int32).view(n, n, n))
        self.register_buffer("_cells", torch.ones(res, res, res, dtype=torch.bool), persistent=False)
        self.register_buffer("_row_vertex", torch.arange(n ** 3), persistent=False)
        self.register_buffer("_bbox", torch.tensor(c["bbox"], dtype=torch.float32), persistent=False)

    # -- configuration helpers ---------------------------------------------------------
    @staticmethod
    def _check_bbox(bbox) -> list[float]:
        if isinstance(bbox, (int, float)):
            bbox = [-float(bbox)] * 3 + [float(bbox)] * 3
        try:
            box = [float(v) for v in bbox]
        except (TypeError, ValueError):
            raise ValueError(f"bbox must be a number or 6 numbers [x0, y0, z0, x1, y1, z1], got {bbox!r}") from None
        if len(box) != 6 or not all(box[i] < box[i + 3] for i in range(3)):
            raise ValueError(f"bbox must be [x0, y0, z0, x1, y1, z1] with x0 < x1 etc., got {bbox!r}")
        return box

    def _grid_bytes(self, res: int) -> int:
        return (res + 1) ** 3 * (1 + 3 * num_coeffs(self.config["sh_degree"])) * 4

    @property
    def resolution(self) -> int:
        return self.links.shape[0] - 1

    @property
    def n_active(self) -> int:
        return self.density_data.shape[0]

    @property
    def voxel_size(self) -> float:
        """Smallest cell edge in world units."""
        ext = self._bbox[3:] - self._bbox[:3]
        return float(ext.min()) / self.resolution

    def step_size(self) -> float:
        """World-space distance between ray samples."""
        c = self.config
        if c["n_coarse"] is not None:
            ext = self._bbox[3:] - self._bbox[:3]
            return float(ext.max()) / c["n_coarse"]
        return c["step_ratio"] * self.voxel_size

    # set_samples: n_coarse = samples across the longest bbox side (None keeps the current
    # step); n_fine is unused (no fine pass).

    @classmethod
    def policy(cls, cuda: bool, options: dict) -> TrainPolicy:
        return cls.POLICY

    def param_groups(self, lr: float) -> list[dict]:
        c = self.config
        return [{"params": [self.density_data], "lr": lr * c["density_lr_scale"], "name": "density"},
                {"params": [self.sh_data], "lr": lr * c["sh_lr_scale"], "name": "sh"}]

    # -- field queries ------------------------------------------------------------------
    def _to_vertex_units(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self._bbox[:3], self._bbox[3:]
        return (x - lo) / (hi - lo) * self.resolution

    def _inside(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self._bbox[:3], self._bbox[3:]
        return ((x >= lo) & (x <= hi)).all(-1)

    def _occupied(self, p: torch.Tensor) -> torch.Tensor:
        """(N,) bool for points p (N, 3) in vertex units inside the grid: is their cell non-empty."""
        r = self.resolution
        cell = p.floor().long().clamp(0, r - 1)
        return self._cells[cell[:, 0], cell[:, 1], cell[:, 2]]

    def _corners(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Active rows (N, 8) and weights (N, 8) with pruned corners weighted 0."""
        idx, w = trilinear_corners(p, self.resolution + 1)
        rows = self.links.view(-1)[idx].long()
        live = rows >= 0
        return rows.clamp(min=0), w * live.to(w.dtype)

    def _sh_colour(self, rows, w, basis) -> torch.Tensor:
        """rgb (N, 3) = sigmoid(SH) from corner rows/weights (N, 8) and basis (N, K)."""
        coeffs = interpolate(self.sh_data, rows, w).view(-1, 3, basis.shape[-1])
        return torch.sigmoid((coeffs * basis[:, None, :]).sum(-1))

    def density(self, x: torch.Tensor) -> torch.Tensor:
        """sigma (N,) at world points x (N, 3); zero outside the bbox and in empty cells."""
        sigma = torch.zeros(x.shape[0], device=x.device, dtype=self.density_data.dtype)
        p = self._to_vertex_units(x)
        keep = self._inside(x)
        keep[keep.clone()] = self._occupied(p[keep])
        if keep.any():
            rows, w = self._corners(p[keep])
            sigma = sigma.index_put((keep.nonzero().squeeze(-1),),
                                    F.relu(interpolate(self.density_data, rows, w).squeeze(-1)))
        return sigma

    def radiance(self, x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigma (N,), rgb (N, 3)) at points x (N, 3) seen along unit directions d (N, 3)."""
        rgb = torch.zeros(x.shape[0], 3, device=x.device, dtype=self.sh_data.dtype)
        sigma = self.density(x)
        p = self._to_vertex_units(x)
        inside = self._inside(x)
        if inside.any():
            rows, w = self._corners(p[inside])
            basis = sh_basis(F.normalize(d[inside], dim=-1), self.config["sh_degree"])
            rgb = rgb.index_put((inside.nonzero().squeeze(-1),), self._sh_colour(rows, w, basis))
        return sigma, rgb

    # -- rendering ----------------------------------------------------------------------
    def _ray_samples(self, rays_o, dirs, near_w, far_w, jitter: bool):
        """Uniform steps through the bbox: t (R, S) world depths and valid (R, S)."""
        step = self.step_size()
        t_in, t_out = ray_aabb(rays_o, dirs, self._bbox[:3], self._bbox[3:])
        t_in = torch.maximum(t_in, near_w)
        t_out = torch.minimum(t_out, far_w)
        span = (t_out - t_in).clamp(min=0.0)
        t_in = torch.where(span > 0, t_in, near_w)  # keep t finite for rays that miss
        n = max(1, int(math.ceil(float(span.max()) / step))) if span.numel() else 1
        offset = torch.rand_like(t_in)[:, None] if jitter else 0.5
        t = t_in[:, None] + (torch.arange(n, device=dirs.device, dtype=dirs.dtype) + offset) * step
        return t, t < (t_in + span)[:, None], step

    def render_rays(self, rays_o: torch.Tensor, rays_d: torch.Tensor, near: float, far: float,
                    background=None, train: bool = False) -> dict[str, torch.Tensor]:
        """rays (R, 3) -> rgb (R, 3), depth (R,), acc (R,), weights (R, S), t (R, S).

        Depth and t are in units of the given rays_d (as the NeRF model reports
        them); internally rays are unit length so the step is a world distance.
        Samples are jittered by a random fraction of a step per ray in training.
        """
        d_norm = rays_d.norm(dim=-1)
        dirs = rays_d / d_norm[:, None]
        near_w = torch.as_tensor(near, dtype=dirs.dtype, device=dirs.device) * d_norm
        far_w = torch.as_tensor(far, dtype=dirs.dtype, device=dirs.device) * d_norm
        t, valid, step = self._ray_samples(rays_o, dirs, near_w, far_w, jitter=train)
        n_rays, n_samp = t.shape
        pts = rays_o[:, None, :] + dirs[:, None, :] * t[..., None]  # (R, S, 3)
        p = self._to_vertex_units(pts)
        sel = valid.nonzero()  # (N, 2) ray, sample
        at = (sel[:, 0], sel[:, 1])
        occ = self.crop_density(pts[at], self._occupied(p[at]), train)  # the crop box drops samples as empty cells do
        sel = sel[occ]
        flat = sel[:, 0] * n_samp + sel[:, 1]
        sigma_full = torch.zeros(n_rays * n_samp, device=dirs.device, dtype=self.density_data.dtype)
        rgb_full = torch.zeros(n_rays * n_samp, 3, device=dirs.device, dtype=self.sh_data.dtype)
        if sel.shape[0] > 0:
            rows, w = self._corners(p[sel[:, 0], sel[:, 1]])
            sigma = F.relu(interpolate(self.density_data, rows, w).squeeze(-1))
            sigma_full = sigma_full.index_put((flat,), sigma)
            # Colour only where it can be seen: with zero density the sample's weight
            # (and gradient) is exactly 0; behind transmittance T < STOP_T all the
            # remaining weights sum to < STOP_T, so leaving their colour at 0 changes
            # the pixel by under STOP_T (Plenoxels' early ray termination).
            with torch.no_grad():
                sd = sigma_full.detach().view(n_rays, n_samp) * step
                trans = torch.exp(-(torch.cumsum(sd, -1) - sd)).view(-1)
            live = (sigma > 0) & (trans[flat] > self.STOP_T)
            basis = sh_basis(dirs, self.config["sh_degree"])[sel[live, 0]]
            rgb = self._sh_colour(rows[live], w[live], basis)
            rgb_full = rgb_full.index_put((flat[live],), rgb)
        elif train:
            # Keep the loss attached to the parameters when every sample was skipped.
            sigma_full = sigma_full + 0.0 * self.density_data.sum()
            rgb_full = rgb_full + 0.0 * self.sh_data.sum()
        sigma_full = sigma_full.view(n_rays, n_samp)
        out = composite(sigma_full, rgb_full.view(n_rays, n_samp, 3), t, dirs, background,
                        last_delta=step)
        t_user = t / d_norm[:, None]
        return {"rgb": out["rgb"], "depth": out["depth"] / d_norm, "acc": out["acc"],
                "weights": out["weights"], "t": t_user,
                # Same names as NeRFModel so the GUI's weight inspector can show them.
                "t_coarse": t_user, "weights_coarse": out["weights"]}

    def loss_terms(self, out: dict, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """'mse' plus 'tv', the weighted TV of density and SH on a random subset of vertices."""
        terms = {"mse": F.mse_loss(out["rgb"], target)}
        c = self.config
        if c["tv_density"] > 0 or c["tv_sh"] > 0:
            m = self.n_active
            k = max(1, int(round(m * c["tv_fraction"])))
            rows = torch.randint(0, m, (k,), device=self.density_data.device) if k < m else None
            tv = 0.0
            if c["tv_density"] > 0:
                tv = tv + c["tv_density"] * tv_loss(self.density_data, self.links, rows,
                                                        row_vertex=self._row_vertex)
            if c["tv_sh"] > 0:
                tv = tv + c["tv_sh"] * tv_loss(self.sh_data, self.links, rows,
                                                   row_vertex=self._row_vertex)
            terms["tv"] = tv
        return terms

    # -- pruning and upsampling ------------------------------------------------------------
    @torch.no_grad()
    def max_transmittance(self, rays_o: torch.Tensor, rays_d: torch.Tensor, near: float, far: float,
                          chunk: int = 4096) -> torch.Tensor:
        """Per active row (M,): the largest transmittance T with which any sample of the
        given rays reached one of the cells the vertex belongs to; -1 if never reached."""
        best = torch.full((self.n_active,), -1.0, device=rays_o.device)
        for s in range(0, rays_o.shape[0], chunk):
            o, d = rays_o[s:s + chunk], rays_d[s:s + chunk]
            d_norm = d.norm(dim=-1)
            dirs = d / d_norm[:, None]
            t, valid, step = self._ray_samples(o, dirs, near * d_norm, far * d_norm, jitter=False)
            pts = o[:, None, :] + dirs[:, None, :] * t[..., None]
            p = self._to_vertex_units(pts)
            sel = valid.nonzero()
            sel = sel[self._occupied(p[sel[:, 0], sel[:, 1]])]
            if sel.shape[0] == 0:
                continue
            rows, w = self._corners(p[sel[:, 0], sel[:, 1]])
            sigma = torch.zeros_like(t)
            sigma[sel[:, 0], sel[:, 1]] = F.relu(interpolate(self.density_data, rows, w).squeeze(-1))
            delta = torch.full_like(t, step)
            _, trans = alpha_weights(sigma, delta)
            tr = trans[sel[:, 0], sel[:, 1]][:, None].expand_as(rows)
            tr = torch.where(w > 0, tr, torch.full_like(tr, -1.0))
            best.scatter_reduce_(0, rows.reshape(-1), tr.reshape(-1), reduce="amax")
        return best

    @torch.no_grad()
    def prune(self, rays_o: torch.Tensor | None = None, rays_d: torch.Tensor | None = None,
              near: float = 0.0, far: float = 1e10) -> dict:
        """Drop vertices with low density or (given training rays) low transmittance.

        A vertex stays if one voxel length of its density has opacity >= prune_alpha
        and, when rays are given and some sample reached it, it was reached with
        T >= prune_transmittance (so the inside of solid objects goes); the kept set
        is then dilated so surfaces can still grow. Returns counts before/after.
        """
        c = self.config
        before = self.n_active
        sigma_min = -math.log1p(-min(c["prune_alpha"], 1 - 1e-6)) / self.voxel_size
        keep_row = F.relu(self.density_data[:, 0]) >= sigma_min
        if rays_o is not None and c["prune_transmittance"] > 0:
            best_t = self.max_transmittance(rays_o, rays_d, near, far)
            keep_row &= (best_t < 0) | (best_t >= c["prune_transmittance"])
        row_vertex = self._row_vertex
        keep = torch.zeros(self.links.numel(), dtype=torch.bool, device=self.links.device)
        keep[row_vertex[keep_row]] = True
        keep = dilate(keep.view_as(self.links), c["dilation"]) if c["dilation"] > 0 else keep.view_as(self.links)
        self._relink(keep, *self._dense())
        return {"before": before, "after": self.n_active}

    def _dense(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense (n, n, n, C) density and SH grids with zeros at pruned vertices."""
        n = self.resolution + 1
        flat = self.links.view(-1).long()
        act = flat >= 0
        dens = torch.zeros(n ** 3, 1, device=flat.device)
        sh = torch.zeros(n ** 3, self.sh_data.shape[1], device=flat.device)
        dens[act] = self.density_data.detach()[flat[act]]
        sh[act] = self.sh_data.detach()[flat[act]]
        return dens.view(n, n, n, 1), sh.view(n, n, n, -1)

    def _relink(self, active: torch.Tensor, dens: torch.Tensor, sh: torch.Tensor) -> None:
        """Replace parameters by the values of dense grids (n, n, n, C) at the active vertices."""
        n = active.shape[0]
        flat = active.reshape(-1)
        links = torch.full((n ** 3,), -1, dtype=torch.int32, device=flat.device)
        idx = flat.nonzero().squeeze(-1)
        links[idx] = torch.arange(idx.numel(), dtype=torch.int32, device=flat.device)
        self.links = links.view(n, n, n)
        self.density_data = nn.Parameter(dens.reshape(n ** 3, -1)[idx].contiguous())
        self.sh_data = nn.Parameter(sh.reshape(n ** 3, -1)[idx].contiguous())
        self._refresh()

    def _refresh(self) -> None:
        """Recompute what is derived from links (not saved in checkpoints)."""
        self._cells = cell_occupancy(self.links)
        self._row_vertex = _row_vertices(self.links)
        self.config["resolution"] = self.resolution

    @torch.no_grad()
    def upsample(self) -> None:
        """Double the cell count per axis, preserving the interpolated field exactly.

        A new vertex is active if any old vertex it interpolates from was active;
        the others interpolate only zeros, so dropping them changes nothing.
        """
        dens, sh = self._dense()
        act = (self.links >= 0).float()[..., None]
        up_act = upsample_vertices(act)[..., 0] > 0
        self._relink(up_act, upsample_vertices(dens), upsample_vertices(sh))

    def resolution_cap(self) -> int:
        hard = CUDA_MAX_RESOLUTION if self.density_data.is_cuda else CPU_MAX_RESOLUTION
        cap = self.config["max_resolution"]
        return hard if cap is None else min(cap, hard)

    def _training_rays(self, ctx: StepContext):
        n = self.config["prune_rays"]
        if n <= 0:
            return None, None
        os_, ds = [], []
        for s in range(0, n, 16384):
            o, d = ctx.training_rays(min(16384, n - s))
            os_.append(o)
            ds.append(d)
        return torch.cat(os_), torch.cat(ds)

    def step_hook(self, step: int, ctx: StepContext) -> StepRequests | None:
        """Prune at prune_steps; prune then upsample at upsample_steps (within the cap)."""
        c = self.config
        if not ctx.owns(self.density_data):
            # Our parameters were replaced behind the optimiser's back (a rollback that
            # loaded a snapshot of another grid size): optimise the current ones.
            return StepRequests(rebuild_optimizer=True)
        if step not in c["prune_steps"] and step not in c["upsample_steps"]:
            return None
        rays_o, rays_d = self._training_rays(ctx)
        stats = self.prune(rays_o, rays_d, ctx.near, ctx.far)
        msg = (f"step {step}: plenoxels pruned {stats['before']} -> {stats['after']} active vertices "
               f"at {self.resolution}^3")
        if step in c["upsample_steps"]:
            new = 2 * self.resolution
            if new <= self.resolution_cap():
                self.upsample()
                up = self.n_active
                # Most new vertices between a surface and pruned space interpolate a
                # density below the threshold; dropping them at once (no rays: cheap)
                # is what Plenoxels' resample does with its sigma threshold.
                self.prune()
                msg += f", upsampled to {new}^3 ({up} -> {self.n_active} active)"
            else:
                msg += (f", upsampling to {new}^3 skipped (limit {self.resolution_cap()} on "
                        f"{self.density_data.device.type})")
        return StepRequests(rebuild_optimizer=True, events=[msg])

    # -- checkpoints ------------------------------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The number of active vertices is data, not configuration: resize the
        # parameters to the checkpoint's before the strict shape check. Tensors
        # whose shape already fits are loaded in place, so an optimiser holding
        # them stays valid.
        links = state_dict.get(prefix + "links")
        if links is not None and links.dim() == 3:
            dev = self.links.device
            if links.shape != self.links.shape:
                self.links = torch.empty(links.shape, dtype=torch.int32, device=dev)
            for name in ("density_data", "sh_data"):
                src = state_dict.get(prefix + name)
                if src is not None and src.dim() == 2 and src.shape != getattr(self, name).shape:
                    setattr(self, name, nn.Parameter(torch.empty(src.shape, device=dev)))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._refresh()
