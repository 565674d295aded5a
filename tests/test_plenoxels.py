"""Plenoxels (models/plenoxels.py): the model's behaviour against independent references.
The building blocks have their own tests (tests/test_voxel_grid.py, test_plenoxel_kernels.py)."""

import numpy as np
import pytest
import torch

from models import build_model
from models.plenoxels import Plenoxels
from tests.conftest import gen, make_sphere_scene, needs_triton, run_in_triton_interpreter, trilinear_reference


# -- the model -------------------------------------------------------------------------------------
def _random_model(res=4, seed=0, **kw):
    torch.manual_seed(seed)
    m = Plenoxels(resolution=res, bbox=1.0, init_radius=None, **kw)
    with torch.no_grad():
        m.density_data.uniform_(-2.0, 6.0)
        m.sh_data.normal_(0.0, 0.5)
    return m


def _points(n, seed, r=1.0):
    return (torch.rand(n, 3, generator=gen(seed)) * 2 - 1) * r


def _rays(n, seed):
    g = gen(seed)
    o = torch.randn(n, 3, generator=g) * 0.2 + torch.tensor([0.0, 0.0, 3.0])
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g) * 0.3 + torch.tensor([0, 0, -1.0]), dim=-1)
    return o, d


def test_registered_and_validates_options():
    m = build_model("plenoxels", resolution=8, init_radius=None)
    assert isinstance(m, Plenoxels) and m.config["resolution"] == 8 and m.links.shape == (9, 9, 9)
    assert m.sh_data.shape == (9 ** 3, 27)
    sphere = build_model("plenoxels", resolution=8)  # svox2's sphere init: the corners stay empty
    assert sphere.links[0, 0, 0] == -1 and sphere.links[4, 4, 4] >= 0 and sphere.n_active < 9 ** 3
    for bad, match in (({"resolutoin": 8}, "unknown Plenoxels option"), ({"bbox": [1, 1, 1, 0, 0, 0]}, "bbox"),
                       ({"resolution": 1}, "resolution"), ({"sh_degree": 4}, "degree"),
                       ({"upsample_steps": [None]}, "upsample_steps"), ({"dilation": -1}, "dilation"),
                       ({"prune_by": "alpha"}, "prune_by"), ({"tv_sh": -1.0}, "tv_sh")):
        with pytest.raises(ValueError, match=match):
            build_model("plenoxels", **bad)
    groups = m.param_groups(0.01)
    # svox2's lrs (30 and 1e-2 at the run lr 1e-2) for its [-1, 1]^3 box; densities per unit
    # length scale with the box, so the default 3-unit box takes 2/3 of the density lr.
    assert [g["lr"] for g in groups] == pytest.approx([20.0, 0.01])
    assert groups[0]["params"][0] is m.density_data and groups[1]["params"][0] is m.sh_data
    assert build_model("plenoxels", resolution=8, bbox=1.0).param_groups(0.01)[0]["lr"] == pytest.approx(30.0)
    assert type(m.make_optimizer(groups, step=0, cuda=False)).__name__ == "GridRMSprop"


def test_options_for_devices_and_ndc():
    assert Plenoxels.options_for(True) == {}
    cpu = Plenoxels.options_for(False)
    assert cpu["resolution"] == 64 and cpu["upsample_steps"] == [600]
    ndc = Plenoxels.options_for(True, ndc=True)
    assert ndc["bbox"] == 1.0 and ndc["prune_by"] == "density" and ndc["sparsity"] > 0
    assert Plenoxels.options_for(False, arch={"resolution": 32})["resolution"] == 32
    assert Plenoxels.policy(True, {}).lr_final_ratio == 1.0  # the decays are the optimiser's


