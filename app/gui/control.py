"""Automation for tests, benchmarks and screenshots: ``--control`` reads JSON commands from
stdin (screenshot, drag, wheel, click_view, set, click, quit), ``--stats`` prints the GUI's
state as JSON lines, and each note the status line shows as a "note" event. Commands act
through the same paths as the user: widget callbacks, the mouse interaction, dearpygui's
framebuffer."""
from __future__ import annotations

import inspect
import json
import os
import queue
import sys
import threading
import time

import numpy as np

STATS_EVERY_S = 0.5


def call_dpg(fn, *args):
    """Call a dearpygui callback with as many of (sender, app_data, user_data) as it takes."""
    try:
        n = len(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # a builtin without a signature: give it all three
        n = 3
    return fn(*args[:n])


class ControlChannel:
    """``clock`` is the App's FrameClock; ``quit()`` ends the app's loop; ``extra()`` adds
    to each stats line."""

    def __init__(self, dpg, worker, viewport, camera, display, clock, quit, out=None, extra=None):
        self.dpg, self.worker, self.viewport, self.camera = dpg, worker, viewport, camera
        self.display, self.clock, self.quit, self.extra = display, clock, quit, extra
        self.out = out or sys.stdout
        self.commands: queue.Queue = queue.Queue()
        self.pending: list = []  # (frame_number, fn) deferred actions (synthetic drags)
        self._last_stats = 0.0

    def start_reader(self) -> None:
        def reader():
            for line in sys.stdin:
                line = line.strip()
                if not line:
                    continue
                try:
                    self.commands.put(json.loads(line))
                except json.JSONDecodeError:
                    self.emit({"event": "control_error", "line": line[:200]})
            self.commands.put({"cmd": "eof"})

        threading.Thread(target=reader, name="control", daemon=True).start()

    def emit(self, obj) -> None:
        print(json.dumps(obj), file=self.out, flush=True)

    # -- per frame -------------------------------------------------------------------------------
    def tick(self) -> None:
        """Commands that arrived, and deferred actions now due."""
        self._handle_commands()
        self._run_pending()

    def _handle_commands(self) -> None:
        while True:
            try:
                c = self.commands.get_nowait()
            except queue.Empty:
                break
            cmd = c.get("cmd")
            if cmd == "quit":
                self.quit()
            elif cmd == "screenshot":
                self.screenshot(c["path"])
            elif cmd == "drag":
                start = (float(c["u"]), float(c["v"])) if "u" in c else None
                self.synthetic_drag(float(c.get("dx", 200)), float(c.get("dy", 0)), c.get("button", "left"),
                                    int(c.get("frames", 12)), start)
            elif cmd == "wheel":
                self.wheel(float(c.get("clicks", 1)))
            elif cmd == "click_view":
                self.click_view(float(c["u"]), float(c["v"]))
            elif cmd in ("set", "click"):
                self._invoke(c["tag"], c.get("value"), set_value=cmd == "set")
            elif cmd != "eof":
                self.emit({"event": "control_error", "cmd": cmd})

    def _invoke(self, tag, value, set_value) -> None:
        """Drive a widget as a user would: set its value, run its callback (and release handler)."""
        dpg = self.dpg
        if set_value:
            dpg.set_value(tag, value)
        cb = dpg.get_item_callback(tag)
        if cb is not None:
            call_dpg(cb, tag, dpg.get_value(tag), None)
        reg = dpg.get_item_info(tag).get("handlers")
        if reg:
            for h in dpg.get_item_children(reg, 1):
                hcb = dpg.get_item_callback(h)
                if hcb:
                    call_dpg(hcb, h, tag, None)
        self.emit({"event": "invoked", "tag": tag})

    def screenshot(self, path) -> None:
        """Save the window to PNG; the framebuffer arrives in a callback after the next frame."""
        path = os.path.abspath(path)
        frame = self.clock.frames

        def done(sender, buffer):
            w, h = buffer.get_width(), buffer.get_height()
            arr = np.frombuffer(buffer, dtype=np.float32).reshape(h, w, 4)
            from PIL import Image

            try:
                Image.fromarray((np.clip(arr[..., :3], 0, 1) * 255 + 0.5).astype(np.uint8)).save(path)
            except (OSError, ValueError) as exc:  # an unwritable path, an unknown image extension
                self.emit({"event": "screenshot_error", "path": path, "error": str(exc)})
                return
            self.emit({"event": "screenshot", "path": path, "frame": frame, "size": [w, h]})

        self.dpg.output_frame_buffer(callback=done)

    def synthetic_drag(self, dx, dy, button="left", frames=12, start=None) -> None:
        """A drag through the same Interaction path the mouse uses, spread over GUI frames,
        by (dx, dy) screen pixels from ``start`` (u, v), fractions of the first image's width
        and height (its centre if None)."""
        it = self.camera.interaction
        if it is None:
            self.emit({"event": "drag_error", "error": "camera not ready"})
            return
        x, y, w, h = self.viewport.rects_screen()[0]
        u, v = start or (0.5, 0.5)
        start = (x + u * w, y + v * h)
        n = self.clock.frames
        self.pending.append((n + 1, lambda: it.press(button, start, source="control")))
        for k in range(1, frames + 1):
            p = (start[0] + dx * k / frames, start[1] + dy * k / frames)
            self.pending.append((n + 1 + k, lambda p=p: it.move(p)))
        self.pending.append((n + frames + 2, lambda: (it.release(), self.emit(
            {"event": "drag_done", "camera": self.camera.camera.state(), "start": list(start)}))))

    def wheel(self, clicks: float) -> None:
        """Mouse-wheel clicks over the view's centre (positive zooms in), then the pose settles."""
        it = self.camera.interaction
        if it is None:
            self.emit({"event": "wheel_error", "error": "camera not ready"})
            return
        x, y, w, h = self.viewport.rects_screen()[0]
        it.wheel(clicks, (x + w / 2, y + h / 2))
        self.camera.changed(False)
        self.emit({"event": "wheel_done", "camera": self.camera.camera.state()})

    def click_view(self, u: float, v: float) -> None:
        """A left click (press and release, no motion) at (u, v), fractions of the first
        image's width and height, through the mouse's Interaction path."""
        it = self.camera.interaction
        if it is None:
            self.emit({"event": "click_error", "error": "camera not ready"})
            return
        x, y, w, h = self.viewport.rects_screen()[0]
        pos = (x + u * w, y + v * h)
        n = self.clock.frames
        self.pending.append((n + 1, lambda: it.press("left", pos, source="control")))
        self.pending.append((n + 2, lambda: (it.release(), self.emit({"event": "clicked", "pos": list(pos)}))))

    def _run_pending(self) -> None:
        n = self.clock.frames
        due = [p for p in self.pending if p[0] <= n]
        self.pending = [p for p in self.pending if p[0] > n]
        for _, fn in due:
            fn()

    # -- reports -----------------------------------------------------------------------------------
    def report(self) -> None:
        """A stats line (--stats) every STATS_EVERY_S."""
        now = time.perf_counter()
        if now - self._last_stats < STATS_EVERY_S:
            return
        self._last_stats = now
        st = self.worker.status()
        f = self.viewport.frame
        cam = self.camera.camera
        rect = None
        if self.viewport.info is not None:
            vx, vy = self.dpg.get_viewport_pos()
            x, y, w, h = self.viewport.rects_screen()[0]
            rect = [vx + x, vy + y, w, h]
        self.emit({"t": round(now - self.clock.start, 3), "gui_frames": self.clock.frames,
                   "gui_fps": round(self.clock.fps, 1), "step": st["step"], "steps_per_s": round(st["steps_per_s"], 2),
                   "state": st["state"], "error": st.get("error"), "cam_version": self.camera.sent_version,
                   "frame_version": f.version if f else None, "frame_level": f.level if f else None,
                   "frame_levels": f.n_levels if f else None, "frame_size": list(f.size) if f else None,
                   "frame_kind": f.kind if f else None, "uploads": self.viewport.uploaded,
                   "camera": cam.state() if cam else None, "image_rect": rect,
                   "display": self.display.description, "dragging": self.camera.dragging,
                   **(self.extra() if self.extra else {})})

    def emit_start(self, lab: bool) -> None:
        self.emit({"event": "start", "display": self.display.description, "lab": lab,
                   "viewport": [self.dpg.get_viewport_client_width(), self.dpg.get_viewport_client_height()]})
