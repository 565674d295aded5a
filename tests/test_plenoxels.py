"""Plenoxels (models/plenoxels.py): each stage against an independent reference."""
import itertools
import math

import numpy as np
import pytest
import torch

from models import build_model
from models.plenoxels import (Plenoxels, cell_occupancy, dilate, interpolate, trilinear_corners, tv_loss,
                              upsample_vertices)
from renderer.occupancy import ray_aabb
from renderer.compositing import composite
from tests.conftest import make_sphere_scene


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# -- ray / box -----------------------------------------------------------------------------
def test_ray_aabb_hand_cases():
    lo, hi = [-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]
    o = torch.tensor([[-5.0, 0, 0],     # straight through along +x
                      [-5.0, 2, 0],     # parallel to x, above the box: miss
                      [0.0, 0, 0],      # starts inside, along -z
                      [-3.0, -3, -3],   # main diagonal, unit speed sqrt(3)
                      [5.0, 0.5, 0.5],  # along -x with a non-unit direction
                      [-5.0, 0, 0]])    # pointing away from the box
    d = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0.0, 0, -1], [1.0, 1, 1], [-2.0, 0, 0], [-1.0, 0, 0]])
    tn, tf = ray_aabb(o, d, lo, hi)
    hit = tf >= tn
    assert hit.tolist() == [True, False, True, True, True, True]
    assert (tn[0].item(), tf[0].item()) == (4.0, 6.0)
    assert (tn[2].item(), tf[2].item()) == (-1.0, 1.0)
    assert (tn[3].item(), tf[3].item()) == (2.0, 4.0)
    assert (tn[4].item(), tf[4].item()) == (2.0, 3.0)
    assert tf[5].item() < 0  # the box is behind it: the renderer's near clip removes it
    assert torch.isfinite(tn[hit]).all() and torch.isfinite(tf[hit]).all()


def test_ray_aabb_matches_brute_force():
    g = _gen(0)
    o = torch.randn(200, 3, generator=g, dtype=torch.float64) * 3
    d = torch.randn(200, 3, generator=g, dtype=torch.float64)
    lo, hi = torch.tensor([-1.0, -0.5, -2.0], dtype=torch.float64), torch.tensor([1.0, 1.5, 0.0], dtype=torch.float64)
    tn, tf = ray_aabb(o, d, lo, hi)
    ts = torch.linspace(-20, 20, 40001, dtype=torch.float64)
    for r in range(200):
        pts = o[r] + ts[:, None] * d[r]
        inside = ((pts >= lo) & (pts <= hi)).all(-1)
        if inside.any():
            assert tf[r] >= tn[r]
            assert ts[inside].min().item() == pytest.approx(tn[r].item(), abs=2e-3)
            assert ts[inside].max().item() == pytest.approx(tf[r].item(), abs=2e-3)
        else:
            assert tf[r] < tn[r] or tf[r] < -20 or tn[r] > 20


# -- trilinear interpolation --------------------------------------------------------------------
def _trilinear_reference(grid, p):
    """float64 loop: grid (n, n, n, C) numpy, p (N, 3) vertex coordinates in [0, n-1]."""
    n = grid.shape[0]
    out = np.zeros((len(p), grid.shape[3]))
    for s, (x, y, z) in enumerate(p):
        i, j, k = (min(int(math.floor(v)), n - 2) for v in (x, y, z))
        fx, fy, fz = x - i, y - j, z - k
        for a, b, c in itertools.product((0, 1), repeat=3):
            wt = (fx if a else 1 - fx) * (fy if b else 1 - fy) * (fz if c else 1 - fz)
            out[s] += wt * grid[i + a, j + b, k + c]
    return out


