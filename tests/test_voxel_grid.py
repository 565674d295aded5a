"""models/voxel_grid.py and models/grid_optim.py: each building block against an
independent reference (float64 loops, hand cases, torch's own RMSprop)."""
import itertools
import math

import numpy as np
import pytest
import torch

from models import voxel_grid as vg
from models.grid_optim import GridRMSprop, schedule_factor
from renderer.compositing import composite
from tests.conftest import gen, trilinear_reference


def _random_links(n, keep, seed):
    active = torch.rand(n, n, n, generator=gen(seed)) < keep
    return vg.build_links(active)


# -- interpolation ---------------------------------------------------------------------------
def test_trilinear_matches_float64_loop():
    n, C = 6, 4
    g = gen(1)
    grid = torch.randn(n, n, n, C, generator=g, dtype=torch.float64)
    p = torch.rand(120, 3, generator=g, dtype=torch.float64) * (n - 1)
    p[:5] = torch.tensor([[0, 0, 0], [n - 1, n - 1, n - 1], [2, 3, 4], [n - 1, 0, 2.5], [1.5, n - 1, 0]],
                         dtype=torch.float64)
    idx, w = vg.trilinear_corners(p, n)
    torch.testing.assert_close(w.sum(-1), torch.ones(120, dtype=torch.float64))
    got = vg.interpolate(grid.reshape(-1, C), idx, w)
    np.testing.assert_allclose(got.numpy(), trilinear_reference(grid.numpy(), p.numpy()), atol=1e-12)


def test_sparse_gather_matches_dense_reference():
    """Links into packed rows read exactly what a dense grid with zeros at pruned vertices reads."""
    n, C = 7, 3
    links, vertices = _random_links(n, 0.6, 2)
    data = torch.randn(vertices.numel(), C, generator=gen(3), dtype=torch.float64)
    dense = torch.zeros(n ** 3, C, dtype=torch.float64)
    dense[vertices] = data
    p = torch.rand(300, 3, generator=gen(4), dtype=torch.float64) * (n - 1)
    rows, w = vg.corner_rows(links, p)
    got = vg.interpolate(data, rows, w)
    ref = trilinear_reference(dense.view(n, n, n, C).numpy(), p.numpy())
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-12)


def test_interpolate_gradient_matches_autograd_reference():
    g = gen(3)
    data = torch.randn(27, 3, generator=g, dtype=torch.float64, requires_grad=True)
    p = torch.rand(40, 3, generator=g, dtype=torch.float64) * 2
    idx, w = vg.trilinear_corners(p, 3)
    torch.autograd.gradcheck(lambda d: vg.interpolate(d, idx, w), (data,))


# -- structure ------------------------------------------------------------------------------------
def test_links_dilate_occupancy_and_coarse_blocks():
    m = torch.zeros(5, 5, 5, dtype=torch.bool)
    m[2, 2, 2] = True
    d = vg.dilate(m, 1)
    assert d.sum() == 27 and d[1:4, 1:4, 1:4].all()
    assert vg.dilate(m, 2).sum() == 125
    links, vertices = vg.build_links(m)
    assert vertices.tolist() == [62] and links[2, 2, 2] == 0 and (links >= 0).sum() == 1
    cells = vg.cell_occupancy(links)
    assert cells.shape == (4, 4, 4) and cells.sum() == 8 and cells[1:3, 1:3, 1:3].all()
    occ = vg.coarse_occupancy(cells, 3)  # 4 cells -> 2 blocks per axis, the last one padded
    assert occ.shape == (2, 2, 2) and occ.sum() == 1 and occ[0, 0, 0] == 1
    assert vg.coarse_occupancy(cells, 2).sum() == 8  # cells 1 and 2 straddle two blocks
    assert vg.coarse_occupancy(cells[:2, :2, :2] & False, 2).sum() == 0
    torch.testing.assert_close(vg.row_vertices(links), vertices)


def test_positive_cells_and_bit_packing_match_loops():
    """positive_cells against a loop over each cell's corners; pack_bits against numpy's
    little-endian packbits (sizes that are and are not a multiple of 8)."""
    n = 6
    links, vertices = _random_links(n, 0.6, 7)
    density = torch.randn(vertices.numel(), 1, generator=gen(8))
    got = vg.positive_cells(links, vg.row_vertices(links), density)
    want = torch.zeros(n - 1, n - 1, n - 1, dtype=torch.bool)
    for i, j, k in itertools.product(range(n - 1), repeat=3):
        rows = [int(links[i + a, j + b, k + c]) for a, b, c in itertools.product((0, 1), repeat=3)]
        want[i, j, k] = any(r >= 0 and float(density[r, 0]) > 0 for r in rows)
    assert 0 < want.sum() < vg.cell_occupancy(links).sum()
    assert torch.equal(got, want)
    for size in (125, 128, 3):
        m = torch.rand(size, generator=gen(size)) < 0.4
        np.testing.assert_array_equal(vg.pack_bits(m).numpy(), np.packbits(m.numpy(), bitorder="little"))