def test_sparse_gather_matches_dense_reference():
    """density() and radiance() through links against a dense float64 grid with zeros at
    the pruned vertices."""
    m = _random_model(res=3)
    with torch.no_grad():
        m.density_data[:32] = -100.0
    m.config.update(prune_by="density", density_threshold=0.0, dilation=0)
    m.prune()
    n = 4
    dense = np.zeros((n ** 3, 1))
    dense[m._row_vertex.numpy()] = m.density_data.detach().double().numpy()
    x = _points(100, 6)
    x[0] = torch.tensor([1.5, 0.0, 0.0])  # outside the bbox
    p = ((x.double() + 1) / 2 * 3).numpy()
    ref = np.maximum(trilinear_reference(dense.reshape(n, n, n, 1), p.clip(0, 3))[:, 0], 0)
    ref[0] = 0.0
    assert m.n_active < n ** 3 and (ref == 0).sum() > 5
    np.testing.assert_allclose(m.density(x).detach().numpy(), ref, atol=1e-5)


def test_ray_scale_does_not_change_rgb_and_depth_is_in_ray_units():
    m = _random_model(res=4, seed=2)
    o = torch.tensor([[0.1, -0.2, 3.0], [3.0, 0.0, 0.0]])
    d = torch.tensor([[0.0, 0.05, -1.0], [-1.0, 0.1, 0.0]])
    a = m.render_rays(o, d, 0.0, 10.0, background=0.0)
    b = m.render_rays(o, 2 * d, 0.0, 5.0, background=0.0)
    torch.testing.assert_close(a["rgb"], b["rgb"], atol=1e-5, rtol=0)
    torch.testing.assert_close(a["depth"], 2 * b["depth"], atol=1e-4, rtol=0)
    assert a["depth"].min() > 1.5  # the box begins 2 units from the origins
    assert a["weights"].shape == a["t"].shape  # the GUI's per-sample inspector


def test_render_chunk_is_whole_frames_on_cuda():
    from models.plenoxels import FRAME_RAYS
    m = _random_model(res=4)
    assert m.render_chunk(True) == FRAME_RAYS >= 1920 * 1080 and m.render_chunk(False) == 4096


@needs_triton
def test_frame_path_matches_the_training_kernels_whole_or_chunked():
    """Renders without gradients go through the frame kernel and its cached maps: one call
    for all rays equals small chunks and the training kernels' forward (taken with
    gradients on), also after the densities change in place (the maps are rebuilt)."""
    code = r"""
import torch
from models.plenoxels import Plenoxels
from renderer.render import render_rays_chunked
torch.manual_seed(0)
m = Plenoxels(resolution=8, bbox=1.0, init_radius=None, sh_degree=0, prune_by="density", density_threshold=0.0,
              dilation=0)
with torch.no_grad():
    m.density_data.uniform_(-6.0, 8.0)
    m.sh_data.normal_(0.0, 0.5)
m.prune()                                   # inactive vertices
with torch.no_grad():
    m.density_data.sub_(3.0)                # and active ones of density <= 0
assert m.n_active < 9 ** 3 and (m.density_data <= 0).any()
g = torch.Generator().manual_seed(1)
o = torch.randn(100, 3, generator=g) * 0.3 + torch.tensor([0.0, 0.0, 3.0])
d = torch.nn.functional.normalize(torch.randn(100, 3, generator=g) * 0.3 + torch.tensor([0, 0, -1.0]), dim=-1)
for _ in range(2):
    whole = render_rays_chunked(m, o, d, 0.5, 6.0, 0.3, chunk=100)
    parts = render_rays_chunked(m, o, d, 0.5, 6.0, 0.3, chunk=40)
    m.eval()
    with torch.enable_grad():
        train_fwd = m.render_rays(o, d, 0.5, 6.0, background=0.3, train=False)
    assert train_fwd["rgb"].requires_grad   # this one did go through the training kernels
    assert whole["acc"].max() > 0.9 and whole["acc"].min() < 0.1
    for key in ("rgb", "depth", "acc"):
        torch.testing.assert_close(whole[key], parts[key], atol=1e-6, rtol=0)
        torch.testing.assert_close(whole[key], train_fwd[key].detach(), atol=2e-5, rtol=1e-5)
    with torch.no_grad():
        m.density_data.mul_(-1.0).add_(2.0)  # in place: the cached cell maps are stale now
print("OK")
"""
    run_in_triton_interpreter(code)


