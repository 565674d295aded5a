"""The Crop box section: an axis-aligned box (min and max per axis) outside which the field
renders empty; it also limits mesh and point-cloud export, and is saved with snapshots.
Its edges and corners are drawn over the view (app.gui.scene_overlay), with a handle on
each face that can be dragged there (app.gui.crop_handles); the sliders follow."""
from __future__ import annotations

from app.gui.crop_handles import FACES, HANDLE_RADIUS_PX, HandleDrag, face_centres
from app.gui.scene_overlay import pick_camera
from app.gui.theme import MUTED

LIMIT = 1.5  # the fields' box is [-1.5, 1.5]^3 in the scene's frame (loaders/normalize.py)
MIN_SIZE = 0.01  # min stays this far below max
AXES = "xyz"


def box_from_values(enabled: bool, lo, hi):
    """A CropBox from the sliders, or None when disabled. A max dragged below its min
    pushes the min down (and the reverse), so the box never turns inside out."""
    from renderer.crop import CropBox

    if not enabled:
        return None
    lo, hi = [float(v) for v in lo], [float(v) for v in hi]
    for i in range(3):
        if hi[i] - lo[i] < MIN_SIZE:
            hi[i] = max(hi[i], lo[i] + MIN_SIZE)
    return CropBox(tuple(lo), tuple(hi))


class CropPanel:
    def __init__(self, dpg, worker, overlay, note):
        self.dpg, self.worker, self.overlay, self.note = dpg, worker, overlay, note
        self.box = None
        self._run_id = 0  # the worker's fields whose box the panel last followed
        self.ndc = False

    def build(self) -> None:
        dpg = self.dpg
        with dpg.collapsing_header(label="Crop box", default_open=False, tag="crop_header"):
            dpg.add_checkbox(label="crop to the box (renders, mesh and point-cloud export)", tag="crop_on",
                             callback=lambda: self.apply())
            for a in AXES:
                with dpg.group(horizontal=True):
                    for end, default in (("min", -LIMIT), ("max", LIMIT)):
                        tag = f"crop_{end}_{a}"
                        dpg.add_slider_float(label=f"{a} {end}", tag=tag, min_value=-LIMIT, max_value=LIMIT,
                                             default_value=default, width=170, format="%.2f",
                                             callback=lambda: self.apply())
            dpg.add_button(label="Reset box", tag="crop_reset", callback=lambda: self.reset())
            dpg.add_text("or drag the dots on the box's faces in the view (red x, green y, blue z)", color=MUTED,
                         wrap=440)
            dpg.add_text("", tag="crop_line", color=MUTED, wrap=440)

    def values(self):
        g = self.dpg.get_value
        return ([g(f"crop_min_{a}") for a in AXES], [g(f"crop_max_{a}") for a in AXES])

    def apply(self) -> None:
        """The sliders' box to the worker (a slider drag sends many; the worker takes the
        newest one between steps) and to the overlay."""
        if self.ndc and self.dpg.get_value("crop_on"):
            self.dpg.set_value("crop_on", False)
            self.note("warn", "a crop box needs a 360-degree scene; this one is forward-facing (NDC)")
            return
        box = box_from_values(self.dpg.get_value("crop_on"), *self.values())
        self.box = box
        self.overlay.set_crop(box)
        self.worker.send("crop", box=box)
        self._line(box)

    def grab(self, cam, pos, to_px, scale: float):
        """A HandleDrag for the face handle under screen position ``pos`` in the view
        ``cam`` (to_px: screen -> its pixels; scale: screen pixels per image pixel), or None."""
        box = self.box
        if box is None or self.ndc or not self.overlay.on["crop"]:
            return None
        u, v = to_px(pos)
        k = pick_camera(face_centres(box.lo, box.hi), cam, u, v, HANDLE_RADIUS_PX / max(scale, 1e-6))
        if k is None:
            return None
        return HandleDrag(cam, k, box.lo, box.hi, pos, to_px, self.set_face, LIMIT, MIN_SIZE)

    def set_face(self, k: int, value: float) -> None:
        """A face moved in the view: its slider follows, and the box is applied."""
        axis, end = FACES[k]
        self.dpg.set_value(f"crop_{('min', 'max')[end]}_{AXES[axis]}", value)
        self.apply()

    def reset(self) -> None:
        for a in AXES:
            self.dpg.set_value(f"crop_min_{a}", -LIMIT)
            self.dpg.set_value(f"crop_max_{a}", LIMIT)
        self.apply()

    def set_scene(self, info: dict) -> None:
        self.ndc = bool(info.get("ndc"))
        self.dpg.configure_item("crop_on", enabled=not self.ndc)

    def _line(self, box) -> None:
        text = "off: the whole field" if box is None else (
            "box " + "  ".join(f"{a} {lo:.2f}..{hi:.2f}" for a, lo, hi in zip(AXES, box.lo, box.hi)))
        self.dpg.set_value("crop_line", text)

    def update(self, st: dict) -> None:
        """Follow the worker's box when fields come from elsewhere (a loaded snapshot brings
        its own box, a new scene none); run_id moves with every new set of fields."""
        if st.get("run_id", 0) == self._run_id:
            return
        self._run_id = st["run_id"]
        box = st.get("crop")
        if box == self.box:
            return
        self.box = box
        self.dpg.set_value("crop_on", box is not None)
        if box is not None:
            for i, a in enumerate(AXES):
                self.dpg.set_value(f"crop_min_{a}", box.lo[i])
                self.dpg.set_value(f"crop_max_{a}", box.hi[i])
        self.overlay.set_crop(box)
        self._line(box)
