"""The render view: the texture the display thread composes renders into, the captions
over it, the probe marker, and mouse position -> (image, u, v)."""
from __future__ import annotations

import numpy as np

from app.gui.gl_display import DisplayThread, layout_rects
from app.gui.theme import COLOR_A, COLOR_B, TEX


def colorize(img: dict, mode: str, near: float, far: float) -> np.ndarray:
    """(h, w, 3) float32 for a view mode: RGB, Depth (turbo-like ramp) or Opacity (grey)."""
    if mode == "RGB":
        return img["rgb"]
    if mode == "Depth":
        from app.commands.render import colorize_depth

        return colorize_depth(img["depth"], img["acc"], near, far).astype(np.float32)
    return np.repeat(np.clip(img["acc"], 0, 1)[..., None], 3, -1).astype(np.float32)


def caption(f) -> str:
    """The line under a frame: its size and level, or the iNeRF demo's progress."""
    h, w = f.size
    if f.kind == "inerf":
        inf = f.info
        text = (f"iNeRF step {inf.get('step', 0)}: rotation error {inf.get('rot_err_deg', float('nan')):.2f} deg, "
                f"loss {inf.get('loss', float('nan')):.4f}")
    else:
        text = f"{w}x{h}  level {f.level + 1}/{f.n_levels}" + ("  (refreshed)" if f.kind == "refresh" else "")
    return f"{text}   step {f.step}"


