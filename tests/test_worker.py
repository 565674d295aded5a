"""The GUI's background worker, driven without any GUI: threads, queues, rebuilds, errors."""
import json
import sys
import time
import types

import numpy as np
import pytest
import torch

from app.gui.channels import Outbox
from app.gui.probes import ray_through_pixel
from app.gui.render_schedule import level_sizes
from app.gui.settings import Settings, default_settings, field_label, model_options
from app.gui.training import Fields
from app.gui.worker import Worker, coalesce, measure_camera_latency
from app.gui.orbit import OrbitCamera
from renderer.rays import get_rays, intrinsics
from tests.conftest import WORKER_SETTINGS, make_sphere_scene

TINY = WORKER_SETTINGS
WAIT = 60.0  # generous: the CPU is shared; tests wait for events, they never time them


def camera(az=30.0):
    cam = OrbitCamera(radius=4.0, azimuth=az, elevation=30.0)
    return cam.c2w(), 40.0


def notes_until(w, pred, timeout=WAIT):
    """Collect notes until one satisfies pred; returns all seen (fails on timeout)."""
    seen = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        seen += w.drain_notes()
        if any(pred(n) for n in seen):
            return seen
        time.sleep(0.01)
    pytest.fail(f"expected note not seen; got {seen}")


def steps_after(w, n, timeout=WAIT):
    s = w.wait_status(lambda s: s["step"] >= n, timeout)
    assert s is not None, f"training did not reach step {n}: {w.status()}"
    return s


# -- pure helpers --------------------------------------------------------------------------------
def test_level_sizes():
    assert level_sizes(128, 128) == [(16, 16), (32, 32), (64, 64), (128, 128)]
    assert level_sizes(16, 16) == [(16, 16)]
    assert level_sizes(100, 200, 0.5) == [(16, 32), (25, 50), (50, 100)]
    assert level_sizes(800, 800) == [(100, 100), (200, 200), (400, 400), (800, 800)]


def test_ray_through_pixel_matches_renderer():
    c2w, _ = camera(77.0)
    h, w, f = 12, 20, 15.0
    o_ref, d_ref = get_rays(h, w, intrinsics(w, h, f), torch.from_numpy(c2w))
    j, i = 5, 13  # pixel centre (i + 0.5, j + 0.5)
    o, d = ray_through_pixel(c2w, (i + 0.5) / w, (j + 0.5) / h, w, h, f)
    np.testing.assert_allclose(o, o_ref[j, i].numpy(), atol=1e-5)
    np.testing.assert_allclose(d, d_ref[j, i].numpy(), atol=1e-5)


def test_model_options_variants():
    s = dict(TINY, pe=True, compare=True, compare_b="pe_off", L_xyz_b=2)
    a, b = model_options(s, "A"), model_options(s, "B")
    assert a["pos_encoding"] == "pe" and a["L_xyz"] == 4 and a["width"] == 32
    assert b["pos_encoding"] == "none"
    assert model_options(dict(s, compare_b="L"), "B")["L_xyz"] == 2
    assert field_label(s, "B") == "no PE (raw xyz)"
    assert model_options(dict(s, model="hash"), "A") == {}


def test_coalesce_merges_settings_runs_and_keeps_the_newest_camera():
    cmds = [("camera", {"version": 1}), ("settings", {"L_xyz": 3}), ("settings", {"L_xyz": 5, "pe": False}),
            ("save", {"path": "a"}), ("settings", {"n_fine": 2}), ("camera", {"version": 2})]
    ordered, cam = coalesce(cmds)
    assert ordered == [("settings", {"L_xyz": 5, "pe": False}), ("save", {"path": "a"}), ("settings", {"n_fine": 2})]
    assert cam == {"version": 2}
    assert coalesce([]) == ([], None)