def test_trilinear_matches_float64_loop():
    n, C = 6, 4
    g = _gen(1)
    grid = torch.randn(n, n, n, C, generator=g, dtype=torch.float64)
    p = torch.rand(120, 3, generator=g, dtype=torch.float64) * (n - 1)
    p[:5] = torch.tensor([[0, 0, 0], [n - 1, n - 1, n - 1], [2, 3, 4], [n - 1, 0, 2.5], [1.5, n - 1, 0]],
                         dtype=torch.float64)
    idx, w = trilinear_corners(p, n)
    torch.testing.assert_close(w.sum(-1), torch.ones(120, dtype=torch.float64))
    got = interpolate(grid.reshape(-1, C), idx, w)
    np.testing.assert_allclose(got.numpy(), _trilinear_reference(grid.numpy(), p.numpy()), atol=1e-12)


def test_trilinear_is_exact_on_trilinear_functions():
    n = 5
    coef = [0.3, -1.2, 0.7, 2.0, 0.5, -0.25, 0.8, -0.6]

    def f(x, y, z):
        a, b, c, d, e, f_, g_, h = coef
        return a + b * x + c * y + d * z + e * x * y + f_ * x * z + g_ * y * z + h * x * y * z

    ax = torch.arange(n, dtype=torch.float64)
    X, Y, Z = torch.meshgrid(ax, ax, ax, indexing="ij")
    grid = f(X, Y, Z).reshape(-1, 1)
    p = torch.rand(500, 3, generator=_gen(2), dtype=torch.float64) * (n - 1)
    idx, w = trilinear_corners(p, n)
    torch.testing.assert_close(interpolate(grid, idx, w)[:, 0], f(*p.unbind(-1)), atol=1e-12, rtol=0)


def test_interpolate_gradient_matches_autograd_reference():
    g = _gen(3)
    data = torch.randn(27, 3, generator=g, dtype=torch.float64, requires_grad=True)
    p = torch.rand(40, 3, generator=g, dtype=torch.float64) * 2
    idx, w = trilinear_corners(p, 3)
    torch.autograd.gradcheck(lambda d: interpolate(d, idx, w), (data,))
    up = torch.randn(40, 3, generator=g, dtype=torch.float64)
    (interpolate(data, idx, w) * up).sum().backward()
    ref = torch.zeros_like(data)
    for s in range(40):
        for c in range(8):
            ref[idx[s, c]] += w[s, c] * up[s]
    torch.testing.assert_close(data.grad, ref)


# -- total variation -------------------------------------------------------------------------
def _dense_links(n):
    return torch.arange(n ** 3, dtype=torch.int32).view(n, n, n)


def test_tv_zero_for_constant_grid():
    n = 5
    data = torch.full((n ** 3, 3), 0.7, dtype=torch.float64)
    assert tv_loss(data, _dense_links(n)).item() == 0.0


def test_tv_hand_case_ramp():
    # value = 2*i + 0.5*k: every inner vertex has dx = 2, dy = 0, dz = 0.5.
    n = 4
    ax = torch.arange(n, dtype=torch.float64)
    I, _, K = torch.meshgrid(ax, ax, ax, indexing="ij")
    data = (2 * I + 0.5 * K).reshape(-1, 1)
    expected = math.sqrt(4 + 0.25)
    assert tv_loss(data, _dense_links(n), eps=0.0).item() == pytest.approx(expected, abs=1e-12)
    # Two channels add.
    data2 = torch.cat([data, 3 * data], 1)
    assert tv_loss(data2, _dense_links(n), eps=0.0).item() == pytest.approx(4 * expected, abs=1e-12)


def test_tv_matches_loop_with_pruned_vertices():
    n = 4
    g = _gen(4)
    active = torch.rand(n, n, n, generator=g) > 0.3
    links = torch.full((n ** 3,), -1, dtype=torch.int32)
    links[active.reshape(-1)] = torch.arange(int(active.sum()), dtype=torch.int32)
    links = links.view(n, n, n)
    data = torch.randn(int(active.sum()), 2, generator=g, dtype=torch.float64)

    def value(i, j, k):
        r = links[i, j, k].item()
        return data[r].numpy() if r >= 0 else np.zeros(2)

    terms = []
    for i, j, k in itertools.product(range(n - 1), repeat=3):
        if links[i, j, k] < 0:
            continue
        v = value(i, j, k)
        sq = sum((value(*nb) - v) ** 2 for nb in ((i + 1, j, k), (i, j + 1, k), (i, j, k + 1)))
        terms.append(np.sqrt(sq).sum())
    assert tv_loss(data, links, eps=0.0).item() == pytest.approx(np.mean(terms), abs=1e-12)