class Viewport:
    """Shows the worker's newest frame, letterboxed into the TEX x TEX texture and drawn
    at ``size`` x ``size`` pixels; side by side when it holds two images (A/B, iNeRF)."""

    def __init__(self, dpg, worker, display: DisplayThread, activity):
        self.dpg, self.worker, self.display, self.activity = dpg, worker, display, activity
        self.frame = None  # the newest Frame from the worker
        self.info: dict | None = None  # the worker's scene_info
        self.view_mode = "RGB"
        self.smooth = True
        self.size = TEX
        self.uploaded = 0
        self.scene_overlay = None  # app.gui.scene_overlay.SceneOverlay: drawn over each frame
        self._overlay_version = -1
        self._frame_seq = -1
        self._dirty = False

    def build_texture(self) -> None:
        dpg = self.dpg
        with dpg.texture_registry():
            dpg.add_dynamic_texture(TEX, TEX, self.display.buffer, tag="render_tex")

    def build(self) -> None:
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
        hint = "Left-drag: orbit    Right/middle-drag: pan    Wheel: zoom    Click a camera: fly to it"
        dpg.add_text(hint, tag="hint",
                     color=(130, 136, 146))

    def resize(self, size: int) -> None:
        self.size = size
        self.dpg.configure_item("view", width=size, height=size)
        self.dpg.configure_item("view_img", pmax=(size, size))
        self.overlay()

    def set_view(self, mode=None, smooth=None) -> None:
        if mode is not None:
            self.view_mode = mode
        if smooth is not None:
            self.smooth = smooth
        self._dirty = True

    @property
    def compare_on(self) -> bool:
        return self.frame is not None and len(self.frame.images) > 1

    # -- per frame ------------------------------------------------------------------------------
    def update(self) -> None:
        """Take a new frame from the worker, hand it to the display thread, and upload the
        texture once the display thread has composed it."""
        frames = self.worker.frames
        if frames.seq != self._frame_seq:
            self._frame_seq = frames.seq
            self.frame = frames.get()
            self._dirty = True
        if self.scene_overlay is not None and self.scene_overlay.version != self._overlay_version:
            self._overlay_version = self.scene_overlay.version
            self._dirty = True
        if self._dirty and self.frame is not None and self.info is not None:
            self._dirty = False
            f = self.frame
            near, far = f.bounds or (self.info["near"], self.info["far"])
            if f.kind == "inerf":  # the target image is a photo: no depth or opacity to show
                imgs = [f.images[0]["rgb"], colorize(f.images[1], self.view_mode, near, far)]
            else:
                imgs = [colorize(im, self.view_mode, near, far) for im in f.images]
            overlays = self.scene_overlay.overlays_for(f) if self.scene_overlay is not None else None
            self.display.submit(imgs, "linear" if self.smooth else "nearest", overlays)
        if self.display.version != self.uploaded:
            self.activity.poke(0.2)
            with self.display.lock:
                self.uploaded = self.display.version
                self.dpg.set_value("render_tex", self.display.buffer)
            self.overlay()

    def overlay(self) -> None:
        dpg = self.dpg
        f = self.frame
        if f is None:
            return
        s = self.size / TEX
        rects = [(x * s, y * s, rw * s, rh * s) for x, y, rw, rh in self.rects_tex()]
        dpg.configure_item("lbl_center", text="")
        labels = f.labels if len(f.images) > 1 else []
        for i, tag in enumerate(("lbl_a", "lbl_b")):
            if i < len(labels):
                x, y, _, _ = rects[i]
                prefix = "" if f.kind == "inerf" else "AB"[i] + ": "
                dpg.configure_item(tag, text=prefix + labels[i], pos=(x + 8, max(y, 0) + 6))
            else:
                dpg.configure_item(tag, text="")
        x, y, rw, rh = rects[0]
        text = caption(f)
        cy = min(y + rh, self.size) - 26
        dpg.configure_item("lbl_level", text=text, pos=(12, cy + 2))
        dpg.configure_item("lbl_plate", pmin=(6, cy), pmax=(18 + 7.6 * len(text), cy + 22))

    def draw_probe_marker(self, point) -> None:
        """A ring and ticks at ``point`` (image index, u, v); hidden when None."""
        dpg = self.dpg
        show = point is not None and self.frame is not None
        for tag in ("probe_ring", "probe_h", "probe_v"):
            dpg.configure_item(tag, show=show)
        if not show:
            return
        i, u, v = point
        rects = self.rects_tex()
        if i >= len(rects):
            return
        s = self.size / TEX
        x, y, w, h = rects[i]
        cx, cy = (x + u * w) * s, (y + v * h) * s
        dpg.configure_item("probe_ring", center=(cx, cy))
        dpg.configure_item("probe_h", p1=(cx - 14, cy), p2=(cx - 8, cy))
        dpg.configure_item("probe_v", p1=(cx + 8, cy), p2=(cx + 14, cy))

    # -- geometry ---------------------------------------------------------------------------------
    def rects_tex(self):
        """Image rects (x, y, w, h) in texture pixels."""
        f = self.frame
        n = len(f.images) if f is not None else 1
        h, w = (f.size if f is not None else (self.info["height"], self.info["width"]) if self.info
                else (TEX, TEX))
        return layout_rects(n, w, h, TEX, TEX)

    def rects_screen(self):
        """Image rects (x, y, w, h) in viewport pixels (what the mouse reports)."""
        x0, y0 = self.dpg.get_item_rect_min("view")
        s = self.size / TEX
        return [(x0 + x * s, y0 + y * s, w * s, h * s) for x, y, w, h in self.rects_tex()]

    def pick(self, pos):
        """(image index, u, v) under a viewport position, or None."""
        for i, (x, y, w, h) in enumerate(self.rects_screen()):
            if x <= pos[0] < x + w and y <= pos[1] < y + h:
                return i, (pos[0] - x) / w, (pos[1] - y) / h
        return None

    def to_image_px(self, i: int = 0):
        """A function: viewport position -> continuous pixel (u, v) of image ``i`` of the
        frame shown now (beyond its edges too: a drag may leave the image). Fixed at this
        call, as the camera of a handle drag is: the progressive renders that follow change
        the frame's size."""
        x, y, w, h = self.rects_screen()[i]
        fh, fw = self.frame.size
        return lambda pos: ((pos[0] - x) / w * fw, (pos[1] - y) / h * fh)

    def hit(self, pos) -> bool:
        return self.pick(pos) is not None

    def hovered(self) -> bool:
        return self.dpg.is_item_hovered("view")