def test_upsample_support_and_resample_are_exact():
    """The doubled grid interpolates the same field: at random points, and zero outside the
    support (so dropping those vertices loses nothing)."""
    n, C = 5, 2
    links, vertices = _random_links(n, 0.5, 5)
    data = torch.randn(vertices.numel(), C, generator=gen(6))
    n2 = 2 * n - 1
    support = vg.upsample_support(links >= 0)
    all_v = torch.arange(n2 ** 3)
    vals = vg.resample(links, [data], all_v, n2)[0]
    assert (vals[~support.reshape(-1)] == 0).all()
    links2, verts2 = vg.build_links(support)
    data2 = vals[verts2]
    p = torch.rand(500, 3, generator=gen(7)) * (n - 1)
    before = vg.interpolate(data, *vg.corner_rows(links, p))
    after = vg.interpolate(data2, *vg.corner_rows(links2, p * 2))
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


# -- total variation ---------------------------------------------------------------------------------
def _tv_loop(data, links, rows, rv, scale, eps):
    n = links.shape[0]

    def value(v):
        r = links.view(-1)[v].item()
        return data[r] if r >= 0 else torch.zeros_like(data[0])

    total = 0.0
    for r in rows.tolist():
        v = rv[r].item()
        i, j, k = v // (n * n), (v // n) % n, v % n
        nbs = [v + n * n if i < n - 1 else v, v + n if j < n - 1 else v, v + 1 if k < n - 1 else v]
        sq = sum((value(nb) - data[r]) ** 2 for nb in nbs)
        total = total + torch.sqrt(sq + eps).sum()
    return total * scale / len(rows)


def test_sparse_tv_value_and_gradient_match_a_loop():
    n = 5
    links, vertices = _random_links(n, 0.7, 8)
    data = torch.randn(vertices.numel(), 3, generator=gen(9), dtype=torch.float64)
    rows = torch.randint(0, vertices.numel(), (40,), generator=gen(10))
    rv = vg.row_vertices(links)
    p = torch.nn.Parameter(data.clone())
    val = vg.sparse_tv(p, links, rows, rv, scale=0.3, eps=1e-9)
    val.backward()
    q = data.clone().requires_grad_(True)
    ref = _tv_loop(q, links, rows, rv, 0.3, 1e-9)
    ref.backward()
    assert val.item() == pytest.approx(ref.item(), rel=1e-10)
    torch.testing.assert_close(p.grad, q.grad)
    # A second backward adds into the same buffer (svox2's in-place gradient).
    vg.sparse_tv(p, links, rows, rv, scale=0.3, eps=1e-9).backward()
    torch.testing.assert_close(p.grad, 2 * q.grad)


def test_sparse_tv_is_zero_on_a_constant_block():
    links, vertices = vg.build_links(torch.ones(4, 4, 4, dtype=torch.bool))
    data = torch.nn.Parameter(torch.full((vertices.numel(), 2), 0.7, dtype=torch.float64))
    rows = torch.arange(vertices.numel())
    assert vg.sparse_tv(data, links, rows, vertices, 1.0, eps=0.0).item() == 0.0


