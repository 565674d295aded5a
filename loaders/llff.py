"""LLFF forward-facing scenes: poses_bounds.npy + images/."""
from __future__ import annotations

import os

import numpy as np

from loaders.blender import check_pose
from loaders.images import read_image, resize_area
from loaders.scene import DataError, Scene, Split

IMAGE_EXT = (".png", ".jpg", ".jpeg")


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def average_pose(c2w: np.ndarray) -> np.ndarray:
    """Mean camera (4, 4) of c2w (N, 4, 4): mean centre, mean viewing axis, mean up."""
    center = c2w[:, :3, 3].mean(0)
    z = _normalize(c2w[:, :3, 2].sum(0))
    up = c2w[:, :3, 1].sum(0)
    x = _normalize(np.cross(up, z))
    y = np.cross(z, x)
    m = np.eye(4)
    m[:3, :3] = np.stack([x, y, z], 1)
    m[:3, 3] = center
    return m


def _image_folder(root: str, downscale: int, n: int) -> tuple[str, int]:
    """(folder, factor still to apply): images_<downscale> when it exists and holds one
    image per camera (the reference code's choice), else images/ box-downscaled."""
    if downscale > 1:
        alt = os.path.join(root, f"images_{downscale}")
        if os.path.isdir(alt) and len([f for f in os.listdir(alt) if f.lower().endswith(IMAGE_EXT)]) == n:
            return alt, 1
    img_dir = os.path.join(root, "images")
    if not os.path.isdir(img_dir):
        raise DataError(img_dir, "images/ directory is missing")
    return img_dir, downscale


def load_llff(root: str, downscale: int = 1, ndc: bool | None = None, holdout_every: int = 8,
              normalization=None) -> Scene:
    """poses_bounds.npy (N, 17): a 3x5 [R | t | (h, w, f)] in LLFF's (down, right,
    back) axes plus near/far depth bounds per image.

    Poses are converted to OpenGL axes; the bounds decide NDC (forward-facing captures)
    and the normalisation (loaders.assemble): in NDC the NeRF reference code's frame,
    mean camera at the origin and the nearest bound at 1 / 0.75.
    """
    pb_path = os.path.join(root, "poses_bounds.npy")
    if not os.path.isdir(root):
        raise DataError(root, "scene directory does not exist or is not a directory")
    try:
        pb = np.load(pb_path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(pb_path, "file is missing") from None
    except (ValueError, OSError) as exc:
        raise DataError(pb_path, f"not a readable .npy array ({exc})") from None
    if pb.ndim != 2 or pb.shape[1] != 17:
        raise DataError(pb_path, f"shape {pb.shape}, expected (N, 17)")
    if pb.shape[0] == 0:
        raise DataError(pb_path, "no cameras")
    if not np.isfinite(pb).all():
        raise DataError(pb_path, "contains NaN or infinity")
    if downscale < 1:
        raise DataError(root, f"downscale must be >= 1, got {downscale}")
    img_dir, factor = _image_folder(root, downscale, pb.shape[0])
    files = sorted(f for f in os.listdir(img_dir) if f.lower().endswith(IMAGE_EXT))
    if len(files) != pb.shape[0]:
        raise DataError(img_dir, f"{len(files)} images but poses_bounds.npy has {pb.shape[0]} cameras")
    poses = pb[:, :15].reshape(-1, 3, 5)
    bounds = pb[:, 15:17]
    if (bounds <= 0).any():
        raise DataError(pb_path, "near/far bounds must be positive")
    hwf = poses[0, :, 4]
    # (down, right, back) -> (right, up, back)
    rot = np.concatenate([poses[:, :, 1:2], -poses[:, :, 0:1], poses[:, :, 2:4]], 2)
    c2w = np.tile(np.eye(4), (len(rot), 1, 1))
    c2w[:, :3, :4] = rot
    for i, m in enumerate(c2w):
        check_pose(pb_path, i, m)
    images, raw_shape = [], None
    for f in files:
        p = os.path.join(img_dir, f)
        img = read_image(p)[..., :3]
        if not 1 <= factor <= min(img.shape[:2]):
            raise DataError(p, f"downscale {factor} must be between 1 and the image size {img.shape[1]}x{img.shape[0]}")
        if raw_shape is not None and img.shape[:2] != raw_shape:
            raise DataError(p, f"image size {img.shape[1]}x{img.shape[0]} differs from "
                               f"{raw_shape[1]}x{raw_shape[0]}")
        raw_shape = img.shape[:2]
        images.append(resize_area(img, factor))
    images = np.stack(images).astype(np.float32)
    # Focal in poses_bounds refers to the full-resolution capture height; an images_N copy
    # is that capture downscaled N times (the reference code's 1 / factor).
    focal = float(hwf[2]) / downscale if factor == 1 and downscale > 1 else \
        float(hwf[2]) * raw_shape[0] / float(hwf[0]) / factor
    split = Split(images, c2w.astype(np.float32), focal, files)
    from loaders.assemble import capture_scene

    return capture_scene(root, split, depth=bounds, ndc=ndc, normalization=normalization,
                         holdout_every=holdout_every)


def load_scene(root: str, downscale: int = 1, white_bkgd: bool = True, ndc: bool | None = None,
               skip_missing: bool = False, normalization=None) -> Scene:
    """Detect the format of ``root`` and load it.

    transforms*.json (Blender, instant-ngp, nerfstudio, ``process``), poses_bounds.npy
    (LLFF), or a COLMAP sparse model (``root/sparse/0``, ``root/sparse`` or root itself
    holding cameras.bin, images.bin, points3D.bin). ndc: None chooses (forward-facing
    captures only), True/False forces. skip_missing: transforms.json frames whose image
    is missing are dropped instead of being an error. normalization: the world -> scene
    transform a run was trained with (run.json), instead of computing it again.
    """
    from loaders.blender import load_blender
    from loaders.colmap import find_model, load_colmap

    if not os.path.exists(root):
        raise DataError(root, "path does not exist")
    if os.path.isfile(root) and root.endswith(".json"):
        root = os.path.dirname(root) or "."
    if not os.path.isdir(root):
        raise DataError(root, "not a directory")
    try:
        entries = os.listdir(root)
    except PermissionError:
        raise DataError(root, "directory is not readable (permission denied)") from None
    if "poses_bounds.npy" in entries:
        return load_llff(root, downscale, ndc, normalization=normalization)
    if any(e.startswith("transforms") and e.endswith(".json") for e in entries):
        return load_blender(root, downscale, white_bkgd, skip_missing=skip_missing, ndc=ndc,
                            normalization=normalization)
    model = find_model(root)
    if model is not None:
        return load_colmap(model, downscale, ndc=ndc, normalization=normalization)
    raise DataError(root, "no transforms*.json (Blender, instant-ngp, nerfstudio), poses_bounds.npy (LLFF) "
                          "or COLMAP sparse model (sparse/0/cameras.bin) found; to make one from photos "
                          "or a video: python main.py process INPUT --out DIR")