# -- the thread ----------------------------------------------------------------------------------------
def test_trains_streams_metrics_and_progressive_frames(worker):
    c2w, fov = camera()
    v = worker.set_camera(c2w, fov, moving=False)
    f0 = worker.wait_frame(lambda f: f.version >= v, WAIT)
    assert f0 is not None and f0.level == 0
    final = worker.wait_frame(lambda f: f.version >= v and f.final, WAIT)
    assert final is not None and final.size == (16, 16) and final.n_levels == 1
    img = final.images[0]
    assert img["rgb"].shape == (16, 16, 3) and img["depth"].shape == (16, 16) and img["acc"].shape == (16, 16)
    assert img["rgb"].dtype == np.float32
    steps_after(worker, 5)
    ms = worker.drain_metrics()
    assert len(ms) >= 3 and all(np.isfinite(m["psnr"]) and m["loss"] > 0 for m in ms)
    assert [m["step"] for m in ms] == sorted(m["step"] for m in ms)
    st = worker.status()
    assert st["state"] == "training" and st["device"].startswith("cpu") and st["torch_threads"] == 1


def test_progressive_levels_on_larger_render(worker):
    worker.send("settings", res_scale=4.0)  # 64 x 64: levels 16, 32, 64
    c2w, fov = camera(50.0)
    v = worker.set_camera(c2w, fov, moving=True)
    low = worker.wait_frame(lambda f: f.version >= v, WAIT)
    assert low.size == (16, 16) and low.n_levels == 3
    v2 = worker.set_camera(c2w, fov, moving=False)  # mouse released: refine
    seen = set()
    f = worker.wait_frame(lambda f: f.version >= v2 and (seen.add(f.level) or f.final), WAIT)
    assert f is not None and f.size == (64, 64)


def test_change_L_rebuilds_with_note(worker):
    steps_after(worker, 3)
    run = worker.status()["run_id"]
    worker.send("settings", L_xyz=2)
    notes = notes_until(worker, lambda n: "rebuilt model" in n[1])
    note = [n for n in notes if "rebuilt model" in n[1]][0]
    assert note[0] == "info" and "L_xyz 4 -> 2" in note[1] and "step 0" in note[1]
    st = worker.status()
    assert st["run_id"] == run + 1 and st["model_config"]["L_xyz"] == 2
    assert worker.run_sync(lambda w: w.trainers[0].model.config["L_xyz"]) == 2


def test_change_samples_applies_without_rebuild(worker):
    steps_after(worker, 3)
    run = worker.status()["run_id"]
    model_before = worker.run_sync(lambda w: id(w.trainers[0].model))
    worker.send("settings", n_coarse=4, n_fine=2)
    notes = notes_until(worker, lambda n: "no rebuild" in n[1])
    assert not any("rebuilt" in n[1] for n in notes)
    assert worker.status()["run_id"] == run
    cfg = worker.run_sync(lambda w: (id(w.trainers[0].model), dict(w.trainers[0].model.config)))
    assert cfg[0] == model_before and cfg[1]["n_coarse"] == 4 and cfg[1]["n_fine"] == 2
    s0 = worker.status()["step"]
    steps_after(worker, s0 + 2)  # and it keeps training with the new counts


def test_invalid_setting_keeps_running_model(worker):
    steps_after(worker, 2)
    worker.send("settings", L_xyz=99)  # NeRFModel refuses L > 24
    notes = notes_until(worker, lambda n: n[0] == "error")
    assert any("L_xyz" in n[1] for n in notes if n[0] == "error")
    assert worker.status()["settings"]["L_xyz"] == 4
    worker.send("train")
    s0 = worker.status()["step"]
    steps_after(worker, s0 + 2)


def test_pause_and_resume(worker):
    steps_after(worker, 2)
    worker.send("pause")
    assert worker.wait_status(lambda s: s["state"] == "paused", WAIT)
    worker.run_sync(lambda w: None)  # the pause has been processed once this returns
    s0 = worker.status()["step"]
    time.sleep(0.3)
    assert worker.status()["step"] == s0
    worker.send("train")
    steps_after(worker, s0 + 2)


