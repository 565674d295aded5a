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


def load_llff(root: str, downscale: int = 1, ndc: bool = True, holdout_every: int = 8,
              bd_factor: float = 0.75) -> Scene:
    """poses_bounds.npy (N, 17): a 3x5 [R | t | (h, w, f)] in LLFF's (down, right,
    back) axes plus near/far depth bounds per image.

    Poses are converted to OpenGL axes, recentred on the average camera and scaled
    so the nearest bound sits at 1/bd_factor, as in the NeRF reference code. With
    ndc, rays are later warped to NDC and t spans [0, 1].
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
    img_dir = os.path.join(root, "images")
    if not os.path.isdir(img_dir):
        raise DataError(img_dir, "images/ directory is missing")
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
    scale = 1.0 / (bounds.min() * bd_factor)
    c2w[:, :3, 3] *= scale
    bounds = bounds * scale
    c2w = np.linalg.inv(average_pose(c2w)) @ c2w
    images = []
    for f in files:
        p = os.path.join(img_dir, f)
        img = read_image(p)[..., :3]
        if not 1 <= downscale <= min(img.shape[:2]):
            raise DataError(p, f"downscale {downscale} must be between 1 and the image size {img.shape[1]}x{img.shape[0]}")
        if images and img.shape != images[0].shape:
            raise DataError(p, f"image size {img.shape[1]}x{img.shape[0]} differs from "
                               f"{images[0].shape[1]}x{images[0].shape[0]}")
        images.append(resize_area(img, downscale))
    images = np.stack(images).astype(np.float32)
    # Focal in poses_bounds refers to the full-resolution capture height.
    focal = float(hwf[2]) * images.shape[1] / float(hwf[0])
    idx = np.arange(len(images))
    test = idx % holdout_every == 0
    if test.all():
        test = np.zeros_like(test)
        test[0] = True
    train = ~test if (~test).any() else test
    mk = lambda m: Split(images[m], c2w[m].astype(np.float32), focal, [f for f, k in zip(files, m) if k])
    splits = {"train": mk(train), "test": mk(test)}
    splits["val"] = splits["test"]
    near, far = (0.0, 1.0) if ndc else (float(bounds.min() * 0.9), float(bounds.max() * 1.0))
    return Scene(splits, near, far, white_bkgd=False, source=root, ndc=ndc)


def load_scene(root: str, downscale: int = 1, white_bkgd: bool = True, ndc: bool = True) -> Scene:
    """Detect the format of ``root`` and load it."""
    from loaders.blender import load_blender

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
        return load_llff(root, downscale, ndc)
    if any(e.startswith("transforms") and e.endswith(".json") for e in entries):
        return load_blender(root, downscale, white_bkgd)
    raise DataError(root, "no transforms_*.json (Blender) or poses_bounds.npy (LLFF) found")
