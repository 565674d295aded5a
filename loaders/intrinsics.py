"""Camera keys of a transforms.json (Blender, instant-ngp, nerfstudio) -> renderer.cameras.Cameras.

Every key may sit at the top level or in a frame (a frame's value wins: nerfstudio's
per-frame intrinsics):

    camera_angle_x / camera_angle_y   field of view (Blender, instant-ngp)
    fl_x, fl_y, cx, cy, w, h          pixels, for the w x h capture (instant-ngp, nerfstudio)
    camera_model                      PINHOLE, OPENCV, OPENCV_FISHEYE (nerfstudio); the
                                      COLMAP names SIMPLE_PINHOLE, SIMPLE_RADIAL, RADIAL too
    is_fisheye                        instant-ngp's flag for OPENCV_FISHEYE
    k1, k2, k3, k4, p1, p2            distortion

Intrinsics refer to the w x h capture; the images read may be smaller (a downscaled
copy), so they are scaled to the image actually loaded.
"""
from __future__ import annotations

import math

import numpy as np

from loaders.scene import DataError
from renderer.cameras import Cameras

MODELS = {"PINHOLE": "PINHOLE", "SIMPLE_PINHOLE": "PINHOLE", "OPENCV": "OPENCV", "SIMPLE_RADIAL": "OPENCV",
          "RADIAL": "OPENCV", "OPENCV_FISHEYE": "OPENCV_FISHEYE", "FISHEYE": "OPENCV_FISHEYE"}
DIST_KEYS = {"OPENCV": ("k1", "k2", "p1", "p2", "k3"), "OPENCV_FISHEYE": ("k1", "k2", "k3", "k4")}


def _number(path: str, where: str, key: str, v, positive: bool = False, what: str = "") -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise DataError(path, f"{where}'{key}'{what} is not a number ({v!r})") from None
    if not math.isfinite(x) or (positive and x <= 0):
        raise DataError(path, f"{where}'{key}'{what} must be {'positive and ' if positive else ''}finite, "
                              f"got {x}")
    return x


def camera_model(path: str, meta: dict, frames: list[dict] = ()) -> str:
    """The renderer.cameras kind named by the file (default: OPENCV when any distortion
    key is non-zero, at the top level or in a frame, else PINHOLE)."""
    name = meta.get("camera_model")
    if name is None:
        if meta.get("is_fisheye"):
            return "OPENCV_FISHEYE"
        has = any(_number(path, "", k, d.get(k) or 0.0) != 0 for d in (meta, *frames)
                  for k in ("k1", "k2", "k3", "p1", "p2"))
        return "OPENCV" if has else "PINHOLE"
    if str(name).upper() not in MODELS:
        raise DataError(path, f"camera_model {name!r} is not supported (supported: {', '.join(MODELS)})")
    return MODELS[str(name).upper()]


def frame_camera(path: str, meta: dict, frame: dict, index: int, width: int, height: int,
                 kind: str, scale: float | None = None) -> tuple[float, float, float, float, list[float]]:
    """(fx, fy, cx, cy, dist) of one frame whose image is width x height. scale: the
    downscale factor of the image relative to the capture (an images_N copy); None
    infers it from the capture's w (or the image's own size when w is absent)."""
    get = lambda k: frame.get(k, meta.get(k))  # noqa: E731 - frame value wins
    where = f"frame {index}: " if any(k in frame for k in ("fl_x", "camera_angle_x", "w", "cx")) else ""
    cap_w = _number(path, where, "w", get("w"), True, " (the capture width fl_x refers to)") \
        if get("w") is not None else None
    cap_h = _number(path, where, "h", get("h"), True, " (the capture height fl_y refers to)") \
        if get("h") is not None else None
    if scale is not None:
        sx = sy = 1.0 / scale
        cap_w, cap_h = cap_w or width * scale, cap_h or height * scale
    else:
        cap_w, cap_h = cap_w or float(width), cap_h or float(height)
        sx, sy = width / cap_w, height / cap_h
    if get("fl_x") is not None:
        fx = _number(path, where, "fl_x", get("fl_x"), True)
    elif get("camera_angle_x") is not None:
        ang = _number(path, where, "camera_angle_x", get("camera_angle_x"), True)
        if not ang < math.pi:
            raise DataError(path, f"{where}camera_angle_x={ang} is outside (0, pi)")
        fx = 0.5 * cap_w / math.tan(0.5 * ang)
    else:
        raise DataError(path, "missing 'camera_angle_x' (or instant-ngp / nerfstudio 'fl_x')")
    if get("fl_y") is not None:
        fy = _number(path, where, "fl_y", get("fl_y"), True)
    elif get("camera_angle_y") is not None:
        ang = _number(path, where, "camera_angle_y", get("camera_angle_y"), True)
        if not ang < math.pi:
            raise DataError(path, f"{where}camera_angle_y={ang} is outside (0, pi)")
        fy = 0.5 * cap_h / math.tan(0.5 * ang)
    else:
        fy = fx
    cx = _number(path, where, "cx", get("cx")) if get("cx") is not None else cap_w / 2
    cy = _number(path, where, "cy", get("cy")) if get("cy") is not None else cap_h / 2
    dist = [_number(path, where, k, get(k) or 0.0) for k in DIST_KEYS.get(kind, ())]
    return fx * sx, fy * sy, cx * sx, cy * sy, dist


def cameras_from_frames(path: str, meta: dict, frames: list[dict], sizes: list[tuple[int, int]],
                        scales: list[float | None], resized: list[int]) -> Cameras:
    """Cameras for the frames kept. sizes (width, height) and scales (see frame_camera)
    of their images as read; resized: the factor each image was then box-downscaled by."""
    kind = camera_model(path, meta, frames)
    rows = [frame_camera(path, meta, fr, i, w, h, kind, sc)
            for i, (fr, (w, h), sc) in enumerate(zip(frames, sizes, scales))]
    d = np.asarray(resized, np.float64)
    fx, fy, cx, cy = (np.array([r[k] for r in rows]) / d for k in range(4))
    dist = np.array([r[4] for r in rows]) if kind != "PINHOLE" else None
    w = np.array([s[0] for s in sizes]) // d.astype(np.int64)
    h = np.array([s[1] for s in sizes]) // d.astype(np.int64)
    return Cameras.create(len(rows), w, h, fx, fy, cx, cy, kind, dist)
