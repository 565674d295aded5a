"""models/kernels/plenoxel_render.py against the torch reference (models.voxel_grid) in
Triton's CPU interpreter: the fused forward, its backward (gradients written into .grad),
and the max-weight pass of pruning. Grids are small and random, with pruned vertices,
empty coarse blocks (so the skip path runs), rays that miss, start inside the box, or
end at a near/far clip."""
from tests.conftest import needs_triton, run_in_triton_interpreter

SETUP = r"""
import torch
from models import voxel_grid as vg
from models.sh import sh_basis
from models.kernels import plenoxel_render as pr

def make(res=12, block=3, seed=0, keep=0.5, k=9):
    g = torch.Generator().manual_seed(seed)
    n = res + 1
    active = torch.rand(n, n, n, generator=g) < keep
    active[: n // 2, : n // 2, :] = False          # an empty corner: whole coarse blocks to skip
    links, verts = vg.build_links(active)
    m = verts.numel()
    density = torch.rand(m, 1, generator=g) * 30 - 8
    sh = torch.randn(m, 3 * k, generator=g) * 0.4
    cells = vg.cell_occupancy(links)
    grid = {"links": links.contiguous(), "density": density.view(-1).contiguous(), "sh": sh.contiguous(),
            "occ": vg.coarse_occupancy(cells, block).contiguous(), "cells": cells, "res": res, "block": block}
    lo, hi = torch.tensor([-1.0, -1.0, -1.0]), torch.tensor([1.0, 1.2, 1.0])
    o = torch.randn(96, 3, generator=g)
    o = o / o.norm(dim=-1, keepdim=True) * 3.0
    o[:8] = torch.rand(8, 3, generator=g) * 1.6 - 0.8   # start inside the box
    d = -o + torch.randn(96, 3, generator=g) * 0.8
    d[8:12] = o[8:12]                                  # pointing away: misses
    d = d * (0.5 + torch.rand(96, 1, generator=g))     # non-unit on purpose
    rays = vg.grid_rays(o, d, 0.3, 6.0, lo, hi, res)
    basis = sh_basis(rays["dirs"], {1: 0, 4: 1, 9: 2, 16: 3}[k])
    offset = torch.rand(96, generator=g)
    bg = torch.rand(96, 3, generator=g)
    return grid, links, density, sh, cells, rays, basis, offset, bg
"""


@needs_triton
def test_forward_matches_reference():
    code = SETUP + r"""
for k, stop in ((9, 0.0), (9, 1e-3), (4, 1e-3), (1, 0.0)):
    grid, links, density, sh, cells, rays, basis, offset, bg = make(k=k, seed=k)
    ref = vg.render_reference(links, density, sh, cells, rays, offset, 0.5, stop, basis, bg)
    out = pr.render_forward(grid, pr.pack_rays(rays, offset, 0.5), basis, bg, 0.5, stop)
    assert ref["acc"].max() > 0.9 and ref["acc"].min() < 0.05, (ref["acc"].min(), ref["acc"].max())
    torch.testing.assert_close(out[:, :3], ref["rgb"], atol=2e-4, rtol=0)
    torch.testing.assert_close(out[:, 3], ref["depth"], atol=2e-4, rtol=0)
    torch.testing.assert_close(out[:, 4], ref["acc"], atol=2e-5, rtol=0)
    torch.testing.assert_close(out[:, 5], ref["cauchy"], atol=2e-3, rtol=1e-4)
print("OK")
"""
    run_in_triton_interpreter(code)


@needs_triton
def test_frame_kernel_matches_forward_and_reference():
    """The gradient-free frame kernel (one ray per thread, the positive-density cell mask and
    its coarse blocks, cell skipping) composites the same samples as the training forward."""
    code = SETUP + r"""
for k, stop, block, neg in ((9, 0.0, 3, 0.0), (9, 1e-3, 2, 0.6), (4, 1e-3, 4, 0.0), (1, 0.0, 1, 0.6)):
    grid, links, density, sh, cells, rays, basis, offset, bg = make(k=k, seed=k)
    # Rows made non-positive in place (grid["density"] shares them): whole cells drop out.
    drop = torch.rand(density.shape[0], generator=torch.Generator().manual_seed(k)) < neg
    density[drop] = -density[drop].abs()
    pos = vg.positive_cells(links, vg.row_vertices(links), density)
    assert 0 < pos.sum() < cells.sum()                 # cells skipped that the training kernels visit
    frame = dict(grid, bits=vg.pack_bits(pos), occ=vg.coarse_occupancy(pos, block).contiguous(), block=block)
    packed = pr.pack_rays(rays, offset, 0.5)
    out = pr.render_frame(frame, packed, basis, bg, 0.5, stop)
    fwd = pr.render_forward(grid, packed, basis, bg, 0.5, stop)
    ref = vg.render_reference(links, density, sh, cells, rays, offset, 0.5, stop, basis, bg)
    assert ref["acc"].max() > 0.9 and ref["acc"].min() < 0.05, (ref["acc"].min(), ref["acc"].max())
    torch.testing.assert_close(out, fwd, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(out[:, :3], ref["rgb"], atol=2e-4, rtol=0)
    torch.testing.assert_close(out[:, 3], ref["depth"], atol=2e-4, rtol=0)
    torch.testing.assert_close(out[:, 4], ref["acc"], atol=2e-5, rtol=0)
print("OK")
"""
    run_in_triton_interpreter(code)


