"""The NeRF MLP (Mildenhall et al. 2020) and its coarse-to-fine model."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.encoding import make_encoding
from models.field import Field, StepContext, TrainPolicy, check_options
from models.nerf_presets import PRESETS
from renderer.compositing import composite
from renderer.occupancy import OccupancyGrid
from renderer.sampling import hierarchical_samples, stratified_samples


class NeRFField(nn.Module):
    """F(x, d) -> (sigma, rgb).

    x (N, 3) positions, d (N, 3) unit view directions -> sigma (N,), rgb (N, 3).
    Density reads only the position trunk; the direction joins once, through a
    single ``dir_width`` layer, so geometry cannot vary with viewpoint.
    """

    def __init__(self, pos_enc: nn.Module, dir_enc: nn.Module, depth: int = 8, width: int = 256,
                 skips: tuple[int, ...] = (4,), dir_width: int = 128, density_activation: str = "relu"):
        super().__init__()
        self.pos_enc, self.dir_enc, self.skips = pos_enc, dir_enc, tuple(skips)
        in_x = pos_enc.out_dim
        layers = []
        for i in range(depth):
            fan_in = in_x if i == 0 else width
            if i in self.skips and i > 0:
                fan_in += in_x
            layers.append(nn.Linear(fan_in, width))
        self.trunk = nn.ModuleList(layers)
        self.sigma_head = nn.Linear(width, 1)
        self.feature = nn.Linear(width, width)
        self.dir_layer = nn.Linear(width + dir_enc.out_dim, dir_width)
        self.rgb_head = nn.Linear(dir_width, 3)
        self.density_activation = density_activation
        # The reference code's init (Keras dense: Glorot-uniform weights, zero bias). PyTorch's
        # default shrinks activations ~6x in variance per ReLU layer, so an 8-deep trunk outputs
        # nearly the same raw density everywhere, and its random bias decides the sign: when it
        # is negative the ReLU density is zero at every point, no gradient reaches it, and the
        # field renders only the background forever (seen on an H100 as a 9.58 dB plateau).
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        ex = self.pos_enc(x)
        h = ex
        for i, layer in enumerate(self.trunk):
            if i in self.skips and i > 0:
                h = torch.cat([h, ex], -1)
            h = F.relu(layer(h))
        return h

    def _sigma(self, raw: torch.Tensor) -> torch.Tensor:
        if self.density_activation == "softplus":
            # Shifted so an untrained field starts nearly empty but with live gradients.
            return F.softplus(raw - 1.0)
        return F.relu(raw)

    def density(self, x: torch.Tensor) -> torch.Tensor:
        """sigma (N,) from positions (N, 3) only."""
        return self._sigma(self.sigma_head(self._trunk(x)).squeeze(-1))

    def forward(self, x: torch.Tensor, d: torch.Tensor, sigma_noise: float = 0.0):
        h = self._trunk(x)
        raw = self.sigma_head(h).squeeze(-1)
        if sigma_noise > 0:
            raw = raw + torch.randn_like(raw) * sigma_noise
        h = self.dir_layer(torch.cat([self.feature(h), self.dir_enc(d)], -1))
        rgb = torch.sigmoid(self.rgb_head(F.relu(h)))
        return self._sigma(raw), rgb


def _points(rays_o, rays_d, t):
    """Sample positions (R, S, 3) at depths t (R, S) along rays (R, 3)."""
    return rays_o[:, None, :] + rays_d[:, None, :] * t[..., None]


def _query(field: NeRFField, rays_o, rays_d, t, sigma_noise: float, occ=None):
    """Evaluate a field at depths t (R, S); returns sigma (R, S), rgb (R, S, 3) and the
    number of samples the network evaluated (an int: the nonzero() below already syncs).

    occ: optional renderer.occupancy.OccupancyGrid. Samples in empty cells (or outside
    the cube) are not evaluated: sigma = 0, rgb = 0, which composites to
    the same image wherever the grid is right, with far fewer network evaluations.
    """
    n_rays, n_samples = t.shape
    pts = _points(rays_o, rays_d, t)
    viewdirs = F.normalize(rays_d, dim=-1)[:, None, :].expand(n_rays, n_samples, 3)
    if occ is None:
        sigma, rgb = field(pts.reshape(-1, 3), viewdirs.reshape(-1, 3), sigma_noise)
        return sigma.view(n_rays, n_samples), rgb.view(n_rays, n_samples, 3), n_rays * n_samples
    flat = pts.reshape(-1, 3)
    keep = occ.occupied_at(flat)
    idx = keep.nonzero().squeeze(1)
    s_k, rgb_k = field(flat[idx], viewdirs.reshape(-1, 3)[idx], sigma_noise)
    sigma = torch.zeros(flat.shape[0], device=flat.device).index_copy(0, idx, s_k.float())
    rgb = torch.zeros(flat.shape[0], 3, device=flat.device).index_copy(0, idx, rgb_k.float())
    return sigma.view(n_rays, n_samples), rgb.view(n_rays, n_samples, 3), idx.shape[0]


# Per preset: Adam's learning rate (the paper's 5e-4; the narrow CPU network learns far
# faster with 3e-3, docs/benchmarks.md) and the centre-crop warm-up (the official recipe's 500
# steps for Blender scenes; the small CPU net does not need it and a short CPU run cannot
# spare the steps; app/engine/trainer.TrainConfig.precrop_steps says why it exists).
PRESET_POLICY = {
    "paper": TrainPolicy(lr=5e-4, precrop_steps=500, bf16="native", default_rank_cpu=2, default_rank_cuda=1),
    "cpu": TrainPolicy(lr=3e-3, precrop_steps=0, bf16="native", default_rank_cpu=2, default_rank_cuda=1),
}


def preset_of(options: dict) -> str:
    """The preset whose policy a network takes: the CPU one for networks as shallow as it."""
    return "cpu" if int(options.get("depth", 8)) <= PRESETS["cpu"]["depth"] else "paper"


class NeRFModel(Field):
    """Coarse + fine NeRF with hierarchical sampling.

    config keys: pos_encoding ('pe'|'none'|'gaussian'|'basic'), L_xyz, L_dir,
    use_pe_dir, width, depth, dir_width, n_coarse, n_fine, sigma_scale (Fourier
    features), n_features, density_activation, fine (bool: train a fine network),
    occupancy_res (None: off; e.g. 64: skip samples in cells of a res^3 occupancy grid over
    [-occupancy_bound, occupancy_bound]^3 (default 1.5) that the network finds empty; the
    grid is refreshed by step_hook, used from step occupancy_warmup on, and not saved).
    A short warm-up pays: skipping early gave more rays/s and no worse quality
    (docs/bench_gpu.md).
    """

    LABEL = "NeRF (MLP, PE)"
    GUI_KNOBS = ("pe", "L", "samples")
    OCC_INTERVAL = 16  # steps between grid refreshes

    DEFAULTS = dict(pos_encoding="pe", L_xyz=10, L_dir=4, width=256, depth=8, dir_width=128,
                    skips=[4], n_coarse=64, n_fine=128, fine=True, sigma_scale=10.0,
                    n_features=256, density_activation="relu", raw_noise_std=0.0, seed=0,
                    occupancy_res=None, occupancy_bound=None, occupancy_warmup=32)

    def __init__(self, **config):
        super().__init__()
        c = self.config = check_options(type(self), config)
        if not (0 <= c["L_xyz"] <= 24 and 0 <= c["L_dir"] <= 24):
            raise ValueError(f"L_xyz and L_dir must be in 0..24, got {c['L_xyz']} and {c['L_dir']}")
        if c["n_coarse"] < 2 or c["n_fine"] < 0:
            raise ValueError(f"need n_coarse >= 2 and n_fine >= 0, got {c['n_coarse']}, {c['n_fine']}")
        self.coarse = self._make_field()
        self.fine_field = self._make_field() if c["fine"] else None
        self._occ_active = False
        self.last_evaluated: dict[str, tuple[int, int]] = {}
        if c["occupancy_res"] is not None:
            if not (8 <= int(c["occupancy_res"]) <= 256):
                raise ValueError(f"occupancy_res must be in 8..256, got {c['occupancy_res']}")
            if int(c["occupancy_warmup"]) < 0:
                raise ValueError(f"occupancy_warmup must be >= 0, got {c['occupancy_warmup']}")
            # Not persistent: checkpoints keep their layout; a loaded model re-learns the grid.
            self.estimator = OccupancyGrid(int(c["occupancy_res"]), float(c["occupancy_bound"] or 1.5),
                                           persistent=False)

    def _make_field(self) -> NeRFField:
        c = self.config
        pos = make_encoding(c["pos_encoding"], 3, c["L_xyz"], c["sigma_scale"], c["n_features"], c["seed"])
        dkind = "none" if c["pos_encoding"] == "none" else "pe"
        direnc = make_encoding(dkind, 3, c["L_dir"])
        return NeRFField(pos, direnc, c["depth"], c["width"], tuple(c["skips"]), c["dir_width"],
                         c["density_activation"])

    # -- policy ---------------------------------------------------------------------------
    @classmethod
    def policy(cls, cuda: bool, options: dict) -> TrainPolicy:
        return PRESET_POLICY[preset_of(options) if options else ("paper" if cuda else "cpu")]

    @classmethod
    def options_for(cls, cuda: bool, **knobs) -> dict:
        """Preset (default: paper on CUDA, cpu on a CPU), encoding and L, sample counts,
        width; ``occupancy`` adds the 64^3 grid over [-1.5, 1.5]^3 (not in NDC space)."""
        opts = dict(PRESETS[knobs.get("preset") or ("paper" if cuda else "cpu")])
        opts.update(knobs.get("arch") or {})
        for k in ("pos_encoding", "L_xyz", "L_dir", "sigma_scale", "n_coarse", "n_fine", "width"):
            if knobs.get(k) is not None:
                opts[k] = knobs[k]
        if knobs.get("occupancy") and not knobs.get("ndc"):
            opts.update(occupancy_res=64, occupancy_bound=1.5)
        return opts

    @classmethod
    def describe(cls, options: dict) -> str:
        o = {**cls.DEFAULTS, **options}
        return f"PE L={o['L_xyz']}" if o["pos_encoding"] != "none" else "no PE (raw xyz)"

    @property
    def fine(self) -> NeRFField:
        return self.fine_field if self.fine_field is not None else self.coarse

    def density(self, x: torch.Tensor) -> torch.Tensor:
        """sigma (N,) of the finest network at positions (N, 3)."""
        return self.fine.density(x)

    def radiance(self, x: torch.Tensor, d: torch.Tensor):
        return self.fine(x, d)

    def render_rays(self, rays_o: torch.Tensor, rays_d: torch.Tensor, near: float, far: float,
                    background=None, train: bool = False) -> dict[str, torch.Tensor]:
        """rays (R, 3) -> rgb (R, 3), depth (R,), acc (R,), plus *_coarse and the
        coarse/fine depths and weights (for the GUI's weight inspector)."""
        c = self.config
        noise = c["raw_noise_std"] if train else 0.0
        occ = self.estimator if self._occ_active else None
        t_c = stratified_samples(near, far, rays_o.shape[0], c["n_coarse"], perturb=train,
                                 device=rays_o.device)
        sig, rgb, n_c = _query(self.coarse, rays_o, rays_d, t_c, noise, occ)
        sig = self.crop_density(_points(rays_o, rays_d, t_c), sig, train)
        # Samples evaluated / asked for, per network (the bench reports how much the grid skips).
        self.last_evaluated = {"coarse": (n_c, t_c.numel())}
        out_c = composite(sig, rgb, t_c, rays_d, background)
        result = {"rgb_coarse": out_c["rgb"], "depth_coarse": out_c["depth"], "acc_coarse": out_c["acc"],
                  "t_coarse": t_c, "weights_coarse": out_c["weights"]}
        if c["n_fine"] > 0:
            t_f = hierarchical_samples(t_c, out_c["weights"], c["n_fine"], deterministic=not train)
            sig, rgb, n_f = _query(self.fine, rays_o, rays_d, t_f, noise, occ)
            sig = self.crop_density(_points(rays_o, rays_d, t_f), sig, train)
            self.last_evaluated["fine"] = (n_f, t_f.numel())
            out_f = composite(sig, rgb, t_f, rays_d, background)
            result.update(rgb=out_f["rgb"], depth=out_f["depth"], acc=out_f["acc"], t_fine=t_f,
                          weights_fine=out_f["weights"])
        else:
            result.update(rgb=out_c["rgb"], depth=out_c["depth"], acc=out_c["acc"])
        return result

    def compile_fields(self, backend: str = "inductor") -> None:
        """torch.compile each network's forward, so that the element-wise work between
        the matmuls can be fused. dynamic=True: the occupancy grid makes the number of
        evaluated samples change every step. Parameters and state_dict are untouched."""
        for f in (self.coarse, self.fine_field):
            if f is not None:
                f.forward = torch.compile(f.forward, dynamic=True, backend=backend)

    # -- optional occupancy grid ----------------------------------------------------------
    @property
    def occupancy(self) -> torch.Tensor:
        return self.estimator.occupancy

    def step_hook(self, step: int, ctx: StepContext) -> None:
        """Refresh the occupancy grid (only with occupancy_res) every 16 steps, decay
        compounded over the interval (instant-ngp's rule). The grid is read only from step
        occupancy_warmup on, so refreshing it more often before then buys nothing; on a CPU each
        refresh of a 64^3 grid costs as much as a training step or two."""
        if self.config["occupancy_res"] is None:
            return
        if step % self.OCC_INTERVAL == 0:
            self.update_grid(decay=0.95 ** self.OCC_INTERVAL)
        if step >= int(self.config["occupancy_warmup"]):
            self._occ_active = True

    def update_grid(self, decay: float = 0.95) -> None:
        """Density of the finest network at one random point per cell, decay-max, threshold
        (a cell-long step through a cell must absorb 1% of the light, or the mean density)."""
        est = self.estimator
        # Always bf16 on CUDA (a threshold decision needs no more); on a CPU only when the
        # caller's step runs in bf16, since CPUs without native bf16 would be slower.
        dev = est.density_grid.device
        with torch.autocast(dev.type, dtype=torch.bfloat16,
                            enabled=dev.type == "cuda" or torch.is_autocast_enabled(dev.type)):
            est.update(self.density, 2.0 * est.bound / est.res, decay, chunk=1 << 18)

    def loss_terms(self, out: dict, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Photometric losses; the coarse term trains the network that places fine samples."""
        terms = {"mse": F.mse_loss(out["rgb"], target)}
        if "t_fine" in out:
            terms["mse_coarse"] = F.mse_loss(out["rgb_coarse"], target)
        return terms
