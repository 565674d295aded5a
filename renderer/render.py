"""Whole-image rendering by chunks, shared by evaluation, the CLI and the GUI."""
from __future__ import annotations

import torch

from renderer.cameras import Cameras, camera_grid_directions
from renderer.rays import ndc_rays, rays_from_dirs


@torch.no_grad()
def render_image(model, c2w: torch.Tensor, camera: Cameras, near: float, far: float, background=None,
                 chunk: int = 8192, ndc: bool = False, keys: tuple[str, ...] = ("rgb", "depth", "acc"),
                 autocast: bool = False, ndc_frame: tuple[int, int, float] | None = None,
                 extra: dict | None = None) -> dict:
    """Render one view through ``camera`` (a one-camera renderer.cameras.Cameras: its
    size, intrinsics and distortion); returns each of ``keys`` as a (H, W[, C]) float32
    tensor on CPU.

    ``chunk`` bounds peak memory: rays are rendered ``chunk`` at a time. ndc_frame
    (height, width, focal): the NDC warp of the training cameras, which every view of a
    forward-facing scene must share (default: this camera's own). ``extra``: more keyword
    arguments for the model's render_rays (a fitted appearance code).
    """
    device = next(model.parameters()).device
    height, width = int(camera.height[0]), int(camera.width[0])
    dirs = camera_grid_directions(camera, 0, device)
    rays_o, rays_d = rays_from_dirs(dirs.reshape(-1, 3), c2w.to(device))
    if ndc:
        h0, w0, f0 = ndc_frame or (height, width, float(camera.fx[0]))
        rays_o, rays_d = ndc_rays(h0, w0, f0, 1.0, rays_o, rays_d)
    outs = render_rays_chunked(model, rays_o, rays_d, near, far, background, chunk, keys, autocast, extra)
    return {k: v.reshape(height, width, *v.shape[1:]) for k, v in outs.items()}


@torch.no_grad()
def render_rays_chunked(model, rays_o: torch.Tensor, rays_d: torch.Tensor, near, far, background=None,
                        chunk: int = 8192, keys: tuple[str, ...] = ("rgb", "depth", "acc"),
                        autocast: bool = False, extra: dict | None = None) -> dict:
    """model.render_rays (eval mode, no grad; ``extra`` keyword arguments) over rays (R, 3)
    ``chunk`` at a time; returns each of ``keys`` as an (R[, C]) float32 tensor on CPU."""
    device = rays_o.device
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
    return to_host({k: torch.cat(v, 0) for k, v in outs.items()})


def to_host(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors on the CPU. From a GPU through page-locked buffers, all copies queued
    before one wait: a plain .cpu() copies through pageable memory, several times slower
    for a frame (torch caches page-locked blocks, so the buffers cost no allocation after
    the first frame)."""
    if not any(t.device.type == "cuda" for t in tensors.values()):
        return {k: t.cpu() for k, t in tensors.items()}
    out = {k: torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True)
           if t.device.type == "cuda" else t.cpu() for k, t in tensors.items()}
    torch.cuda.synchronize()
    return out
