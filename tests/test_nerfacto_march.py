"""nerfacto's renders through the baked occupancy grid (render_march): the render is the
quadrature of its march steps (a float64 loop), and skipping empty cells and stopping
opaque rays changes an analytic ball's image by less than the light they leave out."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from models import build_model
from renderer.contraction import uncontract
from renderer.proposal import lindisp
from tests.conftest import orbit_poses
from tests.test_nerfacto import TINY, _rays

DENSE = dict(render_march=True, march_min_opacity=0.0, march_min_transmittance=1e-30)


def _field(**opts):
    m = build_model("nerfacto", **{**TINY, **opts}).eval()
    m.bind_scene(orbit_poses(4).astype(np.float32), 2.0, 6.0, False)
    return m


def test_marched_render_is_the_quadrature_of_its_steps():
    """Every cell occupied, no early stop: the render is sum_k T_k (1 - exp(-sigma_k dt_k)) c_k
    over the march's steps, plus the light left times the colour at the far end."""
    steps = 40
    m = _field(march_res=8, march_steps=steps, **DENSE)
    o, d = _rays(6, seed=5)
    with torch.no_grad():
        out = m.render_rays(o, d, 2.0, 6.0, background=1.0)
        on, dirs, dnorm, t0, t1 = m._ray_bounds(o, d, 2.0, 6.0)
        emb = m._embedding(1, None, "cpu")
    lin_inv = lambda g: 2 * g if g < 0.5 else 0.5 / (1 - min(max(g, 0.5), 1 - 1e-7))  # noqa: E731
    for r in range(6):
        g0, g1 = float(lindisp(t0[r])), float(lindisp(t1[r]))
        h = (g1 - g0) / steps
        colour, trans, depth = np.zeros(3), 1.0, 0.0
        for k in range(steps + 1):
            t = lin_inv(g0 + (k + 0.5) * h) if k < steps else lin_inv(g0 + (steps - 0.5) * h)
            x = (on[r].double() + dirs[r].double() * t).float()[None]
            with torch.no_grad():
                sigma, rgb = m._radiance_n(x, m._ray_term(dirs[r:r + 1], emb))
            if k == steps:  # the far end's colour takes what is left
                colour += trans * rgb[0].double().numpy()
                break
            dt = lin_inv(g0 + (k + 1) * h) - lin_inv(g0 + k * h)
            a = 1 - math.exp(-float(sigma[0]) * dt)
            colour += trans * a * rgb[0].double().numpy()
            depth += trans * a * t
            trans *= 1 - a
        np.testing.assert_allclose(out["rgb"][r].numpy(), colour, atol=2e-5)
        np.testing.assert_allclose(float(out["acc"][r]), 1 - trans, atol=2e-5)
        np.testing.assert_allclose(float(out["depth"][r]), depth / (1 - trans) / float(m._scale * dnorm[r]),
                                   rtol=1e-4)
    assert float(out["samples"]) == 6 * (steps + 1)


class _Ball(nn.Module):
    """A dense ball of normalised radius 0.15 in empty space, no geometry features: a field
    whose empty space is known."""

    def __init__(self, out: int):
        super().__init__()
        self.out = out

    def forward(self, x01):
        r = uncontract(x01 * 4.0 - 2.0, "inf").norm(dim=-1)
        log_sigma = torch.log(300.0 * torch.sigmoid((0.15 - r) * 200.0) + 1e-6)
        return torch.cat([log_sigma[:, None], torch.zeros(x01.shape[0], self.out - 1)], -1)


def test_skipping_empty_cells_and_stopping_opaque_rays_keeps_the_image():
    dense = _field(march_res=64, march_steps=512, **DENSE)
    fast = _field(march_res=64, march_steps=512, render_march=True)
    for m in (dense, fast):
        m.field = _Ball(1 + TINY.get("geo_features", 15))
    fast.color_net.load_state_dict(dense.color_net.state_dict())
    o, d = _rays(64, seed=6, radius=3.0)
    with torch.no_grad():
        a = dense.render_rays(o, d, 2.0, 6.0, background=1.0)
        b = fast.render_rays(o, d, 2.0, 6.0, background=1.0)
    hit = a["acc"] > 0.99
    assert 5 < int(hit.sum()) < 60  # some rays hit the ball, some miss it
    assert (a["rgb"] - b["rgb"]).abs().max() < 0.02
    assert (a["depth"][hit] - b["depth"][hit]).abs().max() < 0.02 * a["depth"][hit].max()
    assert float(b["samples"]) < 0.2 * float(a["samples"])  # empty space and the ball's inside skipped


def test_the_grid_is_baked_again_only_after_training():
    from renderer import contracted_march as cm

    m = _field(march_res=8, march_steps=32, render_march=True)
    bakes = []
    real = cm.bake_occupancy
    cm.bake_occupancy = lambda *a, **k: bakes.append(1) or real(*a, **k)
    try:
        o, d = _rays(8, seed=7)
        with torch.no_grad():
            m.render_rays(o, d, 2.0, 6.0, background=1.0)
            m.render_rays(o, d, 2.0, 6.0, background=1.0)
            assert len(bakes) == 1
            m.step_hook(1, None)
            m.render_rays(o, d, 2.0, 6.0, background=1.0)
            assert len(bakes) == 2
            m.render_rays(o, d, 2.0, 6.0, background=1.0, train=True)  # training never marches
            assert len(bakes) == 2
    finally:
        cm.bake_occupancy = real
