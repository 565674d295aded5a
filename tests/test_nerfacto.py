"""The real-capture field (models/nerfacto.py): options, the normalised frame, gradients of
each loss, per-image appearance, camera refinement recovering known perturbations on the
embedded scene, the trainer passing image indices, checkpoints, mesh export, iNeRF, the
CLI on the embedded scene, and the shared beer capture when it is present."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from models import build_model, default_model, is_capture
from models.nerfacto import NerfactoField, normalising_frame
from tests.conftest import look_at, make_sphere_scene, orbit_poses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENE = os.path.join(ROOT, "assets", "scene")
BEER = os.path.join(ROOT, "..", "shared", "data", "captures", "beer")

# Small enough for a CPU test: two-level grids, few samples.
TINY = dict(n_levels=4, log2_hashmap_size=12, max_res=64, hidden=16, color_hidden=16, appearance_dim=4,
            proposal_levels=2, proposal_log2_hashmap_size=10, proposal_max_res=[16, 32], proposal_hidden=8,
            n_proposal=[16, 8], n_samples=8)


def _trainer(scene=None, steps=1000, batch=128, cuda_graph=False, **opts):
    from app.engine.trainer import TrainConfig, Trainer
    cfg = TrainConfig(model="nerfacto", model_options={**TINY, **opts}, batch_rays=batch, lr=1e-2,
                      lr_final=1e-3, lr_decay_steps=steps, device="cpu", cuda_graph=cuda_graph)
    return Trainer(scene if scene is not None else make_sphere_scene(n_views=8), cfg)


def _rays(n, seed, radius=4.0):
    g = torch.Generator().manual_seed(seed)
    o = torch.randn(n, 3, generator=g)
    o = o / o.norm(dim=-1, keepdim=True) * radius
    d = (torch.rand(n, 3, generator=g) * 1.6 - 0.8) - o
    return o, d / d.norm(dim=-1, keepdim=True) * 1.3


def test_registered_options_round_trip_and_bad_options():
    m = build_model("nerfacto", **TINY)
    assert isinstance(m, NerfactoField) and m.TAKES_IMAGE
    m2 = build_model("nerfacto", **json.loads(json.dumps(m.config)))
    assert m2.config == m.config
    for a, b in zip(m.parameters(), m2.parameters()):
        assert torch.equal(a, b)  # same seed, same weights
    for bad, match in (({"contraction": 1}, "contraction"), ({"n_proposal": [8]}, "one entry per proposal"),
                       ({"far": 0.5}, "far"), ({"n_samples": 1}, "n_samples"), ({"width": 3}, "unknown")):
        with pytest.raises(ValueError, match=match):
            build_model("nerfacto", **{**TINY, **bad})
    # The CPU gets the smaller grid and sample counts; CUDA nerfstudio's.
    assert NerfactoField.options_for(False)["n_samples"] < NerfactoField.DEFAULTS["n_samples"]
    assert NerfactoField.options_for(True) == {}


def test_a_retired_option_is_dropped_with_a_warning():
    """A checkpoint saved with an option that is gone (render_bake) still builds its field."""
    with pytest.warns(UserWarning, match="render_bake"):
        m = build_model("nerfacto", render_bake=False, **TINY)
    assert "render_bake" not in m.config
    with pytest.raises(ValueError, match="render_bakery"):
        build_model("nerfacto", render_bakery=False)


def test_normalising_frame_centres_on_what_the_cameras_look_at():
    orbit = orbit_poses(12, radius=4.0)
    c, s = normalising_frame(orbit)
    np.testing.assert_allclose(c, 0, atol=1e-9)
    assert s == pytest.approx(1.0 / np.abs(orbit[:, :3, 3]).max())
    # A quarter orbit around p: the mean camera position is off to the side, the point
    # the optical axes meet is p.
    p = np.array([1.0, 2.0, 0.5])
    arc = np.stack([look_at(p + 3.0 * np.array([math.cos(a), math.sin(a), 0.3]), p)
                    for a in np.linspace(0, math.pi / 2, 9)])
    c, s = normalising_frame(arc)
    np.testing.assert_allclose(c, p, atol=1e-9)
    assert np.abs(arc[:, :3, 3] - c).max() * s == pytest.approx(1.0)
    # Forward-facing (parallel axes): no meeting point; the mean position is the centre.
    ff = np.stack([look_at([x, y, 5.0], [x, y, 0.0], up=(0, 1, 0)) for x in (-1, 0, 1) for y in (-0.5, 0.5)])
    c, _ = normalising_frame(ff)
    np.testing.assert_allclose(c, ff[:, :3, 3].mean(0), atol=1e-9)


def test_bind_scene_sizes_per_image_parameters_and_keeps_a_bound_field():
    m = build_model("nerfacto", **TINY)
    assert m.appearance.shape == (0, 4) and m.pose_delta.shape == (0, 6)
    poses = orbit_poses(5).astype(np.float32)
    m.bind_scene(poses, 2.0, 6.0, False)
    assert m.appearance.shape == (5, 4) and m.pose_delta.shape == (5, 6)
    assert float(m.scale) == pytest.approx(1.0 / np.abs(poses[:, :3, 3]).max(), rel=1e-6)
    with torch.no_grad():
        m.appearance.add_(1.0)
    m.bind_scene(poses, 2.0, 6.0, False)  # the same cameras again (a trainer restoring a checkpoint)
    assert (m.appearance == 1.0).all()


def test_render_rays_shapes_and_which_loss_trains_what():
    torch.manual_seed(0)
    m = build_model("nerfacto", **TINY, distortion_weight=0.002, refine_poses=True)
    m.bind_scene(orbit_poses(4).astype(np.float32), 2.0, 6.0, False)
    o, d = _rays(32, seed=1)
    image = torch.arange(32) % 4
    out = m.render_rays(o, d, 2.0, 6.0, background=1.0, train=True, image=image)
    assert out["rgb"].shape == (32, 3) and out["depth"].shape == (32,) and out["acc"].shape == (32,)
    assert torch.isfinite(out["rgb"]).all() and (out["acc"] <= 1 + 1e-6).all()
    terms = m.loss_terms(out, torch.rand(32, 3))
    assert set(terms) == {"mse", "interlevel", "distortion", "pose", "appearance"}

    def grads(loss):
        m.zero_grad(set_to_none=True)
        loss.backward(retain_graph=True)
        has = lambda mod: any(p.grad is not None and p.grad.abs().sum() > 0 for p in mod.parameters())  # noqa: E731
        return has(m.field), has(m.proposals), has(m.color_net), m.appearance.grad is not None
    # The photometric loss trains the field, the colour head and the appearance, never the
    # proposals (samples are drawn, not differentiated); the interlevel loss only them.
    assert grads(terms["mse"]) == (True, False, True, True)
    assert grads(terms["interlevel"]) == (False, True, False, False)
    assert grads(terms["distortion"])[:3] == (True, False, False)
    # Rendering (no image): the mean embedding; no losses.
    ev = m.render_rays(o, d, 2.0, 6.0, background=1.0)
    assert "interlevel" not in ev and torch.isfinite(ev["rgb"]).all()
    # Off by default (docs/real_scenes.md): then it is neither computed nor a term.
    m0 = build_model("nerfacto", **TINY)
    m0.bind_scene(orbit_poses(4).astype(np.float32), 2.0, 6.0, False)
    out0 = m0.render_rays(o, d, 2.0, 6.0, background=1.0, train=True, image=image)
    assert "distortion" not in out0 and "distortion" not in m0.loss_terms(out0, torch.rand(32, 3))


def test_renders_use_their_own_sample_counts():
    """render_proposal / render_samples change renders only; the training counts by default."""
    m = build_model("nerfacto", **TINY).eval()
    m.bind_scene(orbit_poses(4).astype(np.float32), 2.0, 6.0, False)
    o, d = _rays(16, seed=3)
    with torch.no_grad():
        base = m.render_rays(o, d, 2.0, 6.0, background=1.0)
        m.config.update(render_proposal=list(TINY["n_proposal"]), render_samples=TINY["n_samples"])
        same = m.render_rays(o, d, 2.0, 6.0, background=1.0)
        m.config.update(render_proposal=[8, 4], render_samples=4)
        fewer = m.render_rays(o, d, 2.0, 6.0, background=1.0)
        train = m.render_rays(o, d, 2.0, 6.0, background=1.0, train=True)
    torch.testing.assert_close(same["rgb"], base["rgb"])
    assert float(base["samples"]) == 16 * (16 + 8 + 8) and float(fewer["samples"]) == 16 * (8 + 4 + 4)
    assert float(train["samples"]) == float(base["samples"])  # training keeps n_proposal / n_samples
    assert (fewer["rgb"] - base["rgb"]).abs().max() > 0
    for bad in ({"render_proposal": [8]}, {"render_samples": 1}):
        with pytest.raises(ValueError, match="render_"):
            build_model("nerfacto", **{**TINY, **bad})


def test_background_is_the_fields_own_and_none_adds_nothing():
    m = build_model("nerfacto", **TINY).eval()
    m.bind_scene(orbit_poses(4).astype(np.float32), 2.0, 6.0, False)
    o, d = _rays(16, seed=2)
    with torch.no_grad():
        # A segment shorter than the scene's (6) is rendered as asked: light is left over.
        white, black, none = (m.render_rays(o, d, 2.0, 3.0, background=bg)["rgb"] for bg in (1.0, 0.0, None))
        short = m.render_rays(o, d, 2.0, 3.0)["acc"]
        # Asked for the scene's far, rays run on to the field's (1000 normalised units).
        whole = m.render_rays(o, d, 2.0, 6.0)
    torch.testing.assert_close(white, black)  # the asked-for colour plays no part
    assert (none <= white + 1e-6).all() and (white - none).abs().max() > 1e-3
    assert (whole["acc"] > short + 0.1).all()
    assert (whole["depth"] > 3.0).all()  # they went on past the short segment


def test_rays_from_the_scene_near_start_at_the_fields_near():
    """Sparse points miss close content: on a capture, a ray asked to start at the scene's
    near starts at the field's near (normalised units) instead; any other near is kept;
    an object scene's near, and any with near None, stays."""
    m = build_model("nerfacto", **TINY).eval()
    m.bind_scene(orbit_poses(4).astype(np.float32), 2.0, 6.0, False, kind="capture")
    o, d = _rays(8, seed=3)
    d = d * 2.0  # |d| != 1: bounds are along d, the field's near along the unit direction
    _, _, dnorm, t0, _ = m._ray_bounds(o, d, 2.0, 6.0)
    torch.testing.assert_close(t0, torch.full_like(t0, 0.05))
    _, _, _, t0, t1 = m._ray_bounds(o, d, 2.5, 3.0)
    torch.testing.assert_close(t0, 2.5 * dnorm * m._scale)
    torch.testing.assert_close(t1, 3.0 * dnorm * m._scale)
    near = torch.tensor([2.0, 2.5]).repeat(4)
    _, _, _, t0, _ = m._ray_bounds(o, d, near, 6.0)
    torch.testing.assert_close(t0[1::2], 2.5 * dnorm[1::2] * m._scale)
    torch.testing.assert_close(t0[::2], torch.full_like(t0[::2], 0.05))
    for opts, kind in (({}, "object"), ({"near": None}, "capture")):
        m = build_model("nerfacto", **TINY, **opts).eval()
        m.bind_scene(orbit_poses(4).astype(np.float32), 2.0, 6.0, False, kind=kind)
        _, _, dnorm, t0, _ = m._ray_bounds(o, d, 2.0, 6.0)
        torch.testing.assert_close(t0, 2.0 * dnorm * m._scale)


