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
the field's frame to the input's (run.json's "normalization", when there is one), and
into a PLY written atomically.

Forward-facing (NDC) fields: the points are taken in NDC and mapped back to the world;
points at NDC depth ~1 are at infinity and dropped.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from app.tools.video import Cancelled
from renderer.rays import camera_directions, intrinsics, ndc_rays, ndc_to_world, rays_from_dirs
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
def view_points(model, c2w, height: int, width: int, focal: float, near, far, pixels: torch.Tensor,
                min_opacity: float = 0.9, ndc: bool = False, chunk: int = 8192,
                autocast: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(xyz (M, 3) float64 in the field's world frame, rgb (M, 3) uint8) for the given flat
    pixel indices of one view whose opacity reaches min_opacity."""
    device = next(model.parameters()).device
    K = intrinsics(width, height, focal)
    dirs = camera_directions(height, width, K, device).reshape(-1, 3)[pixels.to(device)]
    rays_o, rays_d = rays_from_dirs(dirs, torch.as_tensor(np.asarray(c2w, dtype=np.float32)).to(device))
    if ndc:
        rays_o, rays_d = ndc_rays(height, width, focal, 1.0, rays_o, rays_d)
    out = render_rays_chunked(model, rays_o, rays_d, near, far, None, chunk, ("rgb", "depth", "acc"), autocast)
    acc = out["acc"]
    keep = (acc >= min_opacity) & torch.isfinite(out["depth"])
    pts = rays_o.cpu()[keep] + out["depth"][keep, None] * rays_d.cpu()[keep]
    if ndc:
        finite = pts[:, 2] < NDC_FAR
        pts, keep = ndc_to_world(pts[finite], height, width, focal), keep.nonzero().squeeze(1)[finite]
    rgb = (out["rgb"][keep] / acc[keep, None].clamp(min=1e-6)).clamp(0, 1)
    return pts.double().numpy(), (rgb.numpy() * 255.0 + 0.5).astype(np.uint8)


def field_to_input(normalization) -> np.ndarray:
    """4x4 taking field coordinates back to the input's, from run.json's "normalization":
    None (identity); a 4x4 / 3x4 matrix M (input -> field); or {"transform": M, "scale": s}
    ("matrix" is read as "transform"), meaning field = s * M @ input (nerfstudio's
    dataparser_transforms.json). ValueError when it is none of these or not invertible."""
    if normalization is None:
        return np.eye(4)
    scale = 1.0
    m = normalization
    if isinstance(normalization, dict):
        m = normalization.get("transform", normalization.get("matrix", np.eye(4)))
        scale = normalization.get("scale", 1.0)
    try:
        m = np.asarray(m, dtype=np.float64)
        scale = float(scale)
    except (TypeError, ValueError):
        raise ValueError(f"'normalization' must be a 4x4 matrix or {{transform, scale}}, got {normalization!r}") from None
    if m.shape == (3, 4):
        m = np.vstack([m, [0, 0, 0, 1]])
    if m.shape != (4, 4) or not np.isfinite(m).all() or not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"'normalization' must be a 4x4 matrix and a positive scale, got {normalization!r}")
    forward = np.diag([scale, scale, scale, 1.0]) @ m
    if abs(np.linalg.det(forward[:3, :3])) < 1e-12:
        raise ValueError("'normalization' is not invertible")
    return np.linalg.inv(forward)


def transform_points(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    return points @ m[:3, :3].T + m[:3, 3]


def export_points(trainer, path: str, points: int = 200_000, min_opacity: float = 0.9, split: str = "train",
                  normalization=None, seed: int = 0, progress=None) -> dict:
    """Coloured point cloud of the field seen from a split's cameras, to a binary PLY.

    points: about this many pixels are tried in all, spread evenly over the views (fewer
    points come out: low-opacity pixels are dropped). normalization: run.json's entry,
    undone so the points are in the input's frame (see field_to_input). progress(done,
    total) after each view; returning False cancels (Cancelled, nothing written).
    Returns dict(points=int, path=str, seconds=float, views=int).
    """
    from app.tools.export import write_ply

    if not str(path).lower().endswith(".ply"):
        raise ValueError(f"{path}: point cloud output must be a .ply file")
    if not (1 <= int(points) <= MAX_POINTS):
        raise ValueError(f"points must be between 1 and {MAX_POINTS}, got {points}")
    if not (0.0 <= min_opacity <= 1.0):
        raise ValueError(f"min_opacity must be in [0, 1], got {min_opacity}")
    back = field_to_input(normalization)
    sp = trainer.scene.split(split)
    model, ndc = trainer.model, bool(trainer.scene.ndc)
    crop = model.crop
    per_view = max(1, math.ceil(int(points) / len(sp)))
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    xyz, rgb = [], []
    with trainer.averaged():
        for i in range(len(sp)):
            p, c = view_points(model, sp.c2w[i], sp.height, sp.width, sp.focal, trainer.scene.near,
                               trainer.scene.far, pick_pixels(sp.height, sp.width, per_view, g), min_opacity,
                               ndc, 65536 if trainer.device.type == "cuda" else 4096, trainer.config.autocast)
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
    xyz = transform_points(xyz, back)
    comments = [f"NeRF Lab point cloud: {split} views, min opacity {min_opacity:g}"]
    if crop is not None:
        comments.append(f"crop {list(crop.lo)} {list(crop.hi)} (field frame)")
    write_ply(path, xyz.astype(np.float32), None, rgb, comments=tuple(comments))
    return {"points": int(len(xyz)), "path": str(path), "seconds": time.perf_counter() - t0, "views": len(sp)}