# -- the reference renderer --------------------------------------------------------------------------
def test_render_reference_matches_plain_compositing():
    """Sparse gather + empty-cell skipping + early termination vs dense queries and
    renderer.compositing on the same samples."""
    res = 6
    links, vertices = _random_links(res + 1, 0.7, 11)
    m = vertices.numel()
    g = gen(12)
    density = torch.rand(m, 1, generator=g) * 8 - 2
    sh = torch.randn(m, 27, generator=g) * 0.5
    lo, hi = torch.tensor([-1.0, -1, -1]), torch.tensor([1.0, 1, 1])
    rays_o = torch.randn(64, 3, generator=g) * 0.2 + torch.tensor([0.0, 0.0, 3.0])
    rays_d = torch.nn.functional.normalize(torch.randn(64, 3, generator=g) * 0.3 + torch.tensor([0, 0, -1.0]), dim=-1)
    rays = vg.grid_rays(rays_o, rays_d * 1.7, 0.5 / 1.7, 6.0 / 1.7, lo, hi, res)
    from models.sh import sh_basis
    basis = sh_basis(rays["dirs"], 2)
    bg = torch.ones(64, 3)
    offset = torch.full((64,), 0.5)
    out = vg.render_reference(links, density, sh, vg.cell_occupancy(links), rays, offset, 0.5, 0.0, basis, bg)
    # Dense reference: every lattice sample through the dense grid (zeros at pruned vertices).
    dense_d = torch.zeros((res + 1) ** 3, 1)
    dense_d[vertices] = density
    dense_s = torch.zeros((res + 1) ** 3, 27)
    dense_s[vertices] = sh
    full = vg.build_links(torch.ones(res + 1, res + 1, res + 1, dtype=torch.bool))[0]
    t, valid = vg.sample_lattice(rays["t0"], rays["t1"], offset, 0.5)
    p = rays["o"][:, None] + rays["d"][:, None] * t[..., None]
    rows, w = vg.corner_rows(full, p.reshape(-1, 3))
    sigma = torch.relu(vg.interpolate(dense_d, rows, w)[:, 0]).view(t.shape) * valid
    coeffs = vg.interpolate(dense_s, rows, w).view(*t.shape, 3, 9)
    rgb = torch.relu((coeffs * basis[:, None, None, :]).sum(-1) + 0.5)
    tw = t * rays["wps"][:, None]
    ref = composite(sigma, rgb, tw, rays["dirs"], bg, last_delta=float(0.5 * rays["wps"][0]))
    assert ref["acc"].max() > 0.5 and ref["acc"].min() < 0.1  # a real mix of hits and misses
    torch.testing.assert_close(out["rgb"], ref["rgb"], atol=1e-4, rtol=0)
    torch.testing.assert_close(out["acc"], ref["acc"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out["depth"], ref["depth"] * ref["acc"], atol=1e-4, rtol=0)
    # Early termination changes a pixel by at most the transmittance it stops at.
    early = vg.render_reference(links, density, sh, vg.cell_occupancy(links), rays, offset, 0.5, 1e-2, basis, bg)
    assert (early["rgb"] - out["rgb"]).abs().max() < 2e-2 * 1.5


# -- the optimiser -----------------------------------------------------------------------------------------
def test_rmsprop_step_matches_torch():
    g = gen(13)
    init = torch.randn(50, 4, generator=g)
    grads = [torch.randn(50, 4, generator=g) for _ in range(4)]
    ours = torch.nn.Parameter(init.clone())
    ref = torch.nn.Parameter(init.clone())
    opt = GridRMSprop([ours], lr=0.1, beta=0.95, eps=1e-8, sparse=False, init_from_grad=False)
    topt = torch.optim.RMSprop([ref], lr=0.1, alpha=0.95, eps=1e-8)
    for gr in grads:
        opt.zero_grad()
        topt.zero_grad()
        ours.grad = gr.clone()
        ref.grad = gr.clone()
        opt.step()
        topt.step()
        torch.testing.assert_close(ours.data, ref.data)
        torch.testing.assert_close(opt.state[ours]["square_avg"], topt.state[ref]["square_avg"])
    assert (ours.grad == 0).all()  # step leaves the gradient buffer zero


def test_rmsprop_sparse_rows_and_first_gradient_init():
    """Rows without gradient keep value and state; a fresh element starts from g^2, so its
    first step is lr * sign(g) (svox2's rule), and later ones follow torch's recursion."""
    p = torch.nn.Parameter(torch.zeros(4, 2))
    opt = GridRMSprop([p], lr=0.5, beta=0.9, eps=1e-12)
    grad = torch.tensor([[2.0, -3.0], [0.0, 0.0], [0.5, 0.0], [0.0, 0.0]])
    p.grad = grad.clone()
    opt.step()
    torch.testing.assert_close(p.data, torch.tensor([[-0.5, 0.5], [0, 0], [-0.5, 0], [0, 0]]))
    sq = opt.state[p]["square_avg"]
    torch.testing.assert_close(sq, grad ** 2)
    p.grad = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    opt.step()
    expect = 0.9 * 4.0 + 0.1 * 1.0
    assert p.data[0, 0].item() == pytest.approx(-0.5 - 0.5 / math.sqrt(expect))
    assert opt.state[p]["square_avg"][0, 1].item() == pytest.approx(0.9 * 9.0)  # row touched: decays
    assert p.data[2, 0].item() == -0.5 and opt.state[p]["square_avg"][2, 0].item() == 0.25  # untouched row


def test_schedule_matches_svox2_formula():
    # svox2 get_expon_lr_func(30, 0.05, 15000, 0.01, 250000) / 30 at a few steps.
    def svox2(step):
        delay = 0.01 + 0.99 * np.sin(0.5 * np.pi * np.clip(step / 15000, 0, 1))
        t = np.clip(step / 250000, 0, 1)
        return delay * np.exp(np.log(30) * (1 - t) + np.log(0.05) * t) / 30

    for s in (0, 100, 7500, 15000, 100000, 250000, 400000):
        assert schedule_factor(s, 0.05 / 30, 250000, 15000, 0.01) == pytest.approx(svox2(s), rel=1e-9)
    p = torch.nn.Parameter(torch.zeros(1, 1))
    opt = GridRMSprop([{"params": [p], "lr": 2.0, "lr_final_ratio": 0.25, "decay_steps": 10}], step=5)
    assert opt.current_lr(opt.param_groups[0]) == pytest.approx(1.0)
    p.grad = torch.ones(1, 1)
    opt.step()
    assert opt.param_groups[0]["step"] == 6
