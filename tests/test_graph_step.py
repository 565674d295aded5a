"""app/engine/graph_step.py and the static-shape pieces under it: fixed-capacity marching
against the dynamic marcher, the static render against the eager training render,
and the trainer's graphed step run eagerly on a CPU (training, batch rule, NaN
recovery, fallback). The CUDA capture itself is exercised by bench/gpu_check.py."""
import textwrap

import numpy as np
import pytest
import torch

from app.engine.trainer import TrainConfig, Trainer
from models.hashgrid import HashGridModel
from renderer import occupancy as oc
from tests.conftest import make_sphere_scene, needs_triton, run_in_triton_interpreter
from tests.test_hashgrid import TINY, _dense_field_model, _rays



def _march_inputs(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    o = torch.randn(n, 3, generator=g)
    o = o / o.norm(dim=-1, keepdim=True) * 4
    d = torch.rand(n, 3, generator=g) * 2.4 - 1.2 - o
    d = d / d.norm(dim=-1, keepdim=True)
    s0, s1 = oc.march_interval(o, d, 1.5)
    occ = (torch.rand(16 ** 3, generator=g) < 0.4).to(torch.uint8)
    j = torch.rand(n, generator=g)
    return o, d, s0, s1, occ, j, oc.step_size(1.5, 300)


@pytest.mark.parametrize("cap", [900, 100_000])
def test_static_march_is_the_dynamic_march_padded(cap):
    o, d, s0, s1, occ, j, dt = _march_inputs()
    dyn = oc.march_rays_torch(o, d, s0, s1, occ, 1.5, 16, dt, 300, j, max_samples=cap)
    raw = oc.march_rays_torch(o, d, s0, s1, occ, 1.5, 16, dt, 300, j)
    st = oc.march_rays_static(o, d, s0, s1, occ, 1.5, 16, dt, 300, j, capacity=cap)
    n = dyn["s"].shape[0]
    assert st["s"].shape == (cap,) and st["ray_ids"].shape == (cap,)
    assert torch.equal(st["ray_ids"][:n], dyn["ray_ids"]) and torch.equal(st["s"][:n], dyn["s"])
    assert (st["ray_ids"][n:] == 48).all() and (st["s"][n:] == 0).all()
    assert torch.equal(st["fits"], dyn["fits"])
    assert st["kept"].item() == n and st["marched"].item() == raw["s"].shape[0]
    if cap == 900:
        assert raw["s"].shape[0] > 900 > n > 500  # the cut happened, and most samples were kept


def test_static_render_matches_eager_training_render():
    m = _dense_field_model()
    o, d = _rays(40, seed=9)
    active = torch.ones(40, dtype=torch.bool)
    active[30:] = False
    torch.manual_seed(3)
    eager = m.render_rays(o[:30], d[:30], 2.0, 6.0, background=1.0, train=True)
    torch.manual_seed(3)  # the same jitter for the first 30 rays
    st = m.render_rays_static(o, d, 2.0, 6.0, 1.0, active, capacity=1 << 16)
    assert st["rgb"].shape == (40, 3) and st["valid"].shape == (40,)
    assert torch.allclose(st["rgb"][:30], eager["rgb"], atol=1e-5)
    assert torch.allclose(st["acc"][:30], eager["acc"], atol=1e-5)
    assert (st["valid"][:30] == 1).all() and (st["valid"][30:] == 0).all()
    assert (st["acc"][30:] == 0).all()  # inactive rays march nothing
    assert st["kept"].item() == eager["samples"].item() == st["marched"].item()


def test_static_render_drops_overflowing_rays_and_padding_gets_no_gradient():
    torch.manual_seed(0)
    m = HashGridModel(**TINY)
    o, d = _rays(64, seed=2)
    st = m.render_rays_static(o, d, 2.0, 6.0, torch.rand(64, 3), torch.ones(64, dtype=torch.bool),
                              capacity=2000)
    assert st["marched"].item() > 2000 >= st["kept"].item()
    valid = st["valid"].bool()
    assert valid[:10].all() and not valid[-10:].any()  # a prefix of the rays fits
    target = torch.rand(64, 3)
    loss = m.loss_terms({"rgb": st["rgb"], "valid": st["valid"]}, target)["mse"]
    ref = ((st["rgb"][valid] - target[valid]) ** 2).mean()
    assert torch.allclose(loss, ref)
    g_static, = torch.autograd.grad(loss, m.encoding.table)
    # Same loss from the eager render of just the fitting rays: identical table gradient,
    # so neither dropped rays nor padding samples leak into it.
    torch.manual_seed(5)
    st2 = m.render_rays_static(o, d, 2.0, 6.0, 0.0, valid, capacity=2000)
    torch.manual_seed(5)
    n_fit = int(valid.sum())
    eager = m.render_rays(o[:n_fit], d[:n_fit], 2.0, 6.0, background=0.0, train=True)
    ga, = torch.autograd.grad(st2["rgb"][:n_fit].sum(), m.encoding.table)
    gb, = torch.autograd.grad(eager["rgb"].sum(), m.encoding.table)
    assert g_static.abs().sum() > 0 and torch.allclose(ga, gb, atol=1e-6)


def _static_trainer(seed=0, **kw):
    kw = {"lr_final": 1e-3, **kw}
    cfg = TrainConfig(model="hash", model_options=dict(TINY), batch_rays=256, lr=1e-2,
                      lr_decay_steps=1000, seed=seed, device="cpu", cuda_graph=True, **kw)
    tr = Trainer(make_sphere_scene(n_views=8), cfg)
    tr.static_on_cpu = True
    return tr


def test_static_trainer_learns_and_steers_rays_to_the_budget():
    tr = _static_trainer()
    losses = [tr.step()["loss"] for _ in range(70)]
    assert tr._static is not None and tr._static.steps_run == 70 and tr.step_count == 70
    assert np.mean(losses[-5:]) < 0.2 * np.mean(losses[:5])
    assert 0 < tr.model.occupancy.float().mean() < 0.6  # the grid refreshes still run
    rays, kept = tr.model._last_batch
    budget = TINY["sample_budget"]
    assert 0.6 * budget < kept <= budget  # the ray count follows the budget ...
    assert rays != 256 and tr.batch_rays >= rays  # ... starting from the configured batch
    assert tr.events == []


def test_static_step_is_off_during_precrop_and_on_cpu_by_default():
    tr = _static_trainer(precrop_steps=3)
    for _ in range(3):
        tr.step()
    assert tr._static is None
    tr.step()
    assert tr._static is not None
    plain = Trainer(make_sphere_scene(n_views=8), TrainConfig(model="hash", model_options=dict(TINY),
                                                                device="cpu", cuda_graph=True))
    plain.step()
    assert plain._static is None  # a CPU trainer ignores cuda_graph unless a test asks


def test_static_step_recovers_from_nan_by_rollback():
    tr = _static_trainer()
    for _ in range(5):
        tr.step()
    with torch.no_grad():
        tr.model.encoding.table[:] = float("nan")
    m = tr.step()
    assert m["skipped"] and "rolled back" in m["event"]
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())
    assert tr._static is None  # rebuilt after the optimiser state was replaced
    for _ in range(3):
        m = tr.step()
    assert not m.get("skipped") and np.isfinite(m["loss"]) and tr._static is not None