@needs_triton
def test_a_failing_frame_kernel_leaves_renders_to_the_training_kernels(monkeypatch, capsys):
    from models.kernels import plenoxel_render as pr

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel image")

    monkeypatch.setattr(pr, "render_frame", broken)
    monkeypatch.delenv("NERFLAB_KERNELS", raising=False)
    m = _random_model(res=4)
    assert m._frame.render(m, None, None, None, 0.5, 1e-4) is None
    assert "no kernel image" in m._frame.error and "frame kernel failed" in capsys.readouterr().err
    monkeypatch.setattr(pr, "render_frame", lambda *a, **k: pytest.fail("retried after failing"))
    assert m._frame.render(m, None, None, None, 0.5, 1e-4) is None
    from renderer import kernels
    assert not kernels._STATE["disabled"]  # training keeps its kernels


def test_prune_by_density_keeps_dense_vertices_and_dilates():
    m = Plenoxels(resolution=8, bbox=1.0, init_radius=None, dilation=0, density_init=0.0, prune_by="density")
    n = 9
    with torch.no_grad():
        dens = m.density_data.view(n, n, n)
        dens[2, 2, 2] = 50.0
        dens[6, 6, 5] = 20.0
        dens[4, 4, 7] = 1.0  # below density_threshold
    m.prune()
    assert m.n_active == 2
    assert {tuple(v) for v in torch.nonzero(m.links >= 0).tolist()} == {(2, 2, 2), (6, 6, 5)}
    torch.testing.assert_close(m.density_data[:, 0].sort().values, torch.tensor([20.0, 50.0]))
    m.config["dilation"] = 1  # the 26-neighbourhood joins with zeros, so a surface can grow
    m.prune()
    assert m.n_active == 27 + 27 and (m.density_data != 0).sum() == 2
    assert m.density(torch.tensor([[-0.9, 0.9, 0.9]])).item() == 0.0