@needs_triton
def test_backward_matches_reference_autograd():
    code = SETUP + r"""
grid, links, density, sh, cells, rays, basis, offset, bg = make(seed=3)
stop = 1e-3
gw = torch.randn(96, 3, generator=torch.Generator().manual_seed(9))
# Reference: autograd through the torch renderer.
d_ref = density.clone().requires_grad_(True)
s_ref = sh.clone().requires_grad_(True)
ref = vg.render_reference(links, d_ref, s_ref, cells, rays, offset, 0.5, stop, basis, bg)
((ref["rgb"] * gw).sum() + 0.3 * ref["cauchy"].sum()).backward()
# Kernels: the autograd Function, gradients added into the parameters' .grad.
d_p = torch.nn.Parameter(density.clone())
s_p = torch.nn.Parameter(sh.clone())
packed = pr.pack_rays(rays, offset, 0.5)
rgb, depth, acc, cauchy = pr.GridRender.apply(d_p, s_p, packed, basis, bg, grid, 0.5, stop)
((rgb * gw).sum() + 0.3 * cauchy.sum()).backward()
assert d_ref.grad.abs().max() > 1e-3 and s_ref.grad.abs().max() > 1e-3
torch.testing.assert_close(d_p.grad, d_ref.grad, atol=2e-4, rtol=1e-3)
torch.testing.assert_close(s_p.grad, s_ref.grad, atol=2e-4, rtol=1e-3)
assert not depth.requires_grad and not acc.requires_grad
print("OK")
"""
    run_in_triton_interpreter(code)


@needs_triton
def test_max_weights_matches_reference():
    code = SETUP + r"""
grid, links, density, sh, cells, rays, basis, offset, bg = make(seed=5)
ref = vg.max_weights_reference(links, density, cells, rays, 0.5, 0.2)
wmax = torch.zeros(density.shape[0])
pr.max_weights(grid, pr.pack_rays(rays, torch.full_like(offset, 0.5), 0.5), 0.5, 0.2, wmax)
assert (ref > 0.05).sum() > 10
torch.testing.assert_close(wmax, ref, atol=2e-5, rtol=1e-4)
print("OK")
"""
    run_in_triton_interpreter(code)


def test_kernels_match_reference_on_cuda():
    """The compiled kernels (not the interpreter) on a CUDA device, when there is one."""
    import pytest
    import torch
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    ns: dict = {}
    exec(SETUP, ns)
    torch, vg, pr = ns["torch"], ns["vg"], ns["pr"]
    grid, links, density, sh, cells, rays, basis, offset, bg = ns["make"](seed=7)
    dev = torch.device("cuda")
    ref = vg.render_reference(links, density, sh, cells, rays, offset, 0.5, 1e-3, basis, bg)
    g = {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in grid.items()}
    cr = {k: v.to(dev) for k, v in rays.items()}
    out = pr.render_forward(g, pr.pack_rays(cr, offset.to(dev), 0.5), basis.to(dev), bg.to(dev), 0.5, 1e-3).cpu()
    torch.testing.assert_close(out[:, :3], ref["rgb"], atol=2e-4, rtol=0)
    torch.testing.assert_close(out[:, 4], ref["acc"], atol=2e-5, rtol=0)
    pos = vg.positive_cells(links, vg.row_vertices(links), density)
    frame = dict(g, bits=vg.pack_bits(pos).to(dev), occ=vg.coarse_occupancy(pos, 2).to(dev), block=2)
    fr = pr.render_frame(frame, pr.pack_rays(cr, offset.to(dev), 0.5), basis.to(dev), bg.to(dev), 0.5, 1e-3).cpu()
    torch.testing.assert_close(fr, out, atol=2e-5, rtol=1e-5)
    wref = vg.max_weights_reference(links, density, cells, rays, 0.5, 0.2)
    wmax = torch.zeros(density.shape[0], device=dev)
    pr.max_weights(g, pr.pack_rays(cr, torch.full_like(offset, 0.5).to(dev), 0.5), 0.5, 0.2, wmax)
    torch.testing.assert_close(wmax.cpu(), wref, atol=2e-5, rtol=1e-4)
    gw = torch.randn(96, 3, generator=torch.Generator().manual_seed(9))
    d_ref, s_ref = density.clone().requires_grad_(True), sh.clone().requires_grad_(True)
    (vg.render_reference(links, d_ref, s_ref, cells, rays, offset, 0.5, 1e-3, basis, bg)["rgb"] * gw).sum().backward()
    d_p, s_p = torch.nn.Parameter(density.to(dev)), torch.nn.Parameter(sh.to(dev))
    g["density"], g["sh"] = d_p.detach().view(-1), s_p.detach()
    rgb = pr.GridRender.apply(d_p, s_p, pr.pack_rays(cr, offset.to(dev), 0.5), basis.to(dev), bg.to(dev), g,
                              0.5, 1e-3)[0]
    (rgb * gw.to(dev)).sum().backward()
    torch.testing.assert_close(d_p.grad.cpu(), d_ref.grad, atol=2e-4, rtol=1e-3)
    torch.testing.assert_close(s_p.grad.cpu(), s_ref.grad, atol=2e-4, rtol=1e-3)
