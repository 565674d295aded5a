"""The side panel: its widgets, what they ask of the worker and the view, and keeping
them in step with the worker's settings.

Which model knobs are enabled is the model's answer (Field.GUI_KNOBS, in the worker's
status); the panel names no model.
"""
from __future__ import annotations

import os
import time

from app.gui.theme import MUTED, PANEL_W, level_color

TOOL_FILES = {"save": "snapshot.safetensors", "load": "snapshot.safetensors", "export_mesh": "mesh.ply",
              "video": "orbit.mp4", "export_points": "points.ply", "screenshot": "screenshot.png"}
COMPARE_B = {"pe_off": "B = PE off (plain MLP)", "L": "B = PE with lower L"}
# Widgets enabled by each GUI knob (models/field.py GUI_KNOBS): the A/B compare is PE on vs off.
KNOB_WIDGETS = {"pe": ("pe", "compare", "compare_b", "L_xyz_b"), "L": ("L_xyz", "L_dir"),
                "samples": ("n_coarse", "n_fine")}
SYNCED = ("model", "pe", "L_xyz", "L_dir", "n_coarse", "n_fine", "res_scale", "compare", "L_xyz_b")
LOG_LINES = 200
DEFAULT_OUT_DIR = os.path.join("runs", "gui")  # the Tools section's output folder, from the working directory


class LogView:
    """The Log section: every note, newest at the bottom."""

    def __init__(self, dpg):
        self.dpg = dpg
        self.lines: list[tuple[str, str, str]] = []

    def build(self) -> None:
        with self.dpg.child_window(height=150, tag="log", border=True):
            pass

    def add(self, level: str, text: str) -> None:
        dpg = self.dpg
        stamp = time.strftime("%H:%M:%S")
        self.lines.append((stamp, level, text))
        dpg.add_text(f"{stamp}  {text}", parent="log", wrap=PANEL_W - 60, color=level_color(level))
        children = dpg.get_item_children("log", 1)
        if len(children) > LOG_LINES:
            dpg.delete_item(children[0])
        dpg.set_y_scroll("log", dpg.get_y_scroll_max("log") + 100)


