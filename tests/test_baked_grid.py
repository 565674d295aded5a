"""renderer/baked_grid.py against a float64 trilinear loop and an exact trilinear
function; nerfacto's render_bake against its un-baked render."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from renderer.baked_grid import bake_grid, sample_grid


def _f(p):
    return torch.sin(3.0 * p[:, 0]) + p[:, 1] ** 2 - p[:, 0] * p[:, 2]


def _trilinear_loop(v, res, p):
    """float64 trilinear interpolation of vertex values v[z, y, x] at one point."""
    x, y, z = (min(max(float(c), 0.0), 1.0) * res for c in p)
    i0, j0, k0 = (min(int(math.floor(c)), res - 1) for c in (x, y, z))
    fx, fy, fz = x - i0, y - j0, z - k0
    total = 0.0
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                w = (fx if dx else 1 - fx) * (fy if dy else 1 - fy) * (fz if dz else 1 - fz)
                total += w * float(v[k0 + dz, j0 + dy, i0 + dx])
    return total


def test_bake_holds_the_vertices_and_sampling_is_trilinear():
    res = 7
    v = bake_grid(_f, res, "cpu", chunk=100)
    assert v.shape == (8, 8, 8)
    # Vertex (i, j, k) holds f at (i, j, k) / res, laid out v[k, j, i].
    torch.testing.assert_close(v[5, 2, 3], _f(torch.tensor([[3 / 7, 2 / 7, 5 / 7]]))[0])
    g = torch.Generator().manual_seed(0)
    p = torch.rand(200, 3, generator=g) * 1.2 - 0.1  # some outside the cube: clamped
    got = sample_grid(v, p)
    ref = torch.tensor([_trilinear_loop(v.double(), res, q) for q in p.double()], dtype=torch.float64)
    torch.testing.assert_close(got.double(), ref, atol=2e-6, rtol=0)
    # A trilinear function is reproduced exactly everywhere in the cube.
    tri = lambda q: 0.3 + q[:, 0] - 2 * q[:, 1] * q[:, 2] + 0.5 * q[:, 0] * q[:, 1] * q[:, 2]  # noqa: E731
    q = torch.rand(100, 3, generator=g)
    torch.testing.assert_close(sample_grid(bake_grid(tri, 5, "cpu"), q), tri(q), atol=2e-6, rtol=0)


def test_nerfacto_baked_render_matches_its_proposal_render_and_bakes_again_after_training():
    from tests.test_nerfacto import _trainer

    torch.manual_seed(0)
    tr = _trainer(steps=200)
    for _ in range(120):
        tr.step()
    m, sp = tr.model, tr.scene.split("test")
    plain = tr.render(sp.c2w[0], 32, 32, keys=("rgb",))["rgb"]
    m.config["render_bake"] = True
    try:
        baked = tr.render(sp.c2w[0], 32, 32, keys=("rgb",))["rgb"]
        first = m._bakes["proposal0"][1]
        assert set(m._bakes) == {"proposal0", "proposal1"} and first.shape == (17, 17, 17)
        tr.render(sp.c2w[0], 8, 8, keys=("rgb",))
        assert m._bakes["proposal0"][1] is first  # no training since: the same grid
        tr.step()
        tr.render(sp.c2w[0], 8, 8, keys=("rgb",))
        assert m._bakes["proposal0"][1] is not first
    finally:
        m.config["render_bake"] = False
    # Each proposal's weights along rays of the view: the baked grid's against the net's
    # (a grid read with its axes swapped differs by 0.09 here).
    from renderer import proposal as prop
    from renderer.cameras import camera_grid_directions
    from renderer.rays import rays_from_dirs
    dirs = camera_grid_directions(sp.cameras[0], 0, "cpu").reshape(-1, 3)[::50]
    ro, rd = rays_from_dirs(dirs, torch.as_tensor(np.asarray(sp.c2w[0], np.float32)))
    o, d, _, t0, t1 = m._ray_bounds(ro, rd, tr.scene.near, tr.scene.far)
    u = prop.uniform_edges(len(o), 16, None, "cpu")
    with torch.no_grad():
        w = m._proposal_weights(m.proposals[0], o, d, u, t0, t1, False)
        wb = m._proposal_weights(m.proposals[0], o, d, u, t0, t1, False, m._proposal_grid(0, "cpu"))
    l1 = float((wb - w).abs().sum(-1).mean())
    assert l1 < 0.05, l1
    err = float((baked - plain).abs().mean())
    assert err < 0.02, err
    assert float((plain - plain.mean()).abs().mean()) > 5 * err  # the image is not flat
    with pytest.raises(ValueError, match="render_bake"):
        from models import build_model
        build_model("nerfacto", render_bake="yes")
    assert np.isfinite(baked.numpy()).all()