def test_worker_exception_is_reported_not_fatal(worker):
    steps_after(worker, 2)

    def boom(trainer):
        raise RuntimeError("injected failure")

    worker.call(lambda w: setattr(w.trainers[0], "fault_hook", boom))
    notes = notes_until(worker, lambda n: n[0] == "error")
    assert any("injected failure" in n[1] and "paused" in n[1] for n in notes)
    st = worker.wait_status(lambda s: s["state"] == "paused", WAIT)
    assert st is not None and "injected failure" in st["error"]
    assert worker.alive
    # The thread still serves commands: clear the fault, resume, steps advance, error clears.
    worker.call(lambda w: setattr(w.trainers[0], "fault_hook", None))
    s0 = worker.status()["step"]
    worker.send("train")
    st = steps_after(worker, s0 + 2)
    assert st["error"] is None


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_bug_on_the_worker_thread_is_not_swallowed():
    """Only expected failures pause training with a note; a programming error ends the
    thread with its traceback, and the status says so (state 'crashed')."""
    w = Worker(scene=make_sphere_scene(), settings=dict(TINY), device="cpu", threads=1).start()
    try:
        steps_after(w, 1)

        def bug(trainer):
            raise AttributeError("'NoneType' object has no attribute 'shape' (injected)")

        w.call(lambda w_: setattr(w_.trainers[0], "fault_hook", bug))
        st = w.wait_status(lambda s: s["state"] == "crashed", WAIT)
        assert st is not None and "AttributeError" in st["error"] and "crashed" in st["error"]
        assert w.join(5.0)
    finally:
        w.stop(1.0)


def test_snapshot_without_a_config_is_refused(worker, tmp_path):
    from safetensors.torch import save_file
    path = str(tmp_path / "odd.safetensors")
    from app.engine.checkpoint import FORMAT, VERSION
    save_file({"x": torch.zeros(1)}, path, metadata={"nerflab": json.dumps({"format": FORMAT, "version": VERSION})})
    steps_after(worker, 1)
    worker.send("load", path=path)
    notes = notes_until(worker, lambda n: n[0] == "error")
    assert any("no training config" in n[1] for n in notes) and worker.alive


def test_trainer_recovery_events_reach_the_gui(worker):
    steps_after(worker, 1)
    fired = []

    def oom_once(trainer):
        if not fired:
            fired.append(1)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    worker.call(lambda w: setattr(w.trainers[0], "fault_hook", oom_once))
    notes = notes_until(worker, lambda n: "out of memory" in n[1])
    assert [n for n in notes if "out of memory" in n[1]][0][0] == "warn"
    s0 = worker.status()["step"]
    steps_after(worker, s0 + 2)
    assert worker.status()["error"] is None


def test_bad_data_is_reported(tmp_path):
    w = Worker(data=str(tmp_path / "missing"), device="cpu", threads=1).start()
    try:
        st = w.wait_status(lambda s: s["state"] == "error", WAIT)
        assert st is not None and "missing" in st["error"]
        assert w.alive
        w.send("train")  # ignored with a warning, not a crash
        notes_until(w, lambda n: "no scene loaded" in n[1])
        assert w.alive
    finally:
        assert w.stop(2.0)


def test_stop_within_one_second():
    w = Worker(scene=make_sphere_scene(), settings=dict(TINY), device="cpu", threads=1).start()
    steps_after(w, 2)
    c2w, fov = camera()
    w.set_camera(c2w, fov)
    assert w.stop(timeout=1.0), "worker thread still alive 1 s after stop()"
    assert w.status()["state"] == "stopped"


