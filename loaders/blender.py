"""NeRF-synthetic (Blender) and instant-ngp transforms.json scenes."""
from __future__ import annotations

import json
import math
import os

import numpy as np

from loaders.images import composite_alpha, read_image, resize_area
from loaders.scene import DataError, Scene, Split

SPLITS = ("train", "val", "test")


def check_pose(path: str, index: int, m) -> np.ndarray:
    """Validate one 4x4 (or 3x4) camera-to-world matrix; returns float32 (4, 4)."""
    try:
        a = np.asarray(m, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(path, f"frame {index}: transform_matrix is not numeric") from None
    if a.shape == (3, 4):
        a = np.vstack([a, [0, 0, 0, 1]])
    if a.shape != (4, 4):
        raise DataError(path, f"frame {index}: transform_matrix has shape {a.shape}, need 4x4")
    if not np.isfinite(a).all():
        raise DataError(path, f"frame {index}: transform_matrix contains NaN or infinity")
    r = a[:3, :3]
    # Blender/ngp exports carry a little float noise; 1e-3 rejects real scale/shear only.
    if np.abs(r.T @ r - np.eye(3)).max() > 1e-3 or abs(np.linalg.det(r) - 1.0) > 1e-3:
        raise DataError(path, f"frame {index}: transform_matrix rotation is not rigid (scaled, sheared or mirrored)")
    if np.abs(a[3] - [0, 0, 0, 1]).max() > 1e-6:
        raise DataError(path, f"frame {index}: transform_matrix last row must be 0 0 0 1")
    return a.astype(np.float32)


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(path, f"malformed JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except UnicodeDecodeError:
        raise DataError(path, "not a UTF-8 text file") from None
    except OSError as exc:
        raise DataError(path, f"cannot read ({exc.strerror})") from None
    if not isinstance(meta, dict):
        raise DataError(path, "top level must be a JSON object")
    return meta


def _image_path(root: str, file_path: str) -> str:
    p = os.path.normpath(os.path.join(root, file_path))
    if os.path.splitext(p)[1] == "" and not os.path.exists(p):
        p += ".png"  # the original dataset omits the extension
    return p


def load_transforms(json_path: str, downscale: int = 1, white_bkgd: bool = True) -> Split:
    """One transforms_*.json -> Split. Accepts camera_angle_x or fl_x (instant-ngp)."""
    meta = _read_json(json_path)
    root = os.path.dirname(json_path)
    frames = meta.get("frames")
    if not isinstance(frames, list):
        raise DataError(json_path, "missing 'frames' list")
    if not frames:
        raise DataError(json_path, "split has no frames")
    images, alphas, poses, names = [], [], [], []
    for i, fr in enumerate(frames):
        if not isinstance(fr, dict) or "file_path" not in fr or "transform_matrix" not in fr:
            raise DataError(json_path, f"frame {i}: needs 'file_path' and 'transform_matrix'")
        poses.append(check_pose(json_path, i, fr["transform_matrix"]))
        ip = _image_path(root, str(fr["file_path"]))
        raw = read_image(ip)
        img = composite_alpha(raw, white_bkgd)
        if images and img.shape != images[0].shape:
            raise DataError(ip, f"image size {img.shape[1]}x{img.shape[0]} differs from the first "
                                f"image's {images[0].shape[1]}x{images[0].shape[0]}")
        images.append(img)
        alphas.append(raw[..., 3] if raw.shape[-1] == 4 else None)
        names.append(os.path.relpath(ip, root))
    h, w = images[0].shape[:2]
    if "camera_angle_x" in meta:
        try:
            fov = float(meta["camera_angle_x"])
        except (TypeError, ValueError):
            raise DataError(json_path, "camera_angle_x is not a number") from None
        if not (0.0 < fov < math.pi):
            raise DataError(json_path, f"camera_angle_x={fov} is outside (0, pi)")
        focal = 0.5 * w / math.tan(0.5 * fov)
    elif "fl_x" in meta:
        try:
            fl_x, cap_w = float(meta["fl_x"]), float(meta.get("w", w))
        except (TypeError, ValueError):
            raise DataError(json_path, "fl_x or w is not a number") from None
        if not (0.0 < fl_x < math.inf and 0.0 < cap_w < math.inf):
            raise DataError(json_path, f"fl_x={fl_x} and w={cap_w} must be positive and finite")
        focal = fl_x * w / cap_w
    else:
        raise DataError(json_path, "missing 'camera_angle_x' (or instant-ngp 'fl_x')")
    if downscale < 1:
        raise DataError(json_path, f"downscale must be >= 1, got {downscale}")
    if downscale > min(h, w):
        raise DataError(json_path, f"downscale {downscale} would leave no pixels of the {w}x{h} images")
    images = [resize_area(im, downscale) for im in images]
    alpha = None
    if any(a is not None for a in alphas):  # opaque (RGB) files in an RGBA set get alpha 1
        alpha = np.stack([resize_area((a if a is not None else np.ones((h, w), np.float32))[..., None],
                                      downscale)[..., 0] for a in alphas]).astype(np.float16)
    return Split(np.stack(images).astype(np.float32), np.stack(poses), focal / downscale, names, alpha)


def load_blender(root: str, downscale: int = 1, white_bkgd: bool = True, holdout_every: int = 8,
                 near: float = 2.0, far: float = 6.0) -> Scene:
    """A Blender-format scene directory.

    Reads transforms_{train,val,test}.json; a single transforms.json (instant-ngp)
    is the train split. When only a train split exists, every ``holdout_every``-th
    view (0, 8, 16, ...) is held out as the test split and removed from train —
    the protocol used for ../shared's lego scene.
    """
    if not os.path.isdir(root):
        raise DataError(root, "scene directory does not exist or is not a directory")
    if not os.access(root, os.R_OK | os.X_OK):
        raise DataError(root, "scene directory is not readable")
    splits: dict[str, Split] = {}
    notes = []
    for s in SPLITS:
        p = os.path.join(root, f"transforms_{s}.json")
        if os.path.exists(p):
            splits[s] = load_transforms(p, downscale, white_bkgd)
    if not splits and os.path.exists(os.path.join(root, "transforms.json")):
        splits["train"] = load_transforms(os.path.join(root, "transforms.json"), downscale, white_bkgd)
    if "train" not in splits:
        raise DataError(root, "no transforms_train.json or transforms.json found")
    if "test" not in splits:
        tr = splits["train"]
        idx = np.arange(len(tr))
        test_mask = idx % holdout_every == 0
        if test_mask.all():
            raise DataError(root, "too few training views to hold out a test split")
        cut = lambda m: None if tr.alpha is None else tr.alpha[m]
        splits["test"] = Split(tr.images[test_mask], tr.c2w[test_mask], tr.focal,
                               [n for n, m in zip(tr.names, test_mask) if m], cut(test_mask))
        splits["train"] = Split(tr.images[~test_mask], tr.c2w[~test_mask], tr.focal,
                                [n for n, m in zip(tr.names, test_mask) if not m], cut(~test_mask))
        notes.append(f"no test split: held out every {holdout_every}th train view "
                     f"({int(test_mask.sum())} views) as test")
    if "val" not in splits:
        splits["val"] = splits["test"]
    shapes = {s: sp.images.shape[1:3] for s, sp in splits.items()}
    if len(set(shapes.values())) > 1:
        raise DataError(root, f"splits have different image sizes: {shapes}")
    return Scene(splits, near, far, white_bkgd, root, notes=notes)
