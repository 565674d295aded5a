"""Pinhole camera rays.

Conventions (OpenGL / NeRF-synthetic): camera looks down -Z, +Y is up, +X right.
A pixel (i = column, j = row) is sampled at its centre (i + 0.5, j + 0.5).
"""
from __future__ import annotations

import math

import torch


def focal_from_fov(width: int, camera_angle_x: float) -> float:
    """Focal length in pixels for a horizontal field of view (radians)."""
    return 0.5 * width / math.tan(0.5 * camera_angle_x)


def intrinsics(width: int, height: int, focal: float, cx: float | None = None,
               cy: float | None = None, fy: float | None = None) -> torch.Tensor:
    """K (3, 3) float32 with principal point at the image centre unless given."""
    cx = width / 2.0 if cx is None else cx
    cy = height / 2.0 if cy is None else cy
    fy = focal if fy is None else fy
    return torch.tensor([[focal, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=torch.float32)


def camera_directions(height: int, width: int, K: torch.Tensor,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """Camera-space ray directions (H, W, 3), z = -1, for pixel centres."""
    K = K.to(device=device, dtype=torch.float32)
    j, i = torch.meshgrid(
        torch.arange(height, device=device, dtype=torch.float32) + 0.5,
        torch.arange(width, device=device, dtype=torch.float32) + 0.5,
        indexing="ij",
    )
    # Image rows grow downwards while camera +Y is up, hence the sign flip on y.
    return torch.stack([(i - K[0, 2]) / K[0, 0], -(j - K[1, 2]) / K[1, 1], -torch.ones_like(i)], -1)


def rays_from_dirs(dirs_cam: torch.Tensor, c2w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """World rays from camera-space directions (..., 3) and c2w (3|4, 4).

    Returns origins (..., 3) and unnormalised directions (..., 3); keeping them
    unnormalised makes t a depth along the optical axis (z-depth), as in NeRF.
    """
    c2w = c2w.to(dirs_cam)
    rays_d = dirs_cam @ c2w[:3, :3].T
    rays_o = c2w[:3, 3].expand_as(rays_d)
    return rays_o, rays_d


def get_rays(height: int, width: int, K: torch.Tensor, c2w: torch.Tensor,
             device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All rays of one image: origins (H, W, 3), directions (H, W, 3)."""
    return rays_from_dirs(camera_directions(height, width, K, device), c2w.to(device))


def ndc_rays(height: int, width: int, focal: float, near: float, rays_o: torch.Tensor,
             rays_d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Map forward-facing rays (..., 3) into normalised device coordinates (LLFF).

    Origins are first moved onto the near plane so that t in [0, 1] spans
    [near, inf) in NDC, which is what makes unbounded forward scenes trainable.
    """
    t = -(near + rays_o[..., 2]) / rays_d[..., 2]
    rays_o = rays_o + t[..., None] * rays_d
    ox, oy, oz = rays_o.unbind(-1)
    dx, dy, dz = rays_d.unbind(-1)
    o0 = -1.0 / (width / (2.0 * focal)) * ox / oz
    o1 = -1.0 / (height / (2.0 * focal)) * oy / oz
    o2 = 1.0 + 2.0 * near / oz
    d0 = -1.0 / (width / (2.0 * focal)) * (dx / dz - ox / oz)
    d1 = -1.0 / (height / (2.0 * focal)) * (dy / dz - oy / oz)
    d2 = -2.0 * near / oz
    return torch.stack([o0, o1, o2], -1), torch.stack([d0, d1, d2], -1)


def ndc_to_world(points: torch.Tensor, height: int, width: int, focal: float, near: float = 1.0) -> torch.Tensor:
    """Inverse of the NDC warp of ndc_rays for points (..., 3): the world (camera-aligned
    LLFF frame) points they came from. NDC z -> 1 is infinitely far; callers drop those."""
    z = 2.0 * near / (points[..., 2] - 1.0)
    x = -points[..., 0] * z * width / (2.0 * focal)
    y = -points[..., 1] * z * height / (2.0 * focal)
    return torch.stack([x, y, z], -1)
