"""app/engine/trainer.py: learning, determinism, recovery from NaN and out-of-memory, lr schedule."""
import math

import numpy as np
import pytest
import torch

from app.engine.trainer import TrainConfig, Trainer
from tests.conftest import make_sphere_scene, make_trainer


def _snapshot(trainer):
    params = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    opt = {i: {k: (v.clone() if torch.is_tensor(v) else v) for k, v in st.items()}
           for i, st in trainer.optimizer.state_dict()["state"].items()}
    return params, opt


def _assert_same(a, b):
    pa, oa = a
    pb, ob = b
    assert pa.keys() == pb.keys()
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k
    assert oa.keys() == ob.keys()
    for i in oa:
        for k in oa[i]:
            assert torch.equal(torch.as_tensor(oa[i][k]), torch.as_tensor(ob[i][k])), (i, k)


def test_loss_decreases_on_sphere_scene():
    tr = make_trainer()
    losses = []
    for _ in range(100):
        m = tr.step()
        assert not m.get("skipped"), m
        losses.append(m["loss"])
    assert tr.step_count == 100
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < 0.5 * first, (first, last)
    assert all(math.isfinite(v) for v in losses)
    m = tr.last_metrics
    assert set(m) >= {"step", "loss", "mse", "psnr", "lr", "batch_rays", "time"}
    assert m["psnr"] == pytest.approx(-10 * math.log10(m["mse"]))
    # It learned the picture, not just the loss: held-out views beat a flat grey guess.
    res = tr.evaluate("test", max_images=2, ssim=False)
    grey = -10 * math.log10(float(np.mean((tr.scene.split("test").images - 0.5) ** 2)))
    assert res["mean"]["psnr"] > grey + 3, (res["mean"], grey)
    assert [r["name"] for r in res["images"]] == ["t0", "t1"] and res["step"] == 100


def test_same_seed_same_losses():
    a = make_trainer(seed=3)
    la = [a.step()["loss"] for _ in range(5)]
    b = make_trainer(seed=3)
    lb = [b.step()["loss"] for _ in range(5)]
    assert la == lb
    c = make_trainer(seed=4)
    assert [c.step()["loss"] for _ in range(5)] != la


def test_nan_loss_is_skipped_and_training_continues(monkeypatch):
    tr = make_trainer()
    for _ in range(3):
        tr.step()
    real = tr.model.render_rays
    poison = {"n": 1}

    def render(*args, **kw):
        out = real(*args, **kw)
        if poison["n"] > 0:
            poison["n"] -= 1
            out = dict(out, rgb=out["rgb"] * float("nan"))
        return out

    monkeypatch.setattr(tr.model, "render_rays", render)
    before = _snapshot(tr)
    m = tr.step()
    assert m["skipped"] is True and m["step"] == 3 and tr.step_count == 3
    assert "nan" in m["event"].lower() and tr.events[-1] == m["event"]
    _assert_same(before, _snapshot(tr))
    m = tr.step()
    assert not m.get("skipped") and tr.step_count == 4 and math.isfinite(m["loss"])
    for p in tr.model.parameters():
        assert torch.isfinite(p).all()


def test_nan_gradient_is_skipped(monkeypatch):
    tr = make_trainer()
    tr.step()
    real = tr.model.render_rays
    poison = {"n": 1}

    def render(*args, **kw):
        out = real(*args, **kw)
        if poison["n"] > 0:
            poison["n"] -= 1
            # Forward adds exactly 0, backward is 0 / sqrt(0) = NaN in every parameter.
            zero = (out["rgb"] - out["rgb"]).sum()
            out = dict(out, rgb=out["rgb"] + 0.0 * torch.sqrt(zero))
        return out

    monkeypatch.setattr(tr.model, "render_rays", render)
    before = _snapshot(tr)
    m = tr.step()
    assert m["skipped"] and "gradient" in m["event"]
    _assert_same(before, _snapshot(tr))
    assert all(p.grad is None for p in tr.model.parameters())
    assert not tr.step().get("skipped") and tr.step_count == 2