def test_compare_mode_trains_two_fields_on_the_same_batch(worker):
    steps_after(worker, 1)
    worker.send("settings", compare=True, compare_b="pe_off")
    notes_until(worker, lambda n: "compare mode" in n[1])
    assert worker.status()["labels"] == ["PE L=4", "no PE (raw xyz)"]

    def record(w):
        w.seen = [[], []]
        for i, t in enumerate(w.trainers):
            orig = t.model.render_rays

            def rr(o, d, *a, _orig=orig, _i=i, **k):
                if k.get("train"):
                    w.seen[_i].append(torch.cat([o, d], -1).clone())
                return _orig(o, d, *a, **k)
            t.model.render_rays = rr
        return [t.model.config["pos_encoding"] for t in w.trainers]

    assert worker.run_sync(record) == ["pe", "none"]
    s0 = worker.status()["step"]
    steps_after(worker, s0 + 3)
    seen = worker.run_sync(lambda w: [list(x) for x in w.seen])
    n = min(len(seen[0]), len(seen[1]))
    assert n >= 2
    for a, b in zip(seen[0][:n], seen[1][:n]):
        assert torch.equal(a, b)
    ms = worker.drain_metrics()
    assert any("psnr_b" in m for m in ms)
    c2w, fov = camera()
    v = worker.set_camera(c2w, fov)
    f = worker.wait_frame(lambda f: f.version >= v, WAIT)
    assert len(f.images) == 2 and f.labels == ["PE L=4", "no PE (raw xyz)"]


def test_weights_under_cursor(worker):
    c2w, fov = camera()
    v = worker.set_camera(c2w, fov)
    worker.wait_frame(lambda f: f.version >= v, WAIT)
    worker.send("probe", index=0, u=0.5, v=0.5)
    p = worker.probes.wait(lambda p: True, WAIT)
    assert p["t_coarse"].shape == (8,) and p["w_coarse"].shape == (8,)
    # The fine pass evaluates the coarse depths plus n_fine importance samples.
    assert p["t_fine"].shape == (16,) and p["w_fine"].shape == (16,)
    assert np.all(np.diff(p["t_coarse"]) >= 0) and 2.0 <= p["t_coarse"][0] and p["t_coarse"][-1] <= 6.0
    assert p["w_coarse"].sum() <= 1 + 1e-5


def test_snapshot_save_and_load_restores_other_architecture(worker, tmp_path):
    steps_after(worker, 3)
    path = str(tmp_path / "snap.safetensors")
    worker.send("save", path=path)
    notes_until(worker, lambda n: "snapshot saved" in n[1])
    worker.send("settings", L_xyz=2)
    notes_until(worker, lambda n: "rebuilt model" in n[1])
    worker.send("load", path=path)
    notes = notes_until(worker, lambda n: "snapshot loaded" in n[1])
    assert any("rebuilt to the snapshot's settings" in n[1] for n in notes)
    st = worker.status()
    assert st["settings"]["L_xyz"] == 4 and st["step"] >= 3
    worker.send("load", path=str(tmp_path / "nope.safetensors"))
    notes = notes_until(worker, lambda n: n[0] == "error")
    assert any("nope.safetensors" in n[1] for n in notes)
    assert worker.alive


def test_inerf_demo_plumbing(worker, monkeypatch):
    """With a stand-in InvertPose (the real one is built elsewhere) the worker steps it,
    shows target | estimate frames and restores training afterwards."""
    class FakeInvert:
        def __init__(self, trainer, target_image, init_c2w, camera=None):
            assert target_image.shape == (16, 16, 3) and init_c2w.shape == (4, 4)
            assert len(camera) == 1 and int(camera.width[0]) == 16  # the view's own camera
            self.c2w = np.array(init_c2w, dtype=np.float64)
            self.n = 0

        def step(self):
            self.n += 1
            return {"c2w": self.c2w, "loss": 1.0 / self.n}

    import app.tools.inerf as real

    monkeypatch.setitem(sys.modules, "app.tools.inerf", types.SimpleNamespace(
        InvertPose=FakeInvert, perturb_pose=real.perturb_pose, rotation_error_deg=real.rotation_error_deg))
    steps_after(worker, 1)
    worker.send("inerf_start", view=0, steps=12)
    f = worker.wait_frame(lambda f: f.kind == "inerf" and f.info.get("step", 0) >= 10, WAIT)
    assert f is not None and len(f.images) == 2 and f.info["rot_err_deg"] == pytest.approx(10.0, abs=1e-3)
    notes_until(worker, lambda n: "iNeRF done after 12 steps" in n[1])
    assert worker.wait_status(lambda s: s["state"] == "training", WAIT)


