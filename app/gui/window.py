"""NeRF Lab desktop app (dearpygui).

Threads: this (GUI) thread builds and draws the UI and never runs torch; the
training worker (app.gui.worker.Worker) trains and renders; the display thread
(app.gui.gl_display.DisplayThread) upsamples renders into the one RGBA texture
buffer with moderngl (numpy fallback). The GUI loop polls both each frame.
"""
from __future__ import annotations

import importlib
import inspect
import json
import math
import os
import queue
import sys
import threading
import time

import numpy as np

from app.gui.worker import Worker
from app.gui.gl_display import DisplayThread, layout_rects
from app.gui.orbit import OrbitCamera

TEX = 720  # the render texture is TEX x TEX; renders are letterboxed into it
PANEL_W = 500  # side panel width (pixels)
STATUS_H = 30
BG = (0.09, 0.10, 0.12)  # texture background, matches the window theme
ACCENT = (86, 156, 214)
COLOR_A = (96, 170, 255)
COLOR_B = (255, 150, 70)
ERROR = (255, 95, 95)
WARN = (240, 200, 90)
OK = (120, 220, 130)
MAX_POINTS = 4000  # per plot series; older points are thinned 2:1 beyond this
FONT_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/TTF", "/usr/share/fonts/dejavu",
             "/Library/Fonts", "C:/Windows/Fonts")
NOT_AVAILABLE = "not available in this build"


class ViewportError(RuntimeError):
    """dearpygui could not open its window."""


class Interaction:
    """Mouse gestures -> orbit camera. Fed by real mouse polling or by the test hooks.

    press(button, pos) starts a drag if pos is inside ``hit(pos)``; move(pos) orbits
    (left) or pans (right/middle); release() ends it. ``on_change(moving)`` is called
    whenever the camera changed (moving=False when a gesture ends).
    """

    def __init__(self, camera: OrbitCamera, on_change, hit, view_height):
        self.camera, self.on_change, self.hit, self.view_height = camera, on_change, hit, view_height
        self.button = None
        self.last = None
        self.moved = False

    @property
    def dragging(self) -> bool:
        return self.button is not None

    def press(self, button: str, pos) -> bool:
        if self.button is not None or not self.hit(pos):
            return False
        self.button, self.last, self.moved = button, tuple(pos), False
        return True

    def move(self, pos) -> None:
        if self.button is None:
            return
        dx, dy = pos[0] - self.last[0], pos[1] - self.last[1]
        self.last = tuple(pos)
        if dx == 0 and dy == 0:
            return
        if self.button == "left":
            self.camera.orbit(dx, dy)
        else:
            self.camera.pan(dx, dy, self.view_height())
        self.moved = True
        self.on_change(True)

    def release(self) -> None:
        if self.button is None:
            return
        moved = self.moved
        self.button = None
        if moved:
            self.on_change(False)

    def wheel(self, clicks: float, pos) -> bool:
        if clicks == 0 or not self.hit(pos):
            return False
        self.camera.zoom(clicks)
        self.on_change(True)
        return True


def _find_font() -> str | None:
    for d in FONT_DIRS:
        for name in ("DejaVuSans.ttf", "dejavu-sans.ttf", "Arial.ttf", "arial.ttf"):
            p = os.path.join(d, name)
            if os.path.isfile(p):
                return p
    return None


def _colorize(img: dict, mode: str, near: float, far: float) -> np.ndarray:
    """(h, w, 3) float32 for a view mode: rgb, depth (turbo-like ramp) or acc (grey)."""
    if mode == "RGB":
        return img["rgb"]
    if mode == "Depth":
        from app.commands.render import colorize_depth

        return colorize_depth(img["depth"], img["acc"], near, far).astype(np.float32)
    return np.repeat(np.clip(img["acc"], 0, 1)[..., None], 3, -1).astype(np.float32)


