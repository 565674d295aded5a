"""renderer/occupancy.py: grid bookkeeping on hand cases, packed marching against a
scalar loop, packed compositing against the dense compositor, and the Triton
marching kernel against the torch reference (through Triton's CPU interpreter)."""
import math
import textwrap

import numpy as np
import pytest

from tests.conftest import needs_triton, run_in_triton_interpreter
import torch

from renderer import occupancy as oc
from renderer.compositing import composite



def test_ray_aabb_hand_cases():
    o = torch.tensor([[-5.0, 0.0, 0.0], [0.0, -5.0, 3.0], [0.5, 0.0, 0.0], [-5.0, 0.2, -0.3]])
    d = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
    s0, s1 = oc.march_interval(o, d, 1.5)
    assert torch.allclose(s0, torch.tensor([3.5, 0.0, 0.0, 3.5]))
    # Ray 1 passes above the box (z = 3 > 1.5): empty interval. Ray 2 starts inside.
    assert torch.allclose(s1, torch.tensor([6.5, 0.0, 1.5, 6.5]))


def test_cell_index_and_random_points_roundtrip():
    res, bound = 8, 1.5
    idx = torch.tensor([0, 1, 8, 64, 511, 300])
    assert torch.equal(oc.cell_coords(idx, res)[3], torch.tensor([1, 0, 0]))
    torch.manual_seed(0)
    pts = oc.random_points_in_cells(idx.repeat(50), res, bound)
    assert torch.equal(oc.cell_index(pts, bound, res), idx.repeat(50))
    assert pts.abs().max() <= bound
    # Corners of the cube land in the first and last cells.
    corners = torch.tensor([[-1.5, -1.5, -1.5], [1.5, 1.5, 1.5]])
    assert oc.cell_index(corners, bound, res).tolist() == [0, res ** 3 - 1]


def test_ema_update_decays_and_takes_max():
    grid = torch.tensor([1.0, 2.0, 0.0, 4.0])
    idx = torch.tensor([0, 2, 2])
    values = torch.tensor([0.5, 3.0, 1.0])
    new = oc.ema_update(grid, idx, values, decay=0.5)
    # cell 0: max(0.5, 0.5); cell 1: decays 2 -> 1; cell 2: max over its samples 3; cell 3: 4 -> 2.
    assert new.tolist() == [0.5, 1.0, 3.0, 2.0]


def test_threshold_is_min_of_mean_and_optical_thickness():
    grid = torch.tensor([0.0, 0.0, 1.0, 3.0])  # mean 1
    dt = 0.005  # 0.01 / dt = 2 > mean
    assert oc.occupancy_threshold(grid, dt).item() == pytest.approx(1.0)
    assert oc.occupied(grid, oc.occupancy_threshold(grid, dt)).tolist() == [0, 0, 0, 1]
    assert oc.occupancy_threshold(grid * 100, dt).item() == pytest.approx(2.0)
    assert oc.occupied(grid * 100, 2.0).tolist() == [0, 0, 1, 1]


def test_a_grid_with_nothing_above_threshold_keeps_every_cell():
    # A dead (all-zero) density field must still be sampled, or it can never recover.
    zeros = torch.zeros(5)
    assert oc.occupied(zeros, oc.occupancy_threshold(zeros, 0.01)).tolist() == [1] * 5
    assert oc.occupied(torch.tensor([0.1, 0.2]), 0.5).tolist() == [1, 1]


def _random_rays(n, seed):
    g = torch.Generator().manual_seed(seed)
    o = torch.randn(n, 3, generator=g)
    o = o / o.norm(dim=-1, keepdim=True) * 4.0
    d = torch.rand(n, 3, generator=g) * 2.4 - 1.2 - o
    return o, d / d.norm(dim=-1, keepdim=True)