def _ball_model(res, seed, **kw):
    """A dense ball of radius 0.5 in [-1, 1]^3 with random colours, empty (negative) elsewhere."""
    m = _random_model(res=res, seed=seed, **kw)
    with torch.no_grad():
        v, n = m._row_vertex, res + 1
        ijk = torch.stack([v // (n * n), (v // n) % n, v % n], -1).float()
        r = (ijk / res * 2 - 1).norm(dim=-1)
        m.density_data[:, 0] = torch.where(r < 0.5, 15.0, -1.0)
    return m


def test_pruning_keeps_every_voxel_a_reference_render_needs():
    """Weight pruning with a set of rays keeps every vertex of a cell where one of those rays
    has a sample of weight >= the threshold, drops the ball's hidden inside and back, and
    the rays' renders barely change."""
    m = _ball_model(8, 4, dilation=0, weight_threshold=0.08, prune_stop_t=0.0)
    o, d = _rays(256, 5)
    before = m.render_rays(o, d, 0.5, 6.0, background=1.0)
    needed = m.max_weights(o, d, 0.5, 6.0) >= 0.08 / 8
    need_v = set(m._row_vertex[needed].tolist())
    stats = m.prune((o, d, 0.5, 6.0))
    assert stats["after"] < 0.3 * stats["before"] and len(need_v) > 20
    assert need_v <= set(m._row_vertex.tolist())
    after = m.render_rays(o, d, 0.5, 6.0, background=1.0)
    assert before["acc"].max() > 0.9
    assert (after["rgb"] - before["rgb"]).abs().max() < 0.03


def test_upsampling_preserves_the_rendered_image():
    m = _ball_model(6, 3, dilation=1)
    o, d = _rays(256, 6)
    m.set_samples(n_coarse=24)  # the same world step before and after: same samples
    before = m.render_rays(o, d, 0.5, 6.0, background=1.0)
    m.upsample((o, d, 0.5, 6.0))
    assert m.resolution == 12 and m.config["resolution"] == 12 and m.links.shape == (13, 13, 13)
    assert m.n_active < 13 ** 3 // 2  # pruned on the new grid
    after = m.render_rays(o, d, 0.5, 6.0, background=1.0)
    assert before["acc"].max() > 0.9
    torch.testing.assert_close(after["rgb"], before["rgb"], atol=1e-2, rtol=0)
    # Without pruning the doubled grid is the same field.
    m2 = _random_model(res=4, seed=3, weight_threshold=0.0)
    x = _points(400, 8, r=0.999)
    dirs = torch.nn.functional.normalize(torch.randn(400, 3, generator=gen(9)), dim=-1)
    s0, c0 = m2.radiance(x, dirs)
    m2.upsample((o, d, 0.5, 6.0))
    s1, c1 = m2.radiance(x, dirs)
    torch.testing.assert_close(s1, s0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c1, c0, atol=1e-5, rtol=1e-5)


def test_set_samples_controls_the_step():
    m = Plenoxels(resolution=8, bbox=1.0)
    assert m.step_size() == pytest.approx(0.5)  # voxels
    m.set_samples(n_coarse=100, n_fine=7)
    assert m.step_size() == pytest.approx(8 / 100)
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
    assert any("-> 16^3" in e for e in tr.events)
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
    torch.testing.assert_close(s1[1]["square_avg"], s2[1]["square_avg"])
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


def test_ndc_forward_facing_scene_trains():
    """LLFF-style: cameras on a plane looking down -z, rays in NDC, the grid over the NDC
    cube with options_for(ndc=True) (density pruning, svox2's LLFF TV and sparsity)."""
    from app.engine.trainer import TrainConfig, Trainer
    from loaders.scene import Scene, Split
    from tests.conftest import look_at, sphere_images

    size, focal = 24, 30.0
    grid_xy = [(x, y) for x in (-0.6, -0.2, 0.2, 0.6) for y in (-0.4, 0.0, 0.4)]
    # Imaged with the sphere at the origin and the cameras 4 in front of it, then the world is
    # shifted so the cameras sit at z ~ 0 looking down -z, as the LLFF loader leaves them.
    poses = np.stack([look_at((x, y, 4.0), target=(x * 0.2, y * 0.2, 0.0), up=(0, 1, 0)) for x, y in grid_xy])
    imgs = sphere_images(poses, size, focal, radius=1.0, background=0.0)
    shifted = poses.copy()
    shifted[:, 2, 3] -= 4.0
    test = [5, 7]
    train = [i for i in range(len(poses)) if i not in test]
    split = lambda ix: Split(imgs[ix], shifted[ix].astype(np.float32), focal, [str(i) for i in ix])  # noqa: E731
    scene = Scene({"train": split(train), "test": split(test)}, 0.0, 1.0, False, "<memory>", ndc=True)
    opts = Plenoxels.options_for(False, ndc=True)
    opts.update(resolution=32, upsample_steps=[], prune_steps=[60], density_threshold=1.0)
    cfg = TrainConfig(model="plenoxels", model_options=opts, batch_rays=512, lr=1e-2, lr_final=1e-2,
                      lr_decay_steps=1000, seed=0, device="cpu")
    tr = Trainer(scene, cfg)
    first = tr.evaluate("test", ssim=False)["mean"]["psnr"]
    tr.train(150)
    after = tr.evaluate("test", ssim=False)["mean"]["psnr"]
    assert tr.model.config["bbox"] == [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]
    assert after > first + 8 and after > 22, (first, after)
    assert tr.model.n_active < 33 ** 3  # density pruning at step 60
