"""Fast radiance field: multiresolution hash encoding + tiny MLPs + occupancy grid.

After Müller et al. 2022 (instant-ngp), in plain PyTorch with optional Triton
kernels (models/kernels/hash_encode.py, renderer/kernels/march.py); the torch
code here is the reference those kernels are tested against and the CPU path.

Rendering: rays are marched with a constant metric step through the cube
[-bound, bound]^3; only samples in occupied cells of a ``grid_res``^3
occupancy grid are kept, packed (renderer/occupancy.py). Training adapts the
trainer's ray batch so that a step sees about ``sample_budget`` samples.
Evaluation evaluates samples front to back in growing rounds and stops rays
whose transmittance fell below ``min_transmittance`` (early termination).

config keys: bound, n_levels, n_features, log2_hashmap_size, base_res, max_res,
hidden, geo_features, color_hidden, grid_res, n_coarse (marching steps along the
cube's diagonal; sets the step size), n_fine (unused, kept for the protocol),
grid_decay, grid_every, grid_warmup, sample_budget, min_transmittance, seed,
huber_delta (0: mean squared error; > 0: Huber loss with that threshold, as instant-ngp),
compact (training: drop the samples behind the point where a ray's transmittance fell
below min_transmittance, found by a density-only pass without gradients, and fill the
budget with more rays instead: instant-ngp's compaction; None, the default: on CUDA
only), march_factor (compact only: marched samples may reach march_factor x
sample_budget before compaction).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.sh import sh_basis_matrix, sh_encode
from models.field import Field, StepContext, StepRequests, TrainPolicy, check_options
from renderer import occupancy as occ_mod

HASH_PRIMES = (1, 2654435761, 805459861)


# --------------------------------------------------------------------------------------
# Hash encoding
# --------------------------------------------------------------------------------------

def level_layout(n_levels: int, base_res: int, max_res: int, log2_hashmap_size: int):
    """Per level: grid resolution (cells per side), table offset, dense flag.

    res_l = floor(base_res * b^l) with b = (max_res / base_res)^(1/(L-1)); a level
    whose (res_l + 1)^3 vertices fit in the 2^log2 table is stored densely
    (no collisions), otherwise hashed into 2^log2 entries. Returns
    (resolutions [L], offsets [L + 1], dense [L]).
    """
    if n_levels < 1 or base_res < 1 or max_res < base_res:
        raise ValueError(f"need n_levels >= 1 and 1 <= base_res <= max_res, got {n_levels}, "
                         f"{base_res}, {max_res}")
    size = 1 << log2_hashmap_size
    b = math.exp((math.log(max_res) - math.log(base_res)) / (n_levels - 1)) if n_levels > 1 else 1.0
    resolutions, offsets, dense = [], [0], []
    for lvl in range(n_levels):
        r = int(math.floor(base_res * b ** lvl + 1e-6))
        v3 = (r + 1) ** 3
        is_dense = v3 <= size
        resolutions.append(r)
        dense.append(is_dense)
        offsets.append(offsets[-1] + (v3 if is_dense else size))
    return resolutions, offsets, dense


def hash_encode_torch(x01: torch.Tensor, table: torch.Tensor, resolutions, offsets, dense,
                      log2_hashmap_size: int) -> torch.Tensor:
    """Multiresolution hash encoding, (N, 3) points in [0, 1]^3 -> (N, L * F) features.

    Level l: p = clamp(x, 0, 1) * res_l, i = min(floor(p), res_l - 1), f = p - i;
    the 8 corners c = i + {0,1}^3 are weighted trilinearly and index the table at
    offsets[l] + (c_x + c_y V + c_z V^2) for dense levels (V = res_l + 1) or
    offsets[l] + ((c_x * 1) xor (c_y * 2654435761) xor (c_z * 805459861)) mod 2^log2
    for hashed ones. Output is level-major: [l0 f0, l0 f1, l1 f0, ...].
    """
    n = x01.shape[0]
    n_levels = len(resolutions)
    n_feat = table.shape[1]
    dev = x01.device
    res = torch.tensor(resolutions, device=dev, dtype=torch.int64)
    p = x01.float().clamp(0.0, 1.0)[:, None, :] * res.float()[None, :, None]  # (N, L, 3)
    i0 = torch.minimum(p.floor().long(), (res - 1)[None, :, None])
    frac = p - i0.float()
    bits = torch.tensor([[c & 1, (c >> 1) & 1, (c >> 2) & 1] for c in range(8)], device=dev)  # (8, 3)
    corners = i0[:, :, None, :] + bits[None, None]  # (N, L, 8, 3)
    fr = frac[:, :, None, :]
    w3 = torch.where(bits.bool()[None, None], fr, 1.0 - fr)  # (N, L, 8, 3)
    w = w3[..., 0] * w3[..., 1] * w3[..., 2]  # (N, L, 8)
    v = (res + 1)[None, :, None]
    cx, cy, cz = corners.unbind(-1)
    didx = cx + cy * v + cz * v * v
    hidx = (cx * HASH_PRIMES[0]) ^ (cy * HASH_PRIMES[1]) ^ (cz * HASH_PRIMES[2])
    hidx = hidx & ((1 << log2_hashmap_size) - 1)
    dense_t = torch.tensor(dense, device=dev)[None, :, None]
    off = torch.tensor(offsets[:-1], device=dev, dtype=torch.int64)[None, :, None]
    idx = torch.where(dense_t, didx, hidx) + off  # (N, L, 8)
    vals = table[idx]  # (N, L, 8, F)
    return (w[..., None] * vals.float()).sum(2).reshape(n, n_levels * n_feat)


class HashEncoding(nn.Module):
    """nn.Module around the encoding: the table is one (sum of level sizes, F) parameter."""

    def __init__(self, n_levels=16, n_features=2, log2_hashmap_size=19, base_res=16, max_res=2048,
                 seed: int = 0):
        super().__init__()
        if n_features not in (1, 2, 4, 8):
            raise ValueError(f"n_features must be 1, 2, 4 or 8, got {n_features}")
        if not (10 <= log2_hashmap_size <= 24):
            raise ValueError(f"log2_hashmap_size must be in 10..24, got {log2_hashmap_size}")
        self.log2_hashmap_size = log2_hashmap_size
        self.resolutions, self.offsets, self.dense = level_layout(n_levels, base_res, max_res,
                                                                  log2_hashmap_size)
        g = torch.Generator().manual_seed(seed)
        # Small uniform init as in instant-ngp: the field starts almost constant.
        self.table = nn.Parameter((torch.rand(self.offsets[-1], n_features, generator=g) * 2 - 1) * 1e-4)
        self.register_buffer("res_t", torch.tensor(self.resolutions, dtype=torch.int32), persistent=False)
        self.register_buffer("off_t", torch.tensor(self.offsets, dtype=torch.int32), persistent=False)
        self.register_buffer("dense_t", torch.tensor(self.dense, dtype=torch.int32), persistent=False)
        self.out_dim = n_levels * n_features

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        """(N, 3) in [0, 1] -> (N, L * F) float32."""
        def run():
            from models.kernels.hash_encode import hash_encode_triton
            return hash_encode_triton(x01, self.table, self.res_t, self.off_t, self.dense_t, self.log2_hashmap_size)

        from renderer import kernels
        out = kernels.run_or_none("hash_encode", x01, run)
        if out is not None:
            return out
        return hash_encode_torch(x01, self.table, self.resolutions, self.offsets, self.dense,
                                 self.log2_hashmap_size)


# --------------------------------------------------------------------------------------
# Activations (the direction encoding is models/sh.py)
# --------------------------------------------------------------------------------------

class _TruncExp(torch.autograd.Function):
    """exp(x) whose gradient uses exp(min(x, 15)): a density spike cannot blow up a step."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    return _TruncExp.apply(x)