def _march_loop(o, d, s0, s1, occ, bound, res, dt, max_steps, jitter):
    """Scalar float32 loop (numpy scalars round like the vectorised code)."""
    f = np.float32
    inv_dt, inv_cell = f(1.0 / dt), f(res / (2.0 * bound))
    out_r, out_s = [], []
    occ = occ.numpy()
    for r in range(o.shape[0]):
        o_r, d_r = o[r].numpy(), d[r].numpy()
        a, b, j = f(s0[r].item()), f(s1[r].item()), f(jitter[r].item())
        n = int(min(max(math.ceil(f(f(b - a) * inv_dt)), 0), max_steps))
        for k in range(n):
            s = f(a + f(f(f(k) + j) * f(dt)))
            if not s < b:
                continue
            c = [min(max(int(math.floor(f(f(o_r[i] + f(d_r[i] * s)) + f(bound)) * inv_cell)), 0), res - 1)
                 for i in range(3)]
            if occ[(c[0] * res + c[1]) * res + c[2]]:
                out_r.append(r)
                out_s.append(s)
    return out_r, out_s


def test_march_matches_scalar_loop():
    bound, res, max_steps = 1.5, 8, 64
    dt = oc.step_size(bound, max_steps)
    o, d = _random_rays(24, seed=1)
    s0, s1 = oc.march_interval(o, d, bound)
    occ = (torch.rand(res ** 3, generator=torch.Generator().manual_seed(2)) < 0.3).to(torch.uint8)
    jitter = torch.rand(24, generator=torch.Generator().manual_seed(3))
    pk = oc.march_rays_torch(o, d, s0, s1, occ, bound, res, dt, max_steps, jitter, ray_chunk=7)
    ref_r, ref_s = _march_loop(o, d, s0, s1, occ, bound, res, dt, max_steps, jitter)
    assert len(ref_r) > 50
    assert pk["ray_ids"].tolist() == ref_r
    assert pk["s"].tolist() == ref_s
    counts = torch.bincount(torch.tensor(ref_r), minlength=24)
    assert torch.equal(pk["counts"], counts)
    assert torch.equal(pk["offsets"], torch.cumsum(counts, 0) - counts)


def test_march_budget_drops_whole_rays():
    bound, res, max_steps = 1.5, 8, 64
    dt = oc.step_size(bound, max_steps)
    o, d = _random_rays(16, seed=4)
    s0, s1 = oc.march_interval(o, d, bound)
    occ = torch.ones(res ** 3, dtype=torch.uint8)
    j = torch.full((16,), 0.5)
    full = oc.march_rays_torch(o, d, s0, s1, occ, bound, res, dt, max_steps, j)
    cap = int(full["counts"][:5].sum()) + 1  # rays 0..4 fit, ray 5 does not
    assert full["counts"][5] > 1
    part = oc.march_rays_torch(o, d, s0, s1, occ, bound, res, dt, max_steps, j, max_samples=cap)
    assert part["fits"].tolist() == [True] * 5 + [False] * 11
    assert torch.equal(part["counts"][:5], full["counts"][:5]) and part["counts"][5:].sum() == 0
    n5 = int(full["counts"][:5].sum())
    assert torch.equal(part["s"], full["s"][:n5])


def _ball_field(x):
    """Density 20 inside a ball of radius 0.8 around (0.2, 0, 0), zero outside; colour varies."""
    r = (x - torch.tensor([0.2, 0.0, 0.0], dtype=x.dtype)).norm(dim=-1)
    sigma = torch.where(r < 0.8, torch.full_like(r, 20.0), torch.zeros_like(r))
    rgb = torch.sigmoid(torch.stack([x[:, 0] * 3, x[:, 1] * 2 + 0.5, -x[:, 2]], -1))
    return sigma, rgb


