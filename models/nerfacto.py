"""A field for real captures, after nerfstudio's nerfacto (Tancik et al. 2023).

Real photos have background at every distance, exposure and white balance that change
from photo to photo, and poses that are a little off. This field answers each:

- Unbounded space: the field's box is placed around the training cameras (``bind_scene``,
  ``normalising_frame``: centred on the point their optical axes pass closest to, scaled
  so that the farthest camera is at L-infinity distance 1, whatever frame the scene comes
  in, as the hash model's ``bound`` places its cube); everything beyond is contracted into the shell up
  to 2 (renderer/contraction.py, L-infinity: it fills the hash grid's cube) in front of a
  multiresolution hash encoding (models/hashgrid.py's HashEncoding and its kernel).
- Sampling that reaches far: rays that are asked to reach the scene's far bound run on
  to ``far`` normalised units (1000 by default, which the contraction puts at 1.999),
  because a capture's bounds come from the sparse points and the sky lies beyond them;
  on a capture (``bind_scene``'s kind), rays asked to start at the scene's near bound
  start at ``near`` (normalised units, 0.05 as nerfstudio's) instead, since sparse points
  miss close content (a table edge, the floor at the bottom of a frame) that a percentile
  of their depths then cuts away (docs/real_scenes.md); None keeps the scene's near, and
  an object scene's exact bounds are kept. A shorter segment
  (mesh vertex colours) is rendered as asked. Rays are cut uniformly in
  the lindisp spacing;
  two small hash-grid proposal density nets resample them (``n_proposal`` intervals per
  ray each), and the radiance field is evaluated on ``n_samples`` intervals drawn from
  the second proposal's histogram (renderer/proposal.py). The proposals learn from the
  interlevel loss only. mip-NeRF 360's distortion loss (``distortion_weight``) is off by
  default: measured on a capture it did not pay (docs/real_scenes.md).
- Background from the field: a real photo has no known background colour, so when the
  caller asks for one (any ``background`` but None) the transmittance left after the
  last interval takes the last sample's colour instead (nerfstudio's "last_sample"): the
  sky is whatever the far field learnt. With None nothing is added (mesh vertex colours);
  a last sample outside the crop box (Field.crop) is cropped away and the caller's
  colour shows instead.
- Per-photo appearance: a learned embedding per training image (``appearance_dim``
  numbers, zero at the start) feeds the colour head; renders and the viewer use the mean
  embedding (the training images' average look). Each code sees only its image's few
  rays of a batch, and left free it learns whatever that image alone shows (a
  reflection, a pose error) instead of leaving it to the shared field; the mean code then
  renders none of it and a held-out view loses. So the codes may have their own learning
  rate (``appearance_lr``; None: the run's) and a penalty on their spread about their
  mean (``appearance_penalty`` times the mean squared distance), which only a look that
  a whole image shares (its exposure) is worth paying. The penalty is on by default: on
  a capture shot at one exposure the free codes cost held-out views 1.5 dB, and the
  penalised ones cost nothing there and kept a video's exposure changes
  (docs/real_scenes.md); a lower learning rate alone did not help.
- Camera refinement (``refine_poses``, off by default): a per-image SO(3) x R^3 delta
  (rotation about the camera centre and a shift, in the normalised frame) with its own
  learning rate ``pose_lr``, applied to the training rays (``refine_rays``), with
  nerfstudio's small penalty on the deltas' sizes. The cameras and the field can move
  together without changing a training view (a gauge freedom: a small rotation, shift or
  scaling of the whole scene), while held-out views, renders along the capture's own
  cameras and exported meshes live in the capture's frame, so the applied deltas have
  that common motion removed (``frame_fixed_deltas``; ``pose_fix_frame``). Off by
  default because it did not pay on the GPU: with structure-from-motion poses good to a
  third of a pixel, the deltas grew into a smooth warp of the whole set of cameras (up to
  0.7 degrees, neighbours within 0.03 degrees of each other) that the field followed, so
  training views fitted as well as without it and held-out views, at their own poses,
  lost 1.5 to 8 dB (docs/real_scenes.md).

- Marched renders (``render_march``, off by default; None: on CUDA): a trained field's
  empty space is known, so a view need not pay for the proposal nets and a fixed sample
  count per ray. Such renders march an occupancy grid of the contracted cube baked from
  the field's density (``march_res`` cells a side, ``march_steps`` steps per ray uniform
  in the lindisp spacing, cells kept where one step absorbs ``march_min_opacity``), front
  to back, each ray stopped once its transmittance is below ``march_min_transmittance``
  (renderer/contracted_march.py; instant-ngp renders its unbounded scenes so). The grid
  is baked again after training steps. Training always samples with the proposals. Off
  by default: measured on a real capture it was both slower and less accurate than the
  proposal render (docs/real_scenes.md).

Every training tensor has a fixed shape (R rays x n intervals): no host sync in the step.
Where no gradient is needed (renders, and the training steps that do not train the
proposals) a proposal level runs as one Triton kernel (models/kernels/proposal_weights.py):
a render's proposals evaluate ~350 points per ray, and a dozen torch passes over them,
each writing its intermediates to memory, would cost more than the radiance field. The
colour head's input is split so that its direction and appearance part is computed once
per ray (``_ray_term``), not once per sample. A render's radiance-field MLPs run as one
Triton kernel too (models/kernels/radiance_mlp.py): as separate torch layers, each
64-wide intermediate of a frame's 31 M samples would go through memory.

config keys: n_levels, n_features, log2_hashmap_size, base_res, max_res (main hash grid),
hidden, geo_features, color_hidden, appearance_dim, appearance_lr, appearance_penalty;
proposal_levels,
proposal_log2_hashmap_size, proposal_max_res (one per proposal net), proposal_hidden;
n_proposal (intervals per ray, one per proposal net), n_samples (radiance-field
intervals per ray); render_proposal, render_samples (the same counts for renders, which
may use fewer than training: None keeps the training counts); proposal_update_every,
proposal_warmup (the proposals are trained every step at first, then every
proposal_update_every steps, ramping over proposal_warmup steps, as nerfstudio);
anneal_steps; interlevel_weight, distortion_weight; contraction ("inf" or 2); near, far;
refine_poses, pose_lr, pose_lr_final, pose_decay_steps (the deltas' own schedule),
pose_penalty_trans, pose_penalty_rot, pose_fix_frame; render_march, march_res, march_steps,
march_min_opacity, march_min_transmittance; seed.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.field import Field, StepContext, StepRequests, TrainPolicy, check_options
from models.hashgrid import HashEncoding, trunc_exp
from models.sh import sh_basis_matrix, sh_encode
from renderer import contracted_march as cmarch, kernels
from renderer import proposal as prop
from renderer.compositing import alpha_weights, composite_intervals
from renderer.contraction import ORDERS, contract, to_unit_cube
from renderer.lie import apply_rotation, so3_exp


class HashDensity(nn.Module):
    """Hash encoding + one-hidden-layer MLP: contracted points in [0, 1]^3 -> (N, out),
    column 0 the log-density. A proposal net has out = 1; the radiance field's geometry
    net out = 1 + its geometry features."""

    def __init__(self, n_levels: int, n_features: int, log2_hashmap_size: int, base_res: int,
                 max_res: int, hidden: int, out: int, seed: int):
        super().__init__()
        self.encoding = HashEncoding(n_levels, n_features, log2_hashmap_size, base_res, max_res, seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.mlp = nn.Sequential(nn.Linear(self.encoding.out_dim, hidden), nn.ReLU(),
                                     nn.Linear(hidden, out))

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.encoding(x01))


class _MarchedRender:
    """NerfactoField's marched render (render_march; the module doc): an occupancy grid
    baked from the trained field, used by renders only. Apart from the field's class so
    that it reads as the training path."""

    def _marches(self, o: torch.Tensor) -> bool:
        """Whether a render marches the baked occupancy grid (render_march; None: on CUDA,
        where baking the grid is cheap; a CPU would take minutes). A crop box keeps the
        proposal render, which knows how to cut the background."""
        rm = self.config["render_march"]
        return self.crop is None and (o.is_cuda if rm is None else bool(rm))

    def _render_marched(self, o, dirs, dnorm, t0, t1, background, image, appearance) -> dict:
        """A render through the occupancy grid of the contracted cube (instant-ngp's way,
        renderer/contracted_march.py): occupied cells only, front to back, each ray stopped
        once its transmittance is below march_min_transmittance. The light left over takes
        the colour at the ray's far end (the proposal render's last sample lies there)."""
        c = self.config
        n_rays = o.shape[0]
        term = self._ray_term(dirs, self._embedding(n_rays, image, o.device, appearance))
        total, used = cmarch.render_marched(
            lambda rid, x: self._radiance_n(x, term[rid]), o, dirs, t0, t1,
            self._baked_grid(o.device), c["march_res"], c["contraction"], c["march_steps"],
            -math.log(c["march_min_transmittance"]))
        acc, color = total["acc"], total["rgb"]
        if background is not None:
            g0, h = cmarch.step_spacing(t0, t1, c["march_steps"])
            t_far = prop.lindisp_inverse(g0 + (c["march_steps"] - 0.5) * h)
            color = color + (1.0 - acc)[:, None] * self._radiance_n(o + dirs * t_far[:, None], term)[1]
        depth = total["depth_s"] / acc.clamp(min=1e-10) / (self._scale * dnorm[:, 0])
        return {"rgb": color, "depth": depth, "acc": acc,
                "samples": torch.full((), float(used + n_rays), device=o.device)}

    def _baked_grid(self, device) -> torch.Tensor:
        """The occupancy grid of the marched render."""
        c = self.config
        span = torch.tensor([c["near"] or 0.0, c["far"]])
        h = float(cmarch.step_spacing(span[:1], span[1:], c["march_steps"])[1])
        density = lambda y: trunc_exp(self.field(to_unit_cube(y))[:, 0].float())  # noqa: E731
        # Baked once per trained field: again only when the step count, the options or the
        # device it was made with change.
        key = (self._step, c["march_res"], c["march_steps"], c["march_min_opacity"], str(device))
        if self._bakes.get("march", (None,))[0] != key:
            with torch.no_grad():
                self._bakes["march"] = (key, cmarch.bake_occupancy(
                    density, c["march_res"], c["contraction"], h, c["march_min_opacity"], device=device))
        return self._bakes["march"][1]


class _PerImage:
    """NerfactoField's per-photo parameters: the appearance embedding of each training image
    (``appearance``, N x appearance_dim) and its pose delta (``pose_delta``, N x 6, SO(3) x R^3),
    both sized by bind_scene. Apart from the field's class, as nerfstudio keeps its camera
    optimiser and appearance embedding apart from the field: what a photo brings, not
    what the scene is."""

    def refine_rays(self, rays_o, rays_d, image):
        """Rotate each ray's direction about its camera centre and shift the centre by the
        image's learned delta (nerfstudio's SO(3) x R^3; the shift in normalised units)."""
        if not self.config["refine_poses"] or self.ndc or self.pose_delta.shape[0] == 0:
            return rays_o, rays_d
        delta = self.applied_deltas()[image]  # (R, 6): rotation vector, shift
        rays_d = apply_rotation(so3_exp(delta[:, :3]), rays_d.float())
        return rays_o + delta[:, 3:] / self._scale, rays_d

    def applied_deltas(self) -> torch.Tensor:
        """(N, 6) float32: the deltas refine_rays applies (frame_fixed_deltas of the
        learned ones unless pose_fix_frame is off)."""
        d = self.pose_delta.float()
        if not self.config["pose_fix_frame"] or self.cam_offsets.shape[0] != d.shape[0]:
            return d
        return frame_fixed_deltas(d, self.cam_offsets)

    def _embedding(self, n: int, image: torch.Tensor | None, device, code=None) -> torch.Tensor:
        """(n, appearance_dim): the rays' images' embeddings, the given code, or the mean
        embedding (renders)."""
        a = self.appearance
        if code is not None:
            return code.reshape(1, -1).expand(n, a.shape[1])
        if image is not None and a.shape[0] > 0:
            return a[image]
        mean = a.mean(0) if a.shape[0] > 0 else torch.zeros(a.shape[1], device=device)
        return mean.expand(n, a.shape[1])

    def appearance_code(self) -> torch.Tensor:
        """The mean embedding, detached: what a held-out view starts from (Field)."""
        return self._embedding(1, None, self.appearance.device)[0].detach().clone()

    def appearance_prior(self, code: torch.Tensor) -> torch.Tensor:
        """appearance_penalty times the code's squared distance from the training codes'
        mean: per image, what the training's penalty on the codes' spread costs (Field)."""
        mean = self._embedding(1, None, code.device)[0].detach()
        return self.config["appearance_penalty"] * (code - mean).pow(2).sum()


class NerfactoField(_PerImage, _MarchedRender, Field):
    """Radiance field for real, unbounded captures (see the module doc)."""

    LABEL = "nerfacto (real captures)"
    GUI_KNOBS = ()
    TAKES_IMAGE = True
    POLICY = TrainPolicy(
        lr=1e-2, lr_final_ratio=0.1, batch_rays_cpu=512, batch_rays_cuda=4096, gui_batch_rays_cpu=256,
        bf16="cuda", cuda_graph=True, default_rank_capture=3,
        cpu_note="nerfacto is built for CUDA; on a CPU its torch hash-encoding path takes about a "
                 "second per step and a real capture needs thousands of steps")
    DEFAULTS = dict(
        n_levels=16, n_features=2, log2_hashmap_size=19, base_res=16, max_res=2048,
        hidden=64, geo_features=15, color_hidden=64, appearance_dim=32, appearance_lr=None,
        appearance_penalty=0.01,
        proposal_levels=5, proposal_log2_hashmap_size=17, proposal_max_res=[128, 256], proposal_hidden=16,
        n_proposal=[256, 96], n_samples=48, render_proposal=None, render_samples=None,
        proposal_update_every=5, proposal_warmup=5000, anneal_steps=1000, interlevel_weight=1.0,
        distortion_weight=0.0, contraction="inf", near=0.05, far=1000.0, refine_poses=False,
        pose_lr=1e-3, pose_lr_final=1e-4, pose_decay_steps=5000,
        pose_penalty_trans=1e-2, pose_penalty_rot=1e-3, pose_fix_frame=True, render_march=False,
        march_res=128, march_steps=1024, march_min_opacity=0.01, march_min_transmittance=1e-3, seed=0)
    RETIRED = dict(render_bake="grids baked from the proposal nets miss thin density peaks between their vertices, "
                                "and the fused proposal kernel is faster (docs/real_scenes.md)")
    # A CPU cannot afford the full grid and sample counts (the torch hash encoding costs
    # ~30 us per point and level there): fewer levels, a smaller table, fewer samples.
    CPU_OPTIONS = dict(n_levels=8, log2_hashmap_size=17, max_res=512, n_proposal=[64, 32], n_samples=24)

    def __init__(self, **config):
        super().__init__()
        c = self.config = check_options(type(self), config)
        check_config(c)
        c["proposal_max_res"] = [int(v) for v in c["proposal_max_res"]]
        c["n_proposal"] = [int(v) for v in c["n_proposal"]]
        if c["render_proposal"] is not None:
            c["render_proposal"] = [int(v) for v in c["render_proposal"]]
        geo = 1 + c["geo_features"]
        self.field = HashDensity(c["n_levels"], c["n_features"], c["log2_hashmap_size"], c["base_res"],
                                 c["max_res"], c["hidden"], geo, c["seed"])
        self.proposals = nn.ModuleList(
            HashDensity(c["proposal_levels"], 2, c["proposal_log2_hashmap_size"], min(16, r), r,
                        c["proposal_hidden"], 1, c["seed"] + 1 + i)
            for i, r in enumerate(c["proposal_max_res"]))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c["seed"])
            ch = c["color_hidden"]
            self.color_net = nn.Sequential(
                nn.Linear(c["geo_features"] + 16 + c["appearance_dim"], ch), nn.ReLU(),
                nn.Linear(ch, ch), nn.ReLU(), nn.Linear(ch, 3))
        # Per-image parameters, sized by bind_scene (no rows until a scene is bound).
        self.appearance = nn.Parameter(torch.zeros(0, c["appearance_dim"]))
        self.pose_delta = nn.Parameter(torch.zeros(0, 6))
        # The normalised frame: x_n = (x - center) * scale (set by bind_scene, saved).
        self.register_buffer("center", torch.zeros(3))
        self.register_buffer("scale", torch.ones(()))
        # The training cameras' centres in the normalised frame, less their mean
        # (bind_scene; frame_fixed_deltas).
        self.register_buffer("cam_offsets", torch.zeros(0, 3), persistent=False)
        # Steps trained, saved so that a restored field samples with the same anneal power.
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self.register_buffer("sh_C", sh_basis_matrix().float(), persistent=False)
        # The proposal weights' anneal power as a device scalar: a CUDA graph captured once
        # reads the current value on every replay (a Python float would be baked in).
        self.register_buffer("anneal", torch.zeros(()), persistent=False)
        # The marched render's occupancy grid of the contracted cube, with the key it was
        # baked for (_baked_grid); not saved.
        self._bakes = {}
        self.ndc = False
        # The scene's near and far bounds (bind_scene): rays asked for them take the field's.
        self._scene_near = self._scene_far = self._near = None
        self._scale = 1.0  # host copies of the frame (a Python float needs no device sync)
        self._step = 0
        self.register_load_state_dict_post_hook(lambda module, keys: module._sync_host_copies())

    # -- policy ---------------------------------------------------------------------------
    @classmethod
    def policy(cls, cuda: bool, options: dict) -> TrainPolicy:
        return cls.POLICY

    @classmethod
    def options_for(cls, cuda: bool, **knobs) -> dict:
        """The full grid and nerfstudio's sample counts on CUDA; CPU_OPTIONS on a CPU."""
        base = {} if cuda else dict(cls.CPU_OPTIONS)
        return {**base, **(knobs.get("arch") or {})}

    def set_samples(self, n_coarse: int | None = None, n_fine: int | None = None) -> None:
        """The GUI's coarse/fine counts are the NeRF's; this field's are the n_proposal and
        n_samples options (GUI_KNOBS is empty, so the GUI does not offer them)."""

    # -- the training cameras --------------------------------------------------------------
    def bind_scene(self, c2w, near: float, far: float, ndc: bool, kind: str = "object") -> None:
        c2w = np.asarray(c2w, np.float64)
        center, scale = (np.zeros(3), 1.0) if ndc else normalising_frame(c2w)
        dev = self.center.device
        self.center.copy_(torch.as_tensor(center, dtype=torch.float32, device=dev))
        self.scale.fill_(float(scale))
        self.ndc = bool(ndc)
        self._scene_near, self._scene_far = (None, None) if ndc else (float(near), float(far))
        # A capture's near is a percentile of sparse-point depths: the field's own is used.
        self._near = self.config["near"] if kind == "capture" else None
        n, a = len(c2w), self.config["appearance_dim"]
        if self.appearance.shape[0] != n:
            self.appearance = nn.Parameter(torch.zeros(n, a, device=dev))
            self.pose_delta = nn.Parameter(torch.zeros(n, 6, device=dev))
        q = (c2w[:, :3, 3] - center) * scale
        self.cam_offsets = torch.as_tensor(q - q.mean(0), dtype=torch.float32, device=dev)
        self._sync_host_copies()

    def _sync_host_copies(self) -> None:
        self._scale = float(self.scale)
        self._set_step(int(self.steps))

    def _set_step(self, step: int) -> None:
        self._step = step
        self.anneal.fill_(prop.anneal_power(step, steps=self.config["anneal_steps"]))

    # -- the field -------------------------------------------------------------------------
    def _x01(self, x_n: torch.Tensor) -> torch.Tensor:
        """Normalised points (N, 3) -> the hash grid's [0, 1]^3 through the contraction."""
        return to_unit_cube(contract(x_n, self.config["contraction"]))

    def _ray_term(self, dirs: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """(R, color_hidden): the colour head's first layer applied to what all samples of
        a ray share, its direction's SH encoding and its appearance code, plus the layer's
        bias. The layer is linear in its concatenated input, so this part is computed once
        per ray instead of once per sample (a render's samples then pay for 15 of the 63
        inputs, and no per-sample copies of the direction and the code are made)."""
        lin, g = self.color_net[0], self.config["geo_features"]
        sh = sh_encode(F.normalize(dirs.to(self.sh_C.dtype), dim=-1), self.sh_C)
        return F.linear(torch.cat([sh, emb.to(sh.dtype)], -1), lin.weight[:, g:], lin.bias)

    def _radiance_n(self, x_n: torch.Tensor, ray_term: torch.Tensor):
        """sigma (N,) per normalised unit and rgb (N, 3) at normalised points (N, 3), which
        are R rays' samples, ray by ray (N = R S); ray_term (R, color_hidden) the rays'
        ``_ray_term``. Without gradients under bf16 autocast, from the fused kernel where it
        runs."""
        x01 = self._x01(x_n)
        fused = fused_radiance(self, x01, ray_term)
        if fused is not None:
            return fused
        return self._radiance_head(self.field(x01), ray_term)

    def _radiance_head(self, h: torch.Tensor, ray_term: torch.Tensor):
        """(sigma, rgb) from the geometry net's output h (N, 1 + geo_features) (the torch path)."""
        sigma = trunc_exp(h[:, 0].float())
        lin, n_rays = self.color_net[0], ray_term.shape[0]
        pre = F.linear(h[:, 1:], lin.weight[:, :self.config["geo_features"]])
        pre = (pre.reshape(n_rays, -1, pre.shape[-1]) + ray_term[:, None].to(pre.dtype)).reshape(pre.shape)
        rgb = torch.sigmoid(self.color_net[1:](pre).float())
        return sigma, rgb

    def _normalised(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.center) * self.scale

    def density(self, x: torch.Tensor) -> torch.Tensor:
        """sigma (N,) per world unit at world points (N, 3)."""
        h = self.field(self._x01(self._normalised(x)))
        return trunc_exp(h[:, 0].float()) * self.scale

    def radiance(self, x: torch.Tensor, d: torch.Tensor):
        """(sigma (N,) per world unit, rgb (N, 3)) with the mean appearance embedding."""
        emb = self._embedding(x.shape[0], None, x.device)
        sigma, rgb = self._radiance_n(self._normalised(x), self._ray_term(d, emb))
        return sigma * self.scale, rgb

    # -- rendering -------------------------------------------------------------------------
    def _ray_bounds(self, rays_o, rays_d, near, far):
        """Normalised origins, unit directions, |d|, and near/far (R, 1) in normalised units."""
        o = self._normalised(rays_o)
        dnorm = rays_d.float().norm(dim=-1, keepdim=True).clamp(min=1e-12)
        dirs = rays_d.float() / dnorm
        per_ray = lambda v: v if isinstance(v, (int, float)) else torch.as_tensor(  # noqa: E731
            v, dtype=torch.float32, device=o.device).reshape(-1, 1)
        far_n = float(self.config["far"])
        t0 = (per_ray(near) * dnorm * self._scale).clamp(min=0.0)
        t1 = (per_ray(far) * dnorm * self._scale).clamp(max=far_n)
        if self._scene_far is not None:  # the scene's bounds: the field's instead
            ones = torch.ones_like(dnorm)
            if self._near is not None:
                t0 = torch.where(per_ray(near) * ones <= self._scene_near * (1 + 1e-6),
                                 torch.minimum(t0, torch.full_like(t0, self._near)), t0)
            t1 = torch.where(per_ray(far) * ones >= self._scene_far * (1 - 1e-6), far_n, t1)
        return o, dirs, dnorm, t0, torch.maximum(t1, t0 + 1e-4)

    def _proposal_weights(self, net, o, dirs, u, t0, t1, grad: bool):
        """Compositing weights (R, n) of proposal ``net`` on the intervals u (R, n + 1) in
        the lindisp spacing between t0 and t1 (R, 1); without a gradient, from the fused
        kernel where it runs."""
        if not (grad and torch.is_grad_enabled()):
            fused = fused_proposal_weights(net, o, dirs, u, t0, t1, self.config["contraction"])
            if fused is not None:
                return fused
        t = prop.spacing_to_distance(u, t0, t1)
        # Detached rays: the proposals' loss bounds the field's weights and is no evidence
        # about where a camera is (and its gradient through the points would cost time).
        mid = 0.5 * (t[:, 1:] + t[:, :-1])
        x = (o.detach()[:, None, :] + dirs.detach()[:, None, :] * mid[..., None]).reshape(-1, 3)
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            log_sigma = net(self._x01(x))[:, 0]
            sigma = trunc_exp(log_sigma.float()).reshape(mid.shape)
            return alpha_weights(sigma, t[:, 1:] - t[:, :-1])[0]

    def render_rays(self, rays_o, rays_d, near, far, background=None, train: bool = False,
                    image: torch.Tensor | None = None, appearance: torch.Tensor | None = None
                    ) -> dict[str, torch.Tensor]:
        """rays (R, 3) -> rgb (R, 3), depth (R,) along the un-normalised d (as the other
        fields), acc (R,), samples (0-dim); with train also interlevel and distortion
        (0-dim losses). image (R,): the training image of each ray (its appearance);
        None renders with the mean embedding, or with ``appearance`` (appearance_dim,) when
        given (a code fitted to a held-out view). background: None for none, anything else
        for the field's own (see the module doc)."""
        n_rays = rays_o.shape[0]
        o, dirs, dnorm, t0, t1 = self._ray_bounds(rays_o, rays_d, near, far)
        if not train and self._marches(o):
            return self._render_marched(o, dirs, dnorm, t0[:, 0], t1[:, 0], background, image, appearance)
        jitter = (lambda: torch.rand(n_rays, 1, device=o.device)) if train else (lambda: None)  # noqa: E731
        # A render's power is a Python float (no graph to bake it into), and at 1, which a
        # trained field has reached, raising the weights to it is skipped.
        power = self.anneal if train else prop.anneal_power(self._step, steps=self.config["anneal_steps"])
        annealed = (lambda w: w) if not train and power == 1.0 else (lambda w: w ** power)  # noqa: E731
        train_props = train and self.trains_proposals(self._step)
        n_prop, n_field = self.sample_counts(train)
        u = prop.uniform_edges(n_rays, n_prop[0], jitter(), o.device)
        levels = []
        for i, net in enumerate(self.proposals):
            if i > 0:
                u = prop.sample_histogram(u, annealed(levels[-1][1]), n_prop[i], jitter())
            w = self._proposal_weights(net, o, dirs, u, t0, t1, train_props)
            levels.append((u, w))
        u = prop.sample_histogram(u, annealed(levels[-1][1]), n_field, jitter())
        t = prop.spacing_to_distance(u, t0, t1)
        S = t.shape[1] - 1
        ray_term = self._ray_term(dirs, self._embedding(n_rays, image, o.device, appearance))
        cropped = self.crop is not None and not train  # renders see nothing outside the box
        fused = None if cropped else fused_field(self, o, dirs, t, ray_term)
        last_kept = None
        if fused is not None:
            sigma, rgb = fused
        else:
            mid = 0.5 * (t[:, 1:] + t[:, :-1])
            x = (o[:, None, :] + dirs[:, None, :] * mid[..., None]).reshape(-1, 3)
            sigma, rgb = self._radiance_n(x, ray_term)
            if cropped:
                xw = x / self._scale + self.center
                sigma = self.crop_density(xw, sigma, train)
                last_kept = self.crop_density(xw.reshape(n_rays, S, 3)[:, -1], torch.ones_like(t0[:, 0]), train)
        sigma, rgb = sigma.reshape(n_rays, S), rgb.reshape(n_rays, S, 3)
        comp = composite_intervals(sigma, rgb, t, weights=train)
        acc, color = comp["acc"], comp["rgb"]
        if background is not None:  # the field's own background, whatever colour was asked for
            fill = rgb[:, -1]
            if last_kept is not None:
                bg = torch.as_tensor(background, dtype=fill.dtype, device=fill.device)
                fill = last_kept[:, None] * fill + (1.0 - last_kept[:, None]) * bg
            color = color + (1.0 - acc)[:, None] * fill
        depth = comp["depth_sum"] / acc.clamp(min=1e-10) / (self._scale * dnorm[:, 0])
        # torch.full, not torch.tensor: a fill kernel, which a CUDA graph can capture.
        out = {"rgb": color, "depth": depth, "acc": acc,
               "samples": torch.full((), float(n_rays * (S + sum(n_prop))), device=o.device)}
        if train:
            w = comp["weights"]
            if self.config["distortion_weight"] > 0:
                out["distortion"] = prop.distortion_loss(u, w)
            out["interlevel"] = (sum(prop.interlevel_loss(u, w, pu, pw) for pu, pw in levels)
                                 if train_props else torch.zeros((), device=o.device))
        return out

    def render_chunk(self, cuda: bool) -> int:
        """Rays per render_rays call of a whole view: on a GPU a render holds about 6 kB a
        ray (the proposals' intervals and weights, the field's features), so 2^18 rays
        take under 2 GB, and an 800² frame is three calls instead of ten (each kernel's
        last, partly filled wave paid once per call)."""
        return 1 << 18 if cuda else super().render_chunk(cuda)

    def sample_counts(self, train: bool) -> tuple[list[int], int]:
        """(intervals per ray of each proposal net, radiance-field intervals per ray) of a
        training step or of a render."""
        c = self.config
        if train:
            return c["n_proposal"], c["n_samples"]
        return c["render_proposal"] or c["n_proposal"], c["render_samples"] or c["n_samples"]

    def render_rays_static(self, rays_o, rays_d, near: float, far: float, background,
                           active: torch.Tensor, capacity: int, image: torch.Tensor | None = None) -> dict:
        """The training render, whose shapes are fixed already (R rays x n intervals), for
        the CUDA-graph step. The whole buffer is rendered; ``active`` rays count in the
        loss (``valid``)."""
        out = self.render_rays(rays_o, rays_d, near, far, background, train=True, image=image)
        n = active.sum().float() * self.config["n_samples"]
        return {**out, "valid": active.float(), "marched": n, "kept": n}

    def static_shape(self, batch_rays: int) -> tuple[int, int]:
        """The batch's radiance-field samples, and the batch."""
        return batch_rays * int(self.config["n_samples"]), batch_rays

    def graph_key(self) -> bool:
        """Steps that train the proposal nets run more kernels than those that do not."""
        return self.trains_proposals(self._step)

    def loss_terms(self, out: dict, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """MSE (over the ``valid`` rays when given), the weighted interlevel and distortion
        losses, and the penalties on the pose deltas and on the appearance codes' spread."""
        c = self.config
        se = ((out["rgb"] - target) ** 2).mean(-1)
        valid = out.get("valid")
        mse = se.mean() if valid is None else (se * valid).sum() / valid.sum().clamp(min=1.0)
        terms = {"mse": mse}
        if "interlevel" in out:
            terms["interlevel"] = c["interlevel_weight"] * out["interlevel"]
            if "distortion" in out:
                terms["distortion"] = c["distortion_weight"] * out["distortion"]
            if c["refine_poses"] and self.pose_delta.shape[0] > 0:
                d = self.pose_delta
                terms["pose"] = (c["pose_penalty_rot"] * d[:, :3].norm(dim=-1).mean()
                                 + c["pose_penalty_trans"] * d[:, 3:].norm(dim=-1).mean())
            if c["appearance_penalty"] > 0 and self.appearance.shape[0] > 1:
                terms["appearance"] = c["appearance_penalty"] * code_spread(self.appearance)
        return terms

    # -- training --------------------------------------------------------------------------
    def param_groups(self, lr: float) -> list[dict]:
        """nerfstudio's Adam (eps 1e-15) for the field, the proposals and the appearance
        (the codes in a group of their own when appearance_lr is set); the pose deltas in
        their own group with a schedule of their own on top of the
        run's: pose_lr decaying to pose_lr_final over pose_decay_steps (a large lr for the first, coarse
        correction; then a small one, since each image's delta sees only its few rays of a
        batch and a large lr keeps the cameras jittering by pixels: docs/real_scenes.md)."""
        adam = dict(eps=1e-15)
        main = (list(self.field.parameters()) + list(self.color_net.parameters())
                + list(self.proposals.parameters()))
        a_lr = self.config["appearance_lr"]
        if a_lr is None:
            groups = [{"params": main + [self.appearance], "lr": lr, **adam}]
        else:
            groups = [{"params": main, "lr": lr, **adam}, {"params": [self.appearance], "lr": a_lr, **adam}]
        if self.config["refine_poses"] and not self.ndc:
            c = self.config
            ratio = c["pose_lr_final"] / c["pose_lr"] if c["pose_lr"] > 0 else 1.0
            groups.append({"params": [self.pose_delta], "lr": c["pose_lr"],
                           "decay": (ratio, int(c["pose_decay_steps"])), **adam})
        return groups

    def step_hook(self, step: int, ctx: StepContext) -> StepRequests | None:
        """Count steps: the anneal power and the proposals' training steps follow them."""
        self._set_step(int(step))
        self.steps.fill_(self._step)
        return None

    def trains_proposals(self, step: int) -> bool:
        """Whether training step ``step`` trains the proposal nets (the others evaluate them
        without gradients, which is cheaper): every step for the first 10, then every k-th,
        k ramping from 1 to proposal_update_every over proposal_warmup steps (nerfstudio's
        schedule, here a function of the step alone, so a resumed run repeats it)."""
        c = self.config
        k = int(np.clip(round(c["proposal_update_every"] * step / max(c["proposal_warmup"], 1)),
                        1, c["proposal_update_every"]))
        return step < 10 or step % k == 0


def check_config(c: dict) -> None:
    """ValueError naming the first option out of range."""
    if c["contraction"] not in ORDERS:
        raise ValueError(f"contraction must be one of {ORDERS}, got {c['contraction']!r}")
    if len(c["n_proposal"]) != len(c["proposal_max_res"]) or not c["n_proposal"]:
        raise ValueError("n_proposal and proposal_max_res need one entry per proposal net "
                         f"(got {c['n_proposal']} and {c['proposal_max_res']})")
    if min(c["n_proposal"]) < 2 or c["n_samples"] < 2:
        raise ValueError(f"n_proposal and n_samples must be >= 2, got {c['n_proposal']}, {c['n_samples']}")
    rp, rs = c["render_proposal"], c["render_samples"]
    if rp is not None and (len(rp) != len(c["n_proposal"]) or min(rp) < 2):
        raise ValueError(f"render_proposal needs one count >= 2 per proposal net, got {rp}")
    if rs is not None and rs < 2:
        raise ValueError(f"render_samples must be >= 2, got {rs}")
    if not (c["far"] > 1.0 and math.isfinite(c["far"])):
        raise ValueError(f"far must be a finite number > 1 (normalised units), got {c['far']}")
    if c["near"] is not None and not 0.0 <= c["near"] < 1.0:
        raise ValueError(f"near must be in [0, 1) (normalised units), got {c['near']}")
    if c["appearance_dim"] < 0 or c["proposal_update_every"] < 1 or c["anneal_steps"] < 1:
        raise ValueError("need appearance_dim >= 0, proposal_update_every >= 1 and anneal_steps >= 1")
    a_lr, a_pen = c["appearance_lr"], c["appearance_penalty"]
    if not ((a_lr is None or (a_lr > 0 and math.isfinite(a_lr))) and a_pen >= 0 and math.isfinite(a_pen)):
        raise ValueError(f"need appearance_lr None or > 0 and appearance_penalty >= 0, got {a_lr}, {a_pen}")
    if c["render_march"] not in (None, True, False) or c["march_res"] < 4 or c["march_steps"] < 2:
        raise ValueError("need render_march None, true or false, march_res >= 4 and march_steps >= 2, got "
                         f"{c['render_march']!r}, {c['march_res']}, {c['march_steps']}")
    if not (0 <= c["march_min_opacity"] < 1 and 0 < c["march_min_transmittance"] < 1):
        raise ValueError("need 0 <= march_min_opacity < 1 and 0 < march_min_transmittance < 1, got "
                         f"{c['march_min_opacity']}, {c['march_min_transmittance']}")
    if not (c["pose_lr"] >= 0 and math.isfinite(c["pose_lr"])):
        raise ValueError(f"pose_lr must be a number >= 0, got {c['pose_lr']}")
    if not (0 < c["pose_lr_final"] <= c["pose_lr"] or c["pose_lr"] == 0) or c["pose_decay_steps"] < 1:
        raise ValueError("need 0 < pose_lr_final <= pose_lr and pose_decay_steps >= 1, got "
                         f"{c['pose_lr_final']}, {c['pose_decay_steps']}")


def fused_proposal_weights(net, o, dirs, u, t0, t1, contraction) -> torch.Tensor | None:
    """A proposal level's weights from the Triton kernel (models/kernels/proposal_weights.py)
    where it runs, else None: the caller's torch path then computes them."""
    def run():
        from models.kernels import proposal_weights as kern
        if kern.supports(net):
            return kern.proposal_weights_triton(net, o, dirs, u, prop.lindisp(t0), prop.lindisp(t1), contraction)
        return None
    return kernels.run_or_none("proposal_weights", o, run)


def _bf16_render(device) -> bool:
    """Whether this is a render (no gradient) under bf16 autocast: where the radiance
    field's kernels stand in for the torch path (their float16 products and features
    are finer than its bf16); a float32 render stays on the torch path."""
    dev = device.type
    return not torch.is_grad_enabled() and torch.is_autocast_enabled(dev) and \
        torch.get_autocast_dtype(dev) == torch.bfloat16


def _mlp_kernel(field: NerfactoField):
    """models/kernels/radiance_mlp.py where it evaluates the field's nets, else None."""
    from models.kernels import radiance_mlp as kern
    ok = isinstance(field.field, HashDensity) and kern.supports(field.field.mlp, field.color_net)
    return kern if ok else None


def fused_radiance(field: NerfactoField, x01: torch.Tensor, ray_term: torch.Tensor):
    """(sigma, rgb) of the radiance field at points x01 (N, 3) in the hash grid's cube from
    the hash kernel and the MLP kernel (models/kernels/radiance_mlp.py) in a bf16 render
    where they run, else None."""
    if not _bf16_render(x01.device):
        return None

    def run():
        if (kern := _mlp_kernel(field)) is None:
            return None
        return kern.radiance_mlp_triton(field.field.encoding(x01), ray_term, field.field.mlp, field.color_net,
                                        field.config["geo_features"])
    return kernels.run_or_none("radiance_mlp", x01, run)


def fused_field(field: NerfactoField, o, dirs, t, ray_term):
    """(sigma, rgb) of the radiance field at the midpoints of the intervals t (R, S + 1)
    along the rays o + t dirs (normalised frame) in a bf16 render where the kernels run,
    else None: the samples' hash features from the rays in one pass
    (models/kernels/field_samples.py), then the MLP kernel."""
    if not _bf16_render(o.device):
        return None

    def run():
        from models.kernels import field_samples
        if (kern := _mlp_kernel(field)) is None or not field_samples.supports(field.field.encoding):
            return None
        feats = field_samples.field_features_triton(field.field.encoding, o, dirs, t, field.config["contraction"])
        return kern.radiance_mlp_triton(feats, ray_term, field.field.mlp, field.color_net,
                                        field.config["geo_features"])
    return kernels.run_or_none("field_samples", o, run)


def code_spread(codes: torch.Tensor) -> torch.Tensor:
    """The mean squared distance (0-dim) of per-image codes (N, A) from their mean."""
    return (codes - codes.mean(0)).pow(2).sum(-1).mean()


def frame_fixed_deltas(delta: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Per-camera deltas (N, 6) (rotation vector about the camera centre, shift of the
    centre) less the motion of the whole set of cameras that they contain: a common
    rotation w (each centre then moves by w x its offset from the cameras' mean), a
    common shift and a scaling about the mean. offsets (N, 3): the centres less their
    mean. To first order a motion of the whole scene maps to zero, and the map is a
    projection (applying it twice changes nothing)."""
    rot, shift = delta[:, :3], delta[:, 3:]
    w = rot.mean(0)
    shift = shift - torch.cross(w.expand_as(offsets), offsets, dim=-1)
    shift = shift - shift.mean(0)
    s = (shift * offsets).sum() / (offsets * offsets).sum().clamp(min=1e-12)
    return torch.cat([rot - w, shift - s * offsets], -1)


def normalising_frame(c2w: np.ndarray) -> tuple[np.ndarray, float]:
    """(center (3,), scale) that put cameras c2w (N, 4, 4) into the unit cube, the
    contraction's linear region: centred on the point the optical axes pass closest to
    (loaders.normalize.focus_point: the middle of an orbit, also of a partial one), or on
    the cameras' mean position when the axes do not meet (forward-facing, inside-out);
    scaled so that the farthest camera is at L-infinity distance 1. A capture the loader
    has normalised (focus at the origin, cameras within distance 1) moves little."""
    from loaders.normalize import focus_point

    o = c2w[:, :3, 3]
    p = focus_point(c2w)
    center = o.mean(0) if p is None else p
    extent = np.abs(o - center).max()
    return center, 1.0 / max(extent, 1e-6)