def test_camera_latency_measurement(worker):
    cams = [camera(a)[0] for a in (0, 90, 180)]
    lat = measure_camera_latency(worker, cams, 40.0, timeout=WAIT)
    assert len(lat) == 3 and all(x > 0 for x in lat)


def test_load_run_directory_brings_history(worker, tmp_path):
    steps_after(worker, 4)
    worker.send("pause")
    run = tmp_path / "run"
    run.mkdir()
    worker.send("save", path=str(run / "checkpoint.safetensors"))
    notes_until(worker, lambda n: "snapshot saved" in n[1])
    saved_step = worker.run_sync(lambda w: w.trainers[0].step_count)
    with open(run / "metrics.jsonl", "w") as f:
        for k in (1, 2, 3, saved_step + 50):  # the last is beyond the checkpoint: not shown
            f.write(json.dumps({"step": k, "loss": 0.1 / k, "psnr": 10.0 + k, "lr": 1e-3, "time": 0.1 * k}) + "\n")
        f.write('{"step": 4, "loss"')  # a torn line, as from a run still being written
    worker.send("train")
    steps_after(worker, saved_step + 2)
    worker.send("pause")
    worker.drain_metrics()
    worker.send("load", path=str(run))
    notes = notes_until(worker, lambda n: "snapshot loaded" in n[1])
    assert any("3 logged steps of history" in n[1] for n in notes)
    run_id = worker.status()["run_id"]
    hist = [m for m in worker.drain_metrics() if m["run_id"] == run_id]
    assert [m["step"] for m in hist] == [1, 2, 3] and hist[2]["psnr"] == 13.0
    assert worker.status()["step"] == saved_step


def test_same_camera_again_is_answered(worker):
    """Re-sending the pose on screen (a click without motion) still yields a frame for the new version."""
    c2w, fov = camera(10.0)
    v1 = worker.set_camera(c2w, fov, moving=True)
    worker.wait_frame(lambda f: f.version >= v1, WAIT)
    v2 = worker.set_camera(c2w, fov, moving=True)
    f = worker.wait_frame(lambda f: f.version >= v2, WAIT)
    assert f is not None and np.array_equal(f.c2w, c2w)


def test_stop_interrupts_a_long_step():
    """A step far longer than a second (huge batch) is aborted at the next forward pass."""
    w = Worker(scene=make_sphere_scene(), settings=dict(TINY), device="cpu", threads=1).start()
    steps_after(w, 1)
    started = []

    def slow(trainer):
        started.append(1)
        time.sleep(0.3)  # stands in for the forward pass of a large batch

    w.call(lambda w_: setattr(w_.trainers[0], "fault_hook", slow))
    w.send("settings", batch_rays=200_000)
    end = time.monotonic() + WAIT
    while not started and time.monotonic() < end:
        time.sleep(0.01)
    assert w.stop(timeout=1.0)
    assert w.status()["state"] == "stopped" and w.status()["error"] is None