def test_simulated_oom_halves_batch():
    tr = make_trainer(batch=256)
    tr.step()
    calls = {"n": 0}

    def hook(trainer):
        calls["n"] += 1
        if calls["n"] == 1:
            raise torch.cuda.OutOfMemoryError("simulated")

    tr.fault_hook = hook
    before = _snapshot(tr)
    m = tr.step()
    assert m["skipped"] and tr.batch_rays == 128 and tr.step_count == 1
    assert "out of memory" in m["event"] and "256" in m["event"] and "128" in m["event"]
    assert tr.events == [m["event"]]
    _assert_same(before, _snapshot(tr))
    for _ in range(3):
        m = tr.step()
        assert not m.get("skipped") and m["batch_rays"] == 128
    assert tr.step_count == 4


def test_oom_floor_and_other_errors_propagate():
    tr = make_trainer(batch=100)

    def oom(trainer):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")  # the pre-2.0 spelling

    tr.fault_hook = oom
    for _ in range(3):
        assert tr.step()["skipped"]
    assert tr.batch_rays == Trainer.MIN_BATCH

    def broken(trainer):
        raise KeyError("not a recoverable error")

    tr.fault_hook = broken
    with pytest.raises(KeyError):
        tr.step()


def test_lr_exponential_decay():
    tr = make_trainer(lr=1e-2)  # lr_final = 1e-3 over 1000 steps
    c = tr.config
    assert tr.lr_at(0) == pytest.approx(1e-2)
    assert tr.lr_at(1000) == pytest.approx(1e-3)
    assert tr.lr_at(500) == pytest.approx(math.sqrt(1e-2 * 1e-3))  # geometric midpoint
    assert tr.lr_at(2000) == pytest.approx(1e-4)  # keeps decaying
    for s in (0, 1, 250, 999):
        assert tr.lr_at(s) == pytest.approx(c.lr * 0.1 ** (s / 1000))
    tr.step_count = 250
    m = tr.step()
    assert m["lr"] == pytest.approx(1e-2 * 0.1 ** 0.25)
    assert tr.optimizer.param_groups[0]["lr"] == pytest.approx(m["lr"])


def test_render_shapes_and_config_validation():
    tr = make_trainer()
    out = tr.render(tr.scene.split("test").c2w[0])
    assert out["rgb"].shape == (16, 16, 3) and out["depth"].shape == (16, 16) and out["acc"].shape == (16, 16)
    small = tr.render(tr.scene.split("test").c2w[0], 8, 12, keys=("rgb",))
    assert set(small) == {"rgb"} and small["rgb"].shape == (8, 12, 3)
    for bad in (dict(batch_rays=0), dict(lr=-1.0), dict(lr=float("nan")), dict(lr_decay_steps=0)):
        with pytest.raises(ValueError):
            Trainer(make_sphere_scene(), TrainConfig(device="cpu", **bad))


def test_training_rays_match_rendering_rays():
    # sample_batch builds its own pixel directions; they must be get_rays' for the same
    # pixel or training and rendering would disagree about where each pixel looks.
    from renderer.rays import get_rays

    tr = make_trainer()
    state = tr.rng.get_state()
    b = tr.sample_batch(50)
    rays_o, rays_d, target = b.rays_o, b.rays_d, b.target
    g = torch.Generator().manual_seed(0)
    g.set_state(state)
    n_img, h, w = tr.rays.images.shape[:3]
    img = torch.randint(0, n_img, (50,), generator=g)
    py = torch.randint(0, h, (50,), generator=g)
    px = torch.randint(0, w, (50,), generator=g)
    for k in range(50):
        K = torch.tensor(tr.scene.split("train").cameras.K(int(img[k])), dtype=torch.float32)
        o, d = get_rays(h, w, K, tr.rays.c2w[img[k]])
        torch.testing.assert_close(rays_o[k], o[py[k], px[k]])
        torch.testing.assert_close(rays_d[k], d[py[k], px[k]])
        assert torch.equal(target[k], tr.rays.images[img[k], py[k], px[k]])
        assert b.image[k] == img[k]  # the index a field with per-image parameters gets


