"""The Camera path section: keyframes from the current view, a list to select, delete and
reorder them, time and field of view of the selected one, playing the path in the view,
saving and loading nerfstudio's camera_path.json, and rendering the path to a video in
the worker (progress in the Tools section's job bar; the note names the file).

Keyframes are kept in the scene's frame (the view's); files hold the capture's own frame
(app/tools/camera_path.py), through the scene's normalisation."""
from __future__ import annotations

import os

import numpy as np

from app.gui.keyframes import KeyframeList, vertical_fov
from app.gui.panel import DEFAULT_OUT_DIR
from app.gui.overlay import Layer, frustum_segments, lines, polyline_segments
from app.gui.theme import MUTED

PATH_COLOR = (0.95, 0.35, 0.9, 1.0)
SELECTED_COLOR = (1.0, 1.0, 1.0, 1.0)
KEY_FRUSTUM_DEPTH = 0.1  # of the scene radius


class PathEditor:
    def __init__(self, dpg, worker, camera, player, overlay, note, out_dir):
        self.dpg, self.worker, self.camera, self.player = dpg, worker, camera, player
        self.overlay, self.note, self.out_dir = overlay, note, out_dir
        self.keys = KeyframeList()
        self.info: dict | None = None

    # -- construction -------------------------------------------------------------------------
    def build(self) -> None:
        dpg = self.dpg
        with dpg.collapsing_header(label="Camera path", default_open=False, tag="path_header"):
            with dpg.group(horizontal=True):
                dpg.add_button(label="Add keyframe (this view)", tag="path_add", callback=lambda: self.add())
                dpg.add_button(label="Delete", tag="path_delete", callback=lambda: self._edit(self.keys.delete))
                dpg.add_button(label="Up", tag="path_up", callback=lambda: self._edit(self.keys.move, -1))
                dpg.add_button(label="Down", tag="path_down", callback=lambda: self._edit(self.keys.move, 1))
            dpg.add_listbox([], tag="path_list", num_items=5, width=-1, callback=lambda s, a: self._select(a))
            with dpg.group(horizontal=True):
                dpg.add_input_float(label="time (s)", tag="path_time", width=110, step=0, format="%.2f",
                                    on_enter=True, callback=lambda s, a: self._edit(self.keys.set_time, a))
                dpg.add_input_float(label="fov (deg, vertical)", tag="path_fov", width=110, step=0,
                                    format="%.1f", on_enter=True,
                                    callback=lambda s, a: self._edit(self.keys.set_fov, a))
            with dpg.group(horizontal=True):
                dpg.add_button(label="Play", tag="path_play", width=70, callback=lambda: self.play())
                dpg.add_button(label="Stop", tag="path_stop", width=70, callback=lambda: self.player.stop())
                dpg.add_checkbox(label="loop", tag="path_loop", callback=lambda s, a: self._set_loop(a))
            with dpg.group(horizontal=True):
                dpg.add_input_text(tag="path_file", width=260,
                                   default_value=os.path.abspath(os.path.join(DEFAULT_OUT_DIR, "camera_path.json")))
                dpg.add_button(label="Save", tag="path_save", callback=lambda: self.save())
                dpg.add_button(label="Load", tag="path_load", callback=lambda: self.load())
            with dpg.group(horizontal=True):
                dpg.add_input_int(label="fps", tag="path_fps", default_value=30, width=80, step=0)
                dpg.add_input_text(label="size", tag="path_size", default_value="1280x720", width=100)
                dpg.add_button(label="Render video", tag="path_video", callback=lambda: self.render_video())
            dpg.add_text("no keyframes: move the view and press Add", tag="path_line", color=MUTED, wrap=440)

    # -- editing --------------------------------------------------------------------------------
    def set_scene(self, info: dict) -> None:
        if self.info is not None and len(self.keys):
            self.note("info", "camera path cleared: a new scene was loaded")
        self.info = info
        self.keys = KeyframeList()
        self._changed()

    def _aspect(self) -> tuple[int, int]:
        return (self.info["width"], self.info["height"]) if self.info else (1, 1)

    def add(self) -> None:
        cam = self.camera.camera
        if cam is None:
            self.note("warn", "add keyframe: no scene yet")
            return
        self.keys.add(cam.c2w64(), vertical_fov(cam.fov, *self._aspect()))
        self._changed()

    def _edit(self, fn, *args) -> None:
        """fn(selected index, *args) on the keyframe list; a refused edit is a warning."""
        i = self.keys.selected
        if i is None:
            self.note("warn", "select a keyframe first")
            return
        try:
            fn(i, *args)
        except ValueError as exc:
            self.note("warn", str(exc))
        self._changed()

    def _select(self, label: str) -> None:
        labels = self.keys.labels()
        if label in labels:
            self.keys.selected = labels.index(label)
            self._changed()

    def _set_loop(self, on: bool) -> None:
        self.keys.loop = bool(on)
        self._changed()

    def _changed(self) -> None:
        dpg, keys = self.dpg, self.keys
        labels = keys.labels()
        dpg.configure_item("path_list", items=labels)
        if keys.selected is not None:
            dpg.set_value("path_list", labels[keys.selected])
            k = keys.keys[keys.selected]
            dpg.set_value("path_time", k.time)
            dpg.set_value("path_fov", k.fov)
        if len(keys):
            dpg.set_value("path_line", f"{len(keys)} keyframe(s), {keys.camera_path().seconds:.2f} s"
                                       + (" (loop)" if keys.loop else ""))
        self.overlay.set_path(self.layer())

    def layer(self) -> Layer | None:
        """The path's curve and a frustum per keyframe (the selected one white)."""
        keys, info = self.keys, self.info
        if info is None or not len(keys):
            return None
        w, h = self._aspect()
        out = []
        curve = keys.curve()
        if len(curve) > 1:
            out.append(lines(polyline_segments(curve), PATH_COLOR))
        for i, k in enumerate(keys.keys):
            f = 0.5 * h / np.tan(np.radians(k.fov) / 2)
            seg = frustum_segments(k.c2w[None], f, f, w / 2, h / 2, w, h, KEY_FRUSTUM_DEPTH * info["radius"])
            out.append(lines(seg, SELECTED_COLOR if i == keys.selected else PATH_COLOR))
        return Layer.merge(out)

    # -- playing, files, video ---------------------------------------------------------------------
    def play(self) -> None:
        if len(self.keys) < 2:
            self.note("warn", "play: the path needs at least two keyframes")
            return
        self.player.play(self.keys.camera_path(), name="path")

    def _to_world(self):
        return self.info["normalization"].inverse().poses if self.info else None

    def save(self) -> None:
        from app.tools.camera_path import save_path

        path = self.dpg.get_value("path_file")
        try:
            cp = self._world_path()
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            save_path(cp, path)
        except (ValueError, OSError) as exc:
            self.note("error", f"save camera path: {exc}")
            return
        self.note("info", f"camera path saved: {os.path.abspath(path)} ({len(self.keys)} keyframes)")

    def load(self, path: str | None = None) -> None:
        from app.tools.camera_path import load_path

        path = path or self.dpg.get_value("path_file")
        if self.info is None:
            self.note("warn", "load camera path: no scene yet")
            return
        try:
            cp = load_path(path)
        except (ValueError, OSError) as exc:
            self.note("error", f"load camera path: {exc}")
            return
        self.keys.replace(cp, self.info["normalization"].poses)
        self.dpg.set_value("path_loop", self.keys.loop)
        self.dpg.set_value("path_file", path)
        self.note("info", f"camera path loaded: {path} ({len(self.keys)} keyframes, {cp.seconds:.2f} s)")
        self._changed()

    def _world_path(self):
        """The path in the capture's frame with the video settings; ValueError if unusable."""
        from app.cli import UserError
        from app.commands.render import parse_size

        if len(self.keys) < 1:
            raise ValueError("the camera path has no keyframes")
        try:
            w, h = parse_size(str(self.dpg.get_value("path_size")), "size")
        except UserError as exc:
            raise ValueError(str(exc)) from None
        cp = self.keys.camera_path(self._to_world(), w, h or w, float(self.dpg.get_value("path_fps")))
        cp.check("camera path")
        return cp

    def render_video(self) -> None:
        try:
            cp = self._world_path()
        except ValueError as exc:
            self.note("error", f"render video: {exc}")
            return
        if len(self.keys) < 2:
            self.note("warn", "render video: the path needs at least two keyframes")
            return
        d = self.out_dir()
        os.makedirs(d, exist_ok=True)
        out = os.path.join(d, "camera_path.mp4")
        self.note("info", f"path video: {out} ({cp.n_frames} frames at {cp.width}x{cp.height}; working...)")
        self.worker.send("path_video", path=out, camera_path=cp)

    def update(self, st: dict) -> None:
        """The job line while the worker renders the path."""
        job = st.get("job")
        if job and job["name"] == "path video":
            self.dpg.set_value("path_line", f"rendering video: frame {job['done']} / {job['total']}")
        elif st.get("last_video") and self.dpg.get_value("path_line").startswith("rendering"):
            self.dpg.set_value("path_line", f"video written: {st['last_video']}")
