"""Trainer weight averaging (TrainConfig.ema_decay): the recursion against a float64
reference, renders and evaluation use the average and leave the raw weights alone,
the default per model, recovery and checkpoints."""
import pytest
import torch

from app.engine.trainer import TrainConfig, Trainer
from tests.conftest import make_sphere_scene
from tests.test_hashgrid import TINY


def _trainer(ema=None, model="hash", **kw):
    opts = dict(TINY) if model == "hash" else {"width": 16, "depth": 2, "skips": [], "n_coarse": 8, "n_fine": 8}
    cfg = TrainConfig(model=model, model_options=opts, batch_rays=256, lr=1e-2, lr_final=1e-3,
                      lr_decay_steps=1000, device="cpu", ema_decay=ema, **kw)
    return Trainer(make_sphere_scene(n_views=8), cfg)


def test_average_follows_the_recursion_in_float64():
    tr = _trainer(ema=0.8)
    ref = None
    for _ in range(12):
        tr.step()
        params = [p.detach().double().clone() for p in tr._ema_params()]
        ref = params if ref is None else [0.8 * r + 0.2 * p for r, p in zip(ref, params)]
    assert len(tr.ema) == len(ref)
    for e, r in zip(tr.ema, ref):
        assert torch.allclose(e.double(), r, atol=1e-6, rtol=1e-5)
    # After a dozen steps the average is not the last weights.
    assert any(not torch.allclose(e, p) for e, p in zip(tr.ema, tr._ema_params()))


def test_render_uses_the_average_and_restores_the_raw_weights():
    tr = _trainer(ema=0.9)
    for _ in range(15):
        tr.step()
    raw = [p.detach().clone() for p in tr._ema_params()]
    c2w = tr.scene.split("test").c2w[0]
    with_avg = tr.render(c2w, 10, 10)["rgb"]
    assert all(torch.equal(a, p) for a, p in zip(raw, tr._ema_params()))
    ema = tr.ema
    tr.ema = None  # nothing to average: the raw weights render
    plain = tr.render(c2w, 10, 10)["rgb"]
    tr.ema = ema
    with torch.no_grad():
        for p, e in zip(tr._ema_params(), ema):
            p.copy_(e)
        by_hand = tr.render(c2w, 10, 10)["rgb"]  # the average copied in by hand, then rendered
    assert torch.equal(with_avg, by_hand) and not torch.equal(with_avg, plain)


def test_raw_weights_come_back_when_rendering_fails():
    tr = _trainer(ema=0.9)
    for _ in range(5):
        tr.step()
    raw = [p.detach().clone() for p in tr._ema_params()]
    with pytest.raises(RuntimeError, match="boom"):
        with tr.averaged():
            assert not all(torch.equal(a, p) for a, p in zip(raw, tr._ema_params()))
            raise RuntimeError("boom")
    assert all(torch.equal(a, p) for a, p in zip(raw, tr._ema_params()))


def test_default_is_the_models():
    assert _trainer().ema_decay == 0.95  # hash: instant-ngp's value
    assert _trainer(model="nerf").ema_decay == 0.0
    tr = _trainer(ema=0.0)
    tr.step()
    assert tr.ema is None
    with pytest.raises(ValueError, match="ema_decay"):
        _trainer(ema=1.0)


def test_rollback_restarts_the_average_from_the_restored_weights():
    tr = _trainer(ema=0.9)
    for _ in range(6):
        tr.step()
    with torch.no_grad():
        tr.model.density_net[0].weight.fill_(float("nan"))
    tr.step()  # non-finite: skipped and rolled back
    assert any("rolled back" in e for e in tr.events)
    assert tr.ema is None
    tr.step()
    assert all(torch.isfinite(e).all() for e in tr.ema)


def test_checkpoint_keeps_the_average(tmp_path):
    from app.engine.checkpoint import save_checkpoint, trainer_from_checkpoint
    tr = _trainer(ema=0.9)
    for _ in range(8):
        tr.step()
    path = str(tmp_path / "ck.safetensors")
    save_checkpoint(path, tr)
    tr2 = trainer_from_checkpoint(path, tr.scene, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(tr.ema, tr2.ema))
    # Both trainers draw jitter from torch's global RNG: give each the same stream.
    state = torch.get_rng_state()
    tr.step()
    torch.set_rng_state(state)
    tr2.step()
    assert all(torch.equal(a, b) for a, b in zip(tr.ema, tr2.ema))


def test_a_loaded_run_uses_the_average(tmp_path):
    from app.engine.checkpoint import save_checkpoint
    tr = _trainer(ema=0.9)
    for _ in range(8):
        tr.step()
    save_checkpoint(str(tmp_path / "ck.safetensors"), tr)
    from app.engine.checkpoint import trainer_from_checkpoint
    tr2 = trainer_from_checkpoint(str(tmp_path / "ck.safetensors"), tr.scene, device="cpu")
    tr2.apply_average()
    assert tr2.ema is None
    assert all(torch.equal(p, e) for p, e in zip(tr2._ema_params(), tr.ema))
    c2w = tr.scene.split("test").c2w[0]
    assert torch.equal(tr.render(c2w, 10, 10)["rgb"], tr2.render(c2w, 10, 10)["rgb"])
