"""Plenoxels (Fridovich-Keil, Yu et al. 2022): a sparse voxel grid of densities and
spherical-harmonic colours, no network.

What follows the paper and its code (svox2: opt/opt.py, opt/configs/syn.json, llff.json):

* a sparse grid (models/voxel_grid.py): ``links`` indexes packed arrays of the active
  vertices, so a 512^3 grid holds only the few million vertices near surfaces;
* coarse to fine: 128^3 -> 256^3 -> 512^3 on CUDA (64^3 -> 128^3 on a CPU), each
  upsampling exact (the doubled grid interpolates the same field) and followed by
  pruning: by the largest rendering weight a vertex gets from the training rays (Blender
  scenes) or by density (forward-facing NDC scenes), then a dilation by ``dilation``
  vertices so surfaces can still move;
* svox2's RMSProp (models/grid_optim.py) with its learning rates and schedules: density
  lr 30 decaying to 0.05 after a delayed start, SH lr 1e-2 decaying to 5e-6;
* TV on density and SH on a random 1 % of the vertices a step with svox2's weights
  (1e-5 / 1e-3 on Blender scenes, used until the grid passes ``tv_max_resolution``), and
  the Cauchy sparsity prior (weight 0 on Blender scenes as in syn.json, 1e-12 in NDC);
* colour max(SH + 0.5, 0) and density ReLU(raw), the box as the ray's extent (Blender) or
  the NDC cube (LLFF), composited onto the scene's background.

On CUDA rays go through the Triton kernels (models/kernels/plenoxel_render.py), which
march the grid itself (empty blocks skipped in one stride, early termination) and fuse the
trilinear SH gather, compositing and their backward; renders without gradients use the
frame kernel (whole views in one launch, empty space skipped by the cells that can have
positive density). Elsewhere the torch reference (voxel_grid.render_reference) renders the
same samples.
"""
from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from models import voxel_grid as vg
from models.field import Field, StepContext, StepRequests, TrainPolicy, check_options
from models.grid_optim import GridRMSprop
from renderer.occupancy import ray_aabb
from models.sh import num_coeffs, sh_basis

CPU_MAX_RESOLUTION = 128
CUDA_MAX_RESOLUTION = 512
COARSE_BLOCKS = 64  # blocks per axis of the kernels' empty-space map
FRAME_BLOCK_CELLS = 4  # cells per side of a block in the frame kernel's coarse map
FRAME_RAYS = 1 << 21  # rays per render_rays call when whole views are rendered on CUDA
_POSITIVE = ("step_ratio", "density_lr_scale", "sh_lr_scale", "density_lr_final", "sh_lr_final",
             "decay_steps", "rms_beta", "tv_fraction")
_NON_NEGATIVE = ("tv_density", "tv_sh", "sparsity", "weight_threshold", "density_threshold",
                 "prune_stop_t", "stop_t", "density_delay_steps", "density_delay_mult")


def _validate(c: dict) -> None:
    """Check and normalise a Plenoxels config in place (bbox as 6 numbers, step lists sorted)."""
    if isinstance(c["bbox"], (int, float)):
        c["bbox"] = [-float(c["bbox"])] * 3 + [float(c["bbox"])] * 3
    try:
        box = [float(v) for v in c["bbox"]]
    except (TypeError, ValueError):
        box = []
    if len(box) != 6 or not all(box[i] < box[i + 3] for i in range(3)):
        raise ValueError(f"bbox must be [x0, y0, z0, x1, y1, z1] with x0 < x1 etc., got {c['bbox']!r}")
    c["bbox"] = box
    for key in ("upsample_steps", "prune_steps"):
        try:
            c[key] = sorted(int(s) for s in c[key])
        except (TypeError, ValueError):
            raise ValueError(f"{key} must be a list of step numbers, got {c[key]!r}") from None
    for key in ("prune_rays", "dilation"):
        if not (isinstance(c[key], int) and c[key] >= 0):
            raise ValueError(f"{key} must be an integer >= 0, got {c[key]!r}")
    res, cap = c["resolution"], c["max_resolution"]
    if not (isinstance(res, int) and 2 <= res <= CUDA_MAX_RESOLUTION):
        raise ValueError(f"resolution must be an integer in 2..{CUDA_MAX_RESOLUTION}, got {res!r}")
    if res > CPU_MAX_RESOLUTION and not torch.cuda.is_available():
        raise ValueError(f"resolution {res} needs CUDA; the CPU limit is {CPU_MAX_RESOLUTION}")
    if cap is not None and not 2 <= cap <= CUDA_MAX_RESOLUTION:
        raise ValueError(f"max_resolution must be in 2..{CUDA_MAX_RESOLUTION}, got {cap}")
    num_coeffs(c["sh_degree"])  # validates the degree
    for key in _POSITIVE:
        if not c[key] > 0:
            raise ValueError(f"{key} must be > 0, got {c[key]}")
    for key in _NON_NEGATIVE:
        if not c[key] >= 0:
            raise ValueError(f"{key} must be >= 0, got {c[key]}")
    if c["prune_by"] not in ("weight", "density"):
        raise ValueError(f"prune_by must be 'weight' or 'density', got {c['prune_by']!r}")
    if not (c["tv_fraction"] <= 1 and c["rms_beta"] < 1):
        raise ValueError("tv_fraction must be in (0, 1] and rms_beta in (0, 1)")
    if c["n_coarse"] is not None and c["n_coarse"] < 2:
        raise ValueError(f"n_coarse must be >= 2, got {c['n_coarse']}")


