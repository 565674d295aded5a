"""The Tools section's long jobs (mesh and point-cloud export, videos, screenshots), run on
the worker thread with their log lines routed into the GUI's notes.

Jobs with many frames or views report progress in ``status()['job']`` ({name, done,
total, path}) and stop after the current one when ``cancel`` is set (or the worker is
stopping), writing nothing. Every file written is named in a note."""
from __future__ import annotations

import inspect
import threading
import time
from contextlib import contextmanager

import numpy as np

from app.gui.channels import Outbox


class ToolCalls:
    def __init__(self, out: Outbox, fields, stop: threading.Event | None = None):
        self.out, self.fields = out, fields
        self.stop = stop or threading.Event()
        self.cancel = threading.Event()

    def _log_kw(self, fn) -> dict:
        """A tool's optional ``log`` argument, pointed at the notes instead of stdout."""
        return {"log": lambda m: self.out.note("info", str(m))} if "log" in inspect.signature(fn).parameters else {}

    @contextmanager
    def _job(self, name: str, path: str):
        """Progress in the status while the block runs; yields progress(done, total) ->
        False once cancelled. A cancelled job is an info note, not a failure."""
        from app.tools.video import Cancelled

        self.cancel.clear()

        def progress(done, total):
            self.out.set_status(job={"name": name, "done": int(done), "total": int(total), "path": path})
            return not (self.cancel.is_set() or self.stop.is_set())

        self.out.set_status(job={"name": name, "done": 0, "total": 0, "path": path})
        try:
            yield progress
        except Cancelled as exc:
            self.out.note("info", f"{name} cancelled ({exc}); nothing written")
        finally:
            self.out.set_status(job=None)

    def export_mesh(self, path: str, res: int = 128) -> None:
        from app.tools.export import export_mesh

        t0 = time.perf_counter()
        t = self.fields.trainers[0]
        with t.averaged():
            result = export_mesh(t, path, res=int(res), **self._log_kw(export_mesh))
        summary = ", ".join(f"{k}={v}" for k, v in (result or {}).items() if isinstance(v, (int, float, str)))
        self.out.note("info", f"mesh exported to {path} in {time.perf_counter() - t0:.1f} s"
                              + (f" ({summary})" if summary else ""))

    def export_points(self, path: str, points: int = 200_000, min_opacity: float = 0.9) -> None:
        from app.tools.pointcloud import export_points

        with self._job("point cloud", path) as progress:
            r = export_points(self.fields.trainers[0], path, points=int(points), min_opacity=float(min_opacity),
                              progress=progress)
            crop = self.fields.crop
            self.out.note("info", f"point cloud exported to {path}: {r['points']} points from {r['views']} views "
                                  f"in {r['seconds']:.1f} s" + (" (inside the crop box)" if crop is not None else ""))

    def video(self, path: str, frames: int = 60) -> None:
        from app.tools.video import render_orbit_video

        t0 = time.perf_counter()
        written = render_orbit_video(self.fields.trainers[0], path, frames=int(frames),
                                     **self._log_kw(render_orbit_video))
        self.out.note("info", f"orbit video written: {written} ({time.perf_counter() - t0:.1f} s)")

    def path_video(self, path: str, camera_path, fps: float | None = None, size=None) -> None:
        """camera_path: an app.tools.camera_path.CameraPath in the capture's own frame."""
        from app.tools.video import render_path_video

        t0 = time.perf_counter()
        with self._job("path video", path) as progress:
            written = render_path_video(self.fields.trainers[0], path, camera_path, fps=fps, size=size,
                                        progress=progress, **self._log_kw(render_path_video))
            self.out.note("info", f"camera path video written: {written} ({camera_path.n_frames} frames, "
                                  f"{time.perf_counter() - t0:.1f} s)")
            self.out.set_status(last_video=written)

    def screenshot(self, path: str, c2w, fov: float, width: int, height: int) -> None:
        """The view from c2w (scene frame) with horizontal ``fov`` (degrees) at width x
        height pixels, without overlays, to PNG."""
        import imageio.v3 as iio

        from app.commands.render import to_uint8
        from app.engine.checkpoint import atomic_write
        from app.gui.render_schedule import focal_for

        width, height = int(width), int(height)
        if not (8 <= width <= 4096 and 8 <= height <= 4096):
            raise ValueError(f"screenshot size must be 8..4096 pixels per side, got {width}x{height}")
        if not str(path).lower().endswith(".png"):
            raise ValueError(f"{path}: a screenshot is written as .png")
        t0 = time.perf_counter()
        out = self.fields.trainers[0].render(np.asarray(c2w, np.float32), height, width, focal_for(width, fov),
                                             keys=("rgb",))
        img = to_uint8(out["rgb"].numpy())
        atomic_write(path, lambda tmp: iio.imwrite(tmp, img, extension=".png"))
        self.out.note("info", f"screenshot saved: {path} ({width}x{height}, {time.perf_counter() - t0:.1f} s)")
