"""NeRF-synthetic (Blender) and instant-ngp transforms.json scenes."""
from __future__ import annotations

import json
import os

import numpy as np

from loaders.images import composite_alpha, read_image, resize_area
from loaders.intrinsics import cameras_from_frames
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


def downscaled_copy(path: str, factor: int) -> str | None:
    """The image's copy in the sibling folder ``<folder>_<factor>`` (LLFF's images_4,
    nerfstudio's images_2, what ``process`` writes), when it exists."""
    if factor <= 1:
        return None
    folder, name = os.path.split(path)
    alt = os.path.join(f"{folder}_{factor}", name)
    return alt if os.path.isfile(alt) else None


def _frame_paths(json_path: str, frames: list, skip_missing: bool) -> tuple[list[int], list[str], int]:
    """Indices and image paths of the frames to load, and how many were dropped because
    their image is missing (skip_missing); without it a missing image is the error."""
    root = os.path.dirname(json_path)
    keep, paths, missing = [], [], []
    for i, fr in enumerate(frames):
        if not isinstance(fr, dict) or "file_path" not in fr or "transform_matrix" not in fr:
            raise DataError(json_path, f"frame {i}: needs 'file_path' and 'transform_matrix'")
        ip = _image_path(root, str(fr["file_path"]))
        if os.path.isfile(ip):
            keep.append(i)
            paths.append(ip)
        else:
            missing.append(ip)
    if missing and not skip_missing:
        more = f" ({len(missing)} of {len(frames)} frames' images are missing)" if len(missing) > 1 else ""
        raise DataError(missing[0], f"image file is missing{more}; --skip-missing trains on the frames "
                                    "whose images exist")
    if not keep:
        raise DataError(json_path, f"none of the {len(frames)} frames' images exist")
    return keep, paths, len(missing)


def read_frames(json_path: str, downscale: int = 1, white_bkgd: bool = True, skip_missing: bool = False):
    """One transforms*.json -> (Split in the file's frame, its meta dict, notes)."""
    meta = _read_json(json_path)
    root = os.path.dirname(json_path)
    frames = meta.get("frames")
    if not isinstance(frames, list):
        raise DataError(json_path, "missing 'frames' list")
    if not frames:
        raise DataError(json_path, "split has no frames")
    if downscale < 1:
        raise DataError(json_path, f"downscale must be >= 1, got {downscale}")
    keep, paths, dropped = _frame_paths(json_path, frames, skip_missing)
    frames = [frames[i] for i in keep]
    notes = [f"{os.path.basename(json_path)}: {dropped} of {dropped + len(keep)} frames dropped "
             f"(image missing; --skip-missing)"] if dropped else []
    images, alphas, poses, names, sizes, scales, resized = [], [], [], [], [], [], []
    for i, (fr, ip) in zip(keep, zip(frames, paths)):
        poses.append(check_pose(json_path, i, fr["transform_matrix"]))
        small = downscaled_copy(ip, downscale)
        raw = read_image(small or ip)
        h, w = raw.shape[:2]
        if small is None and downscale > min(h, w):
            raise DataError(ip, f"downscale {downscale} would leave no pixels of the {w}x{h} image")
        sizes.append((w, h))
        scales.append(downscale if small else None)
        resized.append(1 if small else downscale)
        img = resize_area(composite_alpha(raw, white_bkgd), resized[-1])
        if images and img.shape != images[0].shape:
            raise DataError(small or ip, f"image size {img.shape[1]}x{img.shape[0]} differs from the first "
                                         f"image's {images[0].shape[1]}x{images[0].shape[0]}")
        images.append(img)
        alphas.append(resize_area(raw[..., 3:], resized[-1])[..., 0] if raw.shape[-1] == 4 else None)
        names.append(os.path.relpath(ip, root))
    cams = cameras_from_frames(json_path, meta, frames, sizes, scales, resized)
    alpha = None
    if any(a is not None for a in alphas):  # opaque (RGB) files in an RGBA set get alpha 1
        alpha = np.stack([a if a is not None else np.ones(images[0].shape[:2], np.float32)
                          for a in alphas]).astype(np.float16)
    split = Split(np.stack(images).astype(np.float32), np.stack(poses), float(cams.fx[0]), names, alpha, cams)
    return split, meta, notes


def load_transforms(json_path: str, downscale: int = 1, white_bkgd: bool = True,
                    skip_missing: bool = False) -> Split:
    """One transforms_*.json -> Split, poses as in the file."""
    return read_frames(json_path, downscale, white_bkgd, skip_missing)[0]


def is_blender_convention(meta: dict) -> bool:
    """A Blender-synthetic file: a field of view and nothing a real capture's tools
    write. Such scenes keep their frame (objects within [-1.5, 1.5]^3, cameras at ~4,
    near 2, far 6) and are not normalised."""
    capture_keys = ("fl_x", "camera_model", "applied_transform", "aabb_scale", "scale", "offset", "cx", "k1")
    frames = meta.get("frames") or []
    return "camera_angle_x" in meta and not any(k in meta for k in capture_keys) and \
        not any(isinstance(f, dict) and "fl_x" in f for f in frames)


