"""Occupancy marching through contracted space (renderer/contracted_march.py): the torch
march against a float64 loop, its intervals, the Triton kernel against the torch march
(Triton's CPU interpreter), the baked grid on an analytic density, and front-to-back
rounds against one pass."""
import math
import textwrap

import numpy as np
import torch

from renderer import contracted_march as cm
from renderer import occupancy as oc
from tests.conftest import gen, needs_triton, run_in_triton_interpreter


def _rays(n: int, seed: int):
    g = gen(seed)
    o = (torch.rand(n, 3, generator=g) * 2 - 1) * 0.9
    d = torch.randn(n, 3, generator=g)
    d = d / d.norm(dim=-1, keepdim=True)
    t0 = torch.full((n,), 0.05)
    t1 = torch.where(torch.arange(n) % 3 == 0, torch.full((n,), 3.0), torch.full((n,), 1000.0))
    return o, d, t0, t1


def _lindisp_inv64(g: float) -> float:
    return 2 * g if g < 0.5 else 0.5 / (1 - min(max(g, 0.5), 1 - 1e-7))


def _march64(o, d, t0, t1, occ, res, order, n_steps, jitter):
    """float64 loop: per ray, the kept (t, dt) and the samples too close to a cell face to
    call (float32 may round them into the neighbouring cell)."""
    occ = occ.numpy()
    kept, unsure = [], []
    for r in range(o.shape[0]):
        lin = lambda t: 0.5 * t if t < 1 else 1 - 0.5 / t  # noqa: E731
        g0, g1 = lin(float(t0[r])), lin(float(t1[r]))
        h = (g1 - g0) / n_steps
        ks, us = [], set()
        for k in range(n_steps):
            t = _lindisp_inv64(g0 + (k + float(jitter[r])) * h)
            dt = _lindisp_inv64(g0 + (k + 1) * h) - _lindisp_inv64(g0 + k * h)
            x = o[r].double().numpy() + d[r].double().numpy() * t
            n = np.abs(x).max() if order == "inf" else np.linalg.norm(x)
            y = x if n <= 1 else (2 - 1 / n) * x / n
            c = (y + 2) * res / 4
            cell = np.clip(np.floor(c).astype(int), 0, res - 1)
            if np.abs(c - np.round(c)).min() < 1e-4:
                us.add(k)
            if occ[(cell[0] * res + cell[1]) * res + cell[2]]:
                ks.append((k, t, dt))
        kept.append(ks)
        unsure.append(us)
    return kept, unsure


def test_torch_march_matches_float64_loop():
    for order in ("inf", 2):
        o, d, t0, t1 = _rays(40, 1)
        res, n_steps = 16, 200
        occ = (torch.rand(res ** 3, generator=gen(2)) < 0.3).to(torch.uint8)
        j = torch.rand(40, generator=gen(3))
        pk = cm.march_contracted_torch(o, d, t0, t1, occ, res, order, n_steps, j, ray_chunk=7)
        kept, unsure = _march64(o, d, t0, t1, occ, res, order, n_steps, j)
        assert pk["t"].numel() > 1000
        for r in range(40):
            a, b = int(pk["offsets"][r]), int(pk["offsets"][r] + pk["counts"][r])
            assert torch.all(pk["ray_ids"][a:b] == r)
            got = {round(float(t), 4): float(dt) for t, dt in zip(pk["t"][a:b], pk["dt"][a:b])}
            for k, t, dt in kept[r]:
                if k in unsure[r]:
                    continue
                key = min(got, key=lambda v: abs(v - t))
                assert abs(key - t) <= 1e-4 * max(1.0, t) ** 2, (order, r, k, t)
                assert math.isclose(got[key], dt, rel_tol=1e-3, abs_tol=1e-6)
            assert len(got) <= len(kept[r]) + len(unsure[r])


def test_intervals_partition_each_ray_and_hold_their_sample():
    o, d, t0, t1 = _rays(12, 4)
    full = torch.ones(8 ** 3, dtype=torch.uint8)
    j = torch.rand(12, generator=gen(5))
    pk = cm.march_contracted_torch(o, d, t0, t1, full, 8, "inf", 300, j)
    assert torch.all(pk["counts"] == 300)
    t, dt = pk["t"].reshape(12, 300).double(), pk["dt"].reshape(12, 300).double()
    assert torch.allclose(dt.sum(1), (t1 - t0).double(), rtol=2e-3)
    starts = t0.double()[:, None] + torch.cumsum(dt, 1) - dt
    assert torch.all(t >= starts - 1e-4 * (1 + starts)) and torch.all(t <= starts + dt + 1e-4 * (1 + starts))
    assert torch.all(t[:, 1:] > t[:, :-1])


