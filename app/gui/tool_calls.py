"""The Tools section's long jobs (mesh export, orbit video), run on the worker thread with
their log lines routed into the GUI's notes."""
from __future__ import annotations

import inspect
import time

from app.gui.channels import Outbox


class ToolCalls:
    def __init__(self, out: Outbox, fields):
        self.out, self.fields = out, fields

    def _log_kw(self, fn) -> dict:
        """A tool's optional ``log`` argument, pointed at the notes instead of stdout."""
        return {"log": lambda m: self.out.note("info", str(m))} if "log" in inspect.signature(fn).parameters else {}

    def export_mesh(self, path: str, res: int = 128) -> None:
        from app.tools.export import export_mesh

        t0 = time.perf_counter()
        t = self.fields.trainers[0]
        with t.averaged():
            result = export_mesh(t, path, res=int(res), **self._log_kw(export_mesh))
        summary = ", ".join(f"{k}={v}" for k, v in (result or {}).items() if isinstance(v, (int, float, str)))
        self.out.note("info", f"mesh exported to {path} in {time.perf_counter() - t0:.1f} s"
                              + (f" ({summary})" if summary else ""))

    def video(self, path: str, frames: int = 60) -> None:
        from app.tools.video import render_orbit_video

        t0 = time.perf_counter()
        written = render_orbit_video(self.fields.trainers[0], path, frames=int(frames),
                                     **self._log_kw(render_orbit_video))
        self.out.note("info", f"orbit video written: {written} ({time.perf_counter() - t0:.1f} s)")