def ngp_aabb(json_path: str, meta: dict) -> np.ndarray | None:
    """instant-ngp's scene box (2, 3) in the file's frame, or None without aabb_scale.

    instant-ngp maps a file position p to cycle(p * scale + offset) (axes x, y, z -> y, z,
    x; defaults scale 0.33, offset 0.5) and bounds the scene by the cube of side
    aabb_scale centred on (0.5, 0.5, 0.5) in its own frame. The centre is the same
    after the cycle, so back in the file's frame the box is centred on
    (0.5 - offset) / scale with half-side aabb_scale / (2 scale)."""
    if "aabb_scale" not in meta:
        return None
    try:
        a = float(meta["aabb_scale"])
        s = float(meta.get("scale", 0.33))
        off = np.asarray(meta.get("offset", [0.5, 0.5, 0.5]), np.float64).reshape(3)
    except (TypeError, ValueError):
        raise DataError(json_path, "aabb_scale, scale and offset must be numbers (offset a list of 3)") from None
    if not (a > 0 and s > 0 and np.isfinite(off).all()):
        raise DataError(json_path, f"aabb_scale={a} and scale={s} must be positive")
    c = (0.5 - off) / s
    h = 0.5 * a / s
    return np.stack([c - h, c + h])


def applied_transform(json_path: str, meta: dict):
    """nerfstudio's applied_transform (the world -> file transform its tools applied to
    the original poses, 3x4) as a Similarity; identity when absent."""
    from loaders.normalize import Similarity

    if "applied_transform" not in meta:
        return Similarity.identity()
    try:
        return Similarity.from_matrix(meta["applied_transform"])
    except (TypeError, ValueError) as exc:
        raise DataError(json_path, f"applied_transform: {exc}") from None


def load_blender(root: str, downscale: int = 1, white_bkgd: bool = True, holdout_every: int = 8,
                 near: float = 2.0, far: float = 6.0, skip_missing: bool = False, ndc: bool | None = None,
                 normalization=None) -> Scene:
    """A transforms.json scene directory (Blender, instant-ngp, nerfstudio).

    Reads transforms_{train,val,test}.json; a single transforms.json (instant-ngp,
    nerfstudio, ``process``) is the train split. When only a train split exists, every
    ``holdout_every``-th view (0, 8, 16, ...) is held out as the test split and removed
    from train — the protocol used for ../shared's lego scene.

    Blender-convention files (``is_blender_convention``) keep their frame and near/far;
    anything else is a capture: poses go back to the world frame before nerfstudio's
    applied_transform, then through the shared normalisation (loaders.assemble).
    """
    if not os.path.isdir(root):
        raise DataError(root, "scene directory does not exist or is not a directory")
    if not os.access(root, os.R_OK | os.X_OK):
        raise DataError(root, "scene directory is not readable")
    read: dict[str, tuple] = {}
    for s in SPLITS:
        p = os.path.join(root, f"transforms_{s}.json")
        if os.path.exists(p):
            read[s] = (p, *read_frames(p, downscale, white_bkgd, skip_missing))
    if not read and os.path.exists(os.path.join(root, "transforms.json")):
        p = os.path.join(root, "transforms.json")
        read["train"] = (p, *read_frames(p, downscale, white_bkgd, skip_missing))
    if "train" not in read:
        raise DataError(root, "no transforms_train.json or transforms.json found")
    splits = {s: r[1] for s, r in read.items()}
    notes = [n for r in read.values() for n in r[3]]
    shapes = {s: sp.images.shape[1:3] for s, sp in splits.items()}
    if len(set(shapes.values())) > 1:
        raise DataError(root, f"splits have different image sizes: {shapes}")
    if all(is_blender_convention(r[2]) for r in read.values()):
        return _object_scene(root, splits, near, far, white_bkgd, holdout_every, notes, ndc)
    path, train, meta, _ = read["train"]
    to_world = applied_transform(path, meta).inverse()
    world = lambda sp: Split(sp.images, to_world.poses(sp.c2w).astype(np.float32), sp.focal,  # noqa: E731
                             sp.names, sp.alpha, sp.cameras)
    points = colors = None
    if meta.get("ply_file_path"):
        from loaders.ply import read_points_ply

        points, colors = read_points_ply(os.path.join(root, str(meta["ply_file_path"])))
        points = to_world.points(points)
    aabb = ngp_aabb(path, meta)
    if aabb is not None:  # a cube stays inside the box of its transformed corners
        corners = to_world.points(np.array([[x, y, z] for x in aabb[:, 0] for y in aabb[:, 1]
                                            for z in aabb[:, 2]]))
        aabb = np.stack([corners.min(0), corners.max(0)])
    from loaders.assemble import capture_scene

    kind = "object" if train.alpha is not None else "capture"
    return capture_scene(root, world(train), test=world(splits["test"]) if "test" in splits else None,
                         points=points, colors=colors, ndc=ndc, normalization=normalization,
                         holdout_every=holdout_every, notes=notes, kind=kind,
                         white_bkgd=white_bkgd if kind == "object" else False, aabb=aabb)


def _object_scene(root, splits, near, far, white_bkgd, holdout_every, notes, ndc) -> Scene:
    """A Blender-convention scene: the files' frame, near/far as given, never NDC."""
    if ndc:
        notes.append("NDC off: an object scene is not forward-facing (--ndc ignored)")
    if "test" not in splits:
        tr = splits["train"]
        if len(tr) <= 1 or (np.arange(len(tr)) % holdout_every == 0).all():
            raise DataError(root, "too few training views to hold out a test split")
        splits["train"], splits["test"] = tr.holdout(holdout_every)
        notes.append(f"no test split: held out every {holdout_every}th train view "
                     f"({len(splits['test'])} views) as test")
    if "val" not in splits:
        splits["val"] = splits["test"]
    return Scene(splits, near, far, white_bkgd, root, notes=notes, kind="object")