class FrameRenderer:
    """Renders without gradients through the frame kernel, with its empty-space maps of the
    model's grid: the cells that can have positive density (voxel_grid.positive_cells) as
    bits, and their coarse blocks. The maps are rebuilt when the links or the densities
    change (a step, pruning, a checkpoint) and held through weak references, so a replaced
    grid is not kept alive. If the kernel fails, renders go back to the training kernels'
    forward (the same samples) and ``error`` says why; the training kernels stay on."""

    def __init__(self):
        self._key, self._maps, self.error = None, None, None

    def grid(self, model: "Plenoxels") -> dict:
        """The kernels' grid dict of the model with the maps (render_frame's argument)."""
        links, dens = model.links, model.density_data
        key = (links._version, dens._version, FRAME_BLOCK_CELLS)
        same = self._key is not None and self._key[0]() is links and self._key[1]() is dens
        if not (same and self._key[2:] == key):
            cells = vg.positive_cells(links, model._row_vertex, dens.detach())
            self._maps = (vg.pack_bits(cells), vg.coarse_occupancy(cells, FRAME_BLOCK_CELLS))
            self._key = (weakref.ref(links), weakref.ref(dens)) + key
        g = model._grid()
        g.update(bits=self._maps[0], occ=self._maps[1], block=FRAME_BLOCK_CELLS)
        return g

    def render(self, model: "Plenoxels", packed, basis, bg, step: float, stop_t: float) -> torch.Tensor | None:
        """render_frame's (R, 6) output, or None once the kernel has failed."""
        if self.error is not None:
            return None
        try:
            from models.kernels.plenoxel_render import render_frame
            return render_frame(self.grid(model), packed, basis, bg, step, stop_t)
        except Exception as exc:  # noqa: BLE001 - a render that fails must not stop training
            import os
            import sys
            if os.environ.get("NERFLAB_KERNELS") == "triton":
                raise
            self.error = repr(exc)[:300]
            print(f"warning: plenoxels frame kernel failed, rendering through the training kernels ({self.error})",
                  file=sys.stderr)
            return None