def test_pipelined_steps_train_exactly_as_unpipelined_ones():
    # The pipeline reorders only the host's bookkeeping: the same steps run in the same
    # order (constant lr, since its schedule reads the lagging step count), so the weights
    # match bit for bit once the last step in flight is counted. One torch thread: with
    # several, the CPU's scatter-adds sum in whatever order the threads run (seen under
    # load), which no pipeline controls.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = _train_pipelined_and_not()
    finally:
        torch.set_num_threads(threads)
    a, b = (dict(t.model.state_dict()) for t in runs)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for ea, eb in zip(runs[0].ema, runs[1].ema):
        assert torch.equal(ea, eb)


def _train_pipelined_and_not():
    runs = []
    for pipeline in (False, True):
        tr = _static_trainer(lr_final=1e-2)
        tr.pipeline = pipeline
        n = 12
        while tr.step_count + tr.steps_in_flight < n:
            m = tr.step()
            assert not m.get("skipped")
            assert tr.steps_in_flight == (1 if pipeline else 0)
        last = tr.finish_pending()
        assert (last is not None) == pipeline and tr.steps_in_flight == 0
        assert tr.finish_pending() is None
        assert tr.step_count == n and tr._static.steps_run == n
        runs.append(tr)
    return runs


def test_pipelined_step_reports_nan_a_step_late_and_rolls_back():
    tr = _static_trainer()
    tr.pipeline = True
    for _ in range(5):
        tr.step()
    with torch.no_grad():
        tr.model.encoding.table[:] = float("nan")
    # The step in flight ran before the fault: it is counted; the next one is not.
    m = tr.step()
    assert not m.get("skipped") and tr.steps_in_flight == 1
    m = tr.step()
    assert m["skipped"] and "rolled back" in m["event"]
    assert tr._static is None and tr.steps_in_flight == 0
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())
    for _ in range(3):
        m = tr.step()
    assert not m.get("skipped") and np.isfinite(m["loss"]) and tr.steps_in_flight == 1