def test_appearance_embedding_changes_colour_and_renders_use_the_mean():
    torch.manual_seed(0)
    m = build_model("nerfacto", **TINY).eval()
    m.bind_scene(orbit_poses(3).astype(np.float32), 2.0, 6.0, False)
    with torch.no_grad():
        m.appearance.copy_(torch.randn(3, 4) * 3)
    o, d = _rays(16, seed=3)
    torch.manual_seed(1)
    with torch.no_grad():
        per = [m.render_rays(o, d, 2.0, 6.0, image=torch.full((16,), i))["rgb"] for i in range(3)]
        mean = m.render_rays(o, d, 2.0, 6.0)["rgb"]
        m.appearance.copy_(m.appearance.mean(0).expand(3, 4))
        as_mean = m.render_rays(o, d, 2.0, 6.0, image=torch.zeros(16, dtype=torch.long))["rgb"]
    assert (per[0] - per[1]).abs().max() > 1e-2
    torch.testing.assert_close(mean, as_mean)


def test_colour_head_split_per_ray_equals_the_concatenated_input():
    """The colour head's first layer is applied once per ray to the direction and code
    (_ray_term) and once per sample to the geometry features; together they must give
    the paper's layer on the concatenation [geometry, SH(direction), code], sample by
    sample (reference: the head in float64 on the concatenation)."""
    import copy

    from models.sh import sh_encode
    torch.manual_seed(0)
    m = build_model("nerfacto", **TINY)
    m.bind_scene(orbit_poses(3).astype(np.float32), 2.0, 6.0, False)
    with torch.no_grad():  # a head far from its initialisation
        for p in m.color_net.parameters():
            p.normal_(0.0, 0.5)
    head = copy.deepcopy(m.color_net).double()
    g = torch.Generator().manual_seed(2)
    n_rays, s = 5, 7
    x = torch.rand(n_rays * s, 3, generator=g) * 3 - 1.5
    dirs = torch.randn(n_rays, 3, generator=g)
    emb = torch.randn(n_rays, 4, generator=g)
    with torch.no_grad():
        sigma, rgb = m._radiance_n(x, m._ray_term(dirs, emb))
        for i in range(n_rays * s):
            r = i // s
            h = m.field(m._x01(x[i:i + 1])).double()
            sh = sh_encode(dirs[r:r + 1].double() / dirs[r].double().norm(), m.sh_C.double())
            want = torch.sigmoid(head(torch.cat([h[:, 1:], sh, emb[r:r + 1].double()], -1)))[0]
            torch.testing.assert_close(rgb[i].double(), want, rtol=0, atol=2e-6)
            assert float(sigma[i]) == pytest.approx(math.exp(float(h[0, 0])), rel=1e-6)


