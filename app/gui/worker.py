"""Background training worker for the GUI.

All torch work happens on one thread owned by ``Worker``; the GUI thread only
calls the thread-safe methods below and never waits on training:

    GUI -> worker   ``send(name, **kw)`` / ``set_camera(...)``: a queue of commands,
                    drained (and coalesced) between training steps and render chunks.
    worker -> GUI   ``latest_frame()`` (latest-value slot: the newest rendered level),
                    ``drain_metrics()`` (one dict per step), ``drain_notes()``
                    (info / warn / error lines), ``status()`` (snapshot dict),
                    ``latest_probe()`` (weights along the ray under the cursor).

Rendering is progressive: a camera change renders 1/8 resolution at once (before
the next training step); when the camera stops, 1/4, 1/2 and full follow,
interleaved with training, each level published as it completes. Rendering runs
in chunks of rays sized to ~50 ms so a new camera or a stop request never waits
for a whole image.

Any exception on the worker thread is caught, reported as an error note and in
``status()['error']``, and training pauses; the thread itself keeps serving
commands until ``stop()``.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import queue
import threading
import time
import traceback
from dataclasses import dataclass, field

import numpy as np

LEVEL_DIVISORS = (8, 4, 2, 1)
MIN_LEVEL_SIZE = 16  # pixels: a 1/8 level of a small render would be unreadably tiny
CHUNK_SECONDS = 0.05  # target duration of one render chunk (bounds stop / camera latency)
REBUILD_KEYS = ("model", "pe", "L_xyz", "L_dir")  # changing these needs a new network
SAMPLE_KEYS = ("n_coarse", "n_fine")  # applied in place with model.set_samples
COMPARE_KEYS = ("compare", "compare_b", "L_xyz_b")


# -- pure helpers (tested without threads) -------------------------------------------------
def level_sizes(height: int, width: int, scale: float = 1.0) -> list[tuple[int, int]]:
    """Progressive render sizes [(h, w), ...], coarse to full, for a (height*scale, width*scale) view.

    Each level is full / 8, 4, 2, 1 with its shorter side at least MIN_LEVEL_SIZE (or the full
    size if that is smaller); duplicates are dropped so small renders have fewer levels.
    """
    fh, fw = max(1, round(height * scale)), max(1, round(width * scale))
    sizes: list[tuple[int, int]] = []
    for d in LEVEL_DIVISORS:
        k = max(1.0 / d, min(1.0, MIN_LEVEL_SIZE / min(fh, fw)))
        s = (max(1, round(fh * k)), max(1, round(fw * k)))
        if not sizes or s != sizes[-1]:
            sizes.append(s)
    return sizes


def default_settings(cuda: bool) -> dict:
    """GUI defaults: the registry's default model for this device, with its policy's
    precision and the NeRF knobs (PE, L, samples) for the models that read them."""
    import models
    from models.nerf_presets import PRESETS

    from app.engine.trainer import cpu_has_native_bf16

    preset = "paper" if cuda else "cpu"
    return dict(model=models.default_model(cuda), preset=preset, pe=True, L_xyz=10, L_dir=4,
                bf16=cuda or cpu_has_native_bf16(),
                # NeRF occupancy grid over [-1.5, 1.5]^3 (the cube the hash model also assumes):
                # samples in empty cells are skipped from step 32 on (NeRFModel occupancy_warmup).
                occupancy=True,
                n_coarse=PRESETS[preset]["n_coarse"], n_fine=PRESETS[preset]["n_fine"], res_scale=1.0,
                batch_rays=None, compare=False, compare_b="pe_off", L_xyz_b=4)


# Model options that the GUI's PE / L / sample widgets set (models with "pe" in GUI_KNOBS).
PE_KNOB_OPTIONS = ("pos_encoding", "L_xyz", "L_dir", "n_coarse", "n_fine")


def knobs(s: dict, variant: str = "A", ndc: bool = False) -> dict:
    """The user's knobs (models.field.KNOBS) from settings ``s``; variant 'B' is the compare
    partner (PE off, or L_xyz_b). s["arch"] maps a model name to options restored from a
    snapshot of that model."""
    pe, L = s["pe"], s["L_xyz"]
    if variant == "B":
        if s["compare_b"] == "pe_off":
            pe = False
        else:
            pe, L = True, s["L_xyz_b"]
    return dict(preset=s.get("preset"), arch=(s.get("arch") or {}).get(s["model"]), pos_encoding="pe" if pe else "none",
                L_xyz=int(L), L_dir=int(s["L_dir"]), n_coarse=int(s["n_coarse"]), n_fine=int(s["n_fine"]),
                occupancy=bool(s.get("occupancy")), ndc=ndc)


def model_options(s: dict, variant: str = "A", cuda: bool = False, ndc: bool = False) -> dict:
    """build_model options for settings ``s`` (see knobs)."""
    from app.engine.presets import model_options as build

    return build(s["model"], cuda, knobs(s, variant, ndc))


def field_label(s: dict, variant: str = "A") -> str:
    import models

    return models.model_class(s["model"]).describe(model_options(s, variant))


def available_models() -> list[str]:
    import models

    return models.available()


def ray_through_pixel(c2w: np.ndarray, u: float, v: float, width: int, height: int,
                      focal: float) -> tuple[np.ndarray, np.ndarray]:
    """World ray (origin (3,), direction (3,)) through image point (u, v) in [0,1]^2 (v down).

    Same convention as renderer.rays: camera looks down -Z, direction z = -1 (z-depth t).
    """
    px, py = u * width, v * height
    d_cam = np.array([(px - width / 2) / focal, -(py - height / 2) / focal, -1.0])
    m = np.asarray(c2w, dtype=np.float64)
    return m[:3, 3].copy(), m[:3, :3] @ d_cam


# -- thread plumbing -------------------------------------------------------------------------
class WorkerStopped(Exception):
    """Raised inside the worker's torch forward passes once stop() has been called."""