def test_option_change_counts_the_step_in_flight_and_recaptures():
    tr = _static_trainer()
    tr.pipeline = True
    for _ in range(4):
        tr.step()
    before, old = tr.step_count, tr._static
    tr.model.config["n_coarse"] = 200  # what the GUI's sample slider does
    m = tr.step()
    assert not m.get("skipped") and tr._static is not old
    # The old graph's step in flight was counted, the new one reported, one more in flight.
    assert tr.step_count == before + 2 and tr.steps_in_flight == 1


def test_eager_step_after_pipelined_ones_counts_the_step_in_flight_first():
    # A fault hook (or a fed batch) sends the next step down the eager path: the graphed
    # step still in flight is counted before it, and its float learning rates come back.
    tr = _static_trainer()
    tr.pipeline = True
    for _ in range(3):
        tr.step()
    before = tr.step_count
    assert tr.steps_in_flight == 1
    tr.fault_hook = lambda trainer: None
    m = tr.step()
    assert not m.get("skipped") and tr.step_count == before + 2
    assert tr._static is None and tr.steps_in_flight == 0
    assert all(isinstance(g["lr"], float) for g in tr.optimizer.param_groups)


@pytest.mark.parametrize("where", ["launch", "collect"])
def test_static_step_failure_falls_back_to_the_eager_step(monkeypatch, where):
    # launch: a capture failure; collect: an asynchronous CUDA error surfacing at the sync.
    from app.engine import graph_step

    def boom(self, *args):
        raise RuntimeError("operation not permitted when stream is capturing")
    monkeypatch.setattr(graph_step.StaticStep, where, boom)
    tr = _static_trainer()
    m = tr.step()
    assert not m.get("skipped") and tr.step_count == 1 and np.isfinite(m["loss"])
    assert len(tr.events) == 1 and "CUDA-graph step unavailable" in tr.events[0]
    assert "eager" in tr.events[0]
    tr.step()
    assert tr._static is None and len(tr.events) == 1  # not retried


def test_checkpoint_of_a_graphed_optimiser_loads_anywhere(tmp_path):
    from app.engine.checkpoint import save_checkpoint, trainer_from_checkpoint
    tr = _static_trainer()
    for _ in range(4):
        tr.step()
    # What a CUDA run's groups look like: tensor lr, capturable.
    for g in tr.optimizer.param_groups:
        g["lr"] = torch.tensor(float(g["lr"]))
        g["capturable"] = True
    path = str(tmp_path / "ck.safetensors")
    save_checkpoint(path, tr)
    tr2 = trainer_from_checkpoint(path, tr.scene, device="cpu")
    g = tr2.optimizer.param_groups[0]
    assert isinstance(g["lr"], float) and g["capturable"] is False
    tr2.step()


