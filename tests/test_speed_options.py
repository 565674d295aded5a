"""Speed options that must not change results: bf16 autocast on the CPU, torch.compile
plumbing (eager backend, so no C++ toolchain is needed), and the allocator setting."""
import ctypes
import math
import sys

import numpy as np
import pytest
import torch

from app.engine.allocator import keep_freed_memory
from app.engine.trainer import TrainConfig, Trainer
from models import build_model
from tests.conftest import TINY_NERF, make_sphere_scene


def _bf16_trainer(autocast: bool, **opts):
    cfg = TrainConfig(model="nerf", model_options={**TINY_NERF, **opts}, batch_rays=256, lr=5e-3,
                      lr_final=5e-4, lr_decay_steps=1000, seed=0, device="cpu", autocast=autocast)
    return Trainer(make_sphere_scene(), cfg)


def test_cpu_bf16_autocast_trains_and_keeps_fp32_weights():
    tr = _bf16_trainer(True, occupancy_res=16, occupancy_bound=1.5)
    seen = []
    # The field really runs in bf16 (autocast reaches the CPU), weights stay fp32.
    hook = tr.model.coarse.trunk[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    losses = [tr.step()["loss"] for _ in range(60)]
    hook.remove()
    assert torch.bfloat16 in seen
    assert all(p.dtype == torch.float32 for p in tr.model.parameters())
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10]), (losses[:10], losses[-10:])
    # The grid refresh ran under the step's precision and still marks the sphere occupied.
    assert 0 < int(tr.model.occupancy.sum()) < tr.model.occupancy.numel()


def test_cpu_bf16_render_close_to_fp32_render():
    tr = _bf16_trainer(True)
    for _ in range(30):
        tr.step()
    c2w = tr.scene.split("test").c2w[0]
    low = tr.render(c2w, 16, 16, keys=("rgb",))["rgb"]
    tr.config.autocast = False
    full = tr.render(c2w, 16, 16, keys=("rgb",))["rgb"]
    diff = np.abs(np.asarray(low, dtype=np.float64) - np.asarray(full, dtype=np.float64))
    # bf16 keeps 8 mantissa bits: colours agree to a few 1/256 steps, not bit for bit.
    assert diff.max() < 0.05 and diff.mean() < 0.01, (diff.max(), diff.mean())
    assert diff.max() > 0  # the first render really was in bf16


def test_compile_fields_keeps_outputs_and_state():
    torch.manual_seed(0)
    m = build_model("nerf", **TINY_NERF)
    rays_o = torch.tensor([[0.0, 0.0, 4.0]]).repeat(32, 1)
    rays_d = torch.nn.functional.normalize(torch.randn(32, 3) * 0.1 + torch.tensor([0.0, 0.0, -1.0]), dim=-1)
    with torch.no_grad():
        ref = m.render_rays(rays_o, rays_d, 2.0, 6.0)
    keys = list(m.state_dict())
    m.compile_fields(backend="eager")
    with torch.no_grad():
        out = m.render_rays(rays_o, rays_d, 2.0, 6.0)
    assert list(m.state_dict()) == keys  # checkpoints keep their layout
    torch.testing.assert_close(out["rgb"], ref["rgb"])
    torch.testing.assert_close(out["acc"], ref["acc"])


def test_compile_is_ignored_on_cpu_trainer():
    cfg = TrainConfig(model="nerf", model_options=dict(TINY_NERF), batch_rays=64, device="cpu", compile=True)
    tr = Trainer(make_sphere_scene(), cfg)
    assert "forward" not in vars(tr.model.coarse)  # not wrapped: CPU compile needs a toolchain
    assert math.isfinite(tr.step()["loss"])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is a glibc (Linux) call")
def test_keep_freed_memory_applies_once():
    try:
        assert callable(ctypes.CDLL("libc.so.6").mallopt)
    except (OSError, AttributeError):
        pytest.skip("no glibc mallopt here")
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True


def test_cpu_bf16_detection_reads_cpu_flags(monkeypatch, tmp_path):
    import builtins

    from app.engine import trainer as trainer_mod
    real_open = builtins.open

    def fake(flags):
        p = tmp_path / "cpuinfo"
        p.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 {flags}\n")
        return lambda path, *a, **k: real_open(p if path == "/proc/cpuinfo" else path, *a, **k)

    monkeypatch.setattr(builtins, "open", fake("avx2 avx512f avx512_bf16"))
    assert trainer_mod.cpu_has_native_bf16() is True
    monkeypatch.setattr(builtins, "open", fake("avx2 amx_bf16 amx_tile"))
    assert trainer_mod.cpu_has_native_bf16() is True
    monkeypatch.setattr(builtins, "open", fake("avx2 avx512f"))
    assert trainer_mod.cpu_has_native_bf16() is False


def test_gui_worker_uses_bf16_only_for_the_nerf_and_where_native(monkeypatch):
    from app.engine import trainer as trainer_mod
    from app.gui import settings as worker_mod
    monkeypatch.setattr(trainer_mod, "cpu_has_native_bf16", lambda: False)
    assert worker_mod.default_settings(cuda=False)["bf16"] is False
    monkeypatch.setattr(trainer_mod, "cpu_has_native_bf16", lambda: True)
    assert worker_mod.default_settings(cuda=False)["bf16"] is True
    assert worker_mod.default_settings(cuda=True)["bf16"] is True


@pytest.mark.parametrize("native", [True, False])
def test_cli_bf16_on_cpu_trains_and_warns_only_without_native_bf16(native, scene_dir, tmp_path, monkeypatch,
                                                                   capsys):
    from app.engine import trainer as trainer_mod
    from app.cli import main
    monkeypatch.setattr(trainer_mod, "cpu_has_native_bf16", lambda: native)
    out = tmp_path / "run"
    assert main(["train", "--data", scene_dir, "--out", str(out), "--steps", "3", "--device", "cpu",
                 "--bf16", "--width", "16", "--n-coarse", "4", "--n-fine", "4", "--batch", "32",
                 "--eval-images", "0"]) == 0
    text = capsys.readouterr().out
    assert ("emulated" in text) is (not native)
    import json
    assert json.load(open(out / "run.json"))["config"]["autocast"] is True
