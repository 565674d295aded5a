"""A straightforward PyTorch NeRF (Mildenhall et al. 2020), the baseline that
bench/bench_gpu.py measures speed-ups against in the same run.

Written the way a first implementation usually is (after the structure of the
widely used nerf-pytorch port): float32 everywhere with PyTorch's default
precision settings, positional encoding by a Python loop of sin/cos, an 8x256
MLP with a skip, 64 stratified coarse + 128 importance samples (the fine network
sees all 192), cumprod transmittance, Adam 5e-4. It imports nothing from this
repository's models/ or renderer/, so it is an independent check of them too.

    from bench.reference_nerf import ReferenceNeRF
    ref = ReferenceNeRF(images, c2w, focal, near=2, far=6, device="cuda")
    loss = ref.step()                      # one batch of random rays
    img = ref.render_image(c2w[0], H, W, focal)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def positional_encoding(x: torch.Tensor, n_freqs: int) -> torch.Tensor:
    """(N, D) -> (N, D * (1 + 2 n_freqs)): x, sin(2^k x), cos(2^k x)."""
    out = [x]
    for k in range(n_freqs):
        out.append(torch.sin((2.0 ** k) * x))
        out.append(torch.cos((2.0 ** k) * x))
    return torch.cat(out, -1)


class MLP(nn.Module):
    """8 x 256 ReLU trunk, input re-injected after the 5th layer, density head,
    a 128-wide view-dependent colour branch. Returns raw (N, 4) = rgb logits, sigma logit."""

    def __init__(self, depth: int = 8, width: int = 256, in_x: int = 63, in_d: int = 27, skip: int = 4):
        super().__init__()
        self.skip = skip
        layers = [nn.Linear(in_x, width)]
        for i in range(1, depth):
            layers.append(nn.Linear(width + in_x if i == skip + 1 else width, width))
        self.layers = nn.ModuleList(layers)
        self.sigma = nn.Linear(width, 1)
        self.feature = nn.Linear(width, width)
        self.view = nn.Linear(width + in_d, width // 2)
        self.rgb = nn.Linear(width // 2, 3)

    def forward(self, x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        h = x
        for i, layer in enumerate(self.layers):
            h = F.relu(layer(h))
            if i == self.skip:
                h = torch.cat([x, h], -1)
        sigma = self.sigma(h)
        h = F.relu(self.view(torch.cat([self.feature(h), d], -1)))
        return torch.cat([self.rgb(h), sigma], -1)


def volume_render(raw: torch.Tensor, z: torch.Tensor, rays_d: torch.Tensor, white: bool):
    """raw (R, S, 4), depths z (R, S) -> rgb (R, 3), weights (R, S)."""
    dists = z[:, 1:] - z[:, :-1]
    dists = torch.cat([dists, torch.full_like(dists[:, :1], 1e10)], -1)
    dists = dists * torch.norm(rays_d[:, None, :], dim=-1)
    rgb = torch.sigmoid(raw[..., :3])
    alpha = 1.0 - torch.exp(-F.relu(raw[..., 3]) * dists)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha + 1e-10], -1), -1)[:, :-1]
    weights = alpha * trans
    rgb_map = torch.sum(weights[..., None] * rgb, -2)
    if white:
        rgb_map = rgb_map + (1.0 - weights.sum(-1, keepdim=True))
    return rgb_map, weights


def sample_pdf(bins: torch.Tensor, weights: torch.Tensor, n: int, det: bool) -> torch.Tensor:
    """Inverse-transform sampling of n depths per ray from piecewise-constant weights."""
    weights = weights + 1e-5
    pdf = weights / torch.sum(weights, -1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1)
    if det:
        u = torch.linspace(0.0, 1.0, n, device=bins.device).expand(cdf.shape[0], n)
    else:
        u = torch.rand(cdf.shape[0], n, device=bins.device)
    u = u.contiguous()
    inds = torch.searchsorted(cdf, u, right=True)
    below = torch.clamp(inds - 1, min=0)
    above = torch.clamp(inds, max=cdf.shape[-1] - 1)
    cdf_b, cdf_a = torch.gather(cdf, 1, below), torch.gather(cdf, 1, above)
    bin_b, bin_a = torch.gather(bins, 1, below), torch.gather(bins, 1, above)
    denom = cdf_a - cdf_b
    denom = torch.where(denom < 1e-5, torch.ones_like(denom), denom)
    return bin_b + (u - cdf_b) / denom * (bin_a - bin_b)


class ReferenceNeRF:
    """Owns the two networks, the optimiser and the training images (on the device)."""

    def __init__(self, images, c2w, focal: float, near: float = 2.0, far: float = 6.0, white: bool = True,
                 batch: int = 4096, lr: float = 5e-4, n_coarse: int = 64, n_fine: int = 128,
                 device: str = "cuda", seed: int = 0):
        torch.manual_seed(seed)
        self.device = torch.device(device)
        self.images = torch.as_tensor(images, dtype=torch.float32, device=self.device)
        self.c2w = torch.as_tensor(c2w, dtype=torch.float32, device=self.device)
        self.focal, self.near, self.far, self.white = float(focal), float(near), float(far), white
        self.batch, self.n_coarse, self.n_fine = batch, n_coarse, n_fine
        self.coarse = MLP().to(self.device)
        self.fine = MLP().to(self.device)
        self.params = list(self.coarse.parameters()) + list(self.fine.parameters())
        self.opt = torch.optim.Adam(self.params, lr=lr, betas=(0.9, 0.999))
        self.steps = 0

    def rays(self, c2w: torch.Tensor, px: torch.Tensor, py: torch.Tensor, h: int, w: int, focal: float):
        """World rays through pixel centres (px, py) of cameras c2w (N, 4, 4) or (4, 4)."""
        d = torch.stack([(px + 0.5 - w * 0.5) / focal, -(py + 0.5 - h * 0.5) / focal,
                         -torch.ones_like(px)], -1)
        rot = c2w[..., :3, :3]
        if rot.dim() == 2:
            rays_d = d @ rot.T
            rays_o = c2w[:3, 3].expand_as(rays_d)
        else:
            rays_d = torch.sum(d[:, None, :] * rot, -1)
            rays_o = c2w[:, :3, 3]
        return rays_o, rays_d

    def render(self, rays_o, rays_d, train: bool):
        n = rays_o.shape[0]
        t = torch.linspace(0.0, 1.0, self.n_coarse, device=self.device)
        z = (self.near * (1.0 - t) + self.far * t).expand(n, self.n_coarse)
        if train:
            mids = 0.5 * (z[:, 1:] + z[:, :-1])
            upper = torch.cat([mids, z[:, -1:]], -1)
            lower = torch.cat([z[:, :1], mids], -1)
            z = lower + (upper - lower) * torch.rand(z.shape, device=self.device)
        viewdirs = rays_d / torch.norm(rays_d, dim=-1, keepdim=True)

        def run(net, z):
            pts = rays_o[:, None, :] + rays_d[:, None, :] * z[..., None]
            dirs = viewdirs[:, None, :].expand(pts.shape)
            raw = net(positional_encoding(pts.reshape(-1, 3), 10), positional_encoding(dirs.reshape(-1, 3), 4))
            return volume_render(raw.reshape(n, z.shape[1], 4), z, rays_d, self.white)

        rgb_c, w_c = run(self.coarse, z)
        mids = 0.5 * (z[:, 1:] + z[:, :-1])
        z_f = sample_pdf(mids, w_c[:, 1:-1].detach(), self.n_fine, det=not train).detach()
        z_all, _ = torch.sort(torch.cat([z, z_f], -1), -1)
        rgb_f, _ = run(self.fine, z_all)
        return rgb_c, rgb_f

    def step(self) -> float:
        n_img, h, w = self.images.shape[:3]
        img = torch.randint(0, n_img, (self.batch,), device=self.device)
        py = torch.randint(0, h, (self.batch,), device=self.device)
        px = torch.randint(0, w, (self.batch,), device=self.device)
        rays_o, rays_d = self.rays(self.c2w[img], px.float(), py.float(), h, w, self.focal)
        target = self.images[img, py, px]
        rgb_c, rgb_f = self.render(rays_o, rays_d, train=True)
        loss = F.mse_loss(rgb_c, target) + F.mse_loss(rgb_f, target)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.steps += 1
        return loss.item()

    @torch.no_grad()
    def render_image(self, c2w, h: int, w: int, focal: float, chunk: int = 16384) -> torch.Tensor:
        """(h, w, 3) float32 on the CPU."""
        c2w = torch.as_tensor(c2w, dtype=torch.float32, device=self.device)
        py, px = torch.meshgrid(torch.arange(h, device=self.device, dtype=torch.float32),
                                torch.arange(w, device=self.device, dtype=torch.float32), indexing="ij")
        rays_o, rays_d = self.rays(c2w, px.reshape(-1), py.reshape(-1), h, w, focal)
        out = [self.render(rays_o[a:a + chunk], rays_d[a:a + chunk], train=False)[1]
               for a in range(0, rays_o.shape[0], chunk)]
        return torch.cat(out).reshape(h, w, 3).cpu()