class SidePanel:
    """Training, Model, View, Camera, Compare, Tools and Log sections. ``note(level, text)``
    reports what a button started."""

    def __init__(self, dpg, worker, viewport, camera, plots, weights, note):
        self.dpg, self.worker, self.viewport, self.camera = dpg, worker, viewport, camera
        self.plots, self.weights, self.note = plots, weights, note
        self.log = LogView(dpg)
        self.info: dict | None = None
        self._settings_seq = -1

    # -- construction -------------------------------------------------------------------------
    def _header(self, label: str, open_: bool = True):
        """A section, tagged hdr_<first word> (automation opens and closes them)."""
        return self.dpg.collapsing_header(label=label, default_open=open_, tag=f"hdr_{label.split()[0].lower()}")

    def build(self, top=(), view_extra=None, middle=()) -> None:
        """The sections, with other parts' sections (objects with build()) at the ``top``
        and after Camera (``middle``); view_extra() adds to the View section."""
        w = PANEL_W - 24
        for part in top:
            part.build()
        self._build_training(w)
        self._build_model()
        self._build_view(w, view_extra)
        self._build_camera()
        for part in middle:
            part.build()
        self._build_compare()
        self._build_tools()
        with self._header("Log", open_=False):
            self.log.build()

    def _build_training(self, w: int) -> None:
        dpg, send = self.dpg, self.worker.send
        with self._header("Training"):
            with dpg.group(horizontal=True):
                dpg.add_button(label="Start", width=90, callback=lambda: send("train"), tag="btn_start")
                dpg.add_button(label="Pause", width=90, callback=lambda: send("pause"), tag="btn_pause")
                dpg.add_button(label="Reset", width=90, callback=lambda: send("reset"), tag="btn_reset")
                dpg.add_text("", tag="train_line", color=(200, 204, 210))
            with dpg.tooltip("btn_reset"):
                dpg.add_text("Fresh network with the current settings (step 0)")
            self.plots.build(w)

    def _build_model(self) -> None:
        dpg = self.dpg
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
            dpg.add_text("", tag="model_line", color=MUTED)

    def _build_view(self, w: int, extra=None) -> None:
        dpg = self.dpg
        with self._header("View"):
            dpg.add_radio_button(["RGB", "Depth", "Opacity"], horizontal=True, default_value="RGB",
                                 tag="view_mode", callback=lambda s, a: self.viewport.set_view(mode=a))
            with dpg.group(horizontal=True):
                dpg.add_checkbox(label="bilinear upsampling", default_value=True, tag="smooth",
                                 callback=lambda s, a: self.viewport.set_view(smooth=a))
                dpg.add_checkbox(label="weights under cursor", default_value=False, tag="probe_on",
                                 callback=lambda s, a: self.weights.toggle(a))
            self.weights.build(w)
            if extra is not None:
                extra()

    def _build_camera(self) -> None:
        dpg, cam = self.dpg, self.camera
        with self._header("Camera"):
            with dpg.group(horizontal=True):
                dpg.add_checkbox(label="auto-orbit", tag="auto_orbit", callback=lambda s, a: cam.set_auto(a))
                dpg.add_slider_float(label="deg/s", tag="orbit_speed", min_value=5, max_value=90,
                                     default_value=cam.auto_speed, width=140, format="%.0f",
                                     callback=lambda s, a: setattr(cam, "auto_speed", a))
            dpg.add_slider_float(label="field of view", tag="fov", min_value=10, max_value=100,
                                 default_value=40, width=220, format="%.1f deg", callback=lambda s, a: cam.set_fov(a))
            with dpg.group(horizontal=True):
                dpg.add_button(label="Snap to nearest training view", callback=self._snap, tag="btn_snap")
                dpg.add_button(label="Reset camera", callback=self._reset_camera)
            dpg.add_text("", tag="cam_line", color=MUTED)

    def _build_compare(self) -> None:
        dpg = self.dpg
        with self._header("Compare (A/B split screen)", open_=False):
            dpg.add_checkbox(label="train A and B on the same rays, side by side", tag="compare",
                             callback=lambda s, a: self._settings(compare=a))
            by_label = {v: k for k, v in COMPARE_B.items()}
            dpg.add_combo(list(COMPARE_B.values()), default_value=COMPARE_B["pe_off"], tag="compare_b", width=260,
                          callback=lambda s, a: self._settings(compare_b=by_label[a]))
            self._slider_int("L_xyz_b", "B's L position", 0, 16, 4, rebuild=True)

    def _build_tools(self) -> None:
        dpg = self.dpg
        with self._header("Tools", open_=False):
            dpg.add_input_text(label="output folder", default_value=os.path.abspath(DEFAULT_OUT_DIR),
                               tag="out_dir", width=300)
            for row in ((("Save snapshot", "btn_save", "save"), ("Load snapshot", "btn_load", "load")),
                        (("Export mesh", "btn_mesh", "export_mesh"), ("Render orbit video", "btn_video", "video")),
                        (("Export point cloud", "btn_points", "export_points"),
                         ("Screenshot (PNG)", "btn_shot", "screenshot"))):
                with dpg.group(horizontal=True):
                    for label, tag, name in row:
                        self._tool_button(label, tag, lambda name=name: self._tool(name))
            with dpg.group(horizontal=True):
                self._tool_button("iNeRF demo", "btn_inerf", lambda: self.worker.send(
                    "inerf_start", view=int(dpg.get_value("inerf_view"))))
                self._tool_button("Stop iNeRF", "btn_inerf_stop", lambda: self.worker.send("inerf_stop"))
                dpg.add_input_int(label="test view", tag="inerf_view", default_value=0, width=90)
            dpg.add_text("", tag="inerf_line", color=MUTED)
            with dpg.group(horizontal=True):
                dpg.add_input_int(label="screenshot width", tag="shot_w", default_value=1280, width=90, step=0)
                dpg.add_input_int(label="height", tag="shot_h", default_value=720, width=90, step=0)
            with dpg.group(tag="job_group", show=False):
                dpg.add_text("", tag="job_line")
                with dpg.group(horizontal=True):
                    dpg.add_progress_bar(tag="job_bar", width=330, default_value=0.0)
                    dpg.add_button(label="Cancel", tag="job_cancel", callback=lambda: self.worker.cancel_job())

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

    def _tool_button(self, label, tag, action):
        dpg = self.dpg
        dpg.add_button(label=label, tag=tag, callback=lambda *_: action(), width=150)
        with dpg.tooltip(tag):
            dpg.add_text("runs in the worker thread")

    # -- callbacks -------------------------------------------------------------------------------
    def _settings(self, **kw):
        self.worker.send("settings", **kw)

    def _snap(self):
        if self.info is not None:
            i = self.camera.snap(self.info["train_c2w"])
            self.note("info", f"camera snapped to training view {i}")

    def _reset_camera(self):
        if self.info is not None:
            self.camera.set_scene(self.info)

    def out_dir(self) -> str:
        return self.dpg.get_value("out_dir")

    def _tool(self, name):
        d = self.out_dir()
        path = os.path.join(d, TOOL_FILES[name])
        if name != "load":
            os.makedirs(d, exist_ok=True)
        kw = {}
        if name == "screenshot":  # the view on screen, at the size asked for
            c = self.camera.camera
            if c is None:
                self.note("warn", "screenshot: no view yet")
                return
            kw = dict(c2w=c.c2w(), fov=c.fov, width=self.dpg.get_value("shot_w"), height=self.dpg.get_value("shot_h"))
        self.note("info", f"{name.replace('_', ' ')}: {path} (working...)")
        self.worker.send(name, path=path, **kw)

    # -- keeping in step with the worker ---------------------------------------------------------
    def update(self, st: dict) -> None:
        dpg = self.dpg
        if st["settings_seq"] != self._settings_seq and st["settings"]:
            self._settings_seq = st["settings_seq"]
            self._sync_settings(st)
        lm = st.get("last_metrics") or {}
        line = f"{st['steps_per_s']:.1f} steps/s"
        if "psnr_b" in lm:
            line += f"   PSNR A {lm['psnr']:.2f} / B {lm['psnr_b']:.2f}"
        elif lm:
            line += f"   PSNR {lm['psnr']:.2f} dB"
        dpg.set_value("train_line", line)
        dpg.set_value("model_line", f"{st.get('model_desc', '')}  |  render {st.get('render', '')}")
        c = self.camera.camera
        if c is not None:
            dpg.set_value("cam_line", f"azimuth {c.azimuth:.1f}  elevation {c.elevation:.1f}  "
                                      f"radius {c.radius:.2f}  fov {c.fov:.1f}")
            if not dpg.is_item_active("fov"):
                dpg.set_value("fov", c.fov)  # after a snap or a reset
        inf = st.get("inerf")
        if inf:
            dpg.set_value("inerf_line", f"step {inf['step']}: loss {inf['loss']:.4f}, rotation error "
                                        f"{inf['rot_err_deg']:.2f} deg, position error {inf['trans_err']:.3f}")
        for tag in ("btn_start", "btn_pause"):
            dpg.configure_item(tag, enabled=self.info is not None)
        job = st.get("job")
        dpg.configure_item("job_group", show=bool(job))
        if job:
            dpg.set_value("job_line", f"{job['name']}: {job['done']} / {job['total'] or '?'}  ->  {job['path']}")
            dpg.set_value("job_bar", job["done"] / job["total"] if job["total"] else 0.0)

    def _sync_settings(self, st: dict) -> None:
        """Reflect the worker's effective settings (after a rebuild, a load, a refused change)."""
        dpg = self.dpg
        s = st["settings"]
        names = st.get("models") or []
        labels = st.get("model_labels") or {}
        dpg.configure_item("model", items=names)
        dpg.set_value("model_tip", "Field kinds this build can construct:\n"
                      + "\n".join(f"{n}: {labels.get(n) or n}" for n in names))
        for key in SYNCED:
            if s.get(key) is not None:
                dpg.set_value(key, s[key])
        dpg.set_value("compare_b", COMPARE_B.get(s.get("compare_b"), COMPARE_B["L"]))
        knobs = st.get("gui_knobs") or ()
        for knob, tags in KNOB_WIDGETS.items():
            for tag in tags:
                dpg.configure_item(tag, enabled=knob in knobs)

    def resize(self, panel_w: int) -> None:
        self.plots.resize(panel_w)
        self.weights.resize(panel_w)