class Plenoxels(Field):
    """Sparse voxel grid of density + SH colour with coarse-to-fine upsampling.

    config keys (CUDA defaults; ``options_for`` swaps in CPU_OPTIONS and NDC_OPTIONS):
      resolution      cells per axis NOW (updated on upsampling so checkpoints rebuild)
      max_resolution  upsampling cap; None = 512 on CUDA, 128 on a CPU
      upsample_steps  steps after which the grid doubles (then is pruned)
      prune_steps     extra steps at which it is pruned at its current resolution
      bbox            [x0, y0, z0, x1, y1, z1] (or r for [-r, r]^3); outside is empty
      init_radius     initial active vertices: within this fraction of the half box of the
                      centre (svox2's sphere init; None = the whole box)
      sh_degree       0..3 (2, the paper's: 27 colour values per vertex)
      step_ratio      ray step in voxels; n_coarse (if set) overrides it as samples across
                      the box; n_fine is accepted for the common interface and unused
      density_init    initial raw density
      density_lr_scale, sh_lr_scale  group lr = scale * run lr (1e-2: 30 and 1e-2)
      density_lr_final, sh_lr_final  final lr / initial lr of each group's decay
      decay_steps     steps of the log-linear decays; density_delay_steps /
                      density_delay_mult: the density lr rises from mult * lr over these
      rms_beta        RMSProp decay of the mean square
      tv_density, tv_sh, tv_fraction  TV weights and the fraction of vertices drawn a step
      tv_max_resolution  TV only while the grid is at most this fine (None: always)
      sparsity        weight of the Cauchy prior sum log(1 + 2 sigma^2) over samples
      prune_by        "weight" or "density"; weight_threshold (divided by the resolution)
                      or density_threshold; prune_stop_t ends the weight march (svox2's 0.2)
      prune_rays      training rays drawn for the weights; dilation in vertices
      stop_t          transmittance below which a ray stops (early termination)
    """

    LABEL = "Plenoxels (voxels + SH)"
    STATE_OPTIONS = ("resolution",)
    DEFAULTS = dict(resolution=128, max_resolution=None, upsample_steps=[2000, 7000], prune_steps=[300, 1000, 15000],
                    bbox=[-1.5, -1.5, -1.5, 1.5, 1.5, 1.5], init_radius=1.0, sh_degree=2, step_ratio=0.5,
                    n_coarse=None, n_fine=None, density_init=0.1, density_lr_scale=3000.0, sh_lr_scale=1.0,
                    density_lr_final=5e-2 / 30, sh_lr_final=5e-6 / 1e-2, decay_steps=100_000,
                    density_delay_steps=5000, density_delay_mult=0.01, rms_beta=0.95, tv_density=1e-5,
                    tv_sh=1e-3, tv_fraction=0.01, tv_max_resolution=256, sparsity=0.0, prune_by="weight",
                    weight_threshold=0.256, density_threshold=5.0, prune_stop_t=0.2,
                    prune_rays=1 << 23, dilation=2, stop_t=1e-4)
    # A 2-core CPU makes a few hundred steps a minute: a coarser grid (so a smaller density
    # lr: a 64^3 voxel is 4x svox2's 256^3 one), a short lr delay and decay, and frequent
    # pruning with a thinner dilation, which keeps a CPU step cheap (its cost follows the
    # active vertices and occupied samples).
    CPU_OPTIONS = dict(resolution=64, upsample_steps=[600], prune_steps=[50, 150, 300, 1200, 2500],
                       density_lr_scale=1000.0, density_delay_steps=100, decay_steps=20_000,
                       prune_rays=1 << 14, dilation=1)
    NDC_OPTIONS = dict(bbox=1.0, init_radius=None, prune_by="density", tv_density=5e-4, tv_sh=5e-3,
                       tv_max_resolution=None, sparsity=1e-12)
    def __init__(self, **config):
        super().__init__()
        c = self.config = check_options(type(self), config)
        _validate(c)
        res = c["resolution"]
        self.register_buffer("_bbox", torch.tensor(c["bbox"], dtype=torch.float32), persistent=False)
        n = res + 1
        active = torch.ones(n, n, n, dtype=torch.bool)
        if c["init_radius"] is not None:
            ax = torch.linspace(-1.0, 1.0, n)
            r2 = ax[:, None, None] ** 2 + ax[None, :, None] ** 2 + ax[None, None, :] ** 2
            active = r2.sqrt() <= c["init_radius"] + 3 ** 0.5 / res
        links, vertices = vg.build_links(active)
        m = vertices.numel()
        self.density_data = nn.Parameter(torch.full((m, 1), float(c["density_init"])))
        self.sh_data = nn.Parameter(torch.zeros(m, 3 * num_coeffs(c["sh_degree"])))
        self.register_buffer("links", links)
        # Derived from links (_refresh); buffers so that .to() moves them, not saved.
        for name in ("_cells", "_occ", "_row_vertex"):
            self.register_buffer(name, None, persistent=False)
        self._optimizer = None  # weakref to the GridRMSprop make_optimizer built last
        self._frame = FrameRenderer()
        self._carry = None  # running mean squares remapped by the last pruning / upsampling
        self._refresh()

    # -- configuration ----------------------------------------------------------------------
    @classmethod
    def options_for(cls, cuda: bool, **knobs) -> dict:
        """The paper's schedule on CUDA, CPU_OPTIONS elsewhere; NDC_OPTIONS for forward-facing
        scenes; a snapshot's options (``arch``) win."""
        opts = {} if cuda else dict(cls.CPU_OPTIONS)
        if knobs.get("ndc"):
            opts.update(cls.NDC_OPTIONS)
        opts.update(knobs.get("arch") or {})
        return opts

    @classmethod
    def policy(cls, cuda: bool, options: dict) -> TrainPolicy:
        # The run's lr scales both groups; their decays live in the optimiser (per group,
        # as svox2's), so the trainer's own schedule is flat.
        return TrainPolicy(lr=1e-2, lr_final_ratio=1.0, batch_rays_cuda=8192)

    def param_groups(self, lr: float) -> list[dict]:
        """svox2's groups. Its lrs are for scenes scaled into [-1, 1]^3; a density is per unit
        length, so the same change of opacity per step takes the density lr times 2 / the box
        size (2/3 for the 3-unit Blender box)."""
        c = self.config
        box = max(b - a for a, b in zip(c["bbox"][:3], c["bbox"][3:]))
        return [{"params": [self.density_data], "lr": lr * c["density_lr_scale"] * 2.0 / box, "name": "density",
                 "lr_final_ratio": c["density_lr_final"], "decay_steps": c["decay_steps"],
                 "delay_steps": c["density_delay_steps"], "delay_mult": c["density_delay_mult"]},
                {"params": [self.sh_data], "lr": lr * c["sh_lr_scale"], "name": "sh",
                 "lr_final_ratio": c["sh_lr_final"], "decay_steps": c["decay_steps"]}]

    def make_optimizer(self, groups: list[dict], step: int, cuda: bool) -> torch.optim.Optimizer:
        """svox2's RMSProp, seeded with the running mean squares carried over the last pruning
        or upsampling (svox2 resets them there: every touched voxel then takes a full-lr step
        at once, which cost a third of the PSNR for tens of steps in a 32^3 test)."""
        opt = GridRMSprop(groups, beta=self.config["rms_beta"], step=step)
        for p, sq in zip((self.density_data, self.sh_data), self._carry or ()):
            if sq is not None and sq.shape == p.shape:
                opt.state[p]["square_avg"] = sq
        self._carry, self._optimizer = None, weakref.ref(opt)
        return opt

    def _opt_arrays(self) -> list[torch.Tensor]:
        """density, sh and their running mean squares (zeros without an optimiser)."""
        opt = self._optimizer() if self._optimizer is not None else None
        out = [self.density_data.detach(), self.sh_data.detach()]
        for p in (self.density_data, self.sh_data):
            st = opt.state.get(p, {}) if opt is not None else {}
            out.append(st.get("square_avg", torch.zeros_like(p)).detach())
        return out

    # -- geometry -----------------------------------------------------------------------------
    @property
    def resolution(self) -> int:
        return self.links.shape[0] - 1

    @property
    def n_active(self) -> int:
        return self.density_data.shape[0]

    def step_size(self) -> float:
        """Distance between ray samples in grid units (voxels)."""
        n = self.config["n_coarse"]
        return self.resolution / n if n is not None else self.config["step_ratio"]

    def resolution_cap(self) -> int:
        hard = CUDA_MAX_RESOLUTION if self.density_data.is_cuda else CPU_MAX_RESOLUTION
        cap = self.config["max_resolution"]
        return hard if cap is None else min(cap, hard)

    def _refresh(self) -> None:
        """Recompute what is derived from links (not saved in checkpoints)."""
        r = self.resolution
        self._cells = vg.cell_occupancy(self.links)
        self._block = max(1, -(-r // COARSE_BLOCKS))
        self._occ = vg.coarse_occupancy(self._cells, self._block)
        self._row_vertex = vg.row_vertices(self.links)
        self.config["resolution"] = r

    def _grid(self, links=None, density=None) -> dict:
        links = self.links if links is None else links
        cells = self._cells if links is self.links else vg.cell_occupancy(links)
        block = max(1, -(-(links.shape[0] - 1) // COARSE_BLOCKS))
        occ = self._occ if links is self.links else vg.coarse_occupancy(cells, block)
        dens = self.density_data if density is None else density
        return {"links": links.contiguous(), "density": dens.detach().reshape(-1).contiguous(),
                "sh": self.sh_data.detach().contiguous(), "occ": occ.contiguous(), "cells": cells,
                "res": links.shape[0] - 1, "block": block}

    def _rays(self, rays_o, rays_d, near, far, res=None):
        return vg.grid_rays(rays_o.float(), rays_d.float(), near, far, self._bbox[:3], self._bbox[3:],
                            res or self.resolution)

    # -- field queries --------------------------------------------------------------------------
    def _lookup(self, x: torch.Tensor):
        """Rows/weights (N, 8) of world points x (N, 3) and whether each is inside the box."""
        lo, hi = self._bbox[:3], self._bbox[3:]
        p = (x - lo) / (hi - lo) * self.resolution
        rows, w = vg.corner_rows(self.links, p)
        inside = ((x >= lo) & (x <= hi)).all(-1)
        return rows, w * inside[:, None].to(w.dtype)

    def density(self, x: torch.Tensor) -> torch.Tensor:
        """sigma (N,) at world points x (N, 3); zero outside the box and in pruned space."""
        rows, w = self._lookup(x)
        return F.relu(vg.interpolate(self.density_data, rows, w)[:, 0])

    def radiance(self, x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigma (N,), rgb (N, 3)) at points x (N, 3) seen along directions d (N, 3)."""
        rows, w = self._lookup(x)
        basis = sh_basis(F.normalize(d, dim=-1), self.config["sh_degree"])
        coeffs = vg.interpolate(self.sh_data, rows, w).view(-1, 3, basis.shape[-1])
        rgb = F.relu((coeffs * basis[:, None, :]).sum(-1) + 0.5).clamp(max=1.0)
        return F.relu(vg.interpolate(self.density_data, rows, w)[:, 0]), rgb

    # -- rendering --------------------------------------------------------------------------------
    def render_chunk(self, cuda: bool) -> int:
        # The kernels keep no per-sample buffers (~0.3 kB a ray in all): a whole frame is one
        # launch, which also balances its rays' very unequal work over the GPU.
        return FRAME_RAYS if cuda else super().render_chunk(cuda)

    def _use_kernels(self, x: torch.Tensor) -> bool:
        from renderer import kernels
        return kernels.runs_for(x)

    def render_rays(self, rays_o: torch.Tensor, rays_d: torch.Tensor, near, far,
                    background=None, train: bool = False) -> dict[str, torch.Tensor]:
        """rays (R, 3) -> rgb (R, 3), depth (R,) in units of rays_d, acc (R,), cauchy (R,); the
        torch path adds per-sample weights and t (the GUI's inspector). Samples start at a
        random fraction of a step in training, at half a step otherwise; colours are clipped
        to [0, 1] outside training (svox2 clips at evaluation)."""
        if self.crop is not None and not train:
            # The crop box as each ray's segment: the same as zeroing density outside it for a
            # grid, whose last sample is not stretched to infinity (renderer/crop.py).
            t_in, t_out = ray_aabb(rays_o.float(), rays_d.float(), self.crop.lo, self.crop.hi)
            near = torch.maximum(torch.as_tensor(near, dtype=t_in.dtype, device=t_in.device), t_in)
            far = torch.minimum(torch.as_tensor(far, dtype=t_in.dtype, device=t_in.device), t_out)
        rays = self._rays(rays_o, rays_d, near, far)
        n = rays_o.shape[0]
        dev = rays["o"].device
        offset = torch.rand(n, device=dev) if train else torch.full((n,), 0.5, device=dev)
        basis = sh_basis(rays["dirs"], self.config["sh_degree"])
        bg = torch.as_tensor(0.0 if background is None else background, dtype=torch.float32, device=dev)
        bg = bg.expand(n, 3).contiguous()
        step, stop_t = self.step_size(), self.config["stop_t"]
        out = None
        if self._use_kernels(rays["o"]) and (train or n > 16):
            # Without gradients (views, evaluation) through the frame kernel: the same samples.
            out = self._render_kernel(rays, offset, basis, bg, step, stop_t,
                                      frame=not train and not torch.is_grad_enabled())
        if out is None:
            ref = vg.render_reference(self.links, self.density_data, self.sh_data, self._cells, rays, offset,
                                      step, stop_t, basis, bg)
            t_user = ref["t"] * (rays["wps"] / rays["d_norm"])[:, None]
            out = {k: ref[k] for k in ("rgb", "depth", "acc", "cauchy")}
            out.update(weights=ref["weights"], t=t_user, t_coarse=t_user, weights_coarse=ref["weights"])
        out["depth"] = out["depth"] / rays["d_norm"]
        if not train:
            out["rgb"] = out["rgb"].clamp(0.0, 1.0)
        return out

    def _render_kernel(self, rays, offset, basis, bg, step, stop_t, frame: bool) -> dict | None:
        try:
            from models.kernels.plenoxel_render import GridRender, pack_rays
            packed = pack_rays(rays, offset, step)
            o = self._frame.render(self, packed, basis, bg, step, stop_t) if frame else None
            if o is not None:
                rgb, depth, acc, cauchy = o[:, :3], o[:, 3], o[:, 4], o[:, 5]
            else:
                rgb, depth, acc, cauchy = GridRender.apply(self.density_data, self.sh_data, packed, basis, bg,
                                                           self._grid(), step, stop_t)
        except Exception as exc:  # noqa: BLE001 - a kernel that fails must not stop training
            import os
            from renderer import kernels
            if os.environ.get("NERFLAB_KERNELS") == "triton":
                raise
            kernels.disable(f"plenoxels render: {exc!r}"[:300])
            return None
        return {"rgb": rgb, "depth": depth, "acc": acc, "cauchy": cauchy}

    def loss_terms(self, out: dict, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """'mse', 'tv' (svox2's sparse TV, scaled by resolution / 256 as there) while the grid
        is at most tv_max_resolution, and 'sparsity' (the Cauchy prior) when weighted."""
        c = self.config
        terms = {"mse": F.mse_loss(out["rgb"], target)}
        if c["sparsity"] > 0:
            terms["sparsity"] = c["sparsity"] * out["cauchy"].sum()
        res = self.resolution
        if (c["tv_density"] > 0 or c["tv_sh"] > 0) and (c["tv_max_resolution"] is None
                                                       or res <= c["tv_max_resolution"]):
            m = self.n_active
            rows = torch.randint(0, m, (max(1, int(m * c["tv_fraction"])),), device=self.links.device)
            tv = 0.0
            for weight, data in ((c["tv_density"], self.density_data), (c["tv_sh"], self.sh_data)):
                if weight > 0:
                    tv = tv + vg.sparse_tv(data, self.links, rows, self._row_vertex, weight * res / 256)
            terms["tv"] = tv
        return terms

    # -- pruning and upsampling -------------------------------------------------------------------
    @torch.no_grad()
    def max_weights(self, rays_o, rays_d, near, far, links=None, density=None, chunk: int = 1 << 20):
        """Per row (M,) of the grid (links, density) (default: this one): the largest weight
        any of the rays gives a sample in a cell the row's vertex is a corner of."""
        g = self._grid(links, density)
        wmax = torch.zeros(g["density"].shape[0], device=rays_o.device)
        use_kernels = self._use_kernels(rays_o)
        chunk = chunk if use_kernels else 4096
        for s in range(0, rays_o.shape[0], chunk):
            rays = self._rays(rays_o[s:s + chunk], rays_d[s:s + chunk], near, far, g["res"])
            if use_kernels:
                from models.kernels.plenoxel_render import max_weights, pack_rays
                packed = pack_rays(rays, torch.full_like(rays["t0"], 0.5), self.config["step_ratio"])
                max_weights(g, packed, self.config["step_ratio"], self.config["prune_stop_t"], wmax)
            else:
                wmax = torch.maximum(wmax, vg.max_weights_reference(
                    g["links"], g["density"][:, None], g["cells"], rays, self.config["step_ratio"],
                    self.config["prune_stop_t"]))
        return wmax

    def _keep(self, links, density, rays) -> torch.Tensor:
        """Rows of the grid (links, density) worth keeping (before dilation)."""
        c = self.config
        if c["prune_by"] == "density" or rays is None:
            return density[:, 0] >= c["density_threshold"]
        wmax = self.max_weights(*rays, links=links, density=density)
        return wmax >= c["weight_threshold"] / (links.shape[0] - 1)

    def _relink(self, mask: torch.Tensor, values) -> None:
        """Make the vertices of mask active, with values(vertices) -> the new _opt_arrays."""
        links, vertices = vg.build_links(mask)
        dens, sh, *carry = values(vertices)
        # Rows new to the optimiser (dilation) start from the mean of the others' mean
        # squares: from their own first gradient (svox2's rule for a fresh grid) a vertex
        # next to a surface jumps by the full lr, tens in raw density, and floats there.
        self._carry = [torch.where(sq > 0, sq, sq.sum(0) / (sq > 0).sum(0).clamp(min=1)) for sq in carry]
        self.links = links
        self.density_data = nn.Parameter(dens.contiguous())
        self.sh_data = nn.Parameter(sh.contiguous())
        self._refresh()

    @torch.no_grad()
    def prune(self, rays=None) -> dict:
        """Keep the vertices that pass _keep, dilated by ``dilation``. rays: (rays_o, rays_d,
        near, far) of training rays for weight pruning (without: density pruning)."""
        before = self.n_active
        keep = self._keep(self.links, self.density_data, rays)
        mask = torch.zeros(self.links.numel(), dtype=torch.bool, device=self.links.device)
        mask[self._row_vertex[keep]] = True
        mask = vg.dilate(mask.view_as(self.links), self.config["dilation"])
        old_links, arrays = self.links.reshape(-1), self._opt_arrays()

        def values(vertices):
            rows = old_links[vertices].long()
            have = (rows >= 0)[:, None]
            return [torch.where(have, a[rows.clamp(min=0)], 0.0) for a in arrays]

        self._relink(mask, values)
        return {"before": before, "after": self.n_active}

    @torch.no_grad()
    def upsample(self, rays=None) -> None:
        """Double the cells per axis, exactly (the field is unchanged), then keep what _keep
        keeps on the new grid (svox2 thresholds the upsampled grid too), dilated."""
        n2 = 2 * self.resolution + 1
        cand_links, cand = vg.build_links(vg.upsample_support(self.links >= 0))
        cand_dens = vg.resample(self.links, [self.density_data.detach()], cand, n2)[0]
        keep = self._keep(cand_links, cand_dens, rays)
        mask = torch.zeros(n2 ** 3, dtype=torch.bool, device=self.links.device)
        mask[cand[keep]] = True
        del cand_links, cand_dens, cand
        old_links, data = self.links, self._opt_arrays()
        self._relink(vg.dilate(mask.view(n2, n2, n2), self.config["dilation"]),
                     lambda vertices: vg.resample(old_links, data, vertices, n2))

    def _training_rays(self, ctx: StepContext):
        n = self.config["prune_rays"]
        if n <= 0:
            return None
        parts = [ctx.training_rays(min(1 << 20, n - s)) for s in range(0, n, 1 << 20)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), ctx.near, ctx.far

    def step_hook(self, step: int, ctx: StepContext) -> StepRequests | None:
        """Upsample (and prune the new grid) at upsample_steps, prune at prune_steps."""
        c = self.config
        if not ctx.owns(self.density_data):
            # Our parameters were replaced behind the optimiser's back (a rollback that loaded
            # a snapshot of another grid size): optimise the current ones.
            return StepRequests(rebuild_optimizer=True)
        up = step in c["upsample_steps"] and 2 * self.resolution <= self.resolution_cap()
        if not up and step not in c["prune_steps"] and step not in c["upsample_steps"]:
            return None
        before, res = self.n_active, self.resolution
        rays = self._training_rays(ctx) if c["prune_by"] == "weight" else None
        if up:
            self.upsample(rays)
            msg = (f"step {step}: plenoxels upsampled {res}^3 -> {self.resolution}^3 "
                   f"({before} -> {self.n_active} active)")
        else:
            self.prune(rays)
            msg = f"step {step}: plenoxels pruned {before} -> {self.n_active} active vertices at {res}^3"
            if step in c["upsample_steps"]:
                msg += f"; upsampling skipped (limit {self.resolution_cap()}^3 on {self.links.device.type})"
        return StepRequests(rebuild_optimizer=True, events=[msg])

    # -- checkpoints --------------------------------------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The number of active vertices is data, not configuration: resize the parameters to
        # the checkpoint's before the strict shape check. Tensors whose shape already fits are
        # loaded in place, so an optimiser holding them stays valid.
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