def test_appearance_codes_have_their_own_lr_and_a_penalty_on_their_spread():
    from models.nerfacto import code_spread
    g = torch.Generator().manual_seed(4)
    codes = torch.randn(5, 3, generator=g, dtype=torch.float64)
    mean = [sum(float(codes[i, k]) for i in range(5)) / 5 for k in range(3)]
    loop = sum((float(codes[i, k]) - mean[k]) ** 2 for i in range(5) for k in range(3)) / 5
    assert float(code_spread(codes)) == pytest.approx(loop, rel=1e-12)
    # The penalty is a training loss term whose gradient pulls each code to the mean
    # (2 lambda (e_i - mean) / N), so a common offset of all codes costs nothing.
    tr = _trainer(appearance_lr=3e-3, appearance_penalty=0.5)
    m = tr.model
    groups = tr.optimizer.param_groups
    assert [g["lr"] for g in groups if any(p is m.appearance for p in g["params"])] == [3e-3]
    assert all(len(g["params"]) > 1 for g in groups if not any(p is m.appearance for p in g["params"]))
    with torch.no_grad():
        m.appearance.copy_(torch.randn(m.appearance.shape, generator=g) + 7.0)
    o, d = _rays(32, seed=5)
    out = m.render_rays(o, d, 2.0, 6.0, background=1.0, train=True, image=torch.arange(32) % 8)
    terms = m.loss_terms(out, torch.full((32, 3), 0.5))
    a = m.appearance
    grad, = torch.autograd.grad(terms["appearance"], a)
    torch.testing.assert_close(grad, 0.5 * 2 * (a - a.mean(0)) / a.shape[0])
    free = build_model("nerfacto", **{**TINY, "appearance_penalty": 0.0})
    free.bind_scene(orbit_poses(8).astype(np.float32), 2.0, 6.0, False)
    assert "appearance" not in free.loss_terms(out, torch.zeros(32, 3))
    # Without appearance_lr the codes train with the field, in its group.
    assert len(_trainer().optimizer.param_groups) == 1
    with pytest.raises(ValueError, match="appearance_penalty"):
        build_model("nerfacto", **{**TINY, "appearance_penalty": -1.0})