class _Preempted(Exception):
    """Raised inside a training step's forward pass when a user gesture wants a frame now."""


class Latest:
    """A latest-value slot: writers replace, readers see the newest (and can wait for one)."""

    def __init__(self):
        self._cv = threading.Condition()
        self._value = None
        self.seq = 0

    def put(self, value) -> None:
        with self._cv:
            self._value = value
            self.seq += 1
            self._cv.notify_all()

    def get(self):
        with self._cv:
            return self._value

    def wait(self, pred, timeout: float):
        """First value v (current or future) with pred(v) true, or None after timeout."""
        end = time.monotonic() + timeout
        with self._cv:
            while self._value is None or not pred(self._value):
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self._cv.wait(left)
            return self._value


@dataclass
class Frame:
    """One completed render level. images: per field dicts of numpy float32
    rgb (h, w, 3), depth (h, w), acc (h, w)."""

    images: list
    labels: list
    level: int
    n_levels: int
    size: tuple
    version: int
    c2w: np.ndarray
    fov: float
    step: int
    run_id: int
    kind: str = "view"
    render_s: float = 0.0
    ready_time: float = field(default_factory=time.perf_counter)
    info: dict = field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.level == self.n_levels - 1


class _RenderJob:
    """Progressive render of one camera for one or more models, advanced chunk by chunk."""

    def __init__(self, c2w, fov, version, sizes, first, last, kind="view", priority=False):
        self.c2w = np.asarray(c2w, dtype=np.float32)
        self.priority = priority  # a user gesture: its first level renders before anything else
        self.fov, self.version, self.sizes = float(fov), version, sizes
        self.level, self.last, self.kind = first, last, kind
        self.model_idx = 0
        self.pos = 0
        self.rays = None  # (rays_o, rays_d) on the device for the current level
        self.outs: list[dict] = []
        self.spent = 0.0

    @property
    def done(self) -> bool:
        return self.level > self.last


def _fed_trainer_class():
    from app.engine.trainer import Trainer

    class FedTrainer(Trainer):
        """Trainer.step with a batch supplied from outside: two fields see the same rays.
        OOM recovery halves batch_rays; slicing the fed batch keeps that working."""

        feed = None

        def sample_batch(self, n, generator="trainer"):
            if self.feed is not None:
                o, d, t = self.feed
                return o[:n], d[:n], t[:n]
            return super().sample_batch(n, generator=generator)

        def _use_static(self):
            # A captured step samples its own rays: it cannot take a fed batch.
            return self.feed is None and super()._use_static()

    return FedTrainer


