"""NeRF Lab desktop app (dearpygui).

Threads: this (GUI) thread builds and draws the UI and never runs torch; the
training worker (app.gui.worker.Worker) trains and renders; the display thread
(app.gui.gl_display.DisplayThread) upsamples renders into the one RGBA texture
buffer with moderngl (numpy when there is no GL). The GUI loop polls both each frame.

The App composes the parts and runs the loop: Viewport (the render view), CameraControl
(mouse, auto-orbit, camera requests), SidePanel (widgets and their callbacks), the plots,
StatusLine, ControlChannel (--control / --stats automation), and the viewer's parts:
OpenPanel (open a scene, process photos or a video), SceneOverlay (cameras, points, crop
box and path drawn over the render), PathEditor and PathPlayer (camera paths), CropPanel.
"""
from __future__ import annotations

import os
import signal
import sys
import time

from app.gui.camera_control import CameraControl
from app.gui.capture_process import classify
from app.gui.control import ControlChannel, call_dpg
from app.gui.crop_panel import CropPanel
from app.gui.gl_display import DisplayThread
from app.gui.open_panel import OpenPanel
from app.gui.pacing import Activity, FrameClock
from app.gui.panel import SidePanel
from app.gui.path_editor import PathEditor
from app.gui.path_player import PathPlayer
from app.gui.plots import TrainingPlots, WeightsPlot
from app.gui.render_schedule import fov_for
from app.gui.scene_overlay import SceneOverlay, frame_camera
from app.gui.status_line import StatusLine
from app.gui.theme import BG, PANEL_W, STATUS_H, TEX, Theme
from app.gui.viewport import Viewport
from app.gui.worker import Worker

INTERRUPTED_EXIT = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
WORKER_STOP_S = 1.0  # a step or a render in progress is aborted well within this
WORKER_GRACE_S = 2.0  # then the window is gone and we wait this long before leaving without it
STATUS_EVERY_S = 0.25  # the worker's status, the panel's lines and the status line


class ViewportError(RuntimeError):
    """dearpygui could not open its window."""