def _packed_render(o, d, occ, bound, res, dt, max_steps):
    s0, s1 = oc.march_interval(o, d, bound)
    pk = oc.march_rays_torch(o, d, s0, s1, occ, bound, res, dt, max_steps, torch.full((o.shape[0],), 0.5))
    x = o[pk["ray_ids"]] + d[pk["ray_ids"]] * pk["s"][:, None]
    sigma, rgb = _ball_field(x)
    return oc.composite_packed(sigma, rgb, pk["s"], dt, pk["ray_ids"], o.shape[0]), pk


def test_packed_composite_matches_dense_per_ray():
    bound, res, max_steps = 1.5, 16, 128
    dt = oc.step_size(bound, max_steps)
    o, d = _random_rays(20, seed=5)
    full = torch.ones(res ** 3, dtype=torch.uint8)
    out, pk = _packed_render(o, d, full, bound, res, dt, max_steps)
    assert out["acc"].max() > 0.9 and out["acc"].min() < 0.1  # some rays hit, some miss
    for r in range(20):
        sl = slice(int(pk["offsets"][r]), int(pk["offsets"][r] + pk["counts"][r]))
        s = pk["s"][sl].double()
        if s.numel() == 0:
            assert out["acc"][r] == 0
            continue
        x = o[r].double() + d[r].double() * s[:, None]
        sigma, rgb = _ball_field(x)
        ref = composite(sigma[None], rgb[None], s[None], d[r:r + 1].double(), last_delta=dt)
        # Plain floats and lists: newer pytest's approx rejects 0-d tensors as expected values.
        assert out["rgb"][r].double().tolist() == pytest.approx(ref["rgb"][0].tolist(), abs=2e-5)
        assert float(out["acc"][r]) == pytest.approx(float(ref["acc"][0]), abs=2e-5)
        assert float(out["depth_s"][r]) == pytest.approx(float((ref["weights"][0] * s).sum()), abs=1e-4)


def test_skipping_empty_cells_does_not_change_the_image():
    """A conservative grid (every cell touching the ball) gives the all-occupied result
    with far fewer samples: skipping empty space is exact when the grid is right."""
    bound, res, max_steps = 1.5, 16, 128
    dt = oc.step_size(bound, max_steps)
    o, d = _random_rays(40, seed=6)
    coords = oc.cell_coords(torch.arange(res ** 3), res).float()
    centres = (coords + 0.5) * (2 * bound / res) - bound
    half_diag = math.sqrt(3) * bound / res
    near_ball = (centres - torch.tensor([0.2, 0.0, 0.0])).norm(dim=-1) < 0.8 + half_diag
    sparse = near_ball.to(torch.uint8)
    assert sparse.float().mean() < 0.25
    a, pk_a = _packed_render(o, d, torch.ones(res ** 3, dtype=torch.uint8), bound, res, dt, max_steps)
    b, pk_b = _packed_render(o, d, sparse, bound, res, dt, max_steps)
    assert pk_b["s"].numel() < 0.5 * pk_a["s"].numel()
    assert torch.allclose(a["rgb"], b["rgb"], atol=1e-5)
    assert torch.allclose(a["acc"], b["acc"], atol=1e-5)


def test_composite_packed_carries_optical_depth_between_rounds():
    """Compositing a ray's samples in two parts with tau0 equals compositing them at once."""
    g = torch.Generator().manual_seed(7)
    sigma = torch.rand(30, generator=g) * 5
    rgb = torch.rand(30, 3, generator=g)
    s = torch.linspace(0, 1, 30)
    ids = torch.tensor([0] * 12 + [1] * 18)
    whole = oc.composite_packed(sigma, rgb, s, 0.05, ids, 2)
    first = [*range(0, 6), *range(12, 20)]
    second = [*range(6, 12), *range(20, 30)]
    p1 = oc.composite_packed(sigma[first], rgb[first], s[first], 0.05, ids[first], 2)
    p2 = oc.composite_packed(sigma[second], rgb[second], s[second], 0.05, ids[second], 2, tau0=p1["tau"])
    assert torch.allclose(p1["rgb"] + p2["rgb"], whole["rgb"], atol=1e-6)
    assert torch.allclose(p1["tau"] + p2["tau"], whole["tau"], atol=1e-5)