@needs_triton
def test_triton_static_march_matches_torch_in_interpreter():
    code = textwrap.dedent("""
        import torch
        from renderer import occupancy as oc
        from renderer.kernels.march import march_rays_triton_static
        from tests.test_graph_step import _march_inputs
        o, d, s0, s1, occ, j, dt = _march_inputs()
        for cap in (900, 100000):
            a = oc.march_rays_static(o, d, s0, s1, occ, 1.5, 16, dt, 300, j, cap)  # torch path
            b = march_rays_triton_static(o, d, s0, s1, occ, 1.5, 16, dt, 300, j, cap)
            for k in a:
                assert torch.equal(a[k], b[k]), k
        print("OK")
    """)
    run_in_triton_interpreter(code, kernels="torch")


def _fused_static_trainer():
    """A CPU trainer with the fused Adam of CUDA runs, so that the step goes through the
    same found_inf and tensor-lr path as the graphed step (minus the capture)."""
    tr = _static_trainer()
    groups = tr.model.param_groups(tr.config.lr)
    for g in groups:
        g["initial_lr"] = g["lr"]
    tr.optimizer = torch.optim.Adam(groups, fused=True)
    return tr


def test_fused_static_step_skips_a_non_finite_step_inside_the_optimiser(monkeypatch):
    tr = _fused_static_trainer()
    for _ in range(3):
        tr.step()
    assert tr._static.fused and torch.is_tensor(tr.optimizer.param_groups[0]["lr"])
    before = [p.detach().clone() for p in tr.model.parameters()]
    state_steps = [s["step"].item() for s in tr.optimizer.state.values()]
    real = tr.model.loss_terms
    monkeypatch.setattr(tr.model, "loss_terms", lambda out, t: {"mse": real(out, t)["mse"] * float("nan")})
    m = tr.step()
    assert m["skipped"] and "non-finite" in m["event"] and tr.step_count == 3
    assert all(torch.equal(a, b) for a, b in zip(before, tr.model.parameters()))
    assert [s["step"].item() for s in tr.optimizer.state.values()] == state_steps
    monkeypatch.setattr(tr.model, "loss_terms", real)
    m = tr.step()
    assert not m.get("skipped") and tr.step_count == 4
    assert not all(torch.equal(a, b) for a, b in zip(before, tr.model.parameters()))
    # The learning rate follows the schedule through the tensors.
    assert tr.optimizer.param_groups[0]["lr"].item() == pytest.approx(tr.lr_at(3), rel=1e-6)


def test_changing_the_sample_count_recaptures():
    """The GUI's sample slider changes the marching step in place: the captured step
    bakes it in, so the trainer must build a new one."""
    tr = _static_trainer()
    tr.step()
    first = tr._static
    tr.step()
    assert tr._static is first
    tr.model.set_samples(n_coarse=48)
    tr.step()
    assert tr._static is not first and tr._static.signature != first.signature
    assert first.graph is None and not torch.is_tensor(tr.optimizer.param_groups[0]["lr"])



def test_control_flow_exceptions_pass_through_and_the_graph_is_rebuilt(monkeypatch):
    """The GUI worker stops or preempts a step by raising from a forward hook; that must
    reach the worker (not count as a capture failure) and the next step builds a new graph."""
    class Preempted(Exception):
        pass

    tr = _static_trainer()
    tr.step()
    first = tr._static
    handle = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda mod, args: (_ for _ in ()).throw(Preempted()))
    try:
        with pytest.raises(Preempted):
            tr.step()
    finally:
        handle.remove()
    assert tr._static is None and not tr._static_failed and tr.events == []
    tr.step()
    assert tr._static is not None and tr._static is not first and tr.step_count == 2


