"""models/hashgrid.py: the hash encoding against a float64 scalar reference, the
Triton kernels against the torch path (CPU interpreter), SH against closed forms,
and the model protocol: early termination, short training, checkpoint roundtrip."""
import json
import math
import textwrap

import numpy as np
import pytest

from tests.conftest import needs_triton, run_in_triton_interpreter
import torch

from models import build_model
from models.hashgrid import HashEncoding, HashGridModel, hash_encode_torch, level_layout, trunc_exp
from models.sh import sh_basis_matrix, sh_encode
from tests.conftest import make_sphere_scene

# Small enough for CPU tests, same structure as the defaults.
TINY = dict(n_levels=4, log2_hashmap_size=12, base_res=4, max_res=32, hidden=16, geo_features=7,
            color_hidden=16, grid_res=16, n_coarse=96, sample_budget=4096, grid_warmup=8, grid_every=4)


def test_level_layout_hand_case():
    res, off, dense = level_layout(3, 4, 16, 10)
    assert res == [4, 8, 16]  # growth factor 2
    # (4+1)^3 = 125 and 9^3 = 729 fit in 1024 entries; 17^3 = 4913 is hashed.
    assert dense == [True, True, False]
    assert off == [0, 125, 125 + 729, 125 + 729 + 1024]


def _encode_reference(x, table, resolutions, offsets, dense, log2):
    """Float64 scalar loop over points, levels and corners, Python integers for the hash."""
    table = table.double().numpy()
    out = np.zeros((x.shape[0], len(resolutions) * table.shape[1]))
    for n, p in enumerate(x.double().numpy()):
        for lvl, r in enumerate(resolutions):
            pos = [min(max(v, 0.0), 1.0) * r for v in p]
            i0 = [min(int(math.floor(v)), r - 1) for v in pos]
            fr = [pos[a] - i0[a] for a in range(3)]
            for c in range(8):
                b = [(c >> a) & 1 for a in range(3)]
                cx, cy, cz = (i0[a] + b[a] for a in range(3))
                w = 1.0
                for a in range(3):
                    w *= fr[a] if b[a] else 1.0 - fr[a]
                if dense[lvl]:
                    v = r + 1
                    idx = cx + cy * v + cz * v * v
                else:
                    idx = ((cx * 1) ^ (cy * 2654435761) ^ (cz * 805459861)) % (1 << 32) % (1 << log2)
                f = table.shape[1]
                out[n, lvl * f:(lvl + 1) * f] += w * table[offsets[lvl] + idx]
    return out


def test_hash_encoding_matches_float64_reference():
    enc = HashEncoding(n_levels=4, n_features=2, log2_hashmap_size=10, base_res=3, max_res=40, seed=1)
    assert enc.dense[0] and not enc.dense[-1]
    with torch.no_grad():
        enc.table.normal_(generator=torch.Generator().manual_seed(2))
    x = torch.rand(25, 3, generator=torch.Generator().manual_seed(3))
    x[0] = torch.tensor([0.0, 1.0, 0.5])  # faces of the cube: the last cell interpolates to f = 1
    x[1] = torch.tensor([1.2, -0.1, 0.3])  # outside: clamped onto the cube
    got = hash_encode_torch(x, enc.table, enc.resolutions, enc.offsets, enc.dense, 10)
    ref = _encode_reference(x, enc.table.detach(), enc.resolutions, enc.offsets, enc.dense, 10)
    assert got.shape == (25, 8)
    np.testing.assert_allclose(got.detach().double().numpy(), ref, rtol=1e-5, atol=1e-5)


def test_hash_encoding_gradient_is_interpolation_weights():
    enc = HashEncoding(n_levels=2, n_features=1, log2_hashmap_size=10, base_res=2, max_res=4)
    x = torch.tensor([[0.3, 0.6, 0.1]])
    out = enc(x)
    g, = torch.autograd.grad(out[0, 0], enc.table)
    # Level 0 (res 2): weights of the 8 corners sum to 1, all other entries get 0.
    assert g.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert (g[enc.offsets[1]:] == 0).all()


def test_sh_matches_closed_forms():
    d = torch.nn.functional.normalize(torch.randn(50, 3, generator=torch.Generator().manual_seed(4),
                                                  dtype=torch.float64), dim=-1)
    got = sh_encode(d.float(), sh_basis_matrix().float()).double()
    x, y, z = d.unbind(-1)
    ref = torch.stack([
        torch.full_like(x, 0.28209479177387814), -0.48860251190291987 * y, 0.48860251190291987 * z,
        -0.48860251190291987 * x, 1.0925484305920792 * x * y, -1.0925484305920792 * y * z,
        0.94617469575755997 * z * z - 0.31539156525251999, -1.0925484305920792 * x * z,
        0.54627421529603959 * (x * x - y * y), 0.59004358992664352 * y * (-3 * x * x + y * y),
        2.8906114426405538 * x * y * z, 0.45704579946446572 * y * (1 - 5 * z * z),
        0.3731763325901154 * z * (5 * z * z - 3), 0.45704579946446572 * x * (1 - 5 * z * z),
        1.4453057213202769 * z * (x * x - y * y), 0.59004358992664352 * x * (-x * x + 3 * y * y)], -1)
    assert torch.allclose(got, ref, atol=1e-6)
    # Orthonormal basis: the integral of Y_0^2 over the sphere is 1 (Monte Carlo, loose).
    assert (ref[:, 0] ** 2).mean().item() * 4 * math.pi == pytest.approx(1.0, abs=1e-9)