def test_composite_packed_gradients_match_dense():
    g = torch.Generator().manual_seed(8)
    sigma = (torch.rand(10, generator=g) * 4).requires_grad_()
    rgb = torch.rand(10, 3, generator=g).requires_grad_()
    s = 2.0 + 0.1 * torch.arange(10.0)  # spacing = delta, as the dense compositor assumes
    out = oc.composite_packed(sigma, rgb, s, 0.1, torch.zeros(10, dtype=torch.int64), 1)
    ga = torch.autograd.grad(out["rgb"].sum(), [sigma, rgb])
    ref = composite(sigma[None], rgb[None], s[None], torch.tensor([[1.0, 0, 0]]), last_delta=0.1)
    gb = torch.autograd.grad(ref["rgb"].sum(), [sigma, rgb])
    assert torch.allclose(ga[0], gb[0], atol=1e-5) and torch.allclose(ga[1], gb[1], atol=1e-6)


@needs_triton
def test_triton_march_kernel_matches_torch_in_interpreter():
    code = textwrap.dedent("""
        import torch
        from renderer import occupancy as oc
        from renderer.kernels.march import march_rays_triton
        g = torch.Generator().manual_seed(0)
        o = torch.randn(48, 3, generator=g); o = o / o.norm(dim=-1, keepdim=True) * 4
        d = torch.rand(48, 3, generator=g) * 2.4 - 1.2 - o; d = d / d.norm(dim=-1, keepdim=True)
        s0, s1 = oc.march_interval(o, d, 1.5)
        occ = (torch.rand(16 ** 3, generator=g) < 0.4).to(torch.uint8)
        j = torch.rand(48, generator=g)
        dt = oc.step_size(1.5, 300)
        for cap in (None, 900):
            a = oc.march_rays_torch(o, d, s0, s1, occ, 1.5, 16, dt, 300, j, max_samples=cap)
            b = march_rays_triton(o, d, s0, s1, occ, 1.5, 16, dt, 300, j, max_samples=cap)
            assert a["s"].numel() > 500
            for k in a:
                assert torch.equal(a[k], b[k]), k
        print("OK")
    """)
    run_in_triton_interpreter(code)


def test_optical_depth_before_matches_float64_loop():
    g = torch.Generator().manual_seed(4)
    counts = [0, 5, 1, 0, 9, 3]
    ray_ids = torch.cat([torch.full((c,), r, dtype=torch.int64) for r, c in enumerate(counts)])
    sd = torch.rand(ray_ids.shape[0], generator=g) * 3.0
    got = oc.optical_depth_before(sd, ray_ids, len(counts))
    ref, a = [], 0
    for c in counts:
        acc = 0.0
        for v in sd[a:a + c].double().tolist():
            ref.append(acc)
            acc += v
        a += c
    assert torch.allclose(got.double(), torch.tensor(ref, dtype=torch.float64), atol=1e-6)


def test_optical_depth_before_gradient_matches_dense_float64_reference():
    # The hand-written backward against the derivative written out as a matrix:
    # d tau_i / d sd_j = 1 when j is an earlier sample of i's ray.
    g = torch.Generator().manual_seed(5)
    counts = [3, 0, 1, 7, 0, 4, 2]
    ray_ids = torch.cat([torch.full((c,), r, dtype=torch.int64) for r, c in enumerate(counts)])
    n = ray_ids.shape[0]
    jac = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(i):
            if ray_ids[j] == ray_ids[i]:
                jac[i, j] = 1.0
    for dtype in (torch.float32, torch.float64):
        sd = (torch.rand(n, generator=g, dtype=torch.float64) * 2.0).to(dtype).requires_grad_()
        up = torch.randn(n, generator=g, dtype=torch.float64)
        tau = oc.optical_depth_before(sd, ray_ids, len(counts))
        assert tau.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        assert torch.allclose(tau.double(), jac @ sd.detach().double(), atol=1e-6)
        grad, = torch.autograd.grad(tau, sd, up.to(tau.dtype))
        assert grad.dtype == dtype
        assert torch.allclose(grad.double(), jac.T @ up, atol=1e-5), (grad.double() - jac.T @ up).abs().max()
    sd = torch.rand(n, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: oc.optical_depth_before(x, ray_ids, len(counts)), (sd,))