@needs_triton
def test_triton_contracted_march_matches_torch_in_interpreter():
    code = textwrap.dedent("""
        import torch
        from renderer import contracted_march as cm
        from renderer.kernels.march import march_contracted_triton
        from tests.test_contracted_march import _rays
        g = torch.Generator().manual_seed(6)
        o, d, t0, t1 = _rays(30, 7)
        occ = (torch.rand(16 ** 3, generator=g) < 0.35).to(torch.uint8)
        j = torch.rand(30, generator=g)
        for order in ("inf", 2):
            a = cm.march_contracted_torch(o, d, t0, t1, occ, 16, order, 300, j)
            b = march_contracted_triton(o, d, t0, t1, occ, 16, order, 300, j)
            assert a["t"].numel() > 1000
            assert torch.equal(a["counts"], b["counts"]) and torch.equal(a["ray_ids"], b["ray_ids"])
            assert torch.allclose(a["t"], b["t"], rtol=1e-6) and torch.allclose(a["dt"], b["dt"], rtol=1e-5)
        print("OK")
    """)
    run_in_triton_interpreter(code)


def test_step_lengths_follow_the_spacing():
    h = 1e-3
    steps = cm.cell_step_lengths(8, "inf", h).reshape(8, 8, 8)
    # A centre cell (world distance ~0.4 from the origin): t = 1.4 -> 2 h 1.4^2.
    c = (torch.tensor([4, 4, 4]) + 0.5) * 0.5 - 2.0
    assert math.isclose(float(steps[4, 4, 4]), 2 * h * (1 + float(c.norm())) ** 2, rel_tol=1e-5)
    # Outer cells are farther, so their steps are longer.
    assert steps[0, 0, 0] > steps[2, 2, 2] > steps[4, 4, 4]


def test_bake_marks_a_dense_ball_and_leaves_empty_space():
    res, h = 32, 1e-3

    def density(y):  # contracted points: a ball of density 50 of world radius 0.3
        x = cm.uncontract(y, "inf")
        return torch.where(x.norm(dim=-1) < 0.3, 50.0, 0.0)

    occ = cm.bake_occupancy(density, res, "inf", h, points_per_cell=4).reshape(res, res, res)
    centre = (torch.arange(res) + 0.5) * 4 / res - 2
    cx, cy, cz = torch.meshgrid(centre, centre, centre, indexing="ij")
    r = torch.stack([cx, cy, cz], -1).norm(dim=-1)
    cell = 4 / res
    assert bool(occ[r < 0.3 - cell].all())  # inside
    assert not bool(occ[r > 0.3 + 3 * cell].any())  # beyond the ball and the dilation
    # A density too thin to absorb min_opacity in one step is left out.
    thin = cm.bake_occupancy(lambda y: torch.full((y.shape[0],), 1e-3), res, "inf", h)
    assert not bool(thin.any())


def test_rounds_with_no_termination_equal_one_composite():
    g = gen(8)
    counts = torch.tensor([0, 5, 40, 1, 70, 3])
    ray_ids = torch.repeat_interleave(torch.arange(6), counts)
    n = ray_ids.numel()
    s = torch.cat([torch.sort(torch.rand(int(c), generator=g) * 4)[0] for c in counts])
    sigma, rgb = torch.rand(n, generator=g) * 3, torch.rand(n, 3, generator=g)
    delta = torch.rand(n, generator=g) * 0.1 + 0.01
    offsets = torch.cumsum(counts, 0) - counts
    calls = []

    def evaluate(sel):
        calls.append(sel.numel())
        return sigma[sel], rgb[sel]

    total, used = oc.composite_rounds(evaluate, ray_ids, s, delta, offsets, counts, 6, math.inf, first_round=4)
    ref = oc.composite_packed(sigma, rgb, s, delta, ray_ids, 6)
    assert used == n and len(calls) > 3
    for k in ("rgb", "acc", "depth_s", "tau"):
        assert torch.allclose(total[k], ref[k], atol=1e-5), k
    # With a stop at transmittance 1e-2 a ray leaves out at most 1e-2 of colours <= 1.
    total, used = oc.composite_rounds(evaluate, ray_ids, s, delta, offsets, counts, 6, -math.log(1e-2), 4)
    assert used < n and torch.allclose(total["rgb"], ref["rgb"], atol=1e-2 + 1e-5)