# -- grid helpers ------------------------------------------------------------------------------
def test_upsample_vertices_keeps_old_vertices_and_midpoints():
    g = torch.randn(3, 3, 3, 2, generator=_gen(5), dtype=torch.float64)
    up = upsample_vertices(g)
    assert up.shape == (5, 5, 5, 2)
    torch.testing.assert_close(up[::2, ::2, ::2], g)
    torch.testing.assert_close(up[1, 0, 0], 0.5 * (g[0, 0, 0] + g[1, 0, 0]))
    torch.testing.assert_close(up[1, 1, 1], g[:2, :2, :2].mean((0, 1, 2)))


def test_dilate_and_cell_occupancy():
    m = torch.zeros(5, 5, 5, dtype=torch.bool)
    m[2, 2, 2] = True
    d = dilate(m, 1)
    assert d.sum() == 27 and d[1:4, 1:4, 1:4].all()
    links = torch.where(m, 0, -1).int()
    cells = cell_occupancy(links)
    assert cells.shape == (4, 4, 4) and cells.sum() == 8 and cells[1:3, 1:3, 1:3].all()


# -- the model -------------------------------------------------------------------------------------
def _random_model(res=4, seed=0, **kw):
    torch.manual_seed(seed)
    m = Plenoxels(resolution=res, bbox=1.0, **kw)
    with torch.no_grad():
        m.density_data.uniform_(-2.0, 6.0)
        m.sh_data.normal_(0.0, 0.5)
    return m


def _points(n, seed, r=1.0):
    return (torch.rand(n, 3, generator=_gen(seed)) * 2 - 1) * r


def test_registered_and_validates_options():
    m = build_model("plenoxels", resolution=8)
    from models.plenoxels import Plenoxels

    assert isinstance(m, Plenoxels) and m.config["resolution"] == 8 and m.links.shape == (9, 9, 9)
    assert m.sh_data.shape == (9 ** 3, 27)
    with pytest.raises(ValueError, match="unknown Plenoxels option"):
        build_model("plenoxels", resolutoin=8)
    with pytest.raises(ValueError, match="bbox"):
        build_model("plenoxels", bbox=[1, 1, 1, 0, 0, 0])
    with pytest.raises(ValueError, match="resolution"):
        build_model("plenoxels", resolution=1)
    with pytest.raises(ValueError, match="degree"):
        build_model("plenoxels", sh_degree=4)
    with pytest.raises(ValueError, match="upsample_steps"):
        build_model("plenoxels", upsample_steps=[None])
    with pytest.raises(ValueError, match="dilation"):
        build_model("plenoxels", dilation=-1)
    groups = m.param_groups(0.01)
    assert [g["lr"] for g in groups] == pytest.approx([0.01 * m.config["density_lr_scale"],
                                                      0.01 * m.config["sh_lr_scale"]])
    assert groups[0]["params"][0] is m.density_data and groups[1]["params"][0] is m.sh_data


def test_density_matches_reference_interpolation():
    m = _random_model(res=3)
    x = _points(100, 6)
    x[0] = torch.tensor([1.5, 0.0, 0.0])  # outside the bbox
    n = 4
    grid = m.density_data.detach().double().view(n, n, n, 1).numpy()
    p = ((x.double() + 1) / 2 * 3).numpy()
    ref = np.maximum(_trilinear_reference(grid, p.clip(0, 3))[:, 0], 0)
    ref[0] = 0.0
    np.testing.assert_allclose(m.density(x).detach().numpy(), ref, atol=1e-5)