def test_refine_rays_is_the_corrected_camera():
    """refine_rays == the rays of [exp(w) R | o + t / scale] (rotation about the camera
    centre, shift in the normalised frame); zero deltas leave the rays as they are. (The
    deltas as given: pose_fix_frame off; the next test covers what it removes.)"""
    from renderer.lie import so3_exp
    from renderer.rays import get_rays, intrinsics

    m = build_model("nerfacto", **TINY, refine_poses=True, pose_fix_frame=False)
    poses = orbit_poses(3).astype(np.float32)
    m.bind_scene(poses, 2.0, 6.0, False)
    K = intrinsics(6, 5, 7.0)
    o, d = get_rays(5, 6, K, torch.from_numpy(poses[1]))
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    img = torch.ones(30, dtype=torch.long)
    o2, d2 = m.refine_rays(o, d, img)
    assert torch.equal(o2, o) and torch.equal(d2, d)
    delta = torch.tensor([0.03, -0.02, 0.05, 0.01, 0.02, -0.03])
    with torch.no_grad():
        m.pose_delta[1] = delta
    o2, d2 = m.refine_rays(o, d, img)
    c2w = poses[1].astype(np.float64).copy()
    c2w[:3, :3] = so3_exp(delta[:3].double()).numpy() @ c2w[:3, :3]
    c2w[:3, 3] += delta[3:].double().numpy() / float(m.scale)
    o3, d3 = get_rays(5, 6, K, torch.from_numpy(c2w))
    torch.testing.assert_close(o2.double(), o3.reshape(-1, 3).double(), atol=1e-5, rtol=0)
    torch.testing.assert_close(d2.double(), d3.reshape(-1, 3).double(), atol=1e-5, rtol=0)
    # Training runs inside bf16 autocast: the corrected rays must stay float32-exact there
    # (a bf16 matmul rounds a direction by ~3e-3, pixels on a photo).
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o4, d4 = m.refine_rays(o, d, img)
    assert d4.dtype == torch.float32
    torch.testing.assert_close(d4.double(), d3.reshape(-1, 3).double(), atol=1e-5, rtol=0)
    torch.testing.assert_close(o4.double(), o3.reshape(-1, 3).double(), atol=1e-5, rtol=0)


def test_frame_fixed_deltas_remove_a_motion_of_the_whole_scene_and_nothing_else():
    """frame_fixed_deltas, in float64: a small rotation, shift and scaling of all cameras
    together (about any pivot) maps to zero; the map is a projection whose null space is
    exactly those 7 motions; a delta of one camera out of many is kept almost whole."""
    from models.nerfacto import frame_fixed_deltas

    g = torch.Generator().manual_seed(0)
    n = 12
    centres = torch.randn(n, 3, generator=g, dtype=torch.float64)
    q = centres - centres.mean(0)
    w, t, s, pivot = (torch.randn(3, generator=g, dtype=torch.float64) * 1e-2,
                      torch.randn(3, generator=g, dtype=torch.float64) * 1e-2, 0.02,
                      torch.randn(3, generator=g, dtype=torch.float64))
    rel = centres - pivot
    whole = torch.cat([w.expand(n, 3), torch.cross(w.expand(n, 3), rel, dim=-1) + t + s * rel], -1)
    assert frame_fixed_deltas(whole, q).abs().max() < 1e-15
    # The linear map's matrix: a projection of rank 6n - 7.
    eye = torch.eye(6 * n, dtype=torch.float64)
    P = torch.stack([frame_fixed_deltas(e.reshape(n, 6), q).reshape(-1) for e in eye], 1)
    torch.testing.assert_close(P @ P, P, atol=1e-12, rtol=0)
    assert torch.linalg.matrix_rank(P) == 6 * n - 7
    one = torch.zeros(n, 6, dtype=torch.float64)
    one[3] = torch.tensor([0.02, -0.01, 0.03, 0.01, 0.02, -0.01], dtype=torch.float64)
    kept = frame_fixed_deltas(one, q)
    assert (kept[3] - one[3]).norm() < 0.35 * one[3].norm()
    # The field applies them: refine_rays of the whole-scene motion leaves the rays alone.
    m = build_model("nerfacto", **TINY, refine_poses=True)
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, :3, 3] = centres.numpy()
    m.bind_scene(c2w.astype(np.float32), 2.0, 6.0, False)
    with torch.no_grad():
        m.pose_delta.copy_(whole.float() * float(m.scale) ** torch.tensor([0.0] * 3 + [1.0] * 3))
    o, d = torch.randn(n, 3), torch.randn(n, 3)
    o2, d2 = m.refine_rays(o, d, torch.arange(n))
    torch.testing.assert_close(o2, o, atol=1e-6, rtol=0)
    torch.testing.assert_close(d2, d, atol=1e-6, rtol=0)


