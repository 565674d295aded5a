"""What is drawn over the render: the training cameras as frusta (train / held-out), the
SfM point cloud, the crop box and the camera path, each with a toggle; and picking a
camera under the mouse. The drawing itself is app.gui.overlay, run by the display thread
with each frame's own camera and depth."""
from __future__ import annotations

import numpy as np

from app.gui.crop_handles import FACES, face_centres
from app.gui.overlay import Layer, ViewCamera, box_segments, frustum_segments, lines, project

TRAIN_COLOR = (1.0, 0.66, 0.24, 1.0)
HELD_OUT_COLOR = (0.35, 0.78, 1.0, 1.0)
CROP_COLOR = (1.0, 0.9, 0.3, 1.0)
AXIS_COLORS = np.array([(1.0, 0.35, 0.3, 1.0), (0.35, 0.9, 0.4, 1.0), (0.4, 0.6, 1.0, 1.0)], np.float32)  # x, y, z
FRUSTUM_DEPTH = 0.08  # of the scene radius (the farthest training camera from the origin)
PICK_RADIUS_PX = 14.0  # screen pixels around a camera's centre that pick it
TOGGLES = {"cameras": "training cameras", "points": "SfM points", "crop": "crop box", "path": "camera path"}


def camera_layer(cams: dict, color, depth: float) -> Layer:
    """Frusta of a split's cameras (scene_info's camera arrays)."""
    seg = frustum_segments(cams["c2w"], cams["fx"], cams["fy"], cams["cx"], cams["cy"], cams["width"],
                           cams["height"], depth)
    return lines(seg, color)


def frame_camera(frame) -> ViewCamera:
    """The pinhole a GUI frame was rendered with."""
    h, w = frame.size
    return ViewCamera(np.asarray(frame.c2w, np.float64), float(frame.fov), w, h)


def pick_camera(centres: np.ndarray, cam: ViewCamera, u: float, v: float, radius: float):
    """Index of the point (N, 3) (a camera centre, a crop-box handle) whose image under
    ``cam`` is nearest to pixel (u, v) and within ``radius`` image pixels, in front of
    the camera; None if none is."""
    if not len(centres):
        return None
    pu, pv, z = project(centres, cam)
    d = np.hypot(pu - u, pv - v)
    d[z <= 1e-6] = np.inf
    i = int(np.argmin(d))
    return i if d[i] <= radius else None


class SceneOverlay:
    """The layers and their toggles. ``version`` moves whenever the drawing changes, so the
    viewport knows to compose its frame again."""

    def __init__(self, dpg):
        self.dpg = dpg
        self.on = {"cameras": True, "points": False, "crop": True, "path": True}
        self.info: dict | None = None
        self.crop = None  # renderer.crop.CropBox or None
        self.path_layer: Layer | None = None  # set by the path editor
        self.version = 0
        self._cache: Layer | None = None

    def build(self) -> None:
        dpg = self.dpg
        dpg.add_text("Show over the render:", color=(150, 156, 166))
        with dpg.group(horizontal=True):
            for key, label in TOGGLES.items():
                dpg.add_checkbox(label=label, tag=f"ov_{key}", default_value=self.on[key],
                                 callback=self._toggler(key))
        with dpg.tooltip("ov_cameras"):
            dpg.add_text("orange: training views, blue: held-out views; click one to fly to it.\n"
                         "Faint where the render's surface hides them.")

    def _changed(self) -> None:
        self._cache = None
        self.version += 1

    def _toggler(self, key: str):
        return lambda sender, on: self.toggle(key, on)

    def toggle(self, key: str, on: bool) -> None:
        self.on[key] = bool(on)
        self._changed()

    def set_scene(self, info: dict) -> None:
        self.info = info
        self._changed()

    def set_crop(self, box) -> None:
        self.crop = box
        self._changed()

    def set_path(self, layer: Layer | None) -> None:
        self.path_layer = layer
        self._changed()

    # -- drawing --------------------------------------------------------------------------------
    def layer(self) -> Layer:
        if self._cache is None:
            self._cache = Layer.merge(self._layers())
        return self._cache

    def _layers(self):
        info = self.info
        if info is None:
            return []
        out = []
        if self.on["cameras"]:
            depth = FRUSTUM_DEPTH * info["radius"]
            out.append(camera_layer(info["cameras"]["train"], TRAIN_COLOR, depth))
            if "held_out" in info["cameras"]:
                out.append(camera_layer(info["cameras"]["held_out"], HELD_OUT_COLOR, depth))
        if self.on["points"] and info.get("points") is not None:
            rgba = np.concatenate([info["point_colors"] / 255.0, np.ones((len(info["points"]), 1))], 1)
            out.append(Layer(points=info["points"], point_colors=rgba.astype(np.float32), point_size=2))
        if self.on["crop"] and self.crop is not None:
            # The corners, and a handle on each face in its axis's colour (drag it to move the face).
            box = lines(box_segments(self.crop.lo, self.crop.hi), CROP_COLOR)
            box.points = np.concatenate([self.crop.corners(), face_centres(self.crop.lo, self.crop.hi)])
            box.point_colors = np.concatenate([np.tile(np.asarray(CROP_COLOR, np.float32), (8, 1)),
                                               AXIS_COLORS[[axis for axis, _ in FACES]]])
            box.point_size = 6
            out.append(box)
        if self.on["path"] and self.path_layer is not None:
            out.append(self.path_layer)
        return out

    def overlays_for(self, frame) -> list | None:
        """Per image of ``frame``: (layer, its camera, depth, acc) for the display thread."""
        layer = self.layer()
        if not len(layer) or frame.kind == "inerf":
            return None
        cam = frame_camera(frame)
        ndc = self.info is not None and self.info.get("ndc")
        return [(layer, cam, None if ndc else im["depth"], None if ndc else im["acc"]) for im in frame.images]

    def pick(self, frame, u: float, v: float, scale: float):
        """The dataset camera under image position (u, v in [0, 1]) of ``frame``:
        (split, index), or None. scale: screen pixels per image pixel."""
        if self.info is None or frame is None or not self.on["cameras"]:
            return None
        h, w = frame.size
        cam = frame_camera(frame)
        best = None
        for split, cams in self.info["cameras"].items():
            centres = np.asarray(cams["c2w"])[:, :3, 3]
            i = pick_camera(centres, cam, u * w, v * h, PICK_RADIUS_PX / max(scale, 1e-6))
            if i is not None:
                pu, pv, _ = project(centres[i], cam)
                d = float(np.hypot(pu - u * w, pv - v * h))
                if best is None or d < best[0]:
                    best = (d, split, i)
        return None if best is None else best[1:]
