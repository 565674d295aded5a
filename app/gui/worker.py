"""Background training worker for the GUI.

All torch work happens on one thread owned by ``Worker``; the GUI thread only
calls the thread-safe methods below and never waits on training:

    GUI -> worker   ``send(name, **kw)`` / ``set_camera(...)``: a queue of commands,
                    drained (and coalesced) between training steps and render chunks.
    worker -> GUI   ``latest_frame()`` (latest-value slot: the newest rendered level),
                    ``drain_metrics()`` (one dict per step), ``drain_notes()``
                    (info / warn / error lines), ``status()`` (snapshot dict),
                    ``latest_probe()`` (weights along the ray under the cursor).

The Worker is the thread, its command queue and its loop; each job is its own object:
Settings (what a change costs), Fields (the trainers and the step), RenderScheduler
(progressive frames), RayProbe, Snapshots, InerfDemo and ToolCalls.

An expected failure on the worker thread (bad data, a refused setting, OOM, a tool's
error) is reported as an error note and in ``status()['error']``, and training pauses;
the thread keeps serving commands until ``stop()``. Anything else is a bug: the thread
records it in the status and ends with its traceback.
"""
from __future__ import annotations

import math
import os
import queue
import threading
import time
import traceback

import numpy as np

from app.gui.abort import AbortHook, WorkerStopped
from app.gui.channels import Outbox, drain
from app.gui.inerf_demo import InerfDemo
from app.gui.probes import RayProbe
from app.gui.render_schedule import CHUNK_SECONDS, Frame, RenderScheduler
from app.gui.scene_info import describe_scene
from app.gui.settings import Settings
from app.gui.snapshots import Snapshots
from app.gui.tool_calls import ToolCalls
from app.gui.training import Fields

# What the worker survives: bad data and refused settings (ValueError: DataError and
# CheckpointError are ValueErrors), torch failures and out-of-memory (RuntimeError:
# torch.cuda.OutOfMemoryError is one), files (OSError), host memory.
EXPECTED_FAILURES = (ValueError, RuntimeError, OSError, MemoryError)