def test_fed_trainer_uses_the_static_step_only_without_a_feed():
    from app.gui.training import _fed_trainer_class
    cfg = TrainConfig(model="hash", model_options=dict(TINY), batch_rays=128, device="cpu", cuda_graph=True)
    tr = _fed_trainer_class()(make_sphere_scene(n_views=8), cfg)
    tr.static_on_cpu = True
    tr.step()
    assert tr._static is not None and tr.events == []
    tr.feed = tr.sample_batch(128)
    assert not tr._use_static()
    m = tr.step()  # eager, on the fed rays; the graphed step is released first
    assert tr._static is None and not hasattr(tr.optimizer, "found_inf")
    tr.feed = None
    assert not m.get("skipped") and tr._use_static()


def test_an_eager_step_in_between_releases_the_fused_optimiser_state():
    tr = _fused_static_trainer()
    tr.step()
    assert torch.is_tensor(tr.optimizer.param_groups[0]["lr"]) and hasattr(tr.optimizer, "found_inf")
    tr.fault_hook = lambda t: None
    m = tr.step()
    assert not m.get("skipped") and tr._static is None
    assert isinstance(tr.optimizer.param_groups[0]["lr"], float) and not hasattr(tr.optimizer, "found_inf")
    tr.fault_hook = None
    tr.step()
    assert torch.is_tensor(tr.optimizer.param_groups[0]["lr"])
    assert tr.optimizer.param_groups[0]["lr"].item() == pytest.approx(tr.lr_at(2), rel=1e-6)


def test_compaction_drops_only_samples_behind_terminated_transmittance():
    m = _dense_field_model()
    m.config["compact"] = False
    o, d = _rays(40, seed=11)
    active = torch.ones(40, dtype=torch.bool)
    torch.manual_seed(4)
    full = m.render_rays_static(o, d, 2.0, 6.0, 1.0, active, capacity=1 << 16)
    m.config.update(compact=True, min_transmittance=1e-4)
    torch.manual_seed(4)
    cmp = m.render_rays_static(o, d, 2.0, 6.0, 1.0, active, capacity=1 << 16)
    assert cmp["kept"].item() < 0.8 * full["kept"].item()  # the dense field ends rays early
    assert (cmp["valid"] == 1).all()
    # What was left out carried transmittance < 1e-4, so at most that much colour per ray.
    assert (cmp["rgb"] - full["rgb"]).abs().max() < 2e-4
    # The batch rule sees the compacted demand: here everything fitted, so the samples kept.
    assert abs(cmp["marched"].item() - cmp["kept"].item()) < 1e-3
    torch.manual_seed(4)
    eager = m.render_rays(o, d, 2.0, 6.0, background=1.0, train=True)
    assert eager["samples"].item() == cmp["kept"].item()
    assert torch.allclose(eager["rgb"], cmp["rgb"], atol=1e-5)


def test_compacted_static_trainer_learns_and_fills_the_budget_with_more_rays():
    tr = _static_trainer()
    assert tr.model.config["compact"] is None and not tr.model._compacting(torch.zeros(1))  # CPU default
    tr.model.config["compact"] = True
    losses = [tr.step()["loss"] for _ in range(70)]
    assert tr._static is not None and tr.step_count == 70
    assert np.mean(losses[-5:]) < 0.2 * np.mean(losses[:5])
    rays, kept = tr.model._last_batch
    budget = TINY["sample_budget"]
    assert 0.6 * budget < kept <= budget
    plain = _static_trainer()
    plain.model.config["compact"] = False
    for _ in range(70):
        plain.step()
    assert rays > plain.model._last_batch[0]  # same budget, more rays: samples behind surfaces went
    assert tr.events == []


def test_compact_option_is_checked():
    with pytest.raises(ValueError, match="compact"):
        HashGridModel(**{**TINY, "compact": "yes"})
    with pytest.raises(ValueError, match="march_factor"):
        HashGridModel(**{**TINY, "march_factor": 0})
    assert HashGridModel(**{**TINY, "compact": True})._compacting(torch.zeros(1))