def _available(module: str, attr: str) -> bool:
    """A hook built by another feature: usable only if its module imports and has attr."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return False
    except Exception:  # noqa: BLE001 - a broken module counts as absent, never as a crash
        return False
    return hasattr(mod, attr)


class App:
    def __init__(self, args, settings: dict):
        import dearpygui.dearpygui as dpg

        self.dpg = dpg
        self.args = args

        self.quit = False
        self.stats_out = sys.stdout
        self.worker = Worker(data=args.data, settings=settings, device=args.device,
                             downscale=args.downscale, train=not args.paused,
                             scene_options={"ndc": getattr(args, "ndc", None),
                                            "skip_missing": getattr(args, "skip_missing", False)})
        self.display = DisplayThread(TEX, TEX, prefer_gl=not args.no_gl, background=BG)
        self.camera: OrbitCamera | None = None
        self.info: dict | None = None
        self.interaction: Interaction | None = None
        self.frame = None  # the newest Frame from the worker
        self.frame_seq = -1
        self.display_dirty = False
        self.uploaded = 0
        self.sent_version = 0
        self.sent_moving = False
        self.cam_dirty = False
        self.cam_moving = False
        self.auto_last = time.perf_counter()
        self.wheel_clicks = 0.0
        self.wheel_time = 0.0
        self.view_mode = "RGB"
        self.smooth = True
        self.plot = {"run": None, "step": [], "loss": [], "psnr": [], "loss_b": [], "psnr_b": []}
        self.last_plot = 0.0
        self.last_status = 0.0
        self.last_stats = 0.0
        self.log: list[tuple[str, str, str]] = []
        self.note = ("info", "starting: loading torch and the scene...")
        self.settings_seq = -1
        self.probe_sent = (None, 0.0)
        self.probe_point = None
        self.probe_seq = -1
        self.gui_frames = 0
        self.time_tick = self.time_draw = 0.0  # seconds spent in our per-frame Python vs dearpygui drawing
        self.fps = 0.0
        self._fps_t, self._fps_n = time.perf_counter(), 0
        self.t_start = time.perf_counter()
        self.lab = None
        self.lab_error = None
        self.control: queue.Queue = queue.Queue()
        self.pending: list = []  # (frame_number, fn) deferred actions (synthetic drags, screenshots)
        self.disp_size = TEX
        self.last_mouse = None
        self.active_until = 0.0  # full frame rate until then (input, new renders); slower when idle
        self.hooks = {
            "export": _available("app.tools.export", "export_mesh"),
            "video": _available("app.tools.video", "render_orbit_video"),
            "inerf": _available("app.tools.inerf", "InvertPose"),
        }
        dpg.create_context()
        dpg.configure_app(manual_callback_management=True)
        self._theme()
        self._build()
        try:
            dpg.create_viewport(title="NeRF Lab", width=args.width, height=args.height, x_pos=0, y_pos=0,
                                min_width=900, min_height=600, clear_color=(23, 26, 31, 255), vsync=False)
            dpg.setup_dearpygui()
        except Exception as exc:  # noqa: BLE001 - whatever dearpygui raises, the message says it
            dpg.destroy_context()
            raise ViewportError(f"dearpygui could not create its window ({exc})") from None
        dpg.set_primary_window("main", True)
        dpg.set_viewport_resize_callback(lambda *a: self._relayout())

    # -- UI construction -----------------------------------------------------------------------
    def _theme(self) -> None:
        dpg = self.dpg
        font = _find_font()
        if font:
            with dpg.font_registry():
                self.font = dpg.add_font(font, 15)
                self.font_big = dpg.add_font(font, 19)
                self.font_small = dpg.add_font(font, 13)
            dpg.bind_font(self.font)
        else:
            self.font = self.font_big = self.font_small = None
        with dpg.theme() as theme:
            with dpg.theme_component(dpg.mvAll):
                dpg.add_theme_color(dpg.mvThemeCol_WindowBg, (23, 26, 31))
                dpg.add_theme_color(dpg.mvThemeCol_ChildBg, (28, 31, 37))
                dpg.add_theme_color(dpg.mvThemeCol_FrameBg, (42, 46, 54))
                dpg.add_theme_color(dpg.mvThemeCol_FrameBgHovered, (55, 61, 72))
                dpg.add_theme_color(dpg.mvThemeCol_Button, (48, 84, 120))
                dpg.add_theme_color(dpg.mvThemeCol_ButtonHovered, (62, 110, 156))
                dpg.add_theme_color(dpg.mvThemeCol_ButtonActive, (75, 130, 185))
                dpg.add_theme_color(dpg.mvThemeCol_Header, (40, 50, 64))
                dpg.add_theme_color(dpg.mvThemeCol_HeaderHovered, (52, 66, 84))
                dpg.add_theme_color(dpg.mvThemeCol_SliderGrab, ACCENT)
                dpg.add_theme_color(dpg.mvThemeCol_CheckMark, ACCENT)
                dpg.add_theme_color(dpg.mvThemeCol_Tab, (36, 42, 52))
                dpg.add_theme_color(dpg.mvThemeCol_TabActive, (48, 84, 120))
                dpg.add_theme_color(dpg.mvThemeCol_Border, (50, 55, 64))
                dpg.add_theme_style(dpg.mvStyleVar_FrameRounding, 4)
                dpg.add_theme_style(dpg.mvStyleVar_ChildRounding, 6)
                dpg.add_theme_style(dpg.mvStyleVar_GrabRounding, 4)
                dpg.add_theme_style(dpg.mvStyleVar_WindowPadding, 10, 8)
                dpg.add_theme_style(dpg.mvStyleVar_ItemSpacing, 8, 6)
                dpg.add_theme_style(dpg.mvStyleVar_FramePadding, 6, 4)
            with dpg.theme_component(dpg.mvButton, enabled_state=False):
                dpg.add_theme_color(dpg.mvThemeCol_Button, (45, 48, 54))
                dpg.add_theme_color(dpg.mvThemeCol_ButtonHovered, (45, 48, 54))
                dpg.add_theme_color(dpg.mvThemeCol_Text, (120, 124, 130))
        dpg.bind_theme(theme)
        with dpg.theme() as self.plot_theme:
            with dpg.theme_component(dpg.mvAll):
                dpg.add_theme_color(dpg.mvPlotCol_PlotBg, (20, 22, 27), category=dpg.mvThemeCat_Plots)
                dpg.add_theme_style(dpg.mvPlotStyleVar_PlotPadding, 6, 6, category=dpg.mvThemeCat_Plots)
        self.series_theme = {}
        for key, col in (("a", COLOR_A), ("b", COLOR_B), ("coarse", (150, 150, 160)), ("fine", COLOR_A)):
            with dpg.theme() as t:
                with dpg.theme_component(dpg.mvAll):
                    dpg.add_theme_color(dpg.mvPlotCol_Line, col, category=dpg.mvThemeCat_Plots)
                    dpg.add_theme_color(dpg.mvPlotCol_MarkerFill, col, category=dpg.mvThemeCat_Plots)
                    dpg.add_theme_color(dpg.mvPlotCol_MarkerOutline, col, category=dpg.mvThemeCat_Plots)
                    dpg.add_theme_style(dpg.mvPlotStyleVar_LineWeight, 2, category=dpg.mvThemeCat_Plots)
            self.series_theme[key] = t

    def _build(self) -> None:
        dpg = self.dpg
        with dpg.texture_registry():
            dpg.add_dynamic_texture(TEX, TEX, self.display.buffer, tag="render_tex")
        with dpg.handler_registry():
            dpg.add_mouse_wheel_handler(callback=self._on_wheel)
            dpg.add_key_press_handler(callback=self._on_key)
        with dpg.window(tag="main", no_scrollbar=True):
            with dpg.tab_bar(tag="tabs"):
                with dpg.tab(label="  3D NeRF  ", tag="tab_3d"):
                    with dpg.group(horizontal=True):
                        with dpg.child_window(tag="view_pane", width=TEX + 16, border=False, no_scrollbar=True):
                            self._build_view()
                        with dpg.child_window(tag="panel", width=PANEL_W, border=False):
                            self._build_panel()
                self._build_lab_tab()
            with dpg.child_window(tag="statusbar", height=STATUS_H, border=False, no_scrollbar=True):
                with dpg.group(horizontal=True):
                    dpg.add_text("●", tag="st_dot", color=WARN)
                    dpg.add_text("starting", tag="st_state")
                    for tag in ("st_device", "st_step", "st_rate", "st_fps", "st_display"):
                        dpg.add_text("|", color=(80, 86, 96))
                        dpg.add_text("", tag=tag)
                    dpg.add_text("|", color=(80, 86, 96))
                    dpg.add_text("", tag="st_note")
                with dpg.tooltip("st_display"):
                    dpg.add_text("", tag="st_display_tip")
                with dpg.tooltip("st_note"):
                    dpg.add_text("", tag="st_note_tip", wrap=600)

    def _build_view(self) -> None:
        dpg = self.dpg
        with dpg.drawlist(TEX, TEX, tag="view"):
            dpg.draw_image("render_tex", (0, 0), (TEX, TEX), tag="view_img")
            dpg.draw_text((12, 10), "", tag="lbl_a", size=18, color=COLOR_A)
            dpg.draw_text((12, 10), "", tag="lbl_b", size=18, color=COLOR_B)
            # A translucent plate keeps the caption readable on white backgrounds.
            dpg.draw_rectangle((0, 0), (0, 0), tag="lbl_plate", fill=(15, 17, 21, 170), color=(0, 0, 0, 0),
                               rounding=4)
            dpg.draw_text((12, TEX - 26), "", tag="lbl_level", size=15, color=(220, 224, 230))
            dpg.draw_text((TEX / 2 - 150, TEX / 2 - 10), "loading scene and model...", tag="lbl_center",
                          size=20, color=(200, 204, 210))
            dpg.draw_circle((0, 0), 7, tag="probe_ring", color=(255, 255, 255, 230), thickness=2, show=False)
            dpg.draw_line((0, 0), (0, 0), tag="probe_h", color=(255, 255, 255, 200), show=False)
            dpg.draw_line((0, 0), (0, 0), tag="probe_v", color=(255, 255, 255, 200), show=False)
        dpg.add_text("Left-drag: orbit    Right/middle-drag: pan    Wheel: zoom", tag="hint",
                     color=(130, 136, 146))

    def _header(self, label: str, open_: bool = True):
        return self.dpg.collapsing_header(label=label, default_open=open_)

    def _build_panel(self) -> None:
        dpg = self.dpg
        w = PANEL_W - 24
        # Training
        with self._header("Training"):
            with dpg.group(horizontal=True):
                dpg.add_button(label="Start", width=90, callback=lambda: self.worker.send("train"), tag="btn_start")
                dpg.add_button(label="Pause", width=90, callback=lambda: self.worker.send("pause"), tag="btn_pause")
                dpg.add_button(label="Reset", width=90, callback=lambda: self.worker.send("reset"), tag="btn_reset")
                dpg.add_text("", tag="train_line", color=(200, 204, 210))
            with dpg.tooltip("btn_reset"):
                dpg.add_text("Fresh network with the current settings (step 0)")
            with dpg.group(horizontal=True):
                for tag, label, ylabel, scale in (("loss", "loss", "loss (log)", dpg.mvPlotScale_Log10),
                                                  ("psnr", "PSNR", "PSNR dB", dpg.mvPlotScale_Linear)):
                    with dpg.plot(label="", height=170, width=w // 2 - 4, tag=f"plot_{tag}", no_menus=True,
                                  no_mouse_pos=True, no_box_select=True):
                        dpg.add_plot_legend(location=dpg.mvPlot_Location_SouthEast if tag == "psnr"
                                            else dpg.mvPlot_Location_NorthEast)
                        dpg.add_plot_axis(dpg.mvXAxis, label="step", tag=f"{tag}_x", auto_fit=True)
                        with dpg.plot_axis(dpg.mvYAxis, label=ylabel, tag=f"{tag}_y", auto_fit=True, scale=scale):
                            dpg.add_line_series([], [], label="train", tag=f"{tag}_a")
                            dpg.add_line_series([], [], label="B", tag=f"{tag}_b", show=False)
                    dpg.bind_item_theme(f"plot_{tag}", self.plot_theme)
                    dpg.bind_item_theme(f"{tag}_a", self.series_theme["a"])
                    dpg.bind_item_theme(f"{tag}_b", self.series_theme["b"])
        # Model
        with self._header("Model"):
            dpg.add_combo([], label="model", default_value="", width=160, tag="model",
                          callback=lambda s, a: self._settings(model=a))
            with dpg.tooltip("model"):
                dpg.add_text("Field kinds this build can construct (models.build_model)", tag="model_tip")
            dpg.add_checkbox(label="positional encoding (PE)", default_value=True, tag="pe",
                             callback=lambda s, a: self._settings(pe=a))
            self._slider_int("L_xyz", "L position (rebuild)", 0, 16, 10, rebuild=True)
            self._slider_int("L_dir", "L direction (rebuild)", 0, 8, 4, rebuild=True)
            self._slider_int("n_coarse", "coarse samples", 2, 128, 32)
            self._slider_int("n_fine", "fine samples", 0, 256, 32)
            dpg.add_slider_float(label="render scale", tag="res_scale", min_value=0.25, max_value=2.0,
                                 default_value=1.0, width=220, format="%.2fx")
            self._on_release("res_scale", lambda: self._settings(res_scale=dpg.get_value("res_scale")))
            dpg.add_text("", tag="model_line", color=(150, 156, 166))
        # View
        with self._header("View"):
            dpg.add_radio_button(["RGB", "Depth", "Opacity"], horizontal=True, default_value="RGB",
                                 tag="view_mode", callback=lambda s, a: self._set_view(mode=a))
            with dpg.group(horizontal=True):
                dpg.add_checkbox(label="bilinear upsampling", default_value=True, tag="smooth",
                                 callback=lambda s, a: self._set_view(smooth=a))
                dpg.add_checkbox(label="weights under cursor", default_value=False, tag="probe_on",
                                 callback=lambda s, a: self._probe_toggle(a))
            with dpg.plot(label="", height=150, width=w, tag="plot_w", no_menus=True, show=False,
                          no_box_select=True):
                dpg.add_plot_legend(location=dpg.mvPlot_Location_NorthEast)
                dpg.add_plot_axis(dpg.mvXAxis, label="depth t along the ray", tag="w_x")
                with dpg.plot_axis(dpg.mvYAxis, label="weight", tag="w_y"):
                    dpg.add_stem_series([], [], label="coarse", tag="w_coarse")
                    dpg.add_line_series([], [], label="fine", tag="w_fine")
            dpg.bind_item_theme("plot_w", self.plot_theme)
            dpg.bind_item_theme("w_coarse", self.series_theme["coarse"])
            dpg.bind_item_theme("w_fine", self.series_theme["fine"])
            dpg.add_text("", tag="probe_line", color=(150, 156, 166), show=False)
        # Camera
        with self._header("Camera"):
            with dpg.group(horizontal=True):
                dpg.add_checkbox(label="auto-orbit", tag="auto_orbit", callback=lambda s, a: self._auto_toggle(a))
                dpg.add_slider_float(label="deg/s", tag="orbit_speed", min_value=5, max_value=90,
                                     default_value=20, width=140, format="%.0f")
            dpg.add_slider_float(label="field of view", tag="fov", min_value=10, max_value=100,
                                 default_value=40, width=220, format="%.1f deg",
                                 callback=lambda s, a: self._set_fov(a))
            with dpg.group(horizontal=True):
                dpg.add_button(label="Snap to nearest training view", callback=self._snap, tag="btn_snap")
                dpg.add_button(label="Reset camera", callback=self._reset_camera)
            dpg.add_text("", tag="cam_line", color=(150, 156, 166))
        # Compare
        with self._header("Compare (A/B split screen)", open_=False):
            dpg.add_checkbox(label="train A and B on the same rays, side by side", tag="compare",
                             callback=lambda s, a: self._settings(compare=a))
            dpg.add_combo(["B = PE off (plain MLP)", "B = PE with lower L"], default_value="B = PE off (plain MLP)",
                          tag="compare_b", width=260,
                          callback=lambda s, a: self._settings(compare_b="pe_off" if "off" in a else "L"))
            self._slider_int("L_xyz_b", "B's L position", 0, 16, 4, rebuild=True)
        # Tools
        with self._header("Tools", open_=False):
            dpg.add_input_text(label="output folder", default_value=os.path.abspath(os.path.join("runs", "gui")),
                               tag="out_dir", width=300)
            with dpg.group(horizontal=True):
                self._tool_button("Save snapshot", "btn_save", True, lambda: self._tool("save"))
                self._tool_button("Load snapshot", "btn_load", True, lambda: self._tool("load"))
            with dpg.group(horizontal=True):
                self._tool_button("Export mesh", "btn_mesh", self.hooks["export"], lambda: self._tool("export_mesh"))
                self._tool_button("Render orbit video", "btn_video", self.hooks["video"],
                                  lambda: self._tool("video"))
            with dpg.group(horizontal=True):
                self._tool_button("iNeRF demo", "btn_inerf", self.hooks["inerf"], lambda: self._tool("inerf"))
                self._tool_button("Stop iNeRF", "btn_inerf_stop", self.hooks["inerf"],
                                  lambda: self.worker.send("inerf_stop"))
                dpg.add_input_int(label="test view", tag="inerf_view", default_value=0, width=90)
            dpg.add_text("", tag="inerf_line", color=(150, 156, 166))
        # Log
        with self._header("Log", open_=False):
            with dpg.child_window(height=150, tag="log", border=True):
                pass

    def _slider_int(self, key, label, lo, hi, default, rebuild=False):
        dpg = self.dpg
        dpg.add_slider_int(label=label, tag=key, min_value=lo, max_value=hi, default_value=default, width=220)
        if rebuild:
            # A new network per slider tick would thrash: rebuild once the slider is released.
            self._on_release(key, lambda: self._settings(**{key: dpg.get_value(key)}))
        else:
            dpg.configure_item(key, callback=lambda s, a: self._settings(**{key: a}))

    def _on_release(self, tag, fn):
        dpg = self.dpg
        with dpg.item_handler_registry() as reg:
            dpg.add_item_deactivated_after_edit_handler(callback=lambda *a: fn())
        dpg.bind_item_handler_registry(tag, reg)

    def _tool_button(self, label, tag, enabled, callback):
        dpg = self.dpg
        dpg.add_button(label=label, tag=tag, enabled=enabled, callback=callback, width=150)
        with dpg.tooltip(tag):
            dpg.add_text("runs in the worker thread" if enabled else NOT_AVAILABLE)

    def _build_lab_tab(self) -> None:
        dpg = self.dpg
        try:
            lab = importlib.import_module("app.gui.lab_tab")
        except ImportError:
            return  # the 2D lab is another feature; no tab in builds without it
        except Exception as exc:  # noqa: BLE001
            self.lab_error = f"2D lab failed to import: {exc}"
            return
        with dpg.tab(label="  2D lab  ", tag="tab_lab"):
            # A fixed-height pane keeps the status line visible under the lab's content.
            pane = dpg.add_child_window(tag="lab_pane", height=600, border=False)
            try:
                self.lab = lab.build_lab_tab(pane)
            except Exception as exc:  # noqa: BLE001 - a broken tab must not take the app down
                self.lab_error = f"2D lab failed to build: {exc}"
                dpg.add_text(self.lab_error, color=ERROR, parent=pane)

    # -- callbacks ---------------------------------------------------------------------------------
    def _settings(self, **kw):
        self.worker.send("settings", **kw)

    def _set_view(self, mode=None, smooth=None):
        if mode is not None:
            self.view_mode = mode
        if smooth is not None:
            self.smooth = smooth
        self.display_dirty = True

    def _probe_toggle(self, on):
        self.dpg.configure_item("plot_w", show=on)
        self.dpg.configure_item("probe_line", show=on)
        if not on:
            self.probe_point = None

    def _auto_toggle(self, on):
        if not on:
            self._camera_changed(False)

    def _set_fov(self, fov):
        if self.camera:
            self.camera.set_fov(fov)
            self._camera_changed(False)

    def _snap(self):
        if self.camera and self.info:
            i = self.camera.snap_to_nearest(self.info["train_c2w"])
            self.dpg.set_value("fov", self.camera.fov)
            self._camera_changed(False)
            self._note("info", f"camera snapped to training view {i}")

    def _reset_camera(self):
        if self.info:
            self._init_camera(self.info)
            self._camera_changed(False)

    def _tool(self, name):
        d = self.dpg.get_value("out_dir")
        paths = {"save": "snapshot.safetensors", "load": "snapshot.safetensors", "export_mesh": "mesh.ply",
                 "video": "orbit.mp4"}
        if name == "inerf":
            self.worker.send("inerf_start", view=int(self.dpg.get_value("inerf_view")))
            return
        path = os.path.join(d, paths[name])
        if name != "load":
            os.makedirs(d, exist_ok=True)
        self._note("info", f"{name.replace('_', ' ')}: {path} (working...)")
        self.worker.send(name, path=path)

    def _on_wheel(self, sender, delta):
        self.wheel_clicks += float(delta)
        self.active_until = time.perf_counter() + 1.0

    def _on_key(self, *args):
        self.active_until = time.perf_counter() + 1.0

    def _note(self, level, text):
        stamp = time.strftime("%H:%M:%S")
        self.note = (level, text)
        self.log.append((stamp, level, text))
        dpg = self.dpg
        if dpg.does_item_exist("log"):
            dpg.add_text(f"{stamp}  {text}", parent="log", wrap=PANEL_W - 60,
                         color=ERROR if level == "error" else WARN if level == "warn" else (190, 194, 200))
            children = dpg.get_item_children("log", 1)
            if len(children) > 200:
                dpg.delete_item(children[0])
            dpg.set_y_scroll("log", dpg.get_y_scroll_max("log") + 100)

    # -- camera -------------------------------------------------------------------------------------
    def _init_camera(self, info):
        cam = OrbitCamera(radius=info["radius"], up=info["up"], fov=info["fov"])
        cam.set_from_c2w(info["train_c2w"][0])
        cam.target = np.zeros(3)
        cam.radius = info["radius"]
        if self.camera is None:
            self.camera = cam
            self.interaction = Interaction(cam, self._camera_changed, self._hit, lambda: self._rects_screen()[0][3])
        else:
            self.camera.__dict__.update(cam.__dict__)
        self.dpg.set_value("fov", self.camera.fov)

    def _camera_changed(self, moving: bool):
        self.cam_dirty = True
        self.cam_moving = moving

    def _send_camera(self, priority=True):
        if not self.cam_dirty or self.camera is None:
            return
        self.cam_dirty = False
        self.sent_moving = self.cam_moving
        self.sent_version = self.worker.set_camera(self.camera.c2w(), self.camera.fov, moving=self.cam_moving,
                                                   priority=priority)

    def _rects_tex(self):
        f = self.frame
        n = len(f.images) if f is not None else 1
        h, w = (f.size if f is not None else (self.info["height"], self.info["width"]) if self.info
                else (TEX, TEX))
        return layout_rects(n, w, h, TEX, TEX)

    def _rects_screen(self):
        """Image rects (x, y, w, h) in viewport pixels (what the mouse reports)."""
        x0, y0 = self.dpg.get_item_rect_min("view")
        s = self.disp_size / TEX
        return [(x0 + x * s, y0 + y * s, w * s, h * s) for x, y, w, h in self._rects_tex()]

    def _hit(self, pos):
        return self._pick(pos) is not None

    def _pick(self, pos):
        """(image index, u, v) under a viewport position, or None."""
        for i, (x, y, w, h) in enumerate(self._rects_screen()):
            if x <= pos[0] < x + w and y <= pos[1] < y + h:
                return i, (pos[0] - x) / w, (pos[1] - y) / h
        return None

    def _poll_mouse(self):
        dpg = self.dpg
        it = self.interaction
        if it is None:
            return
        pos = dpg.get_mouse_pos(local=False)
        if pos != self.last_mouse or any(dpg.is_mouse_button_down(b) for b in (0, 1, 2)):
            self.last_mouse = pos
            self.active_until = time.perf_counter() + 1.0
        over_view = dpg.is_item_hovered("view")
        buttons = (("left", dpg.mvMouseButton_Left), ("right", dpg.mvMouseButton_Right),
                   ("middle", dpg.mvMouseButton_Middle))
        if it.dragging:
            it.move(pos)
            name = it.button
            code = dict(buttons)[name]
            if not dpg.is_mouse_button_down(code):
                it.release()
        elif over_view:
            for name, code in buttons:
                if dpg.is_mouse_button_down(code):
                    it.press(name, pos)
                    break
        if self.wheel_clicks:
            if over_view and it.wheel(self.wheel_clicks, pos):
                self.wheel_time = time.perf_counter()
            self.wheel_clicks = 0.0
        if self.wheel_time and time.perf_counter() - self.wheel_time > 0.25 and not it.dragging:
            self.wheel_time = 0.0
            self._camera_changed(False)  # the wheel stopped: refine
        self._poll_probe(pos, over_view and not it.dragging)

    def _auto_orbit(self):
        now = time.perf_counter()
        dt, self.auto_last = now - self.auto_last, now
        if not self.dpg.get_value("auto_orbit") or self.camera is None or (self.interaction and
                                                                          self.interaction.dragging):
            return False
        f = self.frame
        # Frame-locked: advance only once the previous pose has been rendered, so a slow
        # device shows a slower but steady spin and training keeps its share of time.
        self._auto_acc = getattr(self, "_auto_acc", 0.0) + dt
        if f is not None and f.version < self.sent_version:
            return True
        self.camera.spin(min(self._auto_acc, 0.25), self.dpg.get_value("orbit_speed"))
        self._auto_acc = 0.0
        self._camera_changed(True)
        return True

    # -- probe ----------------------------------------------------------------------------------------
    def _poll_probe(self, pos, allowed):
        if not self.dpg.get_value("probe_on") or not allowed or self.frame is None:
            return
        hit = self._pick(pos)
        if hit is None:
            return
        last, t = self.probe_sent
        now = time.perf_counter()
        same = last is not None and abs(last[1] - hit[1]) < 1e-3 and abs(last[2] - hit[2]) < 1e-3
        # New position: at most 10 probes/s; same position: refresh once a second (training moves weights).
        if last is not None and (now - t < 0.1 or (same and now - t < 1.0)):
            return
        self.probe_sent = (hit, now)
        self.probe_point = hit
        self.worker.send("probe", index=hit[0], u=hit[1], v=hit[2])

    def _update_probe(self):
        dpg = self.dpg
        p = self.worker.probes
        if p.seq == self.probe_seq:
            return
        self.probe_seq = p.seq
        r = p.get()
        if r is None:
            return
        if "unavailable" in r:
            dpg.set_value("probe_line", r["unavailable"])
            return
        dpg.set_value("w_coarse", [r["t_coarse"].tolist(), r["w_coarse"].tolist()])
        top = float(r["w_coarse"].max(initial=0.0))
        if "t_fine" in r:
            dpg.set_value("w_fine", [r["t_fine"].tolist(), r["w_fine"].tolist()])
            top = max(top, float(r["w_fine"].max(initial=0.0)))
        # Fixed ranges: the whole ray segment, and the tallest weight (auto-fit lags a frame).
        dpg.set_axis_limits("w_x", float(self.info["near"]), float(self.info["far"]))
        dpg.set_axis_limits("w_y", 0.0, max(top * 1.15, 1e-3))
        dpg.set_value("probe_line", f"{'AB'[r['index']] if self._compare_on() else ''} pixel ({r['u']:.2f}, "
                                    f"{r['v']:.2f}): depth {r['depth']:.2f}, opacity {r['acc']:.2f}; "
                                    f"coarse {len(r['t_coarse'])} / fine {len(r.get('t_fine', []))} samples")

    def _compare_on(self):
        return self.frame is not None and len(self.frame.images) > 1

    # -- per-frame updates --------------------------------------------------------------------------
    def _update_frame(self):
        w = self.worker
        if w.frames.seq != self.frame_seq:
            self.frame_seq = w.frames.seq
            self.frame = w.latest_frame()
            self.display_dirty = True
        if self.display_dirty and self.frame is not None and self.info is not None:
            self.display_dirty = False
            f = self.frame
            if f.kind == "inerf":
                imgs = [f.images[0]["rgb"], _colorize(f.images[1], self.view_mode, self.info["near"], self.info["far"])]
            else:
                imgs = [_colorize(im, self.view_mode, self.info["near"], self.info["far"]) for im in f.images]
            self.display.submit(imgs, "linear" if self.smooth else "nearest")
        if self.display.version != self.uploaded:
            self.active_until = max(self.active_until, time.perf_counter() + 0.2)
            with self.display.lock:
                self.uploaded = self.display.version
                self.dpg.set_value("render_tex", self.display.buffer)
            self._update_overlay()

    def _update_overlay(self):
        dpg = self.dpg
        f = self.frame
        if f is None:
            return
        s = self.disp_size / TEX
        rects = [(x * s, y * s, rw * s, rh * s) for x, y, rw, rh in self._rects_tex()]
        dpg.configure_item("lbl_center", text="")
        labels = f.labels if len(f.images) > 1 else []
        for i, tag in enumerate(("lbl_a", "lbl_b")):
            if i < len(labels):
                x, y, _, _ = rects[i]
                dpg.configure_item(tag, text=("A: " if i == 0 and f.kind != "inerf" else
                                              "B: " if f.kind != "inerf" else "") + labels[i],
                                   pos=(x + 8, max(y, 0) + 6))
            else:
                dpg.configure_item(tag, text="")
        h, w = f.size
        x, y, rw, rh = rects[0]
        level = f"{w}x{h}  level {f.level + 1}/{f.n_levels}"
        if f.kind == "refresh":
            level += "  (refreshed)"
        if f.kind == "inerf":
            inf = f.info
            level = (f"iNeRF step {inf.get('step', 0)}: rotation error {inf.get('rot_err_deg', float('nan')):.2f} deg, "
                     f"loss {inf.get('loss', float('nan')):.4f}")
        caption = f"{level}   step {f.step}"
        cy = min(y + rh, self.disp_size) - 26
        dpg.configure_item("lbl_level", text=caption, pos=(12, cy + 2))
        dpg.configure_item("lbl_plate", pmin=(6, cy), pmax=(18 + 7.6 * len(caption), cy + 22))

    def _update_metrics(self):
        dpg = self.dpg
        ms = self.worker.drain_metrics()
        p = self.plot
        for m in ms:
            if m["run_id"] != p["run"]:
                p.update(run=m["run_id"], step=[], loss=[], psnr=[], loss_b=[], psnr_b=[])
            p["step"].append(m["step"])
            p["loss"].append(m["loss"])
            p["psnr"].append(m["psnr"] if math.isfinite(m["psnr"]) else 60.0)
            p["loss_b"].append(m.get("loss_b", float("nan")))
            p["psnr_b"].append(m.get("psnr_b", float("nan")))
        if len(p["step"]) > MAX_POINTS:
            for k in ("step", "loss", "psnr", "loss_b", "psnr_b"):
                p[k] = p[k][::2]
        now = time.perf_counter()
        if now - self.last_plot < 0.25 or not ms:
            return
        self.last_plot = now
        compare = bool(p["loss_b"]) and math.isfinite(p["loss_b"][-1])
        for k in ("loss", "psnr"):
            dpg.set_value(f"{k}_a", [p["step"], p[k]])
            dpg.configure_item(f"{k}_a", label="A" if compare else "train batch")
            dpg.configure_item(f"{k}_b", show=compare)
            if compare:
                dpg.set_value(f"{k}_b", [p["step"], p[f"{k}_b"]])

    def _update_status(self):
        dpg = self.dpg
        for level, text in self.worker.drain_notes():
            self._note(level, text)
        now = time.perf_counter()
        if now - self.last_status < 0.25:
            return
        self.last_status = now
        st = self.worker.status()
        if self.info is None:
            info = self.worker.scene_info.get()
            if info is not None:
                self.info = info
                self._init_camera(info)
                self._camera_changed(False)
        if st["settings_seq"] != self.settings_seq and st["settings"]:
            self.settings_seq = st["settings_seq"]
            self._sync_settings(st)
        state = st["state"]
        color = {"training": OK, "paused": WARN, "error": ERROR, "inerf": ACCENT}.get(state, WARN)
        if st.get("error"):
            color = ERROR
        dpg.configure_item("st_dot", color=color)
        dpg.set_value("st_state", state)
        threads = st.get("torch_threads")
        dpg.set_value("st_device", f"{st['device']}" + (f" ({threads} torch thread{'s' if threads != 1 else ''})"
                                                        if threads and st["device"].startswith("cpu") else ""))
        dpg.set_value("st_step", f"step {st['step']}")
        dpg.set_value("st_rate", f"{st['steps_per_s']:.1f} steps/s")
        dpg.set_value("st_fps", f"GUI {self.fps:.0f} fps")
        dpg.set_value("st_display", "display: " + self.display.description.split(" (")[0]
                      + (" GPU bilinear" if self.display.description.startswith("moderngl") else ""))
        dpg.set_value("st_display_tip", self.display.description)
        level, text = self.note
        if st.get("error"):
            level, text = "error", st["error"]
        # One line: the full text is in the tooltip and the Log section.
        room = max(20, int((dpg.get_viewport_client_width() - 700) / 7.5))
        dpg.set_value("st_note", text if len(text) <= room else text[:room - 3] + "...")
        dpg.set_value("st_note_tip", text)
        dpg.configure_item("st_note", color=ERROR if level == "error" else WARN if level == "warn"
                           else (170, 176, 186))
        lm = st.get("last_metrics") or {}
        line = f"{st['steps_per_s']:.1f} steps/s"
        if lm:
            line += f"   PSNR {lm['psnr']:.2f} dB"
            if "psnr_b" in lm:
                line = f"{st['steps_per_s']:.1f} steps/s   PSNR A {lm['psnr']:.2f} / B {lm['psnr_b']:.2f}"
        dpg.set_value("train_line", line)
        dpg.set_value("model_line", f"{st.get('model_desc', '')}  |  render {st.get('render', '')}")
        if self.camera:
            c = self.camera
            dpg.set_value("cam_line", f"azimuth {c.azimuth:.1f}  elevation {c.elevation:.1f}  "
                                      f"radius {c.radius:.2f}  fov {c.fov:.1f}")
        inf = st.get("inerf")
        if inf:
            dpg.set_value("inerf_line", f"step {inf['step']}: loss {inf['loss']:.4f}, rotation error "
                                        f"{inf['rot_err_deg']:.2f} deg, position error {inf['trans_err']:.3f}")
        for tag in ("btn_start", "btn_pause"):
            dpg.configure_item(tag, enabled=self.info is not None)
        if self.lab_error:
            self._note("error", self.lab_error)
            self.lab_error = None

    def _sync_settings(self, st):
        """Reflect the worker's effective settings (after a rebuild, a load, a refused change)."""
        dpg = self.dpg
        s = st["settings"]
        models = st.get("models") or []
        dpg.configure_item("model", items=models)
        dpg.set_value("model_tip", "Field kinds this build can construct: " + ", ".join(models))
        for key in ("model", "pe", "L_xyz", "L_dir", "n_coarse", "n_fine", "res_scale", "compare", "L_xyz_b"):
            if key in s:
                dpg.set_value(key, s[key])
        dpg.set_value("compare_b", "B = PE off (plain MLP)" if s.get("compare_b") == "pe_off"
                      else "B = PE with lower L")
        # Widgets enabled by the model's GUI_KNOBS (models/field.py): PE and L (and the A/B
        # compare, which is PE on vs off) for fields with an encoding, sample counts for most.
        knobs = st.get("gui_knobs") or ()
        for key in ("pe", "L_xyz", "L_dir", "compare", "compare_b", "L_xyz_b"):
            dpg.configure_item(key, enabled="pe" in knobs)
        for key in ("n_coarse", "n_fine"):
            dpg.configure_item(key, enabled="samples" in knobs)

    def _relayout(self):
        dpg = self.dpg
        vw, vh = dpg.get_viewport_client_width(), dpg.get_viewport_client_height()
        content_h = vh - STATUS_H - 62  # below the tab bar, above the status line
        size = int(max(240, min(vw - PANEL_W - 40, content_h - 34, 2 * TEX)))
        self.disp_size = size
        panel_w = max(PANEL_W, vw - size - 46)
        dpg.configure_item("view_pane", width=size + 16, height=content_h)
        dpg.configure_item("view", width=size, height=size)
        dpg.configure_item("view_img", pmax=(size, size))
        dpg.configure_item("panel", width=panel_w, height=content_h)
        for tag in ("plot_loss", "plot_psnr"):
            dpg.configure_item(tag, width=(panel_w - 40) // 2)
        dpg.configure_item("plot_w", width=panel_w - 32)
        if dpg.does_item_exist("lab_pane"):
            dpg.configure_item("lab_pane", height=content_h)
        self._update_overlay()

    # -- automation ------------------------------------------------------------------------------------
    def _start_control_reader(self):
        def reader():
            for line in sys.stdin:
                line = line.strip()
                if not line:
                    continue
                try:
                    self.control.put(json.loads(line))
                except json.JSONDecodeError:
                    self._emit({"event": "control_error", "line": line[:200]})
            self.control.put({"cmd": "eof"})

        threading.Thread(target=reader, name="control", daemon=True).start()

    def _emit(self, obj):
        print(json.dumps(obj), file=self.stats_out, flush=True)

    def _handle_control(self):
        while True:
            try:
                c = self.control.get_nowait()
            except queue.Empty:
                break
            cmd = c.get("cmd")
            if cmd == "quit":
                self.quit = True
            elif cmd == "screenshot":
                self._screenshot(c["path"])
            elif cmd == "drag":
                self._synthetic_drag(float(c.get("dx", 200)), float(c.get("dy", 0)), c.get("button", "left"),
                                     int(c.get("frames", 12)))
            elif cmd in ("set", "click"):
                self._invoke(c["tag"], c.get("value"), set_value=cmd == "set")
            elif cmd == "eof":
                pass
            else:
                self._emit({"event": "control_error", "cmd": cmd})

    def _invoke(self, tag, value, set_value):
        """Drive a widget as a user would: set its value, run its callback (and release handler)."""
        dpg = self.dpg
        if set_value:
            dpg.set_value(tag, value)
        cb = dpg.get_item_callback(tag)
        if cb is not None:
            _call(cb, tag, dpg.get_value(tag), None)
        reg = dpg.get_item_info(tag).get("handlers")
        if reg:
            for h in dpg.get_item_children(reg, 1):
                hcb = dpg.get_item_callback(h)
                if hcb:
                    _call(hcb, h, tag, None)
        self._emit({"event": "invoked", "tag": tag})

    def _screenshot(self, path):
        path = os.path.abspath(path)
        frame = self.gui_frames

        def done(sender, buffer):
            # Runs on the GUI thread (manual callbacks): the framebuffer of the last frame.
            try:
                w, h = buffer.get_width(), buffer.get_height()
                arr = np.frombuffer(buffer, dtype=np.float32).reshape(h, w, 4)
                from PIL import Image

                Image.fromarray((np.clip(arr[..., :3], 0, 1) * 255 + 0.5).astype(np.uint8)).save(path)
                self._emit({"event": "screenshot", "path": path, "frame": frame, "size": [w, h]})
            except Exception as exc:  # noqa: BLE001
                self._emit({"event": "screenshot_error", "path": path, "error": str(exc)})

        self.dpg.output_frame_buffer(callback=done)

    def _synthetic_drag(self, dx, dy, button="left", frames=12):
        """A drag through the same Interaction path the mouse uses, spread over GUI frames."""
        if self.interaction is None:
            self._emit({"event": "drag_error", "error": "camera not ready"})
            return
        x, y, w, h = self._rects_screen()[0]
        start = (x + w / 2, y + h / 2)
        it = self.interaction
        n = self.gui_frames
        self.pending.append((n + 1, lambda: it.press(button, start)))
        for k in range(1, frames + 1):
            p = (start[0] + dx * k / frames, start[1] + dy * k / frames)
            self.pending.append((n + 1 + k, lambda p=p: it.move(p)))
        self.pending.append((n + frames + 2, lambda: (it.release(), self._emit({"event": "drag_done",
                                                                                   "camera": self.camera.state()}))))

    def _run_pending(self):
        due = [p for p in self.pending if p[0] <= self.gui_frames]
        self.pending = [p for p in self.pending if p[0] > self.gui_frames]
        for _, fn in due:
            fn()

    def _stats(self):
        now = time.perf_counter()
        if not self.args.stats or now - self.last_stats < 0.5:
            return
        self.last_stats = now
        st = self.worker.status()
        f = self.frame
        rect = None
        if self.info is not None:
            vx, vy = self.dpg.get_viewport_pos()
            x, y, w, h = self._rects_screen()[0]
            rect = [vx + x, vy + y, w, h]
        self._emit({"t": round(now - self.t_start, 3), "gui_frames": self.gui_frames, "gui_fps": round(self.fps, 1),
                    "step": st["step"], "steps_per_s": round(st["steps_per_s"], 2), "state": st["state"],
                    "error": st.get("error"), "cam_version": self.sent_version,
                    "frame_version": f.version if f else None, "frame_level": f.level if f else None,
                    "frame_levels": f.n_levels if f else None, "frame_size": list(f.size) if f else None,
                    "frame_kind": f.kind if f else None, "uploads": self.uploaded,
                    "camera": self.camera.state() if self.camera else None, "image_rect": rect,
                    "display": self.display.description, "dragging": bool(self.interaction and
                                                                          self.interaction.dragging)})

    # -- main loop -------------------------------------------------------------------------------------
    def run(self) -> int:
        dpg = self.dpg
        self.worker.start()
        if self.args.snapshot:
            self.worker.send("load", path=self.args.snapshot)  # runs once the scene is loaded
        self.display.start()
        self.display.wait_ready(5.0)
        dpg.show_viewport()
        self._relayout()
        if self.args.control:
            self._start_control_reader()
        self._emit_start()
        cap = 1.0 / self.args.fps_cap if self.args.fps_cap and self.args.fps_cap > 0 else 0.0
        # Without input or new renders a slower loop is indistinguishable, and on a small
        # CPU-only machine every skipped frame (software GL under X) is time for training.
        idle_cap = max(cap, 1.0 / self.args.idle_fps) if self.args.idle_fps and self.args.idle_fps > 0 else cap
        drag_done = not self.args.drag
        try:
            while dpg.is_dearpygui_running() and not self.quit:
                t0 = time.perf_counter()
                self._tick()
                t1 = time.perf_counter()
                self.time_tick += t1 - t0
                if not drag_done and self.frame is not None and self.interaction is not None:
                    drag_done = True
                    self._synthetic_drag(160, 40)
                dpg.render_dearpygui_frame()
                self.time_draw += time.perf_counter() - t1
                self._run_callbacks()
                self.gui_frames += 1
                self._fps_n += 1
                if t0 - self._fps_t >= 1.0:
                    self.fps, self._fps_t, self._fps_n = self._fps_n / (t0 - self._fps_t), t0, 0
                if self.args.frames is not None and self.gui_frames >= self.args.frames:
                    break
                if self.args.seconds is not None and t0 - self.t_start >= self.args.seconds:
                    break
                active = (t0 < self.active_until or self.pending or
                          self.interaction is not None and self.interaction.dragging or
                          dpg.get_value("auto_orbit"))
                rest = (cap if active else idle_cap) - (time.perf_counter() - t0)
                if rest > 0:
                    time.sleep(rest)
            if self.args.screenshot and dpg.is_dearpygui_running():
                self._screenshot(self.args.screenshot)
                for _ in range(3):  # the framebuffer callback arrives after the next frame
                    dpg.render_dearpygui_frame()
                    self._run_callbacks()
        finally:
            t = time.perf_counter()
            stopped = self.worker.stop(1.0)
            stop_s = time.perf_counter() - t
            self.display.stop(1.0)
            self._emit({"event": "exit", "gui_frames": self.gui_frames, "step": self.worker.status()["step"],
                        "worker_stopped": stopped, "worker_stop_s": round(stop_s, 3),
                        "tick_ms": round(1000 * self.time_tick / max(self.gui_frames, 1), 2),
                        "draw_ms": round(1000 * self.time_draw / max(self.gui_frames, 1), 2)})
            dpg.destroy_context()
            if not stopped and not self.worker.join(30.0):
                # The window is gone; a worker stuck in a long tool call would make the
                # interpreter abort in C++ at exit, so leave without the usual teardown.
                sys.stdout.flush()
                os._exit(0)
        return 0

    def _emit_start(self):
        if self.args.stats:
            self._emit({"event": "start", "display": self.display.description, "hooks": self.hooks,
                        "lab": self.lab is not None, "viewport": [self.dpg.get_viewport_client_width(),
                                                                  self.dpg.get_viewport_client_height()]})

    def _run_callbacks(self):
        jobs = self.dpg.get_callback_queue()
        for job in jobs or ():
            if job[0] is None:
                continue
            try:
                _call(job[0], *job[1:4])
            except Exception as exc:  # noqa: BLE001 - a failing control must not end the app
                self._note("error", f"GUI callback failed: {type(exc).__name__}: {exc}")

    def _tick(self):
        self._handle_control()
        self._run_pending()
        self._update_status()
        self._poll_mouse()
        auto = self._auto_orbit()
        # Gestures get priority (their first frame before the next training step); auto-orbit
        # alternates with training.
        self._send_camera(priority=not (auto and not (self.interaction and self.interaction.dragging)))
        self._update_frame()
        self._update_metrics()
        self._update_probe()
        self._draw_probe_marker()
        self._stats()
        if self.lab is not None:
            try:
                self.lab.update()
            except Exception as exc:  # noqa: BLE001
                self._note("error", f"2D lab stopped updating: {type(exc).__name__}: {exc}")
                self.lab = None

    def _draw_probe_marker(self):
        dpg = self.dpg
        show = bool(dpg.get_value("probe_on")) and self.probe_point is not None and self.frame is not None
        for tag in ("probe_ring", "probe_h", "probe_v"):
            dpg.configure_item(tag, show=show)
        if not show:
            return
        i, u, v = self.probe_point
        rects = self._rects_tex()
        if i >= len(rects):
            return
        s = self.disp_size / TEX
        x, y, w, h = rects[i]
        cx, cy = (x + u * w) * s, (y + v * h) * s
        dpg.configure_item("probe_ring", center=(cx, cy))
        dpg.configure_item("probe_h", p1=(cx - 14, cy), p2=(cx - 8, cy))
        dpg.configure_item("probe_v", p1=(cx + 8, cy), p2=(cx + 14, cy))


def _call(fn, *args):
    """Call a dearpygui callback with as many of (sender, app_data, user_data) as it takes."""
    try:
        n = len(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        n = 3
    return fn(*args[:n])