class App:
    def __init__(self, args, settings: dict):
        import dearpygui.dearpygui as dpg

        self.dpg = dpg
        self.args = args
        self.quit = False
        self.interrupted = False
        try:
            kind, data = classify(args.data)
        except ValueError:
            kind, data = "scene", args.data  # the loader says what is wrong, in the app
        self._capture = None if kind == "scene" else args.data  # photos or a video: process first
        self.worker = Worker(data=data if kind == "scene" else None, settings=settings, device=args.device,
                             downscale=args.downscale, train=not args.paused,
                             scene_options={"ndc": getattr(args, "ndc", None),
                                            "skip_missing": getattr(args, "skip_missing", False)})
        self.display = DisplayThread(TEX, TEX, prefer_gl=not args.no_gl, background=BG)
        self.activity = Activity()
        self.clock = FrameClock()
        self.info: dict | None = None
        self._last_status = 0.0
        dpg.create_context()
        dpg.configure_app(manual_callback_management=True)
        self.theme = Theme(dpg)
        self.viewport = Viewport(dpg, self.worker, self.display, self.activity)
        self.camera = CameraControl(dpg, self.worker, self.viewport, self.activity)
        self.plots = TrainingPlots(dpg, self.theme)
        self.weights = WeightsPlot(dpg, self.worker, self.theme, self.viewport)
        self.status_line = StatusLine(dpg)
        self.panel = SidePanel(dpg, self.worker, self.viewport, self.camera, self.plots, self.weights, self.note)
        self.overlay = self.viewport.scene_overlay = SceneOverlay(dpg)
        self.player = PathPlayer(self.camera, lambda: (self.info["width"], self.info["height"]) if self.info
                                 else (1, 1))
        self.camera.on_click = self._on_click
        self.camera.grab = self._grab
        self.opener = OpenPanel(dpg, self.worker, self.note)
        self.path = PathEditor(dpg, self.worker, self.camera, self.player, self.overlay, self.note,
                               self.panel.out_dir)
        self.crop = CropPanel(dpg, self.worker, self.overlay, self.note)
        self.control = ControlChannel(dpg, self.worker, self.viewport, self.camera, self.display, self.clock,
                                      quit=self.request_quit, extra=self._stats)
        self.lab = None
        self._build()
        try:
            dpg.create_viewport(title="NeRF Lab", width=args.width, height=args.height, x_pos=0, y_pos=0,
                                min_width=900, min_height=600, clear_color=(23, 26, 31, 255), vsync=False)
            dpg.setup_dearpygui()
        except Exception as exc:  # dearpygui raises plain Exception; it means "no window here"
            dpg.destroy_context()
            raise ViewportError(f"dearpygui could not create its window ({exc})") from None
        dpg.set_primary_window("main", True)
        dpg.set_viewport_resize_callback(lambda *a: self._relayout())

    def _build(self) -> None:
        dpg = self.dpg
        self.viewport.build_texture()
        with dpg.handler_registry():
            dpg.add_mouse_wheel_handler(callback=lambda s, delta: self.camera.on_wheel(delta))
            dpg.add_key_press_handler(callback=lambda *a: self.activity.poke())
        with dpg.window(tag="main", no_scrollbar=True):
            with dpg.tab_bar(tag="tabs"):
                with dpg.tab(label="  3D NeRF  ", tag="tab_3d"):
                    with dpg.group(horizontal=True):
                        with dpg.child_window(tag="view_pane", width=TEX + 16, border=False, no_scrollbar=True):
                            self.viewport.build()
                        with dpg.child_window(tag="panel", width=PANEL_W, border=False):
                            self.panel.build(top=[self.opener], view_extra=self.overlay.build,
                                             middle=[self.path, self.crop])
                self._build_lab_tab()
            self.status_line.build()
        self.opener.build_dialogs()

    def _build_lab_tab(self) -> None:
        from app.gui.lab_tab import build_lab_tab

        with self.dpg.tab(label="  2D lab  ", tag="tab_lab"):
            # A fixed-height pane keeps the status line visible under the lab's content.
            self.lab = build_lab_tab(self.dpg.add_child_window(tag="lab_pane", height=600, border=False))

    def note(self, level: str, text: str) -> None:
        self.status_line.set_note(level, text)
        self.panel.log.add(level, text)
        if self.args.stats:  # what the status line and the log were told, for tests and scripts
            self.control.emit({"event": "note", "level": level, "text": text})

    def request_quit(self) -> None:
        self.quit = True

    def _on_sigint(self, signum, frame) -> None:
        """Ctrl-C in the terminal: close as the window's close button does. A second Ctrl-C
        while closing leaves at once."""
        if self.interrupted:
            os._exit(INTERRUPTED_EXIT)
        self.interrupted = self.quit = True

    def _relayout(self) -> None:
        dpg = self.dpg
        vw, vh = dpg.get_viewport_client_width(), dpg.get_viewport_client_height()
        content_h = vh - STATUS_H - 62  # below the tab bar, above the status line
        size = int(max(240, min(vw - PANEL_W - 40, content_h - 34, 2 * TEX)))
        panel_w = max(PANEL_W, vw - size - 46)
        dpg.configure_item("view_pane", width=size + 16, height=content_h)
        dpg.configure_item("panel", width=panel_w, height=content_h)
        dpg.configure_item("lab_pane", height=content_h)
        self.viewport.resize(size)
        self.panel.resize(panel_w)

    # -- main loop -------------------------------------------------------------------------------------
    def run(self) -> int:
        dpg, args = self.dpg, self.args
        previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)
        self.worker.start()
        if self._capture:
            self.opener.open(self._capture)
        if args.snapshot:
            self.worker.send("load", path=args.snapshot)  # runs once the scene is loaded
        self.display.start()
        self.display.wait_ready(5.0)
        dpg.show_viewport()
        self._relayout()
        if args.control:
            self.control.start_reader()
        if args.stats:
            self.control.emit_start(lab=self.lab is not None)
        cap = 1.0 / args.fps_cap if args.fps_cap and args.fps_cap > 0 else 0.0
        idle_cap = max(cap, 1.0 / args.idle_fps) if args.idle_fps and args.idle_fps > 0 else cap
        drag_done = not args.drag
        try:
            while dpg.is_dearpygui_running() and not self.quit:
                t0 = time.perf_counter()
                self._tick()
                t1 = time.perf_counter()
                self.clock.time_tick += t1 - t0
                if not drag_done and self.viewport.frame is not None and self.camera.interaction is not None:
                    drag_done = True
                    self.control.synthetic_drag(160, 40)
                dpg.render_dearpygui_frame()
                self.clock.time_draw += time.perf_counter() - t1
                self._run_callbacks()
                self.clock.count(t0)
                if args.frames is not None and self.clock.frames >= args.frames:
                    break
                if args.seconds is not None and t0 - self.clock.start >= args.seconds:
                    break
                active = (self.activity.active(t0) or self.control.pending or self.camera.dragging
                          or self.camera.auto_on)
                rest = (cap if active else idle_cap) - (time.perf_counter() - t0)
                if rest > 0:
                    time.sleep(rest)
            if args.screenshot and dpg.is_dearpygui_running() and not self.interrupted:
                self.control.screenshot(args.screenshot)
                for _ in range(3):  # the framebuffer callback arrives after the next frame
                    dpg.render_dearpygui_frame()
                    self._run_callbacks()
        finally:
            self._close()
            signal.signal(signal.SIGINT, previous_sigint)
        if self.interrupted:
            print("interrupted (Ctrl-C): window closed, worker stopped", file=sys.stderr)
            return INTERRUPTED_EXIT
        return 0

    def _close(self) -> None:
        self.opener.close()
        t = time.perf_counter()
        stopped = self.worker.stop(WORKER_STOP_S)
        stop_s = time.perf_counter() - t
        self.display.stop(1.0)
        self.control.emit({"event": "exit", "gui_frames": self.clock.frames, "step": self.worker.status()["step"],
                           "worker_stopped": stopped, "worker_stop_s": round(stop_s, 3),
                           "interrupted": self.interrupted, **self.clock.per_frame_ms()})
        self.dpg.destroy_context()
        if not stopped and not self.worker.join(WORKER_GRACE_S):
            # The worker is inside something that cannot be cut short (loading the scene,
            # importing torch, a long backward pass or tool call). The window is gone; waiting
            # would keep a closed app alive, and interpreter teardown with that thread running
            # can abort in C++, so leave without the usual teardown.
            if self.interrupted:
                print("interrupted (Ctrl-C): window closed; the worker was busy, not waited for", file=sys.stderr)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(INTERRUPTED_EXIT if self.interrupted else 0)

    def _run_callbacks(self) -> None:
        for job in self.dpg.get_callback_queue() or ():
            if job[0] is not None:
                call_dpg(job[0], *job[1:4])

    def _tick(self) -> None:
        self.control.tick()
        for level, text in self.worker.drain_notes():
            self.note(level, text)
        now = time.perf_counter()
        if now - self._last_status >= STATUS_EVERY_S:
            self._last_status = now
            st = self.worker.status()
            info = self.worker.scene_info.get()
            if info is not None and (self.info is None or info["seq"] != self.info["seq"]):
                self._take_scene(info)
            self.panel.update(st)
            self.opener.update(st)
            self.path.update(st)
            self.crop.update(st)
            self.status_line.update(st, self.clock.fps, self.display.description)
        self.player.tick()
        pos, probe_ok = self.camera.tick()
        self.viewport.update()
        self.plots.add(self.worker.drain_metrics())
        self.weights.poll(pos, probe_ok)
        self.weights.update()
        self.viewport.draw_probe_marker(self.weights.point if self.weights.on else None)
        if self.args.stats:
            self.control.report()
        if self.lab is not None:
            self.lab.update()

    def _take_scene(self, info) -> None:
        self.player.stop()
        self.info = self.viewport.info = self.panel.info = info
        self.camera.set_scene(info)
        self.overlay.set_scene(info)
        self.path.set_scene(info)
        if getattr(self.args, "camera_path", None) and info["seq"] == 1:
            self.path.load(self.args.camera_path)
        self.crop.set_scene(info)

    def _on_click(self, button, pos) -> None:
        """A click (no drag) on the view: fly to the dataset camera under it, if any."""
        f, hit = self.viewport.frame, self.viewport.pick(pos)
        if button != "left" or hit is None or f is None or self.info is None:
            return
        i, u, v = hit
        scale = self.viewport.rects_screen()[i][2] / f.size[1]
        picked = self.overlay.pick(f, u, v, scale)
        if picked is None:
            return
        split, k = picked
        cams = self.info["cameras"][split]
        self.player.fly_to(cams["c2w"][k], fov_for(cams["width"][k], cams["fx"][k]))
        self.note("info", f"flying to {'training' if split == 'train' else 'held-out'} view {k}")

    def _grab(self, pos):
        """A left press on the view: the crop-box handle under it, if any, takes the drag."""
        f, hit = self.viewport.frame, self.viewport.pick(pos)
        if hit is None or f is None or f.kind == "inerf":
            return None
        i = hit[0]
        scale = self.viewport.rects_screen()[i][2] / f.size[1]
        return self.crop.grab(frame_camera(f), pos, self.viewport.to_image_px(i), scale)

    def _stats(self) -> dict:
        """The viewer's state for the --stats lines."""
        st = self.worker.status()
        return {"scene_seq": self.info["seq"] if self.info else 0, "scene": st.get("scene"),
                "path_keys": len(self.path.keys), "playing": self.player.playing,
                "flights": self.player.finished, "job": st.get("job"), "last_video": st.get("last_video"),
                "process": self.opener.status(), "overlay_version": self.overlay.version,
                "views": {k: len(c["c2w"]) for k, c in self.info["cameras"].items()} if self.info else None,
                "overlay_segments": len(self.overlay.layer().segments),
                "crop": st["crop"].to_json() if st.get("crop") is not None else None}