def _per_ray(v, like: torch.Tensor):
    """near/far as given: a Python number stays one (no device copy); arrays become (R,)."""
    if isinstance(v, (int, float)):
        return float(v)
    return torch.as_tensor(v, dtype=torch.float32, device=like.device).reshape(-1)


def _over_background(color: torch.Tensor, acc: torch.Tensor, background) -> torch.Tensor:
    """color (R, 3) + (1 - acc) * background: None, a number, an RGB triple or (R, 3)."""
    if background is None:
        return color
    if isinstance(background, (int, float)):
        return color + (1.0 - acc)[:, None] * float(background)
    bg = torch.as_tensor(background, dtype=color.dtype, device=color.device)
    return color + (1.0 - acc)[:, None] * bg


# --------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------

class HashGridModel(Field):
    """Hash-grid radiance field with occupancy-grid ray marching (see module doc).

    log2_hashmap_size is 20, not instant-ngp's 19: a little better on lego for a few
    percent fewer steps/s. Training-sample compaction (``compact``; None: on CUDA only)
    trains on about 3x the rays per step for fewer steps/s, a net gain in quality; the
    measurements behind both choices are in docs/bench_gpu.md.
    """

    LABEL = "hash grid (instant-ngp)"
    POLICY = TrainPolicy(
        lr=1e-2, bf16="cuda", cuda_graph=True,
        # Renders use weights averaged over ~20 steps (instant-ngp's "Ema" wrapper): at this
        # learning rate the last Adam step leaves the weights noisy.
        ema_decay=0.95, default_rank_cuda=2,
        cpu_note="the hash model is built for CUDA (Triton kernels, CUDA graphs); on a CPU its "
                 "torch reference path takes seconds to minutes per step. Plenoxels is the grid "
                 "model for CPUs.")
    DEFAULTS = dict(bound=1.5, n_levels=16, n_features=2, log2_hashmap_size=20, base_res=16,
                    max_res=2048, hidden=64, geo_features=15, color_hidden=64, grid_res=128,
                    n_coarse=1024, n_fine=0, grid_decay=0.95, grid_every=16, grid_warmup=256,
                    sample_budget=1 << 18, min_transmittance=1e-4, seed=0, huber_delta=0.0,
                    compact=None, march_factor=3)

    def __init__(self, **config):
        super().__init__()
        c = self.config = check_options(type(self), config)
        if not (c["bound"] > 0 and math.isfinite(c["bound"])):
            raise ValueError(f"bound must be a positive number, got {c['bound']}")
        if not (8 <= c["grid_res"] <= 512):
            raise ValueError(f"grid_res must be in 8..512, got {c['grid_res']}")
        if c["n_coarse"] < 2:
            raise ValueError(f"n_coarse (marching steps per diagonal) must be >= 2, got {c['n_coarse']}")
        if not (0 < c["grid_decay"] <= 1):
            raise ValueError(f"grid_decay must be in (0, 1], got {c['grid_decay']}")
        if not (c["huber_delta"] >= 0 and math.isfinite(c["huber_delta"])):
            raise ValueError(f"huber_delta must be a number >= 0, got {c['huber_delta']}")
        if c["compact"] not in (None, True, False):
            raise ValueError(f"compact must be true, false or null (on CUDA only), got {c['compact']!r}")
        if not (isinstance(c["march_factor"], int) and 1 <= c["march_factor"] <= 16):
            raise ValueError(f"march_factor must be an integer in 1..16, got {c['march_factor']}")
        if c["sample_budget"] < 256 or c["grid_every"] < 1:
            raise ValueError("sample_budget must be >= 256 and grid_every >= 1")
        self.encoding = HashEncoding(c["n_levels"], c["n_features"], c["log2_hashmap_size"],
                                     c["base_res"], c["max_res"], c["seed"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c["seed"])
            geo = 1 + c["geo_features"]
            self.density_net = nn.Sequential(
                nn.Linear(self.encoding.out_dim, c["hidden"], bias=False), nn.ReLU(),
                nn.Linear(c["hidden"], geo, bias=False))
            ch = c["color_hidden"]
            self.color_net = nn.Sequential(
                nn.Linear(geo + 16, ch, bias=False), nn.ReLU(),
                nn.Linear(ch, ch, bias=False), nn.ReLU(),
                nn.Linear(ch, 3, bias=False))
        # Saved with checkpoints: a resumed run keeps skipping the same empty space.
        self.estimator = occ_mod.OccupancyGrid(c["grid_res"], c["bound"])
        self.register_buffer("sh_C", sh_basis_matrix().float(), persistent=False)
        self._last_batch: tuple[int, int] | None = None  # (rays, samples) of the last training batch

    # -- policy ---------------------------------------------------------------------------
    @classmethod
    def policy(cls, cuda: bool, options: dict) -> TrainPolicy:
        return cls.POLICY

    @property
    def dt(self) -> float:
        return occ_mod.step_size(self.config["bound"], self.config["n_coarse"])

    # set_samples: n_coarse = marching steps along the cube's diagonal (1024: instant-ngp's
    # step); fewer means a longer step, faster and coarser. n_fine is unused.

    def param_groups(self, lr: float) -> list[dict]:
        # instant-ngp's Adam: beta2 0.99, eps 1e-15; weight decay on the MLPs only.
        common = dict(lr=lr, betas=(0.9, 0.99), eps=1e-15)
        return [{"params": [self.encoding.table], "weight_decay": 0.0, **common},
                {"params": list(self.density_net.parameters()) + list(self.color_net.parameters()),
                 "weight_decay": 1e-6, **common}]

    def _inside(self, x: torch.Tensor) -> torch.Tensor:
        return (x.abs() <= self.config["bound"]).all(-1)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """Density-net output (N, 1 + geo) at world points (N, 3)."""
        b = self.config["bound"]
        return self.density_net(self.encoding((x + b) * (0.5 / b)))

    def density(self, x: torch.Tensor) -> torch.Tensor:
        """sigma (N,) per world unit at points (N, 3); zero outside the cube."""
        sigma = trunc_exp(self._features(x)[:, 0].float())
        return torch.where(self._inside(x), sigma, torch.zeros_like(sigma))

    def _color(self, h: torch.Tensor, sh: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.color_net(torch.cat([h, sh.to(h.dtype)], -1)).float())

    def radiance(self, x: torch.Tensor, d: torch.Tensor):
        """(sigma (N,), rgb (N, 3)) at points (N, 3) seen along directions (N, 3)."""
        h = self._features(x)
        sigma = trunc_exp(h[:, 0].float())
        sigma = torch.where(self._inside(x), sigma, torch.zeros_like(sigma))
        return sigma, self._color(h, sh_encode(F.normalize(d, dim=-1), self.sh_C))

    @staticmethod
    def _points(rays_o, dirs, ray_ids, s) -> torch.Tensor:
        """(N, 3) positions of packed samples: ray origin + s * unit direction."""
        return rays_o[ray_ids] + dirs[ray_ids] * s[:, None]

    def _field_packed(self, rays_o, dirs, sh, ray_ids, s):
        """sigma (N,), rgb (N, 3) at packed samples."""
        h = self._features(self._points(rays_o, dirs, ray_ids, s))
        return trunc_exp(h[:, 0].float()), self._color(h, sh[ray_ids])

    def _setup_rays(self, rays_o, rays_d, near, far):
        c = self.config
        rays_o = rays_o.float()
        dnorm = rays_d.float().norm(dim=-1).clamp(min=1e-12)
        dirs = rays_d.float() / dnorm[:, None]
        s0, s1 = occ_mod.march_interval(rays_o, dirs, c["bound"])
        # near/far are depths along the un-normalised direction (as in the NeRF model); numbers
        # stay Python floats (no host-to-device copy, which a CUDA graph could not capture).
        s0 = torch.maximum(s0, dnorm * _per_ray(near, rays_o))
        s1 = torch.minimum(s1, dnorm * _per_ray(far, rays_o))
        return rays_o, dirs, dnorm, s0, s1

    def _march(self, rays_o, dirs, s0, s1, jitter, max_samples=None):
        c = self.config
        return occ_mod.march_rays(rays_o, dirs, s0, s1, self.estimator.occupancy, c["bound"], c["grid_res"], self.dt,
                                  c["n_coarse"], jitter, max_samples)

    def render_rays(self, rays_o: torch.Tensor, rays_d: torch.Tensor, near, far, background=None,
                    train: bool = False) -> dict[str, torch.Tensor]:
        """rays (R, 3) -> rgb (R, 3), depth (R,) (along un-normalised d, like NeRF), acc (R,),
        samples (0-dim: samples evaluated), valid (R,) (0 for rays dropped by the budget)."""
        n_rays = rays_o.shape[0]
        rays_o, dirs, dnorm, s0, s1 = self._setup_rays(rays_o, rays_d, near, far)
        sh = sh_encode(dirs, self.sh_C)
        dev = rays_o.device
        if train:
            jitter = torch.rand(n_rays, device=dev)
            # A cap (twice the budget) bounds memory before the batch size has adapted.
            c = self.config
            compact = self._compacting(rays_o)
            cap = (c["march_factor"] if compact else 2) * c["sample_budget"]
            pk = self._march(rays_o, dirs, s0, s1, jitter, max_samples=cap)
            ray_ids, s_pk = pk["ray_ids"], pk["s"]
            if compact:
                alive = self._alive_samples(rays_o, dirs, ray_ids, s_pk, n_rays)
                ray_ids, s_pk = ray_ids[alive], s_pk[alive]
            sigma, rgb = self._field_packed(rays_o, dirs, sh, ray_ids, s_pk)
            out = occ_mod.composite_packed(sigma, rgb, s_pk, self.dt, ray_ids, n_rays)
            n_samples = s_pk.shape[0]
            self._last_batch = (n_rays, n_samples)
            valid = pk["fits"].float()
        else:
            out, n_samples = self._render_terminating(rays_o, dirs, sh, s0, s1)
            valid = torch.ones(n_rays, device=dev)
        color, acc = _over_background(out["rgb"], out["acc"], background), out["acc"]
        depth = out["depth_s"] / acc.clamp(min=1e-10) / dnorm
        return {"rgb": color, "depth": depth, "acc": acc, "valid": valid,
                "samples": torch.tensor(float(n_samples), device=dev)}

    def static_shape(self, batch_rays: int) -> tuple[int, int]:
        """The sample budget, and rays for 4 samples each (the eager path's cap)."""
        cap = int(self.config["sample_budget"])
        return cap, max(64, cap // 4)

    def render_rays_static(self, rays_o: torch.Tensor, rays_d: torch.Tensor, near: float, far: float,
                           background, active: torch.Tensor, capacity: int,
                           image: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The training render of ``render_rays(train=True)`` with fixed shapes and no host
        sync, so that a whole step can be captured as one CUDA graph (app/engine/graph_step.py).

        rays (R, 3) with R >= 1; active (R,) bool: the adaptive batch is the active rays,
        the others march nothing. Exactly ``capacity`` samples are evaluated: the packed
        ones, then padding (renderer.occupancy.march_rays_static). background: a float or
        (R, 3). Returns rgb (R, 3), acc (R,), valid (R,) float (active and all samples
        packed), marched and kept (0-dim: samples asked for, samples packed). With ``compact``
        the march may fill march_factor x capacity slots, samples behind a ray's termination
        point are dropped before the training pass, ``kept`` counts the samples that remain
        and ``marched`` estimates how many would remain had every ray fitted.
        """
        c = self.config
        n = rays_o.shape[0]
        rays_o, dirs, _, s0, s1 = self._setup_rays(rays_o, rays_d, float(near), float(far))
        s1 = torch.where(active, s1, s0)
        jitter = torch.rand(n, device=rays_o.device)
        compact = self._compacting(rays_o)
        march_cap = capacity * (c["march_factor"] if compact else 1)
        pk = occ_mod.march_rays_static(rays_o, dirs, s0, s1, self.estimator.occupancy, c["bound"], c["grid_res"],
                                       self.dt, c["n_coarse"], jitter, march_cap)
        if compact:
            # Padding samples belong to an extra ray n at the origin (inside the cube).
            o1 = torch.cat([rays_o, torch.zeros_like(rays_o[:1])])
            d1 = torch.cat([dirs, dirs[:1]])
            alive = self._alive_samples(o1, d1, pk["ray_ids"], pk["s"], n + 1)
            cp = occ_mod.compact_static(alive, pk["ray_ids"], pk["s"], n, capacity)
            # The batch rule steers on the samples that train, as instant-ngp's does: the
            # surviving share of the packed samples, extrapolated to all that were marched.
            n_alive = (alive & (pk["ray_ids"] < n)).sum()
            demand = pk["marched"].float() * n_alive.float() / pk["kept"].clamp(min=1).float()
            pk = {**cp, "fits": cp["fits"] & pk["fits"], "marched": demand}
        ray_ids, n_pad = occ_mod.spread_padding(pk["ray_ids"], n)
        o_pad = torch.cat([rays_o, rays_o.new_zeros(n_pad, 3)])
        d_pad = torch.cat([dirs, dirs[:1].expand(n_pad, 3)])
        sh = sh_encode(d_pad, self.sh_C)
        sigma, rgb = self._field_packed(o_pad, d_pad, sh, ray_ids, pk["s"])
        out = occ_mod.composite_packed(sigma, rgb, pk["s"], self.dt, ray_ids, n + n_pad)
        acc = out["acc"][:n]
        color = _over_background(out["rgb"][:n], acc, background)
        return {"rgb": color, "acc": acc, "valid": (pk["fits"] & active).float(),
                "marched": pk["marched"], "kept": pk["kept"]}

    def _compacting(self, t: torch.Tensor) -> bool:
        """compact None (the default) means: on CUDA. On a CPU the few hundred steps a user
        trains leave the field too soft for rays to terminate, so the density-only pass only
        costs (docs/bench_gpu.md)."""
        c = self.config["compact"]
        return t.is_cuda if c is None else bool(c)

    @torch.no_grad()
    def _alive_samples(self, rays_o, dirs, ray_ids, s, n_rays: int) -> torch.Tensor:
        """(N,) bool: packed samples whose ray still has transmittance >= min_transmittance in
        front of them, by a density-only pass without gradients. The others would get
        weights below that and are left out of the training pass."""
        raw = self._features(self._points(rays_o, dirs, ray_ids, s))[:, 0].float()
        sigma = torch.exp(raw)
        tau_in = occ_mod.optical_depth_before(sigma * self.dt, ray_ids, n_rays)
        # Written so that NaN counts as alive: a broken field then shows in the training
        # pass's loss (and its recovery) instead of silently leaving nothing to train.
        return ~(tau_in >= -math.log(self.config["min_transmittance"]))

    def _render_terminating(self, rays_o, dirs, sh, s0, s1, first_round: int = 16):
        """Front-to-back rounds of 16, 32, 64, ... samples per ray; a ray leaves once its
        transmittance drops below min_transmittance. Returns (composite dict, samples used)."""
        pk = self._march(rays_o, dirs, s0, s1, torch.full((rays_o.shape[0],), 0.5, device=rays_o.device))
        ray_ids, s_all = pk["ray_ids"], pk["s"]

        def evaluate(sel):
            rid, s = ray_ids[sel], s_all[sel]
            sigma, rgb = self._field_packed(rays_o, dirs, sh, rid, s)
            return self.crop_density(self._points(rays_o, dirs, rid, s), sigma, False), rgb

        return occ_mod.composite_rounds(evaluate, ray_ids, s_all, self.dt, pk["offsets"], pk["counts"],
                                        rays_o.shape[0], -math.log(self.config["min_transmittance"]),
                                        first_round)

    def loss_terms(self, out: dict, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Mean squared error over the rays that were rendered (all, unless the cap dropped
        some); with huber_delta > 0 the Huber loss is minimised and the MSE only reported."""
        valid = out.get("valid")
        if valid is None:
            valid = torch.ones_like(out["rgb"][:, 0])
        n = valid.sum().clamp(min=1.0)
        mse = (((out["rgb"] - target) ** 2).mean(-1) * valid).sum() / n
        delta = self.config["huber_delta"]
        if delta <= 0:
            return {"mse": mse}
        hub = F.huber_loss(out["rgb"], target, reduction="none", delta=delta).mean(-1)
        return {"huber": (hub * valid).sum() / n, "metric_mse": mse.detach()}

    # -- training hooks ------------------------------------------------------------------
    def note_batch(self, rays: int, samples: int) -> None:
        self._last_batch = (int(rays), int(samples))

    def step_hook(self, step: int, ctx: StepContext) -> StepRequests | None:
        """Adapt the ray batch to the sample budget and refresh the occupancy grid.

        As in instant-ngp, the grid is refreshed every step at first and every
        ``grid_every`` steps from step 16 * grid_every on, with the decay compounded
        over the interval, so that the initial (meaningless) densities fade
        within ~100 steps whatever the refresh rate.
        """
        c = self.config
        req = None
        if self._last_batch is not None:
            n_rays, n_samples = self._last_batch
            target = n_rays * c["sample_budget"] / max(n_samples, 1)
            # Bounded change per step: the sample count of one batch is noisy.
            target = min(max(target, 0.5 * n_rays), 2.0 * n_rays)
            req = StepRequests(batch_rays=int(min(max(64, round(target / 64) * 64), c["sample_budget"] // 4)))
        interval = min(max(step // 16, 1), c["grid_every"])
        if step % interval == 0:
            self.update_grid(step, decay=c["grid_decay"] ** interval)
        return req

    def update_grid(self, step: int, decay: float | None = None) -> None:
        """Re-estimate densities: all cells during warm-up, later a quarter of the cells at
        random plus as many occupied ones (renderer.occupancy.OccupancyGrid)."""
        c = self.config
        idx = self.estimator.cells_to_update(all_cells=step <= c["grid_warmup"])
        self.estimator.update(self.density, self.dt, c["grid_decay"] if decay is None else decay, idx)

    @property
    def occupancy(self) -> torch.Tensor:
        return self.estimator.occupancy

    @property
    def density_grid(self) -> torch.Tensor:
        return self.estimator.density_grid

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints from before the shared estimator kept the grid at the top level.
        for name in ("density_grid", "occupancy"):
            if prefix + name in state_dict:
                state_dict[prefix + "estimator." + name] = state_dict.pop(prefix + name)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