def test_tool_hooks_run_on_the_worker_thread(worker, monkeypatch, tmp_path):
    """Export mesh / orbit video are called as their authors specify, on the worker thread,
    with their log lines routed into notes; a failing tool is an error note, not a crash."""
    import threading

    calls = []

    def export_mesh(trainer, path, res=256, log=print):
        calls.append(("mesh", threading.current_thread().name, path, res))
        log("threshold: 10 (default)")
        return {"vertices": 10, "faces": 12, "path": path}

    def render_orbit_video(trainer, path, frames=60):
        calls.append(("video", threading.current_thread().name, path, frames))
        if path.endswith(".bad"):
            raise ValueError(f"{path}: unsupported extension")
        return path

    monkeypatch.setitem(sys.modules, "app.tools.export", types.SimpleNamespace(export_mesh=export_mesh))
    monkeypatch.setitem(sys.modules, "app.tools.video", types.SimpleNamespace(render_orbit_video=render_orbit_video))
    steps_after(worker, 1)
    worker.send("export_mesh", path=str(tmp_path / "m.ply"))
    notes = notes_until(worker, lambda n: "mesh exported" in n[1])
    assert any(n[1] == "threshold: 10 (default)" for n in notes)
    assert any("vertices=10" in n[1] and "faces=12" in n[1] for n in notes)
    worker.send("video", path=str(tmp_path / "o.mp4"))
    notes_until(worker, lambda n: "orbit video written" in n[1])
    assert calls[0] == ("mesh", "nerf-worker", str(tmp_path / "m.ply"), 128)
    assert calls[1] == ("video", "nerf-worker", str(tmp_path / "o.mp4"), 60)
    worker.send("video", path=str(tmp_path / "o.bad"))
    notes = notes_until(worker, lambda n: n[0] == "error")
    assert any("unsupported extension" in n[1] for n in notes) and worker.alive


def test_gesture_preempts_a_long_training_step():
    """A camera from a gesture does not wait for a long step: the step is dropped (no
    update) and the first frame is rendered; training then goes on."""
    w = Worker(scene=make_sphere_scene(), settings=dict(TINY), device="cpu", threads=1).start()
    try:
        steps_after(w, 1)
        started = []

        def slow(trainer):
            started.append(1)
            time.sleep(0.2)

        w.call(lambda w_: setattr(w_.trainers[0], "fault_hook", slow))
        w.send("settings", batch_rays=300_000)  # seconds per step on a CPU
        end = time.monotonic() + WAIT
        while not started and time.monotonic() < end:
            time.sleep(0.01)
        step0 = w.status()["step"]
        c2w, fov = camera(123.0)
        v = w.set_camera(c2w, fov, moving=True)
        f = w.wait_frame(lambda f: f.version >= v, WAIT)
        assert f is not None and w.preempted_steps >= 1
        assert w.status()["step"] == step0  # the dropped step made no update
        w.call(lambda w_: setattr(w_.trainers[0], "fault_hook", None))
        w.send("settings", batch_rays=128)
        steps_after(w, step0 + 2)
    finally:
        assert w.stop(5.0)


def bound_settings(values, device="cpu", out=None, on_new_view=lambda: None):
    """The worker's Settings part alone, on the sphere scene (no thread)."""
    out = out or Outbox()
    s = Settings(out, Fields(out, abort=None), on_new_view)
    s.bind(make_sphere_scene(), torch.device(device))
    s.values = values
    return s


def test_bf16_setting_reaches_only_the_nerf_trainer():
    s = bound_settings({**default_settings(False), **TINY, "bf16": True})
    assert s.config("A").autocast is True
    # Grid models keep fp32 on a CPU; the hash model takes bf16 on CUDA only (its graphed step).
    for kind in ("plenoxels", "hash"):
        s.values = {**s.values, "model": kind}
        assert s.config("A").autocast is False
    assert s.config("A").cuda_graph is True  # ignored by a CPU trainer
    s.device = torch.device("cuda")
    assert s.config("A").autocast is True
    s.values = {**s.values, "model": "plenoxels"}
    assert s.config("A").autocast is False and s.config("A").cuda_graph is False
    s.device = torch.device("cpu")
    s.values = {**s.values, "model": "nerf", "bf16": False}
    assert s.config("A").autocast is False