def test_render_matches_dense_reference_with_pruning():
    """Skipping empty cells and unseen colours must not change the image."""
    m = _random_model(res=6, seed=1, dilation=0)
    with torch.no_grad():
        m.density_data[m.density_data[:, 0] < 4.0] = 0.0
        stats = m.prune()
    assert stats["after"] < stats["before"]
    g = _gen(7)
    rays_o = torch.randn(64, 3, generator=g) * 0.2 + torch.tensor([0.0, 0.0, 3.0])
    rays_d = torch.nn.functional.normalize(torch.randn(64, 3, generator=g) * 0.3 + torch.tensor([0, 0, -1.0]),
                                           dim=-1) * 1.7  # non-unit on purpose
    out = m.render_rays(rays_o, rays_d, 0.5, 6.0, background=1.0)
    # Reference: the same samples through the public field queries, plain composite.
    t = out["t"]
    pts = rays_o[:, None] + rays_d[:, None] * t[..., None]
    t_in, t_out = ray_aabb(rays_o, rays_d / 1.7, [-1] * 3, [1] * 3)
    valid = (t * 1.7 >= t_in[:, None]) & (t * 1.7 < t_out[:, None])
    dirs = torch.nn.functional.normalize(rays_d, dim=-1)[:, None].expand_as(pts)
    sigma, rgb = m.radiance(pts.reshape(-1, 3), dirs.reshape(-1, 3))
    sigma = sigma.view(t.shape) * valid
    ref = composite(sigma, rgb.view(*t.shape, 3), t * 1.7, dirs[:, 0], 1.0, last_delta=m.step_size())
    assert ref["acc"].max() > 0.5 and ref["acc"].min() < 0.1  # a real mix of hits and misses
    torch.testing.assert_close(out["rgb"], ref["rgb"], atol=2e-4, rtol=0)
    torch.testing.assert_close(out["acc"], ref["acc"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out["depth"] * out["acc"], ref["depth"] * ref["acc"] / 1.7, atol=1e-4, rtol=0)


def test_ray_scale_does_not_change_rgb_and_depth_is_in_ray_units():
    m = _random_model(res=4, seed=2)
    o = torch.tensor([[0.1, -0.2, 3.0], [3.0, 0.0, 0.0]])
    d = torch.tensor([[0.0, 0.05, -1.0], [-1.0, 0.1, 0.0]])
    a = m.render_rays(o, d, 0.0, 10.0, background=0.0)
    b = m.render_rays(o, 2 * d, 0.0, 5.0, background=0.0)
    torch.testing.assert_close(a["rgb"], b["rgb"], atol=1e-5, rtol=0)
    torch.testing.assert_close(a["depth"], 2 * b["depth"], atol=1e-4, rtol=0)
    assert a["depth"].min() > 1.5  # the box begins 2 units from the origins


def test_prune_removes_low_density_vertices():
    m = Plenoxels(resolution=8, bbox=1.0, dilation=0, density_init=0.0)
    n = 9
    with torch.no_grad():
        dens = m.density_data.view(n, n, n)
        dens[2, 2, 2] = 50.0
        dens[6, 6, 5] = 20.0
        dens[4, 4, 7] = 0.01  # opacity over one voxel far below prune_alpha
    m.prune()
    assert m.n_active == 2
    assert {tuple(v) for v in torch.nonzero(m.links >= 0).tolist()} == {(2, 2, 2), (6, 6, 5)}
    torch.testing.assert_close(m.density_data[:, 0].sort().values, torch.tensor([20.0, 50.0]))
    # Dilation keeps the 26-neighbourhood so a surface can still grow.
    m.config["dilation"] = 1
    with torch.no_grad():
        m.density_data.fill_(30.0)
    m.prune()
    assert m.n_active == 27 + 27
    # Empty cells are skipped: a point far from both blobs reads 0.
    assert m.density(torch.tensor([[-0.9, 0.9, 0.9]])).item() == 0.0


def test_prune_by_transmittance_hollows_a_solid_block():
    # A dense block seen only from +z: its far layers are never reached with T > 1e-2.
    m = Plenoxels(resolution=8, bbox=1.0, dilation=0, density_init=0.0, prune_transmittance=0.01)
    n = 9
    with torch.no_grad():
        m.density_data.view(n, n, n)[2:7, 2:7, 2:7] = 200.0
    xy = torch.stack(torch.meshgrid(torch.linspace(-0.9, 0.9, 40), torch.linspace(-0.9, 0.9, 40),
                                    indexing="ij"), -1).reshape(-1, 2)
    rays_o = torch.cat([xy, torch.full((xy.shape[0], 1), 3.0)], 1)
    rays_d = torch.tensor([0.0, 0.0, -1.0]).expand_as(rays_o)
    m.prune(rays_o, rays_d, 0.0, 10.0)
    kept = m.links >= 0
    assert kept[2:7, 2:7, 6].all()      # the face the camera sees
    assert not kept[3:6, 3:6, 2:4].any()  # deep inside (its side faces are grazed by rays)
    assert kept.sum() < 125


def test_upsampling_preserves_the_field():
    m = _random_model(res=4, seed=3)
    with torch.no_grad():
        m.density_data[m.density_data[:, 0] < 1.0] = 0.0
    m.prune()
    x = _points(400, 8, r=0.999)
    d = torch.nn.functional.normalize(torch.randn(400, 3, generator=_gen(9)), dim=-1)
    s0, c0 = m.radiance(x, d)
    m.upsample()
    assert m.resolution == 8 and m.config["resolution"] == 8 and m.links.shape == (9, 9, 9)
    s1, c1 = m.radiance(x, d)
    torch.testing.assert_close(s1, s0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c1, c0, atol=1e-5, rtol=1e-5)


def test_set_samples_controls_the_step():
    m = Plenoxels(resolution=8, bbox=1.0)
    assert m.step_size() == pytest.approx(0.5 * 2 / 8)
    m.set_samples(n_coarse=100, n_fine=7)
    assert m.step_size() == pytest.approx(2 / 100)
    with pytest.raises(ValueError):
        m.set_samples(n_coarse=1)


# -- training through the Trainer ----------------------------------------------------------------------
def _trainer(scene=None, **opts):
    from app.engine.trainer import TrainConfig, Trainer

    base = dict(resolution=8, upsample_steps=[], prune_steps=[], prune_rays=2048)
    cfg = TrainConfig(model="plenoxels", model_options={**base, **opts}, batch_rays=256, lr=1e-2,
                      lr_final=1e-3, lr_decay_steps=100, seed=0, device="cpu")
    return Trainer(scene if scene is not None else make_sphere_scene(), cfg)


def test_short_training_decreases_loss():
    tr = _trainer(prune_steps=[15], upsample_steps=[30])
    first = np.mean([tr.step()["mse"] for _ in range(5)])
    for _ in range(35):
        m = tr.step()
        assert not m.get("skipped"), m
    last = np.mean([tr.step()["mse"] for _ in range(5)])
    assert last < 0.5 * first, (first, last)
    assert tr.model.resolution == 16
    assert any("upsampled to 16^3" in e for e in tr.events)
    # The optimiser follows the new parameter tensors.
    assert tr.optimizer.param_groups[0]["params"][0] is tr.model.density_data


def test_upsampling_beyond_the_cap_is_skipped():
    tr = _trainer(max_resolution=8, upsample_steps=[2])
    tr.step()
    tr.step()
    assert tr.model.resolution == 8
    assert any("skipped" in e for e in tr.events)
    # Without a cap of its own a CPU model stops at 128^3 (a 257^3 grid is ~8 GB with Adam).
    assert Plenoxels(resolution=8).resolution_cap() == 128
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs CUDA"):
            Plenoxels(resolution=256)


def test_checkpoint_roundtrip_after_upsampling(tmp_path):
    from app.engine.checkpoint import save_checkpoint, trainer_from_checkpoint

    scene = make_sphere_scene()
    tr = _trainer(scene, prune_steps=[3], upsample_steps=[5])
    for _ in range(7):
        tr.step()
    assert tr.model.resolution == 16 and tr.config_dict()["model_options"]["resolution"] == 16
    path = str(tmp_path / "px.safetensors")
    save_checkpoint(path, tr)
    tr2 = trainer_from_checkpoint(path, scene, device="cpu")
    assert tr2.step_count == 7 and tr2.model.resolution == 16
    assert tr2.model.n_active == tr.model.n_active
    for a, b in zip(tr.model.state_dict().values(), tr2.model.state_dict().values()):
        torch.testing.assert_close(a, b)
    c2w = scene.split("test").c2w[0]
    torch.testing.assert_close(tr2.render(c2w)["rgb"], tr.render(c2w)["rgb"])
    # Both continue identically (same optimiser state, same RNG-free step).
    s1, s2 = tr.optimizer.state_dict()["state"], tr2.optimizer.state_dict()["state"]
    torch.testing.assert_close(s1[1]["exp_avg_sq"], s2[1]["exp_avg_sq"])
    m = tr2.step()
    assert not m.get("skipped") and tr2.step_count == 8


def test_rollback_to_a_smaller_grid_keeps_training():
    tr = _trainer(upsample_steps=[2])
    tr.step()
    snap = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.step()  # upsampled to 16
    tr.model.load_state_dict(snap)  # what Trainer's rollback does
    assert tr.model.resolution == 8 and tr.model.config["resolution"] == 8
    m = tr.step()
    assert not m.get("skipped")
    assert tr.optimizer.param_groups[0]["params"][0] is tr.model.density_data
    before = tr.model.density_data.detach().clone()
    tr.step()
    assert not torch.equal(before, tr.model.density_data.detach())


def test_resume_into_a_run_built_at_the_starting_resolution(tmp_path):
    """`train --resume` rebuilds the model from the command line (64^3 by default)
    while the checkpoint holds the upsampled grid: the weights decide."""
    from app.engine.checkpoint import CheckpointError, load_into, save_checkpoint

    scene = make_sphere_scene()
    tr = _trainer(scene, upsample_steps=[3])
    for _ in range(4):
        tr.step()
    path = str(tmp_path / "px.safetensors")
    save_checkpoint(path, tr)
    fresh = _trainer(scene, upsample_steps=[3])
    assert fresh.model.resolution == 8
    load_into(path, fresh)
    assert fresh.model.resolution == 16 and fresh.config_dict()["model_options"]["resolution"] == 16
    assert fresh.step_count == 4
    c2w = scene.split("test").c2w[1]
    torch.testing.assert_close(fresh.render(c2w)["rgb"], tr.render(c2w)["rgb"])
    assert not fresh.step().get("skipped")
    # Other options still have to match.
    other = _trainer(scene, upsample_steps=[3], sh_degree=1)
    with pytest.raises(CheckpointError, match="sh_degree"):
        load_into(path, other)


def test_gui_worker_trains_renders_and_probes_plenoxels():
    """The GUI path: build_model('plenoxels') with its defaults inside the worker."""
    from app.gui.worker import Worker
    from app.gui.orbit import OrbitCamera

    w = Worker(scene=make_sphere_scene(), settings=dict(model="plenoxels", batch_rays=128),
               device="cpu", threads=1)
    w.start()
    try:
        assert w.wait_status(lambda s: s["step"] >= 3, 120.0) is not None, w.status()
        cam = OrbitCamera(radius=4.0, azimuth=30.0, elevation=30.0)
        v = w.set_camera(cam.c2w(), 40.0, moving=False)
        frame = w.wait_frame(lambda f: f.version >= v and f.final, 120.0)
        assert frame is not None and np.isfinite(frame.images[0]["rgb"]).all()
        w.send("probe", index=0, u=0.5, v=0.5)
        p = w.probes.wait(lambda p: True, 120.0)
        assert p["t_coarse"].shape == p["w_coarse"].shape and p["w_coarse"].sum() <= 1 + 1e-5
        assert w.run_sync(lambda wk: type(wk.trainers[0].model).__name__) == "Plenoxels"
    finally:
        w.stop(5.0)