def test_trunc_exp_clamps_gradient_only():
    x = torch.tensor([1.0, 20.0], requires_grad=True)
    y = trunc_exp(x)
    assert torch.allclose(y, torch.exp(x.detach()))
    g, = torch.autograd.grad(y.sum(), x)
    assert g[0].item() == pytest.approx(math.e, rel=1e-6)
    assert g[1].item() == pytest.approx(math.exp(15.0), rel=1e-6)


def test_registered_and_config_roundtrip():
    m = build_model("hash", **TINY)
    assert isinstance(m, HashGridModel)
    cfg = json.loads(json.dumps(m.config))
    m2 = build_model("hash", **cfg)
    assert sum(p.numel() for p in m2.parameters()) == sum(p.numel() for p in m.parameters())
    for a, b in zip(m.parameters(), m2.parameters()):
        assert torch.equal(a, b)  # same seed, same weights
    with pytest.raises(ValueError, match="unknown HashGridModel option"):
        build_model("hash", width=3)
    with pytest.raises(ValueError, match="grid_res"):
        build_model("hash", grid_res=2)


def _rays(n, seed):
    g = torch.Generator().manual_seed(seed)
    o = torch.randn(n, 3, generator=g)
    o = o / o.norm(dim=-1, keepdim=True) * 4.0
    d = (torch.rand(n, 3, generator=g) * 1.6 - 0.8) - o
    return o, d / d.norm(dim=-1, keepdim=True) * 1.3  # un-normalised, as camera rays are


def _dense_field_model():
    """A model whose field is made dense enough that rays terminate early."""
    torch.manual_seed(0)
    m = HashGridModel(**TINY)
    with torch.no_grad():
        m.encoding.table.uniform_(-1.0, 1.0)
        m.density_net[2].weight[0] += 1.5  # raise log-density: sigma ~ e^2 .. e^4 per unit
    return m.eval()


def test_early_termination_changes_colour_by_less_than_threshold():
    m = _dense_field_model()
    o, d = _rays(64, seed=5)
    with torch.no_grad():
        m.config["min_transmittance"] = 1e-4
        fast = m.render_rays(o, d, 2.0, 6.0, background=1.0)
        m.config["min_transmittance"] = 1e-30  # effectively no termination
        full = m.render_rays(o, d, 2.0, 6.0, background=1.0)
    assert full["acc"].max() > 0.999  # some rays are opaque, so termination matters
    assert fast["samples"] < 0.7 * full["samples"]
    assert (fast["rgb"] - full["rgb"]).abs().max() <= 2e-4
    assert (fast["acc"] - full["acc"]).abs().max() <= 2e-4


def test_eval_rendering_equals_training_compositor_without_jitter():
    """The round-based evaluation path and the one-pass training path composite identically."""
    m = _dense_field_model()
    o, d = _rays(32, seed=6)
    m.config["min_transmittance"] = 1e-30
    with torch.no_grad():
        ev = m.render_rays(o, d, 2.0, 6.0, background=1.0)
        torch.manual_seed(0)
        rays_o, dirs, dnorm, s0, s1 = m._setup_rays(o, d, 2.0, 6.0)
        pk = m._march(rays_o, dirs, s0, s1, torch.full((32,), 0.5))
        from models.sh import sh_encode as she
        sigma, rgb = m._field_packed(rays_o, dirs, she(dirs, m.sh_C), pk["ray_ids"], pk["s"])
        from renderer.occupancy import composite_packed
        one = composite_packed(sigma, rgb, pk["s"], m.dt, pk["ray_ids"], 32)
    assert torch.allclose(ev["acc"], one["acc"], atol=1e-5)
    assert torch.allclose(ev["rgb"], one["rgb"] + (1 - one["acc"])[:, None], atol=1e-5)


def test_render_rays_outputs_and_backward():
    torch.manual_seed(0)
    m = HashGridModel(**TINY)
    o, d = _rays(40, seed=7)
    out = m.render_rays(o, d, 2.0, 6.0, background=1.0, train=True)
    assert out["rgb"].shape == (40, 3) and out["depth"].shape == (40,) and out["acc"].shape == (40,)
    assert torch.isfinite(out["rgb"]).all() and out["samples"].item() > 0
    loss = m.loss_terms(out, torch.zeros(40, 3))["mse"]
    loss.backward()
    assert m.encoding.table.grad.abs().sum() > 0
    assert all(p.grad is not None for p in m.color_net.parameters())
    assert m.density(torch.tensor([[0.0, 0.0, 0.0], [5.0, 0.0, 0.0]]))[1] == 0  # outside the cube


