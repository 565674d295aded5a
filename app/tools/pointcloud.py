"""Point-cloud export: the expected depth of the training views -> coloured binary PLY.

Per view (each stage a small function):

    pick_pixels      a seeded random subset of the view's pixels (not a lattice, which
                     would alias with the views' own regular structure)
    view_points      their rays rendered by the field (renders see the crop box, so no
                     weight lies outside it); a pixel whose opacity is below min_opacity is
                     dropped (its expected depth mixes surface and background); the rest
                     become o + depth * d, coloured by the field's own colour (the
                     composited colour over no background, divided by the opacity)

then everything goes through the crop box once more (rounding at its faces), back from
the scene's normalised frame to the capture's own (Scene.to_world_points), and into a
PLY written atomically. Rays go through each view's own camera (intrinsics, distortion).

Forward-facing (NDC) fields: the points are taken in NDC and mapped back to the world;
points at NDC depth ~1 are at infinity and dropped.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from app.tools.video import Cancelled
from renderer.cameras import pixel_directions
from renderer.rays import ndc_rays, ndc_to_world, rays_from_dirs
from renderer.render import render_rays_chunked

MAX_POINTS = 50_000_000
NDC_FAR = 0.999  # NDC depth beyond which a point counts as at infinity


def pick_pixels(height: int, width: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """n distinct flat pixel indices (all of them when n >= height * width), sorted."""
    total = height * width
    if n >= total:
        return torch.arange(total)
    return torch.randperm(total, generator=generator)[:n].sort().values


@torch.no_grad()
def view_points(model, c2w, camera, near, far, pixels: torch.Tensor, min_opacity: float = 0.9,
                ndc_frame: tuple[int, int, float] | None = None, chunk: int = 8192,
                autocast: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(xyz (M, 3) float64 in the field's frame, rgb (M, 3) uint8) for the given flat pixel
    indices of one view (camera: a one-camera renderer.cameras.Cameras, with its lens)
    whose opacity reaches min_opacity. ndc_frame (height, width, focal): the forward-facing
    scene's NDC warp (None: not NDC)."""
    device = next(model.parameters()).device
    w = int(camera.width[0])
    pixels = pixels.to(device)
    dirs = pixel_directions(camera, 0, pixels % w, pixels // w)
    rays_o, rays_d = rays_from_dirs(dirs, torch.as_tensor(np.asarray(c2w, dtype=np.float32)).to(device))
    if ndc_frame is not None:
        rays_o, rays_d = ndc_rays(*ndc_frame, 1.0, rays_o, rays_d)
    out = render_rays_chunked(model, rays_o, rays_d, near, far, None, chunk, ("rgb", "depth", "acc"), autocast)
    acc = out["acc"]
    keep = (acc >= min_opacity) & torch.isfinite(out["depth"])
    pts = rays_o.cpu()[keep] + out["depth"][keep, None] * rays_d.cpu()[keep]
    if ndc_frame is not None:
        finite = pts[:, 2] < NDC_FAR
        pts, keep = ndc_to_world(pts[finite], *ndc_frame), keep.nonzero().squeeze(1)[finite]
    rgb = (out["rgb"][keep] / acc[keep, None].clamp(min=1e-6)).clamp(0, 1)
    return pts.double().numpy(), (rgb.numpy() * 255.0 + 0.5).astype(np.uint8)


def export_points(trainer, path: str, points: int = 200_000, min_opacity: float = 0.9, split: str = "train",
                  seed: int = 0, progress=None) -> dict:
    """Coloured point cloud of the field seen from a split's cameras, to a binary PLY in the
    capture's own frame (the scene's normalisation undone: Scene.to_world_points).

    points: about this many pixels are tried in all, spread evenly over the views (fewer
    points come out: low-opacity pixels are dropped). progress(done, total) after each
    view; returning False cancels (Cancelled, nothing written).
    Returns dict(points=int, path=str, seconds=float, views=int).
    """
    from app.tools.export import write_ply

    if not str(path).lower().endswith(".ply"):
        raise ValueError(f"{path}: point cloud output must be a .ply file")
    if not (1 <= int(points) <= MAX_POINTS):
        raise ValueError(f"points must be between 1 and {MAX_POINTS}, got {points}")
    if not (0.0 <= min_opacity <= 1.0):
        raise ValueError(f"min_opacity must be in [0, 1], got {min_opacity}")
    scene = trainer.scene
    sp = scene.split(split)
    model = trainer.model
    ndc_frame = (trainer.height, trainer.width, trainer.focal) if scene.ndc else None
    crop = model.crop
    per_view = max(1, math.ceil(int(points) / len(sp)))
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    xyz, rgb = [], []
    with trainer.averaged():
        for i in range(len(sp)):
            cam = sp.cameras[i]
            p, c = view_points(model, sp.c2w[i], cam, scene.near, scene.far,
                               pick_pixels(int(cam.height[0]), int(cam.width[0]), per_view, g), min_opacity,
                               ndc_frame, model.render_chunk(trainer.device.type == "cuda"), trainer.config.autocast)
            xyz.append(p)
            rgb.append(c)
            if progress is not None and progress(i + 1, len(sp)) is False:
                raise Cancelled(f"cancelled after {i + 1} of {len(sp)} views")
    xyz, rgb = np.concatenate(xyz), np.concatenate(rgb)
    if crop is not None:
        inside = crop.contains_np(xyz)
        xyz, rgb = xyz[inside], rgb[inside]
    if not len(xyz):
        raise ValueError(f"no pixel of the {split} views reached opacity {min_opacity:g}"
                         + (" inside the crop box" if crop is not None else "") + ": nothing to export")
    xyz = scene.to_world_points(xyz)
    comments = [f"NeRF Lab point cloud: {split} views, min opacity {min_opacity:g}"]
    if crop is not None:
        comments.append(f"crop {list(crop.lo)} {list(crop.hi)} (scene units)")
    write_ply(path, xyz.astype(np.float32), None, rgb, comments=tuple(comments))
    return {"points": int(len(xyz)), "path": str(path), "seconds": time.perf_counter() - t0, "views": len(sp)}