def _blob_field():
    """An analytic field in the embedded scene's frame: 24 Gaussian blobs of density within
    1.1 of the origin (where the scene's objects are), coloured by smooth stripes of
    position, rendered on 32 fixed depths in [2, 6] on white: a smooth, exact function of
    the ray with parallax between near and far blobs."""
    from renderer.compositing import composite

    g = torch.Generator().manual_seed(0)
    centres = (torch.rand(24, 3, generator=g, dtype=torch.float64) * 2 - 1) * 1.1
    freqs = torch.randn(3, 3, generator=g, dtype=torch.float64) * 4.0
    phase = torch.rand(3, generator=g, dtype=torch.float64) * 6.28

    def render(o, d):
        o, d = o.double(), d.double()
        t = torch.linspace(2.0, 6.0, 32, dtype=torch.float64).expand(o.shape[0], 32)
        x = o[:, None] + d[:, None] * t[..., None]
        sigma = 30.0 * torch.exp(-((x[:, :, None] - centres) ** 2).sum(-1) / (2 * 0.15 ** 2)).sum(-1)
        return composite(sigma, 0.5 + 0.5 * torch.sin(x @ freqs.T + phase), t, d, background=1.0)["rgb"]
    return render


def test_camera_refinement_recovers_known_perturbations_on_the_embedded_scene():
    """Three training cameras of the embedded scene, each turned by 3 degrees about its
    centre and moved by 0.05 (the scene is 4 units across): the field's per-image deltas,
    fitted through refine_rays against renders of a fixed field from the true cameras,
    bring them back to within 0.1 degree and 0.005 units.

    L-BFGS on a fixed set of rays, because what is tested is the parametrisation and its
    gradient: the perturbation is nearly an orbit about the scene, which changes a view
    only through parallax, and first-order steps (Adam, as in training) follow that
    narrow valley slowly (measured: 3 deg -> 0.8 deg in 300 steps)."""
    from app.engine.batches import RaySampler
    from app.tools.inerf import rotation_error_deg, translation_error
    from loaders import load_scene
    from renderer.cameras import Cameras
    from renderer.lie import so3_exp
    from renderer.rays import get_rays, intrinsics

    field = _blob_field()
    tr = load_scene(SCENE).split("train")
    gt = tr.c2w[[0, 1, 2]].astype(np.float64)
    size = 32
    focal = tr.focal * size / tr.width
    K = intrinsics(size, size, focal)
    targets = torch.stack([field(*(r.reshape(-1, 3) for r in get_rays(size, size, K, torch.from_numpy(c).float())))
                           .reshape(size, size, 3).float() for c in gt])
    rng = np.random.default_rng(0)
    pert = gt.copy()
    for p in pert:
        axis = rng.normal(size=3)
        shift = rng.normal(size=3)
        p[:3, :3] = so3_exp(torch.tensor(axis / np.linalg.norm(axis) * math.radians(3.0))).numpy() @ p[:3, :3]
        p[:3, 3] += shift / np.linalg.norm(shift) * 0.05
    # The field here is fixed, so it fixes the frame: the deltas are fitted as they are
    # (training, where field and cameras move together, removes their common motion).
    m = build_model("nerfacto", **TINY, refine_poses=True, pose_fix_frame=False)
    m.bind_scene(pert.astype(np.float32), 2.0, 6.0, False)
    cams = Cameras.pinhole(3, size, size, focal)
    batch = RaySampler(targets, torch.from_numpy(pert).float(), cams).sample(900, torch.Generator().manual_seed(0))
    opt = torch.optim.LBFGS([m.pose_delta], lr=1.0, max_iter=40, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        o, d = m.refine_rays(batch.rays_o, batch.rays_d, batch.image)
        loss = ((field(o, d).float() - batch.target) ** 2).mean()
        loss.backward(inputs=[m.pose_delta])
        return loss

    opt.step(closure)
    delta = m.pose_delta.detach().double()
    fixed = pert.copy()
    fixed[:, :3, :3] = so3_exp(delta[:, :3]).numpy() @ pert[:, :3, :3]
    fixed[:, :3, 3] += delta[:, 3:].numpy() / float(m.scale)
    print("recovered: rotation error (deg)", [round(rotation_error_deg(f, g), 4) for f, g in zip(fixed, gt)],
          "shift error", [round(translation_error(f, g), 5) for f, g in zip(fixed, gt)])
    for i in range(3):
        assert rotation_error_deg(pert[i], gt[i]) == pytest.approx(3.0, abs=1e-3)
        assert rotation_error_deg(fixed[i], gt[i]) < 0.1
        assert translation_error(fixed[i], gt[i]) < 0.005 < 0.05 - 1e-6 <= translation_error(pert[i], gt[i])


def test_trainer_passes_image_indices_and_trains_the_deltas():
    tr = _trainer(refine_poses=True)
    seen = {}
    real = tr.model.render_rays

    def spy(*a, **k):
        seen.update(k)
        return real(*a, **k)
    tr.model.render_rays = spy
    for _ in range(3):
        assert not tr.step().get("skipped")
    assert seen["image"].dtype == torch.int64 and seen["image"].shape == (128,)
    assert seen["image"].max() < 8 and seen["train"]
    # Its own learning rate, and the deltas and embeddings moved.
    lrs = sorted(g["initial_lr"] for g in tr.optimizer.param_groups)
    assert lrs == [1e-3, 1e-2]
    # ... and its own decay on top of the run's: after pose_decay_steps, pose_lr_final x the
    # run's factor; the eager step and the graphed step's set_lr write the same rates.
    from app.engine.graph_step import StaticStep
    from app.engine.trainer import group_lr
    pose = next(g for g in tr.optimizer.param_groups if g["initial_lr"] == 1e-3)
    assert pose["decay"] == (0.1, 5000)
    assert group_lr(pose, 2500, 0.5) == pytest.approx(1e-3 * 0.5 * 0.1 ** 0.5)
    assert group_lr(pose, 10 ** 6, 0.5) == pytest.approx(1e-4 * 0.5)
    main = next(g for g in tr.optimizer.param_groups if g["initial_lr"] == 1e-2)
    assert group_lr(main, 10 ** 6, 0.5) == pytest.approx(5e-3)
    tr.step_count = 4000
    tr.step()
    want = [group_lr(g, 4000, tr.lr_at(4000) / tr.config.lr) for g in tr.optimizer.param_groups]
    assert [g["lr"] for g in tr.optimizer.param_groups] == pytest.approx(want)
    StaticStep(tr).set_lr(0.25, 4000)
    got = [float(g["lr"]) for g in tr.optimizer.param_groups]
    assert got == pytest.approx([group_lr(g, 4000, 0.25) for g in tr.optimizer.param_groups])
    assert tr.model.pose_delta.abs().sum() > 0 and tr.model.appearance.abs().sum() > 0
    # A field without per-image parameters gets no image argument (the NeRF would refuse it).
    from tests.conftest import make_trainer
    assert not make_trainer().step().get("skipped")


def test_short_training_fits_the_sphere_and_checkpoints_round_trip(tmp_path):
    from app.engine.checkpoint import save_checkpoint, trainer_from_checkpoint

    torch.manual_seed(0)
    tr = _trainer(steps=120)
    first = [tr.step()["psnr"] for _ in range(5)]
    for _ in range(115):
        m = tr.step()
    assert m["psnr"] > np.mean(first) + 6, (first, m["psnr"])
    # Eight 16-pixel views: the held-out ones are far from the mean colour's 10.3 dB.
    assert tr.evaluate("test", ssim=False)["mean"]["psnr"] > 15
    path = str(tmp_path / "ck.safetensors")
    save_checkpoint(path, tr)
    tr2 = trainer_from_checkpoint(path, tr.scene, device="cpu")
    assert tr2.step_count == 120 and tr2.model._step == 120  # the anneal power is restored too
    c2w = tr.scene.split("test").c2w[0]
    torch.testing.assert_close(tr.render(c2w, 8, 8)["rgb"], tr2.render(c2w, 8, 8)["rgb"], rtol=0, atol=0)
    assert not tr2.step().get("skipped")


def test_graphed_step_body_trains_and_its_kinds_follow_the_proposal_schedule():
    """The CUDA-graph step (app/engine/graph_step.py) run eagerly on a CPU: fixed shapes,
    the whole batch valid, every loss term, and it learns as the eager step does. Its
    graph key is whether the step trains the proposals; the anneal power is a buffer
    that follows the step count (a captured graph reads it on every replay)."""
    from renderer.proposal import anneal_power

    torch.manual_seed(0)
    tr = _trainer(steps=200, cuda_graph=True, proposal_update_every=5, proposal_warmup=20, anneal_steps=40)
    tr.static_on_cpu = True
    seen = []
    real = tr.model.render_rays_static

    def spy(*a, **k):
        out = real(*a, **k)
        seen.append((tr.model.graph_key(), sorted(out), float(out["valid"].sum()), float(out["kept"])))
        return out
    tr.model.render_rays_static = spy
    first = [tr.step()["psnr"] for _ in range(5)]
    for _ in range(75):
        m = tr.step()
        assert abs(float(tr.model.anneal) - anneal_power(tr.step_count, steps=40)) < 1e-6
    assert tr._static is not None and tr._static.steps_run == 80 and tr.step_count == 80 and tr.events == []
    assert m["psnr"] > np.mean(first) + 4, (first, m["psnr"])
    keys, outs, valid, kept = zip(*seen)
    assert list(keys) == [tr.model.trains_proposals(s) for s in range(80)]
    assert keys[40:50] == (True, False, False, False, False) * 2  # every 5th after the warm-up
    assert {"interlevel", "rgb", "valid", "marched", "kept"} <= set(outs[0])
    assert set(valid) == {128.0} and set(kept) == {128.0 * TINY["n_samples"]}
    assert tr.model.static_shape(128) == (128 * TINY["n_samples"], 128)


def test_mesh_export_and_inerf_run_with_it(tmp_path):
    from app.tools.export import density_grid, export_mesh
    from app.tools.inerf import InvertPose, perturb_pose

    tr = _trainer()
    for _ in range(30):
        tr.step()
    grid = density_grid(tr.model, 16)  # a short run: pick a level its density crosses
    info = export_mesh(tr, str(tmp_path / "m.ply"), res=24, threshold=float(np.median(grid)), log=None)
    assert info["faces"] > 0 and os.path.getsize(tmp_path / "m.ply") > 0
    sp = tr.scene.split("test")
    tr.optimizer.zero_grad(set_to_none=True)
    inv = InvertPose(tr, sp.images[0], perturb_pose(sp.c2w[0], 5.0, 0.05), batch=64, sampling="random")
    hist = inv.run(3)
    assert all(np.isfinite(h["loss"]) for h in hist)
    assert all(p.grad is None for p in tr.model.parameters())  # the field is not trained by it


def test_held_out_appearance_is_fitted_on_the_left_half():
    """A held-out 'photo' rendered by the field itself with a known code far from the mean:
    the code fitted on its left half makes the right half match far better than the mean
    code does (with no prior on codes: a penalised field's codes never stray that far); the
    report has both figures, and fields without appearance are refused."""
    from app.engine.appearance import evaluate_appearance, fit_appearance
    from renderer.render import render_image
    from tests.conftest import make_trainer

    torch.manual_seed(0)
    tr = _trainer(appearance_penalty=0.0)
    for _ in range(20):
        tr.step()
    m = tr.model
    sp = tr.scene.split("test")
    true_code = m.appearance_code() + 3.0 * torch.randn(4, generator=torch.Generator().manual_seed(2))
    cam = sp.cameras[0]
    render = lambda code: render_image(m, torch.as_tensor(sp.c2w[0]), cam, 2.0, 6.0, background=1.0,  # noqa: E731
                                       keys=("rgb",), extra={"appearance": code})["rgb"].numpy()
    photo = render(true_code)
    code = fit_appearance(tr, photo, sp.c2w[0], cam, steps=60, batch=128, lr=1e-1)
    right = lambda img: float(((img[:, 8:] - photo[:, 8:]) ** 2).mean())  # noqa: E731
    assert right(render(code)) < 0.1 * right(render(m.appearance_code())), (right(render(code)),
                                                                             right(render(m.appearance_code())))
    # The fit keeps to the field's prior on codes: under a heavy one it stays near the mean.
    mean = m.appearance_code()
    assert float(m.appearance_prior(true_code)) == 0.0
    m.config["appearance_penalty"] = 0.5
    assert float(m.appearance_prior(true_code)) == pytest.approx(0.5 * float(((true_code - mean) ** 2).sum()),
                                                                rel=1e-5)
    m.config["appearance_penalty"] = 100.0
    held = fit_appearance(tr, photo, sp.c2w[0], cam, steps=60, batch=128, lr=1e-1)
    m.config["appearance_penalty"] = 0.0
    assert float((held - mean).norm()) < 0.2 * float((code - mean).norm())
    res = evaluate_appearance(tr, max_images=2, steps=0)  # no fitting: both figures agree
    assert set(res["mean"]) == {"psnr_mean_right", "psnr_fitted_right"}
    assert res["mean"]["psnr_mean_right"] == pytest.approx(res["mean"]["psnr_fitted_right"])
    nerf = make_trainer()
    assert fit_appearance(nerf, photo, sp.c2w[0], cam) is None
    with pytest.raises(ValueError, match="no per-image appearance"):
        evaluate_appearance(nerf)


def test_held_out_camera_is_fitted_on_the_left_half():
    """A held-out 'photo' the field renders from a known camera, and that camera turned by 2
    degrees and moved by 0.06 (the scene is 4 units across): fit_view brings it back within
    0.3 degree and 0.02 units, and the right half matches the photo again."""
    from app.engine.appearance import evaluate_appearance, fit_view
    from app.tools.inerf import rotation_error_deg, translation_error
    from renderer.lie import so3_exp
    from renderer.render import render_image

    torch.manual_seed(0)
    tr = _trainer()
    for _ in range(60):
        tr.step()
    sp = tr.scene.split("test")
    cam, true = sp.cameras[0], sp.c2w[0].astype(np.float32)
    render = lambda c2w: render_image(tr.model, torch.as_tensor(c2w), cam, 2.0, 6.0, background=1.0,  # noqa: E731
                                      keys=("rgb",))["rgb"].numpy()
    photo = render(true)
    pert = true.copy()
    pert[:3, :3] = so3_exp(torch.tensor([0.0, 1.0, 0.3]) / math.sqrt(1.09) * math.radians(2.0)).numpy() @ pert[:3, :3]
    pert[:3, 3] += np.array([0.05, -0.03, 0.02], np.float32)
    _, fitted = fit_view(tr, photo, pert, cam, steps=200, batch=256, fit_pose=True)
    right = lambda img: float(((img[:, 8:] - photo[:, 8:]) ** 2).mean())  # noqa: E731
    assert rotation_error_deg(pert, true) == pytest.approx(2.0, abs=1e-3) and translation_error(pert, true) > 0.06
    assert rotation_error_deg(fitted, true) < 0.3 and translation_error(fitted, true) < 0.02
    assert right(render(fitted)) < 0.01 * right(render(pert))
    res = evaluate_appearance(tr, max_images=1, steps=0, fit_pose=True)  # the third figure is reported
    assert res["mean"]["psnr_pose_right"] == pytest.approx(res["mean"]["psnr_fitted_right"])


def test_default_model_for_captures():
    sphere = make_sphere_scene(white=False)
    assert not is_capture(sphere)  # the loaders' default kind: an object
    sphere.kind = "capture"
    assert is_capture(sphere) and default_model(True, sphere) == "nerfacto"
    assert default_model(False, sphere) == "nerfacto"
    assert default_model(True) == "hash" and default_model(False) == "nerf"  # no scene: as before
    from loaders import load_scene
    blender = load_scene(SCENE)  # RGBA: an object on a known background
    assert not is_capture(blender) and default_model(True, blender) == "hash"
    sphere.ndc = True  # forward-facing: its NDC box bounds it
    assert not is_capture(sphere)


def test_cli_trains_on_the_embedded_scene_and_beats_the_mean_colour(tmp_path):
    """The CLI picks what it is told, trains, evaluates; a field that learnt nothing would
    score the mean colour's PSNR (about 11 dB on this scene)."""
    import subprocess
    import sys

    from loaders import load_scene

    out = tmp_path / "run"
    opts = dict(n_levels=4, log2_hashmap_size=12, max_res=64, n_proposal=[16, 8], n_samples=8)
    proc = subprocess.run([sys.executable, "main.py", "train", "--model", "nerfacto", "--data", SCENE,
                           "--downscale", "4", "--out", str(out), "--steps", "100", "--batch", "256",
                           "--device", "cpu", "--eval-images", "2", "--options", json.dumps(opts)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "nerfacto is built for CUDA" in proc.stdout
    scene = load_scene(SCENE, downscale=4)
    mean = scene.split("train").images.reshape(-1, 3).mean(0)
    test = scene.split("test").images[:2]
    baseline = -10 * math.log10(float(((test - mean) ** 2).mean()))
    got = json.load(open(out / "eval.json"))["mean"]["psnr"]
    print(f"embedded scene at 32 px, 100 steps: {got:.2f} dB (mean colour {baseline:.2f} dB)")
    assert got > baseline + 3.0


@pytest.mark.skipif(not os.path.isdir(BEER), reason="../shared/data/captures/beer is not present")
def test_beer_capture_trains_without_ndc():
    """The shared beer capture (not forward facing: the loader turns NDC off and calls it a
    capture) at 1/16 resolution: a short run beats the mean colour on held-out frames."""
    from loaders import load_scene

    scene = load_scene(BEER, downscale=16)
    assert scene.split("train").images.shape[1:3] == (80, 45)  # portrait frames
    assert is_capture(scene) and default_model(True, scene) == "nerfacto"
    tr = _trainer(scene, steps=150, batch=256)
    for _ in range(150):
        tr.step()
    res = tr.evaluate("test", max_images=3, ssim=False)
    mean = scene.split("train").images.reshape(-1, 3).mean(0)
    test = scene.split("test").images[:3]
    baseline = -10 * math.log10(float(((test - mean) ** 2).mean()))
    print(f"beer at 1/16, 150 steps: {res['mean']['psnr']:.2f} dB (mean colour {baseline:.2f} dB)")
    assert res["mean"]["psnr"] > baseline + 2.0


def test_render_resamples_with_the_anneal_power_of_its_step():
    """At step 0 the power is 0: every proposal weight becomes 1, so the render samples
    uniformly whatever the proposal nets say. Once annealed (power 1) the nets place the
    samples, so changing them changes the render."""
    from tests.conftest import tiny_nerfacto

    m = tiny_nerfacto(2, torch.Generator().manual_seed(3)).eval()
    rays_o = torch.tensor(orbit_poses(6)[:, :3, 3], dtype=torch.float32)
    rays_d = -rays_o / rays_o.norm(dim=-1, keepdim=True)

    def render_after_changing_the_proposals(step: int):
        m._set_step(step)
        with torch.no_grad():
            before = m.render_rays(rays_o, rays_d, 2.0, 6.0)["rgb"]
            for net in m.proposals:
                net.encoding.table.normal_(0.0, 2.0)
            return before, m.render_rays(rays_o, rays_d, 2.0, 6.0)["rgb"]

    a, b = render_after_changing_the_proposals(0)
    assert torch.allclose(a, b, atol=1e-6)
    a, b = render_after_changing_the_proposals(m.config["anneal_steps"])
    assert (a - b).abs().max() > 1e-3