class Worker:
    """Owns scene, trainer(s), renders and tools on one background thread.

    ``data`` is a scene directory (loaded on the worker thread) or ``scene`` an
    already-loaded Scene. ``settings`` overrides ``default_settings``.
    """

    def __init__(self, data: str | None = None, scene=None, settings: dict | None = None,
                 device: str = "auto", downscale: int = 1, train: bool = True,
                 threads: int | None = None, seed: int = 0, scene_options: dict | None = None):
        if data is None and scene is None:
            raise ValueError("Worker needs data (a scene directory) or scene")
        self.data, self._scene_in, self.device_name = data, scene, device
        self.downscale, self.seed = downscale, seed
        self.scene_options = dict(scene_options or {})  # load_scene's ndc, skip_missing
        self._settings_override = dict(settings or {})
        self.threads = threads
        self._commands: queue.Queue = queue.Queue()
        self._metrics: queue.Queue = queue.Queue()
        self._notes: queue.Queue = queue.Queue()
        self.frames = Latest()
        self.probes = Latest()
        self.scene_info = Latest()
        self._status_lock = threading.Lock()
        self._status = {"state": "starting", "device": "?", "step": 0, "steps_per_s": 0.0,
                        "error": None, "run_id": 0, "settings": {}, "settings_seq": 0,
                        "models": [], "labels": [], "render": "", "inerf": None}
        self._cam_lock = threading.Lock()
        self._cam_version = 0
        self._stop = threading.Event()
        self._want_train = train
        self._thread = threading.Thread(target=self._main, name="nerf-worker", daemon=True)
        # Worker-thread state (only touched on that thread).
        self.scene = None
        self.trainers: list = []
        self.settings: dict = {}
        self.training = False
        self._job: _RenderJob | None = None
        self._cam = None  # (c2w, fov, version, moving)
        self._max_level_seen = 0
        self._last_publish = 0.0
        self._refresh_every = 1.0
        self._rays_per_s = None
        self._step_s = 0.05
        self._run_id = 0
        self._events_seen: list[int] = []
        self._rate_t, self._rate_n = time.perf_counter(), 0
        self._inerf = None
        self._hook_handle = None
        self._preempt = threading.Event()  # set by set_camera(priority=True), cleared when taken
        self._in_step = False
        self.preempted_steps = 0

    # -- GUI-thread API -------------------------------------------------------------------
    def start(self) -> "Worker":
        self._thread.start()
        return self

    def send(self, name: str, **kw) -> None:
        self._commands.put((name, kw))

    def call(self, fn) -> None:
        """Run fn(worker) on the worker thread (tools and tests use this)."""
        self.send("call", fn=fn)

    def run_sync(self, fn, timeout: float = 30.0):
        """Run fn(worker) on the worker thread and return its result (raises its exception)."""
        done = threading.Event()
        box = {}

        def wrapped(w):
            try:
                box["value"] = fn(w)
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller
                box["error"] = exc
            finally:
                done.set()

        self.call(wrapped)
        if not done.wait(timeout):
            raise TimeoutError(f"worker did not run the call within {timeout} s")
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def set_camera(self, c2w, fov: float, moving: bool = False, priority: bool = True) -> int:
        """Ask for a render from c2w (4, 4) with horizontal fov (degrees); returns its version.

        moving: more poses follow soon (a drag, auto-orbit), so render only the lowest level.
        priority: that level goes before the next training step (user gestures); auto-orbit
        passes False so training keeps going between its frames.
        """
        with self._cam_lock:
            self._cam_version += 1
            v = self._cam_version
        if priority:
            self._preempt.set()  # before the send: the drain that takes the camera clears it
        self.send("camera", c2w=np.array(c2w, dtype=np.float32), fov=float(fov), moving=bool(moving),
                  version=v, priority=bool(priority))
        return v

    def stop(self, timeout: float = 1.0) -> bool:
        """Ask the thread to finish and wait up to ``timeout`` s; True if it has ended.

        Besides the flag checked between steps and render chunks, the worker's forward
        pre-hook aborts a training step or render in progress, so only a backward pass
        already running can delay the stop.
        """
        self._stop.set()
        self._commands.put(("wake", {}))
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _install_hook(self) -> None:
        """A forward pre-hook on every module, active only on this worker's thread: it ends
        a forward pass at once when stop() was called, or when a gesture's camera is waiting
        and the pass belongs to a single-field training step (the step is dropped whole:
        no update happens, the next step samples a fresh batch)."""
        import torch

        thread = self._thread

        def hook(module, args):
            if threading.current_thread() is thread:
                if self._stop.is_set():
                    raise WorkerStopped()
                if self._in_step and self._preempt.is_set():
                    raise _Preempted()

        self._hook_handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def latest_frame(self) -> Frame | None:
        return self.frames.get()

    def wait_frame(self, pred, timeout: float = 30.0) -> Frame | None:
        return self.frames.wait(pred, timeout)

    def latest_probe(self):
        return self.probes.get()

    def status(self) -> dict:
        with self._status_lock:
            return copy.copy(self._status)

    def wait_status(self, pred, timeout: float = 30.0) -> dict | None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            s = self.status()
            if pred(s):
                return s
            time.sleep(0.01)
        return None

    def drain_metrics(self) -> list[dict]:
        return _drain(self._metrics)

    def drain_notes(self) -> list[tuple[str, str]]:
        return _drain(self._notes)

    # -- worker thread: main loop -----------------------------------------------------------
    def _set_status(self, **kw) -> None:
        with self._status_lock:
            self._status.update(kw)

    def _note(self, level: str, text: str) -> None:
        self._notes.put((level, text))

    def _fail(self, exc: BaseException, where: str) -> None:
        if hasattr(exc, "path") and hasattr(exc, "problem"):
            msg = f"{where}: {exc}"  # DataError / CheckpointError already name the file
        else:
            msg = f"{where}: {type(exc).__name__}: {exc}"
            # Unexpected: keep the traceback for whoever runs the app from a terminal.
            traceback.print_exception(type(exc), exc, exc.__traceback__, limit=6)
        self.training = False
        self._inerf = None
        self._job = None
        self._note("error", msg + " (training paused)")
        self._set_status(error=msg)
        self._set_status(state=self._state())

    def _state(self) -> str:
        if self._inerf is not None:
            return "inerf"
        if not self.trainers:
            return "error" if self._status.get("error") else "loading"
        return "training" if self.training else "paused"

    def _main(self) -> None:
        try:
            self._setup_threads()
            self._load()
        except Exception as exc:  # noqa: BLE001 - bad data etc.: report, keep serving commands
            self._fail(exc, "loading scene")
        try:
            while not self._stop.is_set():
                try:
                    self._iteration()
                except WorkerStopped:
                    break
                except Exception as exc:  # noqa: BLE001 - any failure pauses training, never kills the thread
                    if self._stop.is_set():
                        break  # e.g. the abort hook fired inside a library that wrapped it
                    self._fail(exc, "worker")
        finally:
            if self._hook_handle is not None:
                self._hook_handle.remove()
            self._set_status(state="stopped")

    def _setup_threads(self) -> None:
        import torch

        n = self.threads or max(1, (os.cpu_count() or 2) - 1)
        # Leave a core to the GUI thread and the display thread (llvmpipe) on small machines.
        torch.set_num_threads(n)
        self._set_status(torch_threads=n)
        self._install_hook()

    def _load(self) -> None:
        from app.engine.trainer import pick_device
        from app.gui.orbit import scene_up

        self._set_status(state="loading")
        self.device = pick_device(self.device_name)
        cuda = self.device.type == "cuda"
        models = available_models()
        self.settings = {**default_settings(cuda), **self._settings_override}
        if self.settings["model"] not in models:
            fallback = default_settings(cuda)["model"]
            self._note("warn", f"model '{self.settings['model']}' is not registered; using {fallback}")
            self.settings["model"] = fallback
        self._set_status(device=str(self.device) + (f" ({torch_device_name(self.device)})" if cuda else ""),
                         models=models)
        if self._scene_in is not None:
            self.scene = self._scene_in
        else:
            from loaders import load_scene

            self.scene = load_scene(self.data, downscale=self.downscale, **self.scene_options)
            for n in self.scene.notes:
                self._note("info", n)
        tr = self.scene.split("train")
        test = self.scene.split("test") if "test" in self.scene.splits else tr
        self.scene_info.put(dict(train_c2w=tr.c2w.copy(), height=tr.height, width=tr.width,
                                 focal=tr.focal, near=self.scene.near, far=self.scene.far,
                                 radius=self.scene.scene_radius, up=scene_up(tr.c2w),
                                 fov=math.degrees(2 * math.atan(0.5 * tr.width / tr.focal)),
                                 n_test=len(test), source=self.scene.source))
        self._build("start")
        self.training = self._want_train
        n_params = sum(p.numel() for p in self.trainers[0].model.parameters())
        self._note("info", f"ready: {len(tr)} training views {tr.width}x{tr.height} from "
                           f"{os.path.basename(os.path.normpath(self.scene.source))}; "
                           f"{self.settings['model']} ({n_params / 1e6:.2f} M parameters) on {self.device}")
        self._set_status(state=self._state())

    # -- model (re)building ----------------------------------------------------------------
    def _config(self, variant: str):
        from app.engine.presets import train_config

        s = self.settings
        cuda = self.device.type == "cuda"
        opts = model_options(s, variant, cuda, ndc=self.scene.ndc)
        return train_config(s["model"], opts, cuda, interactive=True, lr=s.get("lr"),
                            batch_rays=s.get("batch_rays"), autocast=bool(s.get("bf16", False)),
                            seed=self.seed, device=str(self.device))

    def _build(self, reason: str) -> None:
        """Fresh trainer(s) from self.settings; on failure the old ones stay."""
        Fed = _fed_trainer_class()
        variants = ["A", "B"] if self.settings["compare"] else ["A"]
        new = [Fed(self.scene, self._config(v)) for v in variants]  # may raise: old trainers kept
        self.trainers = new
        self._events_seen = [0] * len(new)
        self._run_id += 1
        self._rate_t, self._rate_n = time.perf_counter(), 0
        n_params = sum(p.numel() for p in new[0].model.parameters())
        labels = [field_label(self.settings, v) for v in variants]
        self._set_status(run_id=self._run_id, step=0, steps_per_s=0.0, labels=labels,
                         settings=dict(self.settings), settings_seq=self._status["settings_seq"] + 1,
                         model_desc=f"{self.settings['model']} {n_params / 1e6:.2f} M params",
                         gui_knobs=list(type(new[0].model).GUI_KNOBS),
                         model_config=dict(new[0].model.config))
        if reason != "start":
            self._note("info", reason)
        note = new[0].policy.cpu_note
        if note and self.device.type != "cuda":
            self._note("warn", note)
        self._restart_render()

    def _apply_settings(self, changes: dict) -> None:
        s = self.settings
        changes = {k: v for k, v in changes.items() if k in s and s[k] != v}
        if not changes:
            return
        old = dict(s)
        s.update(changes)
        rebuild = [k for k in REBUILD_KEYS if k in changes]
        compare_change = [k for k in COMPARE_KEYS if k in changes]
        try:
            if rebuild or compare_change or "batch_rays" in changes and s["compare"]:
                what = ", ".join(f"{k} {old[k]} -> {s[k]}" for k in rebuild + compare_change)
                if compare_change and s["compare"]:
                    msg = (f"compare mode: A = {field_label(s, 'A')}, B = {field_label(s, 'B')}; both "
                           f"fields restart from step 0 and train on the same ray batches")
                elif compare_change:
                    msg = "compare mode off: single field restarts from step 0"
                else:
                    msg = f"rebuilt model ({what}): new network, training restarts at step 0"
                self._build(msg)
                return
        except Exception:
            self.settings = old  # invalid combination: keep the running model and settings
            self._set_status(settings=dict(old), settings_seq=self._status["settings_seq"] + 1)
            raise
        if any(k in changes for k in SAMPLE_KEYS):
            for t in self.trainers:
                t.model.set_samples(n_coarse=s["n_coarse"], n_fine=s["n_fine"])
            self._note("info", f"samples per ray: coarse {s['n_coarse']}, fine {s['n_fine']} "
                               f"(applied at once, no rebuild)")
        if "batch_rays" in changes:
            for t in self.trainers:
                t.batch_rays = int(s["batch_rays"])
        self._set_status(settings=dict(s), settings_seq=self._status["settings_seq"] + 1)
        if any(k in changes for k in SAMPLE_KEYS + ("res_scale",)):
            self._restart_render()

    # -- commands ---------------------------------------------------------------------------
    def _drain_commands(self, block: bool) -> None:
        cmds = []
        try:
            cmds.append(self._commands.get(timeout=0.05) if block else self._commands.get_nowait())
            while True:
                cmds.append(self._commands.get_nowait())
        except queue.Empty:
            pass
        cam = None
        settings: dict = {}
        for name, kw in cmds:
            if name == "camera":
                cam = kw  # only the newest camera matters
            elif name == "settings":
                settings.update(kw)  # slider drags coalesce into one rebuild
            else:
                if settings:  # keep ordering between settings and other commands
                    self._apply_settings(settings)
                    settings = {}
                self._command(name, kw)
        if settings:
            self._apply_settings(settings)
        if cam is not None:
            self._preempt.clear()  # taken: the render it asked for is scheduled now
            self._camera(cam)

    def _command(self, name: str, kw: dict) -> None:
        if name == "wake":
            return
        if name == "call":
            kw["fn"](self)
            return
        if name == "reset":
            self._set_status(error=None)
            if self.scene is None:
                self._load()
            else:
                self._build("reset: fresh network(s), training restarts at step 0")
            return
        if not self.trainers:
            self._note("warn", f"'{name}' ignored: no scene loaded")
            return
        if name == "train":
            self.training = True
            self._set_status(error=None)
        elif name == "pause":
            self.training = False
        elif name == "probe":
            self._probe(**kw)
        elif name == "refresh":
            self._restart_render()
        elif name == "save":
            from app.engine.checkpoint import save_checkpoint

            save_checkpoint(kw["path"], self.trainers[0])
            self._note("info", f"snapshot saved: {kw['path']} (step {self.trainers[0].step_count})")
        elif name == "load":
            self._load_snapshot(kw["path"])
        elif name == "export_mesh":
            from app.tools.export import export_mesh

            t0 = time.perf_counter()
            with self.trainers[0].averaged():
                res = export_mesh(self.trainers[0], kw["path"], res=int(kw.get("res", 128)),
                                  **self._log_kw(export_mesh))
            summary = ", ".join(f"{k}={v}" for k, v in (res or {}).items()
                                if isinstance(v, (int, float, str)))
            self._note("info", f"mesh exported to {kw['path']} in {time.perf_counter() - t0:.1f} s"
                               + (f" ({summary})" if summary else ""))
        elif name == "video":
            from app.tools.video import render_orbit_video

            t0 = time.perf_counter()
            out = render_orbit_video(self.trainers[0], kw["path"], frames=int(kw.get("frames", 60)),
                                     **self._log_kw(render_orbit_video))
            self._note("info", f"orbit video written: {out} ({time.perf_counter() - t0:.1f} s)")
        elif name == "inerf_start":
            self._inerf_start(int(kw.get("view", 0)), kw.get("steps", 300))
        elif name == "inerf_stop":
            if self._inerf is not None:
                self._inerf_finish("stopped")
        else:
            raise ValueError(f"unknown worker command {name!r}")
        self._set_status(state=self._state())

    def _log_kw(self, fn) -> dict:
        """Route a tool's optional ``log`` messages into the GUI's notes instead of stdout."""
        import inspect

        try:
            return {"log": lambda m: self._note("info", str(m))} if "log" in inspect.signature(fn).parameters else {}
        except (TypeError, ValueError):
            return {}

    def _load_snapshot(self, path: str) -> None:
        """Load a checkpoint file, or a run directory (its checkpoint plus metrics.jsonl
        history for the plots). A snapshot of another architecture rebuilds the model
        to the snapshot's settings; compare mode ends (B would not match A)."""
        import json

        from app.engine.checkpoint import CheckpointError, load_into, read_checkpoint
        from app.engine.runs import CKPT
        from app.engine.trainer import TrainConfig

        ckpt, history = path, None
        if os.path.isdir(path):
            ckpt, history = os.path.join(path, CKPT), os.path.join(path, "metrics.jsonl")
        meta, _ = read_checkpoint(ckpt)  # fails early, naming the file, before anything changes
        cfg = meta["config"]
        opts = cfg.get("model_options", {})
        s = dict(self.settings, model=cfg["model"], compare=False)
        import models

        # Knobs the GUI shows for this model come back to the widgets; the rest of the options
        # become "arch", so Reset / rebuilds keep the snapshot's network.
        taken = PE_KNOB_OPTIONS if "pe" in models.model_class(cfg["model"]).GUI_KNOBS else ()
        s["arch"] = {**(s.get("arch") or {}), cfg["model"]: {k: v for k, v in opts.items() if k not in taken}}
        if taken:
            s.update(pe=opts.get("pos_encoding", "pe") != "none", L_xyz=opts.get("L_xyz", 10),
                     L_dir=opts.get("L_dir", 4), n_coarse=opts.get("n_coarse", s["n_coarse"]),
                     n_fine=opts.get("n_fine", s["n_fine"]))
        # The snapshot's own config (learning-rate schedule included: resuming a converged
        # field at a fresh, 10x larger learning rate would undo it), on this device, at the
        # GUI's batch size (a GPU run's batch would make each CPU step take seconds).
        try:
            batch = int(s["batch_rays"] or self.trainers[0].config.batch_rays)
            config = TrainConfig(**{**cfg, "device": str(self.device), "batch_rays": batch})
        except TypeError as exc:
            raise CheckpointError(ckpt, f"checkpoint config does not match this version: {exc}") from None
        mine = dict(self.trainers[0].model.config)
        rebuilt = cfg["model"] != self.trainers[0].config.model or any(
            opts.get(k) != mine.get(k) for k in set(opts) | set(mine) if k not in ("n_coarse", "n_fine"))
        t = _fed_trainer_class()(self.scene, config)
        load_into(ckpt, t)
        t.batch_rays = batch
        self.settings = s
        self.trainers = [t]
        self._events_seen = [len(t.events)]
        self._run_id += 1
        self._set_status(run_id=self._run_id, settings=dict(s), labels=[field_label(s, "A")],
                         settings_seq=self._status["settings_seq"] + 1, model_config=dict(t.model.config),
                         step=t.step_count)
        n_hist = 0
        if history and os.path.isfile(history):
            with open(history, encoding="utf-8") as f:
                for line in f:
                    try:
                        r = json.loads(line)
                        rec = {"run_id": self._run_id, "step": int(r["step"]), "loss": float(r["loss"]),
                               "psnr": float(r["psnr"]), "lr": float(r.get("lr", 0.0)), "time": 0.0}
                    except (ValueError, KeyError, TypeError):
                        continue  # a torn last line of a run still being written
                    if rec["step"] <= t.step_count:
                        self._metrics.put(rec)
                        n_hist += 1
        self._note("info", f"snapshot loaded: {ckpt} (step {t.step_count})"
                           + ("; model rebuilt to the snapshot's settings" if rebuilt else "")
                           + (f"; {n_hist} logged steps of history" if n_hist else ""))
        self._restart_render()

    # -- one loop iteration ---------------------------------------------------------------------
    def _iteration(self) -> None:
        busy = self.training or self._job is not None or self._inerf is not None or self._refresh_due()
        self._drain_commands(block=not busy)
        if self._stop.is_set() or not self.trainers:
            return
        job = self._job
        if job is not None and job.priority and job.level == 0:
            self._render_work(job, budget=math.inf)  # first look after a gesture: before anything else
            return
        if self._inerf is not None:
            self._inerf_iteration()
            return
        if self.training:
            self._train_step()
        if self._job is None and self._refresh_due():
            self._start_refresh()
        if self._job is not None:
            # Equal time to rendering and training while a render is pending.
            self._render_work(self._job, budget=max(CHUNK_SECONDS, self._step_s) if self.training else 0.2)

    def _train_step(self) -> None:
        t0 = time.perf_counter()
        ts = self.trainers
        if len(ts) > 1:
            batch = ts[0].sample_batch(ts[0].batch_rays)
            for t in ts:
                t.feed = batch
        # A waiting gesture may cut a single-field step short (two fields must stay in step).
        self._in_step = len(ts) == 1
        try:
            ms = [t.step() for t in ts]
        except _Preempted:
            self.preempted_steps += 1
            return
        finally:
            self._in_step = False
            for t in ts:
                t.feed = None
        self._step_s = 0.8 * self._step_s + 0.2 * (time.perf_counter() - t0)
        for i, t in enumerate(ts):
            for ev in t.events[self._events_seen[i]:]:
                self._note("warn", (f"[{'AB'[i]}] " if len(ts) > 1 else "") + ev)
            self._events_seen[i] = len(t.events)
        m = ms[0]
        if m.get("skipped"):
            return
        self._rate_n += 1
        now = time.perf_counter()
        if now - self._rate_t > 1.0:
            self._set_status(steps_per_s=self._rate_n / (now - self._rate_t))
            self._rate_t, self._rate_n = now, 0
        rec = {"run_id": self._run_id, "step": m["step"], "loss": m["loss"], "psnr": m["psnr"],
               "lr": m["lr"], "time": m["time"]}
        if len(ms) > 1 and not ms[1].get("skipped"):
            rec.update(loss_b=ms[1]["loss"], psnr_b=ms[1]["psnr"])
        self._metrics.put(rec)
        self._set_status(step=ts[0].step_count, last_metrics=rec)

    # -- rendering ------------------------------------------------------------------------------
    def _sizes(self):
        tr = self.scene.split("train")
        return level_sizes(tr.height, tr.width, float(self.settings["res_scale"]))

    def _camera(self, kw: dict) -> None:
        prev = self._cam
        self._cam = (kw["c2w"], kw["fov"], kw["version"], kw["moving"])
        same_pose = prev is not None and prev[1] == kw["fov"] and np.array_equal(prev[0], kw["c2w"])
        if not same_pose:
            self._restart_render(priority=kw.get("priority", True))
            return
        # Same pose, new version (typically the mouse was released): keep what is rendered.
        job = self._job
        if job is not None:
            job.version = kw["version"]
            if not kw["moving"] and job.kind == "view":
                job.last = len(job.sizes) - 1
            return
        self._refine(more=not kw["moving"])

    def _restart_render(self, priority: bool = True) -> None:
        if self._cam is None or not self.trainers:
            return
        c2w, fov, version, moving = self._cam
        sizes = self._sizes()
        last = 0 if moving else len(sizes) - 1
        self._job = _RenderJob(c2w, fov, version, sizes, 0, last, priority=priority)
        self._max_level_seen = 0

    def _refine(self, more: bool = True) -> None:
        """Same camera again: continue from the level after the one shown (if ``more``),
        or, when there is nothing to add, re-issue the shown frame under the new version."""
        c2w, fov, version, _ = self._cam
        sizes = self._sizes()
        f = self.frames.get()
        shown = (f is not None and f.kind in ("view", "refresh") and f.run_id == self._run_id
                 and np.array_equal(f.c2w, c2w) and f.fov == fov and f.n_levels == len(sizes))
        if not shown:
            self._restart_render()
            return
        if more and f.level + 1 < len(sizes):
            self._job = _RenderJob(c2w, fov, version, sizes, f.level + 1, len(sizes) - 1)
        else:
            self.frames.put(dataclasses.replace(f, version=version, ready_time=time.perf_counter()))

    def _refresh_due(self) -> bool:
        """While training with a still camera, re-render the view now and then to show progress."""
        return (self.training and self._job is None and self._cam is not None and not self._cam[3]
                and self._inerf is None and self.trainers
                and time.perf_counter() - self._last_publish > self._refresh_every)

    def _start_refresh(self) -> None:
        c2w, fov, version, _ = self._cam
        sizes = self._sizes()
        lvl = min(self._max_level_seen, len(sizes) - 1)
        # Replace the shown image only when the new one is complete, at the best level reached.
        self._job = _RenderJob(c2w, fov, version, sizes, lvl, lvl, kind="refresh")

    def _render_work(self, job: _RenderJob, budget: float) -> None:
        """Render chunks of ``job`` for about ``budget`` seconds. An infinite budget means:
        finish the current level, whatever else is waiting."""
        import torch

        t_end = time.perf_counter() + budget
        models = [t.model for t in self.trainers]
        level = job.level
        while not job.done and not self._stop.is_set():
            t0 = time.perf_counter()
            self._render_chunk(job, models, torch)
            job.spent += time.perf_counter() - t0
            if budget == math.inf:
                if job.level != level:
                    break
            elif time.perf_counter() >= t_end or not self._commands.empty():
                break  # let a new camera or setting in before spending more
        if job.done and self._job is job:
            self._job = None

    def _render_chunk(self, job: _RenderJob, models, torch) -> None:
        from renderer.rays import camera_directions, intrinsics, ndc_rays, rays_from_dirs

        tr0 = self.trainers[0]
        h, w = job.sizes[job.level]
        focal = 0.5 * w / math.tan(0.5 * math.radians(job.fov))
        if job.rays is None:
            dev = tr0.device
            K = intrinsics(w, h, focal)
            dirs = camera_directions(h, w, K, dev).reshape(-1, 3)
            o, d = rays_from_dirs(dirs, torch.from_numpy(job.c2w).to(dev))
            if self.scene.ndc:  # the training cameras' NDC frame, whatever this view's size
                o, d = ndc_rays(tr0.height, tr0.width, tr0.focal, 1.0, o, d)
            job.rays = (o, d)
            job.outs = [{"rgb": torch.empty(h * w, 3), "depth": torch.empty(h * w),
                         "acc": torch.empty(h * w)} for _ in models]
            job.model_idx, job.pos = 0, 0
        n = h * w
        chunk = self._chunk_rays(len(models))
        s, e = job.pos, min(job.pos + chunk, n)
        model = models[job.model_idx]
        t0 = time.perf_counter()
        was = model.training
        model.eval()
        try:
            # averaged(): the view shows the weights that evaluation and export use.
            with self.trainers[job.model_idx].averaged(), torch.no_grad(), \
                    torch.autocast(tr0.device.type, dtype=torch.bfloat16, enabled=tr0.config.autocast):
                out = model.render_rays(job.rays[0][s:e], job.rays[1][s:e], self.scene.near, self.scene.far,
                                        background=tr0.background, train=False)
        finally:
            model.train(was)
        for k in ("rgb", "depth", "acc"):
            job.outs[job.model_idx][k][s:e] = out[k].float().cpu()
        dt = max(time.perf_counter() - t0, 1e-6)
        rate = (e - s) / dt
        self._rays_per_s = rate if self._rays_per_s is None else 0.7 * self._rays_per_s + 0.3 * rate
        job.pos = e
        if e < n:
            return
        job.model_idx, job.pos = job.model_idx + 1, 0
        if job.model_idx < len(models):
            return
        images = [{"rgb": o["rgb"].view(h, w, 3).numpy(), "depth": o["depth"].view(h, w).numpy(),
                   "acc": o["acc"].view(h, w).numpy()} for o in job.outs]
        self._publish(job, images)
        job.level += 1
        job.rays = None

    def _chunk_rays(self, n_models: int) -> int:
        if self._rays_per_s is None:
            return 1024 if self.trainers[0].device.type == "cpu" else 65536
        return int(np.clip(self._rays_per_s * CHUNK_SECONDS, 256, 1 << 18))

    def _publish(self, job: _RenderJob, images, kind=None, labels=None, info=None) -> None:
        h, w = job.sizes[job.level]
        self._max_level_seen = max(self._max_level_seen, job.level)
        f = Frame(images=images, labels=labels or list(self._status.get("labels", [])), level=job.level,
                  n_levels=len(job.sizes), size=(h, w), version=job.version, c2w=job.c2w, fov=job.fov,
                  step=self.trainers[0].step_count, run_id=self._run_id, kind=kind or job.kind,
                  render_s=job.spent, info=info or {})
        job.spent = 0.0
        self.frames.put(f)
        self._last_publish = time.perf_counter()
        # Keep refreshes to about a quarter of the time: after an R-second render wait 3R.
        self._refresh_every = max(0.5, 3.0 * f.render_s)
        self._set_status(render=f"{w}x{h} (level {job.level + 1}/{len(job.sizes)})",
                         rays_per_s=self._rays_per_s)

    # -- weights under the cursor ---------------------------------------------------------------
    def _probe(self, index: int, u: float, v: float) -> None:
        import torch

        if self._cam is None:
            return
        c2w, fov, _, _ = self._cam
        index = min(max(int(index), 0), len(self.trainers) - 1)
        t = self.trainers[index]
        h, w = self._sizes()[-1]
        focal = 0.5 * w / math.tan(0.5 * math.radians(fov))
        o, d = ray_through_pixel(c2w, u, v, w, h, focal)
        o = torch.tensor(o, dtype=torch.float32, device=t.device)[None]
        d = torch.tensor(d, dtype=torch.float32, device=t.device)[None]
        if self.scene.ndc:
            from renderer.rays import ndc_rays

            o, d = ndc_rays(t.height, t.width, t.focal, 1.0, o, d)
        was = t.model.training
        t.model.eval()
        try:
            with t.averaged(), torch.no_grad():
                out = t.model.render_rays(o, d, self.scene.near, self.scene.far,
                                          background=t.background, train=False)
        finally:
            t.model.train(was)
        res = {"index": index, "u": u, "v": v, "depth": float(out["depth"][0]), "acc": float(out["acc"][0]),
               "rgb": out["rgb"][0].float().cpu().numpy()}
        if "weights_coarse" in out:
            res.update(t_coarse=out["t_coarse"][0].float().cpu().numpy(),
                       w_coarse=out["weights_coarse"][0].float().cpu().numpy())
            if "weights_fine" in out:
                res.update(t_fine=out["t_fine"][0].float().cpu().numpy(),
                           w_fine=out["weights_fine"][0].float().cpu().numpy())
        else:
            res["unavailable"] = f"model '{self.settings['model']}' does not expose per-sample weights"
        self.probes.put(res)

    # -- iNeRF demo ---------------------------------------------------------------------------------
    def _inerf_start(self, view: int, steps) -> None:
        import importlib

        inerf = importlib.import_module("app.tools.inerf")  # (the sys.modules entry: tests substitute it)

        sp = self.scene.split("test") if "test" in self.scene.splits else self.scene.split("train")
        view = view % len(sp)
        truth = sp.c2w[view].astype(np.float64)
        init = inerf.perturb_pose(truth, 10.0, 0.2 * self.scene.scene_radius / 4.0, seed=view)
        inv = inerf.InvertPose(self.trainers[0], sp.images[view], init.astype(np.float32),
                               camera=sp.cameras[view])
        self._inerf = {"inv": inv, "rot_err": inerf.rotation_error_deg, "truth": truth,
                       "target": sp.images[view], "i": 0,
                       "steps": int(steps), "was_training": self.training, "c2w": init, "view": view}
        self.training = False
        self._note("info", f"iNeRF: recovering the pose of test view {view} from a start perturbed by 10 deg "
                           f"and {0.2 * self.scene.scene_radius / 4.0:.2f} units; training paused")
        self._inerf_show()

    def _inerf_iteration(self) -> None:
        st = self._inerf
        with self.trainers[0].averaged():  # the field as the view shows it
            res = st["inv"].step()
        st["i"] += 1
        c2w = np.asarray(res["c2w"], dtype=np.float64)
        st["c2w"] = c2w
        rot = res.get("rot_err_deg")
        if rot is None:
            rot = st["rot_err"](c2w, st["truth"])
        st["last"] = {"step": st["i"], "loss": float(res.get("loss", float("nan"))), "rot_err_deg": float(rot),
                      "trans_err": float(np.linalg.norm(c2w[:3, 3] - st["truth"][:3, 3]))}
        self._set_status(inerf=dict(st["last"]))
        if st["i"] % 5 == 0:
            self._inerf_show()
        if st["i"] >= st["steps"]:
            self._inerf_finish("done")

    def _inerf_show(self) -> None:
        """Render the current estimate (second-lowest level) next to the target image."""
        st = self._inerf
        sizes = self._sizes()
        lvl = min(1, len(sizes) - 1)
        h, w = sizes[lvl]
        tr = self.scene.split("train")
        t = self.trainers[0]
        out = t.render(st["c2w"].astype(np.float32), h, w, t.focal * w / tr.width, keys=("rgb", "depth", "acc"))
        target = st["target"]
        tgt = {"rgb": target, "depth": np.zeros(target.shape[:2], np.float32),
               "acc": np.ones(target.shape[:2], np.float32)}
        est = {k: v.numpy() for k, v in out.items()}
        job = _RenderJob(st["c2w"], math.degrees(2 * math.atan(0.5 * tr.width / t.focal)), -1, sizes, lvl, lvl)
        self._publish(job, [tgt, est], kind="inerf", labels=["target image", "render from estimate"],
                      info=dict(st.get("last") or {}))

    def _inerf_finish(self, how: str) -> None:
        st = self._inerf
        last = st.get("last") or {}
        self._inerf_show()
        self._inerf = None
        self.training = st["was_training"]
        self._note("info", f"iNeRF {how} after {st['i']} steps: rotation error "
                           f"{last.get('rot_err_deg', float('nan')):.2f} deg, position error "
                           f"{last.get('trans_err', float('nan')):.3f}")
        self._set_status(state=self._state())
        self._restart_render()


# -- small utilities -------------------------------------------------------------------------------
def _drain(q: queue.Queue) -> list:
    out = []
    try:
        while True:
            out.append(q.get_nowait())
    except queue.Empty:
        return out


def torch_device_name(device) -> str:
    import torch

    try:
        return torch.cuda.get_device_name(device)
    except Exception:  # noqa: BLE001
        return "cuda"


def measure_camera_latency(worker: Worker, cameras, fov: float, timeout: float = 60.0) -> list[float]:
    """Seconds from ``set_camera`` to the first frame for that camera being ready, per camera.

    Needs no GUI: benchmarks call this on a started Worker (training or not) to time
    'camera change -> first low-resolution frame'.
    """
    out = []
    for c2w in cameras:
        t0 = time.perf_counter()
        v = worker.set_camera(c2w, fov, moving=True)
        f = worker.wait_frame(lambda fr, v=v: fr.version >= v, timeout)
        if f is None:
            raise TimeoutError(f"no frame for camera version {v} within {timeout} s "
                               f"(worker status: {worker.status().get('error') or worker.status()['state']})")
        out.append(f.ready_time - t0)
    return out