def _trainer(tmp_seed=0):
    from app.engine.trainer import TrainConfig, Trainer
    cfg = TrainConfig(model="hash", model_options=dict(TINY), batch_rays=256, lr=1e-2, lr_final=1e-3,
                      lr_decay_steps=1000, seed=tmp_seed, device="cpu")
    return Trainer(make_sphere_scene(n_views=8), cfg)


def test_short_cpu_training_decreases_loss_and_adapts_batch():
    tr = _trainer()
    losses = [tr.step()["loss"] for _ in range(70)]
    assert np.mean(losses[-5:]) < 0.2 * np.mean(losses[:5])
    # The grid was refreshed and has pruned empty space around the sphere.
    assert 0 < tr.model.occupancy.float().mean() < 0.6
    # The batch follows the sample budget: rays x samples/ray ~ 4096.
    n_rays, n_samples = tr.model._last_batch
    assert n_rays != 256 and 2048 < n_samples < 8192


def test_step_hook_budget_rule():
    from models.field import StepContext

    m = HashGridModel(**TINY)
    ctx = StepContext(near=2.0, far=6.0, batch_rays=1000, autocast=False, training_rays=None,
                      owns=lambda p: True)
    assert m.step_hook(1, ctx) is None  # no batch reported yet: nothing to ask
    m.note_batch(1000, 8192)  # twice the budget -> halve the rays
    assert m.step_hook(1, ctx).batch_rays == 512
    m.note_batch(512, 512)  # 1 sample per ray -> grow, at most 2x per step
    assert m.step_hook(2, ctx).batch_rays == 1024


def test_checkpoint_roundtrip(tmp_path):
    from app.engine.checkpoint import save_checkpoint, trainer_from_checkpoint
    tr = _trainer()
    for _ in range(9):
        tr.step()
    path = str(tmp_path / "ck.safetensors")
    save_checkpoint(path, tr)
    tr2 = trainer_from_checkpoint(path, tr.scene, device="cpu")
    assert tr2.step_count == 9 and tr2.batch_rays == tr.batch_rays
    assert torch.equal(tr2.model.occupancy, tr.model.occupancy)
    assert torch.equal(tr2.model.density_grid, tr.model.density_grid)
    c2w = tr.scene.split("test").c2w[0]
    a = tr.render(c2w, 12, 12)["rgb"]
    b = tr2.render(c2w, 12, 12)["rgb"]
    assert torch.equal(a, b)
    assert tr2.optimizer.param_groups[0]["eps"] == 1e-15
    tr2.step()  # the restored optimiser state fits


@needs_triton
def test_triton_hash_kernels_match_torch_in_interpreter():
    code = textwrap.dedent("""
        import torch
        from models.hashgrid import HashEncoding, hash_encode_torch
        from models.kernels.hash_encode import hash_encode_triton
        g = torch.Generator().manual_seed(0)
        for nf in (1, 2, 4):
            enc = HashEncoding(n_levels=5, n_features=nf, log2_hashmap_size=11, base_res=3, max_res=60)
            with torch.no_grad():
                enc.table.normal_(generator=g)
            x = torch.rand(300, 3, generator=g) * 1.1 - 0.05
            a = hash_encode_torch(x, enc.table, enc.resolutions, enc.offsets, enc.dense, 11)
            b = hash_encode_triton(x, enc.table, enc.res_t, enc.off_t, enc.dense_t, 11)
            assert (a - b).abs().max() < 1e-5, (a - b).abs().max()
            w = torch.randn(a.shape, generator=g)
            # Rows and single entries with zero gradient: the kernel skips their atomics.
            w[:100] = 0.0
            w[100:150, ::2] = 0.0
            ga, = torch.autograd.grad((a * w).sum(), enc.table)
            gb, = torch.autograd.grad((b * w).sum(), enc.table)
            assert (ga - gb).abs().max() < 1e-4, (ga - gb).abs().max()
            # The points' gradient (camera refinement moves them), outside [0, 1] zero too.
            xg = x.clone().requires_grad_(True)
            a = hash_encode_torch(xg, enc.table, enc.resolutions, enc.offsets, enc.dense, 11)
            b = hash_encode_triton(xg, enc.table, enc.res_t, enc.off_t, enc.dense_t, 11)
            xa, ta = torch.autograd.grad((a * w).sum(), (xg, enc.table))
            xb, tb = torch.autograd.grad((b * w).sum(), (xg, enc.table))
            scale = xa.abs().max()
            assert scale > 1 and (xa - xb).abs().max() < 1e-4 * scale, ((xa - xb).abs().max(), scale)
            assert (ta - tb).abs().max() < 1e-4
            outside = ((x < 0) | (x > 1))
            assert outside.any() and (xb[outside] == 0).all()
            xb_only, = torch.autograd.grad((hash_encode_triton(xg, enc.table, enc.res_t, enc.off_t,
                                                               enc.dense_t, 11) * w).sum(), xg)
            assert torch.equal(xb_only, xb)
        print("OK")
    """)
    run_in_triton_interpreter(code)