def test_gui_nerf_gets_the_occupancy_grid_except_on_ndc_scenes():
    s = bound_settings({**default_settings(False), **TINY})
    opts = s.config("A").model_options
    assert opts["occupancy_res"] == 64 and opts["occupancy_bound"] == 1.5
    s.values["occupancy"] = False
    assert "occupancy_res" not in s.config("A").model_options
    s.values["occupancy"] = True
    s.scene.ndc = True  # forward-facing (LLFF) scenes live in NDC, not in the object cube
    assert "occupancy_res" not in s.config("A").model_options


def test_hash_on_a_cpu_warns_that_it_is_built_for_cuda():
    out = Outbox()
    s = bound_settings({**default_settings(False), **TINY, "model": "hash"}, out=out)
    s.build("start")
    notes = worker_notes(out)
    assert any(level == "warn" and "built for CUDA" in msg for level, msg in notes)
    s.values["model"] = "nerf"
    s.build("start")
    assert not any("built for CUDA" in msg for _, msg in worker_notes(out))


def worker_notes(out):
    from app.gui.channels import drain
    return drain(out.notes)


def test_default_settings_come_from_the_registry():
    """The sample and L defaults are the first registered PE model's (its CPU / CUDA preset),
    the batch size is each model's policy (None until the user sets one); nothing in the
    GUI names a model."""
    import models
    from models.nerf_presets import PRESETS
    for cuda, preset in ((False, "cpu"), (True, "paper")):
        s = default_settings(cuda)
        assert s["model"] == models.default_model(cuda)
        assert (s["n_coarse"], s["n_fine"]) == (PRESETS[preset]["n_coarse"], PRESETS[preset]["n_fine"])
        assert (s["pe"], s["L_xyz"], s["L_dir"]) == (True, 10, 4)
        assert s["batch_rays"] is None


def test_snapshot_settings_restore_the_widgets_of_a_pe_model_and_arch_of_others():
    from app.gui.settings import snapshot_settings
    s = {**default_settings(False), **TINY, "compare": True}
    nerf = {"model": "nerf", "model_options": {"pos_encoding": "none", "L_xyz": 6, "width": 48, "n_coarse": 16}}
    out = snapshot_settings(s, nerf)
    # Absent options are the model's defaults (what the snapshot's network was built with).
    assert (out["pe"], out["L_xyz"], out["L_dir"], out["n_coarse"], out["n_fine"]) == (False, 6, 4, 16, 128)
    assert out["arch"]["nerf"] == {"width": 48} and out["compare"] is False
    grid = snapshot_settings(s, {"model": "plenoxels", "model_options": {"resolution": 32, "n_coarse": 64}})
    assert grid["arch"]["plenoxels"] == {"resolution": 32, "n_coarse": 64} and grid["L_xyz"] == s["L_xyz"]


def test_compare_ends_with_a_model_that_has_no_pe_knob():
    out = Outbox()
    s = bound_settings({**default_settings(False), **TINY, "compare": True}, out=out)
    s.build("start")
    assert len(s.fields.trainers) == 2
    worker_notes(out)
    s.apply({"model": "plenoxels"})
    assert s.values["compare"] is False and len(s.fields.trainers) == 1
    assert any("model nerf -> plenoxels" in m and "compare mode off" in m for _, m in worker_notes(out))
    seq = out.status()["settings_seq"]
    s.apply({"compare": True})  # refused: nothing is rebuilt, the widgets are re-synced
    assert s.values["compare"] is False and len(s.fields.trainers) == 1
    assert out.status()["settings_seq"] == seq + 1 and not worker_notes(out)


def test_refused_sample_count_keeps_settings_and_resyncs_widgets():
    out = Outbox()
    s = bound_settings({**default_settings(False), **TINY}, out=out)
    s.build("start")
    seq = out.status()["settings_seq"]
    with pytest.raises(ValueError, match="n_coarse"):
        s.apply({"n_coarse": 1})
    assert s.values["n_coarse"] == TINY["n_coarse"]
    st = out.status()
    assert st["settings_seq"] == seq + 1 and st["settings"]["n_coarse"] == TINY["n_coarse"]
