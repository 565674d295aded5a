"""Dense grids baked from a density net over the contracted cube [0, 1]^3, for renders.

A proposal net is a hash encoding and a small MLP evaluated at every one of a render's
hundreds of samples per ray; on a trained field it is a fixed function of position with
detail no finer than its finest level. Baked once at the vertices of a grid of that
resolution, a render reads it back with one trilinear lookup per sample (8 reads)
instead of the encoding's 8 per level and the MLP.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def cached(cache: dict, name: str, key: tuple, make) -> torch.Tensor:
    """cache[name]'s grid while ``key`` (the field's step count, the options and device it
    was made with) is unchanged, else make()'s, kept: a render bakes once per trained field."""
    if name not in cache or cache[name][0] != key:
        cache[name] = (key, make())
    return cache[name][1]


@torch.no_grad()
def bake_grid(fn, res: int, device, chunk: int = 1 << 20) -> torch.Tensor:
    """fn(points (N, 3) in [0, 1]^3) -> values (N,), at the (res + 1)^3 vertices k / res;
    returned float32 as v[z, y, x] (grid_sample's layout)."""
    axis = torch.arange(res + 1, device=device, dtype=torch.float32) / res
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    pts = torch.stack([x, y, z], -1).reshape(-1, 3)
    out = torch.cat([fn(pts[a:a + chunk]).float() for a in range(0, pts.shape[0], chunk)])
    return out.reshape(res + 1, res + 1, res + 1)


def sample_grid(grid: torch.Tensor, x01: torch.Tensor) -> torch.Tensor:
    """Trilinear values (N,) of a baked grid v[z, y, x] at points (N, 3) in [0, 1]^3
    (clamped to the cube)."""
    g = (x01.float().clamp(0.0, 1.0) * 2.0 - 1.0).reshape(1, 1, 1, -1, 3)
    return F.grid_sample(grid[None, None], g, mode="bilinear", align_corners=True).reshape(-1)