def test_nan_parameters_roll_back_to_last_healthy_state():
    """A parameter that turns NaN would make every later step skip forever;
    the trainer must restore its last healthy snapshot and keep learning."""
    import torch
    from app.engine.trainer import Trainer, TrainConfig
    from tests.test_trainer import _tiny_scene_for_rollback as make
    scene = make()
    tr = Trainer(scene, TrainConfig(model_options=dict(width=16, depth=2, skips=[], dir_width=8,
                                                      n_coarse=4, n_fine=0, L_xyz=2, L_dir=1),
                                    batch_rays=32, lr=1e-3))
    # The first applied step takes the snapshot (the next one would come at SNAPSHOT_EVERY).
    assert not tr.step().get("skipped")
    snapshot = {k: v.clone() for k, v in tr.model.state_dict().items()}
    for _ in range(2):
        assert not tr.step().get("skipped")
    assert any(not torch.equal(tr.model.state_dict()[k], snapshot[k]) for k in snapshot)
    with torch.no_grad():
        next(tr.model.parameters()).fill_(float("nan"))
    m = tr.step()
    assert m["skipped"] and "rolled back" in m["event"]
    assert tr.step_count == 1
    restored = tr.model.state_dict()
    assert all(torch.equal(restored[k], snapshot[k]) for k in snapshot)
    assert not tr.step().get("skipped")


def _tiny_scene_for_rollback():
    import numpy as np
    from loaders.scene import Scene, Split
    rng = np.random.default_rng(0)
    imgs = rng.random((2, 8, 8, 3)).astype(np.float32)
    c2w = np.stack([np.eye(4, dtype=np.float32)] * 2)
    c2w[:, 2, 3] = 4.0
    sp = Split(imgs, c2w, 8.0, ["a", "b"])
    return Scene({"train": sp, "test": sp, "val": sp}, 2.0, 6.0, True, "mem")


def test_cpu_allocation_failure_counts_as_out_of_memory():
    import torch
    from app.engine.trainer import is_oom
    assert is_oom(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: "
                               "can't allocate memory: you tried to allocate 80000000000 bytes."))
    assert is_oom(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert is_oom(MemoryError())
    assert not is_oom(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


def test_precrop_samples_centre_pixels_then_whole_image():
    # Paint each training pixel with its own (x, y) so a target tells where it came from.
    tr = make_trainer()
    tr.config.precrop_steps = 500
    n, h, w = tr.rays.images.shape[:3]
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    tr.rays.images = torch.stack([xs.float(), ys.float(), torch.zeros(h, w)], -1).expand(n, h, w, 3).clone()
    ch, cw = round(h * 0.5), round(w * 0.5)
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    t = tr.sample_batch(4000).target
    assert t[:, 0].min() == x0 and t[:, 0].max() == x0 + cw - 1
    assert t[:, 1].min() == y0 and t[:, 1].max() == y0 + ch - 1
    tr.step_count = 500
    t = tr.sample_batch(4000).target
    assert t[:, 0].min() == 0 and t[:, 0].max() == w - 1
    assert t[:, 1].min() == 0 and t[:, 1].max() == h - 1


def test_precrop_config_is_validated():
    assert TrainConfig().precrop_steps == 0
    with pytest.raises(ValueError, match="precrop_frac"):
        TrainConfig(precrop_frac=0.0).validate()
    with pytest.raises(ValueError, match="precrop_steps"):
        TrainConfig(precrop_steps=-1).validate()