@pytest.mark.parametrize("capacity", [7, 12, 100])
def test_compact_static_packs_kept_samples_of_whole_rays(capacity):
    g = torch.Generator().manual_seed(1)
    n_rays = 6
    counts = [4, 0, 6, 3, 5, 2]
    ray_ids = torch.cat([torch.full((c,), r, dtype=torch.int64) for r, c in enumerate(counts)]
                        + [torch.full((3,), n_rays, dtype=torch.int64)])  # 3 padding slots
    s = torch.rand(ray_ids.shape[0], generator=g)
    keep = torch.rand(ray_ids.shape[0], generator=g) < 0.6
    out = oc.compact_static(keep, ray_ids, s, n_rays, capacity)
    # Reference: a Python loop that keeps rays in order while all their kept samples fit.
    exp_ids, exp_s, fits, used = [], [], [], 0
    for r in range(n_rays):
        mine = [(float(s[i]), r) for i in range(len(ray_ids)) if ray_ids[i] == r and keep[i]]
        ok = used + len(mine) <= capacity
        fits.append(ok)
        if ok:
            used += len(mine)
            exp_s += [v for v, _ in mine]
            exp_ids += [r] * len(mine)
        else:
            used = capacity + 1  # the cumulative count stays above capacity from here on
    assert out["ray_ids"].shape == (capacity,) and out["s"].shape == (capacity,)
    n = len(exp_ids)
    assert out["kept"].item() == n
    assert out["ray_ids"][:n].tolist() == exp_ids and torch.equal(out["s"][:n], torch.tensor(exp_s))
    assert (out["ray_ids"][n:] == n_rays).all() and (out["s"][n:] == 0).all()
    assert out["fits"].tolist() == fits


def test_compact_static_handles_nothing_kept_and_empty_input():
    ray_ids = torch.tensor([0, 0, 1, 2, 2, 3, 3], dtype=torch.int64)
    s = torch.arange(7, dtype=torch.float32)
    out = oc.compact_static(torch.zeros(7, dtype=torch.bool), ray_ids, s, 3, 4)
    assert out["kept"].item() == 0 and (out["ray_ids"] == 3).all() and (out["s"] == 0).all()
    assert out["fits"].tolist() == [True, True, True]
    empty = oc.compact_static(torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.int64),
                              torch.zeros(0), 2, 5)
    assert empty["kept"].item() == 0 and empty["ray_ids"].tolist() == [2] * 5


@pytest.mark.parametrize("n_pad_slots", [0, 1, 5, 40])
def test_spread_padding_keeps_rays_and_order_and_spreads_the_rest(n_pad_slots):
    n_rays, group = 5, 4
    real = torch.tensor([0, 0, 1, 3, 3, 3, 4], dtype=torch.int64)
    ray_ids = torch.cat([real, torch.full((n_pad_slots,), n_rays, dtype=torch.int64)])
    ids, n_pad = oc.spread_padding(ray_ids, n_rays, group)
    assert torch.equal(ids[:7], real)
    assert (ids[1:] >= ids[:-1]).all()
    pad = ids[7:]
    assert ((pad >= n_rays) & (pad < n_rays + n_pad)).all()
    if n_pad_slots:
        assert torch.bincount(pad - n_rays).max().item() <= group
        assert pad.unique().numel() == -(-n_pad_slots // group)