class Worker:
    """Owns scene, trainer(s), renders and tools on one background thread.

    ``data`` is a scene directory (loaded on the worker thread) or ``scene`` an
    already-loaded Scene; with neither the worker waits for a ``load_scene`` command.
    ``settings`` overrides ``default_settings``.
    """

    def __init__(self, data: str | None = None, scene=None, settings: dict | None = None,
                 device: str = "auto", downscale: int = 1, train: bool = True,
                 threads: int | None = None, seed: int = 0, scene_options: dict | None = None):
        self.data, self._scene_in, self.device_name = data, scene, device
        self.scene_options = dict(scene_options or {})  # load_scene's ndc, skip_missing
        self.downscale, self.threads = downscale, threads
        self._settings_override = dict(settings or {})
        self._want_train = train
        self._commands: queue.Queue = queue.Queue()
        self._cam_lock = threading.Lock()
        self._cam_version = 0
        self._thread = threading.Thread(target=self._main, name="nerf-worker", daemon=True)
        self.out = Outbox()
        self.frames, self.probes, self.scene_info = self.out.frames, self.out.probes, self.out.scene_info
        self.abort = AbortHook()
        # Worker-thread state (only touched on that thread).
        self.scene = None
        self.scene_seq = 0  # scenes loaded so far (scene_info's seq)
        self._idle_empty = False  # started without a scene: "no scene" rather than "loading"
        self.device = None
        self.training = False
        self._was_training = False  # while the iNeRF demo runs
        self.fields = Fields(self.out, self.abort)
        self.render = RenderScheduler(self.out, self.fields, self.abort.stop, lambda: not self._commands.empty(),
                                      scale=lambda: self.settings.values["res_scale"])
        self.settings = Settings(self.out, self.fields, self.render.restart, seed=seed)
        self.probe = RayProbe(self.out, self.fields, self.render)
        self.snapshots = Snapshots(self.out, self.fields, self.settings, self.render)
        self.inerf = InerfDemo(self.out, self.fields, self.render)
        self.tools = ToolCalls(self.out, self.fields, self.abort.stop)

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

    def cancel_job(self) -> None:
        """Cancel the tool job in progress (a video, a point cloud): it stops after its
        current frame or view, writing nothing. Safe from any thread."""
        self.tools.cancel.set()

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
            self.abort.preempt.set()  # before the send: the drain that takes the camera clears it
        self.send("camera", c2w=np.array(c2w, dtype=np.float32), fov=float(fov), moving=bool(moving),
                  version=v, priority=bool(priority))
        return v

    def stop(self, timeout: float = 1.0) -> bool:
        """Ask the thread to finish and wait up to ``timeout`` s; True if it has ended.

        Besides the flag checked between steps and render chunks, the abort hook ends a
        training step or render in progress, so only a backward pass already running (or
        the scene still loading) can delay the stop.
        """
        self.abort.stop.set()
        self._commands.put(("wake", {}))
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def trainers(self) -> list:
        """The trainers (worker thread only: for call / run_sync)."""
        return self.fields.trainers

    @property
    def preempted_steps(self) -> int:
        return self.fields.preempted_steps

    def latest_frame(self) -> Frame | None:
        return self.out.frames.get()

    def wait_frame(self, pred, timeout: float = 30.0) -> Frame | None:
        return self.out.frames.wait(pred, timeout)

    def latest_probe(self):
        return self.out.probes.get()

    def status(self) -> dict:
        return self.out.status()

    def wait_status(self, pred, timeout: float = 30.0) -> dict | None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            s = self.status()
            if pred(s):
                return s
            time.sleep(0.01)
        return None

    def drain_metrics(self) -> list[dict]:
        return drain(self.out.metrics)

    def drain_notes(self) -> list[tuple[str, str]]:
        return drain(self.out.notes)

    # -- worker thread: main loop -----------------------------------------------------------
    def _fail(self, exc: BaseException, where: str) -> None:
        if hasattr(exc, "path") and hasattr(exc, "problem"):
            msg = f"{where}: {exc}"  # DataError / CheckpointError already name the file
        else:
            msg = f"{where}: {type(exc).__name__}: {exc}"
            # Keep the traceback for whoever runs the app from a terminal.
            traceback.print_exception(type(exc), exc, exc.__traceback__, limit=6)
        self.training = False
        self.inerf.cancel()
        self.render.cancel()
        self.out.note("error", msg + " (training paused)")
        self.out.set_status(error=msg)
        self.out.set_status(state=self._state())

    def _state(self) -> str:
        if self.inerf.active:
            return "inerf"
        if not self.fields.trainers:
            if self.out.status().get("error"):
                return "error"
            return "no scene" if self.scene is None and self._idle_empty else "loading"
        return "training" if self.training else "paused"

    def _main(self) -> None:
        crashed = False
        try:
            self._setup_threads()
            try:
                self._start_scene()
            except EXPECTED_FAILURES as exc:  # bad data etc.: report, keep serving commands
                self._fail(exc, "loading scene")
            while not self.abort.stop.is_set():
                try:
                    self._iteration()
                except WorkerStopped:
                    break
                except EXPECTED_FAILURES as exc:
                    if self.abort.stop.is_set():
                        break  # e.g. the abort hook fired inside a library that wrapped it
                    self._fail(exc, "worker")
        except Exception as exc:
            crashed = True  # a bug: say so in the status line, then let the thread end with it
            self.out.set_status(error=f"worker thread crashed: {type(exc).__name__}: {exc}")
            raise
        finally:
            self.abort.remove()
            self.out.set_status(state="crashed" if crashed else "stopped")

    def _setup_threads(self) -> None:
        import torch

        n = self.threads or max(1, (os.cpu_count() or 2) - 1)
        # Leave a core to the GUI thread and the display thread (llvmpipe) on small machines.
        torch.set_num_threads(n)
        self.out.set_status(torch_threads=n)
        self.abort.install(self._thread)

    def _pick_device(self) -> None:
        import models
        import torch

        from app.engine.trainer import pick_device

        self.device = pick_device(self.device_name)
        cuda = self.device.type == "cuda"
        self.out.set_status(device=str(self.device) + (f" ({torch.cuda.get_device_name(self.device)})" if cuda else ""),
                            models=models.available(),
                            model_labels={n: models.model_class(n).LABEL for n in models.available()})

    def _start_scene(self) -> None:
        self.out.set_status(state="loading")
        self._pick_device()
        if self._scene_in is not None:
            self._use_scene(self._scene_in, first=True)
        elif self.data is not None:
            self._load_scene(self.data, first=True)
        else:
            self._idle_empty = True
            self.out.set_status(state=self._state())

    def _load_scene(self, path: str, first: bool = False) -> None:
        """Load the scene at ``path`` and train on it with the settings in force; if it
        cannot be loaded (or no field builds for it) the scene and fields before stay."""
        from loaders import load_scene

        if not first:
            self.out.note("info", f"loading scene {path} ...")
        scene = load_scene(path, downscale=self.downscale, **self.scene_options)
        self._use_scene(scene, first)
        self.data = path

    def _use_scene(self, scene, first: bool) -> None:
        before = (self.scene, self.render.scene, self.fields.crop, self.settings.values)
        self.scene = self.render.scene = scene
        self.settings.bind(scene, self.device)
        self.fields.crop = None  # a box belongs to the scene it was drawn in
        self.inerf.cancel()
        self.render.cancel()
        try:
            # Each scene starts from the defaults for it (a capture gets its own field) under
            # the settings the app was started with.
            self.settings.start(self._settings_override)
            self.settings.build("start")
        except BaseException:
            self.scene, self.render.scene, self.fields.crop, self.settings.values = before
            if before[0] is not None:
                self.settings.bind(before[0], self.device)
            raise
        for n in scene.notes:
            self.out.note("info", n)
        self.scene_seq += 1
        self.out.scene_info.put(describe_scene(scene, self.scene_seq))
        self.training = self._want_train if first else True
        tr = scene.split("train")
        n_params = sum(p.numel() for p in self.fields.trainers[0].model.parameters())
        self.out.set_status(error=None, scene=scene.source)
        self.out.note("info", f"ready: {len(tr)} training views {tr.width}x{tr.height} from "
                              f"{os.path.basename(os.path.normpath(scene.source))}; "
                              f"{self.settings.values['model']} ({n_params / 1e6:.2f} M parameters) on {self.device}")
        self.out.set_status(state=self._state())

    # -- commands ---------------------------------------------------------------------------
    def _drain_commands(self, block: bool) -> None:
        cmds = []
        try:
            cmds.append(self._commands.get(timeout=0.05) if block else self._commands.get_nowait())
            while True:
                cmds.append(self._commands.get_nowait())
        except queue.Empty:
            pass
        ordered, cam = coalesce(cmds)
        for name, kw in ordered:
            if name == "settings":
                self.settings.apply(kw)
            else:
                self._command(name, kw)
        if cam is not None:
            self.abort.preempt.clear()  # taken: the render it asked for is scheduled now
            self.render.camera(**cam)

    def _command(self, name: str, kw: dict) -> None:
        if name == "wake":
            return
        if name == "call":
            kw["fn"](self)
            return
        if name == "load_scene":
            self._load_scene(kw["path"])
            return
        if name == "reset":
            self.out.set_status(error=None)
            if self.scene is None:
                self._start_scene()
            else:
                self.settings.build("reset: fresh network(s), training restarts at step 0")
            return
        if not self.fields.trainers:
            self.out.note("warn", f"'{name}' ignored: no scene loaded")
            return
        handlers = {"train": self._train, "pause": self._pause, "probe": self.probe.run,
                    "refresh": self.render.restart, "save": self.snapshots.save, "load": self.snapshots.load,
                    "export_mesh": self.tools.export_mesh, "video": self.tools.video,
                    "export_points": self.tools.export_points, "screenshot": self.tools.screenshot,
                    "path_video": self.tools.path_video, "crop": self._crop,
                    "inerf_start": self._inerf_start, "inerf_stop": self._inerf_stop}
        if name not in handlers:
            raise ValueError(f"unknown worker command {name!r}")
        handlers[name](**kw)
        self.out.set_status(state=self._state())

    def _crop(self, box) -> None:
        """box: a renderer.crop.CropBox or None (the whole field). A refused box (an NDC
        scene) is a warning, not a failure: training goes on."""
        try:
            self.fields.set_crop(box)
        except ValueError as exc:
            self.out.note("warn", f"crop box refused: {exc}")
            return
        self.render.restart()

    def _train(self) -> None:
        self.training = True
        self.out.set_status(error=None)

    def _pause(self) -> None:
        self.training = False

    def _inerf_start(self, view: int = 0, steps: int = 300) -> None:
        self._was_training = self.training
        self.training = False
        self.inerf.start(int(view), int(steps))

    def _inerf_stop(self) -> None:
        if self.inerf.active:
            self._inerf_end("stopped")

    def _inerf_end(self, how: str) -> None:
        self.inerf.finish(how)
        self.training = self._was_training
        self.out.set_status(state=self._state())
        self.render.restart()

    # -- one loop iteration ---------------------------------------------------------------------
    def _iteration(self) -> None:
        render = self.render
        busy = (self.training or render.job is not None or self.inerf.active
                or render.refresh_due(self._refreshing()))
        self._drain_commands(block=not busy)
        if self.abort.stop.is_set() or not self.fields.trainers:
            return
        if render.gesture_pending:
            render.work(budget=math.inf)  # first look after a gesture: before anything else
            return
        if self.inerf.active:
            if self.inerf.step():
                self._inerf_end("done")
            return
        if self.training:
            self.fields.step()
        if render.job is None and render.refresh_due(self._refreshing()):
            render.start_refresh()
        if render.job is not None:
            # Equal time to rendering and training while a render is pending.
            render.work(budget=max(CHUNK_SECONDS, self.fields.step_s) if self.training else 0.2)

    def _refreshing(self) -> bool:
        return self.training and not self.inerf.active


def coalesce(cmds: list) -> tuple[list, dict | None]:
    """Commands as they arrived -> (the ones to run, in order, with each run of settings
    changes merged into one: slider drags cost one rebuild; the newest camera, or None:
    only the newest pose matters, and it goes last, after the settings it may depend on)."""
    ordered, cam, settings = [], None, {}
    for name, kw in cmds:
        if name == "camera":
            cam = kw
        elif name == "settings":
            settings.update(kw)
        else:
            if settings:  # keep the order between settings and other commands
                ordered.append(("settings", settings))
                settings = {}
            ordered.append((name, kw))
    if settings:
        ordered.append(("settings", settings))
    return ordered, cam


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
