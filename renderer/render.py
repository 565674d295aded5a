"""Whole-image rendering by chunks, shared by evaluation, the CLI and the GUI."""
from __future__ import annotations

import torch

from renderer.rays import camera_directions, ndc_rays, rays_from_dirs


@torch.no_grad()
def render_image(model, c2w: torch.Tensor, height: int, width: int, K: torch.Tensor, near: float,
                 far: float, background=None, chunk: int = 8192, ndc: bool = False,
                 keys: tuple[str, ...] = ("rgb", "depth", "acc"), autocast: bool = False,
                 extra: dict | None = None) -> dict:
    """Render one view; returns each of ``keys`` as a (H, W[, C]) float32 tensor on CPU.

    ``chunk`` bounds peak memory: rays are rendered ``chunk`` at a time. ``extra``: more
    keyword arguments for the model's render_rays (a fitted appearance code).
    """
    device = next(model.parameters()).device
    dirs = camera_directions(height, width, K, device)
    rays_o, rays_d = rays_from_dirs(dirs.reshape(-1, 3), c2w.to(device))
    if ndc:
        rays_o, rays_d = ndc_rays(height, width, float(K[0, 0]), 1.0, rays_o, rays_d)
    outs: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    was_training = model.training
    model.eval()
    try:
        for s in range(0, rays_o.shape[0], chunk):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                out = model.render_rays(rays_o[s:s + chunk], rays_d[s:s + chunk], near, far,
                                        background=background, train=False, **(extra or {}))
            for k in keys:
                outs[k].append(out[k].float())
    finally:
        model.train(was_training)
    result = {}
    for k, v in outs.items():
        t = torch.cat(v, 0).cpu()
        result[k] = t.reshape(height, width, *t.shape[1:])
    return result
