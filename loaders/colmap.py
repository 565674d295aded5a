"""A COLMAP sparse model (cameras, images, points3D as .bin or .txt) read directly
through pycolmap, without converting it to another format first.

Layout: the model in ``<root>/sparse/0`` (or ``<root>/sparse``, or the folder given)
and the images in ``<root>/images`` (COLMAP's own layout), with ``images_N`` copies
used for ``downscale`` N when present.
"""
from __future__ import annotations

import os

import numpy as np

from loaders.blender import downscaled_copy
from loaders.images import read_image, resize_area
from loaders.scene import DataError, Scene, Split
from renderer.cameras import Cameras

# COLMAP model name -> (our kind, function of its params -> fx, fy, cx, cy, dist).
_MODELS = {
    "SIMPLE_PINHOLE": ("PINHOLE", lambda p: (p[0], p[0], p[1], p[2], [])),
    "PINHOLE": ("PINHOLE", lambda p: (p[0], p[1], p[2], p[3], [])),
    "SIMPLE_RADIAL": ("OPENCV", lambda p: (p[0], p[0], p[1], p[2], [p[3]])),
    "RADIAL": ("OPENCV", lambda p: (p[0], p[0], p[1], p[2], [p[3], p[4]])),
    "OPENCV": ("OPENCV", lambda p: (p[0], p[1], p[2], p[3], list(p[4:8]))),
    "FULL_OPENCV": ("OPENCV", lambda p: (p[0], p[1], p[2], p[3], [p[4], p[5], p[6], p[7], p[8]])),
    "SIMPLE_RADIAL_FISHEYE": ("OPENCV_FISHEYE", lambda p: (p[0], p[0], p[1], p[2], [p[3]])),
    "RADIAL_FISHEYE": ("OPENCV_FISHEYE", lambda p: (p[0], p[0], p[1], p[2], [p[3], p[4]])),
    "OPENCV_FISHEYE": ("OPENCV_FISHEYE", lambda p: (p[0], p[1], p[2], p[3], list(p[4:8]))),
    "SIMPLE_FISHEYE": ("OPENCV_FISHEYE", lambda p: (p[0], p[0], p[1], p[2], [])),
    "FISHEYE": ("OPENCV_FISHEYE", lambda p: (p[0], p[1], p[2], p[3], [])),
}
# OpenCV camera axes (x right, y down, z forward) -> OpenGL (x right, y up, z back).
CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])


def _has_model(d: str) -> bool:
    return all(os.path.isfile(os.path.join(d, f"{n}.bin")) or os.path.isfile(os.path.join(d, f"{n}.txt"))
               for n in ("cameras", "images", "points3D"))


def find_model(root: str) -> str | None:
    """The sparse model folder under root (sparse/0, sparse, or root itself), or None."""
    for d in (os.path.join(root, "sparse", "0"), os.path.join(root, "sparse"), root):
        if _has_model(d):
            return d
    return None


def image_folder(model_dir: str) -> str:
    """COLMAP's layout: <root>/sparse/0 or <root>/sparse -> <root>/images."""
    d = os.path.abspath(model_dir)
    for up in (2, 1, 0):
        root = d
        for _ in range(up):
            root = os.path.dirname(root)
        if os.path.isdir(os.path.join(root, "images")):
            return os.path.join(root, "images")
    raise DataError(model_dir, "no images/ folder next to the sparse model (expected <root>/images "
                               "for <root>/sparse/0)")


def colmap_camera(model_dir: str, cam) -> tuple[str, tuple]:
    """(kind, (fx, fy, cx, cy, dist)) of a pycolmap.Camera."""
    name = cam.model.name
    if name not in _MODELS:
        raise DataError(model_dir, f"camera {cam.camera_id}: COLMAP model {name} is not supported "
                                   f"(supported: {', '.join(_MODELS)})")
    kind, unpack = _MODELS[name]
    p = np.asarray(cam.params, np.float64)
    if name == "FULL_OPENCV" and np.any(p[9:] != 0):
        raise DataError(model_dir, f"camera {cam.camera_id}: FULL_OPENCV with rational terms k4..k6 "
                                   "is not supported")
    return kind, unpack(p)


def common_kind(model_dir: str, kinds: set[str]) -> str:
    """One distortion kind for all cameras: pinhole ones fit OPENCV (zero distortion);
    a fisheye among perspective cameras does not fit either."""
    if len(kinds) == 1:
        return next(iter(kinds))
    if kinds == {"PINHOLE", "OPENCV"}:
        return "OPENCV"
    raise DataError(model_dir, f"cameras mix fisheye and perspective models ({', '.join(sorted(kinds))})")


def c2w_from_rigid(cam_from_world) -> np.ndarray:
    """OpenGL camera-to-world (4, 4) of a pycolmap.Rigid3d cam_from_world."""
    w2c = np.eye(4)
    w2c[:3] = np.asarray(cam_from_world.matrix(), np.float64)
    return np.linalg.inv(w2c) @ CV_TO_GL


def read_reconstruction(model_dir: str):
    try:
        import pycolmap
    except ImportError:
        raise DataError(model_dir, "reading a COLMAP model needs pycolmap (pip install pycolmap)") from None
    try:
        rec = pycolmap.Reconstruction(model_dir)
    except Exception as exc:  # noqa: BLE001 - pycolmap raises several types for bad files
        raise DataError(model_dir, f"cannot read the COLMAP model ({type(exc).__name__}: {exc})") from None
    if rec.num_reg_images() == 0:
        raise DataError(model_dir, "the COLMAP model has no registered images")
    return rec


def observed_depths(rec, image) -> np.ndarray:
    """Depths of the 3-D points an image observes (its own triangulated keypoints)."""
    ids = [p.point3D_id for p in image.points2D if p.has_point3D()]
    if not ids:
        return np.zeros(0)
    xyz = np.array([rec.points3D[i].xyz for i in ids])
    m = np.asarray(image.cam_from_world().matrix(), np.float64)
    return xyz @ m[:3, :3].T[:, 2] + m[2, 3]


def load_colmap(model_dir: str, downscale: int = 1, ndc: bool | None = None, normalization=None,
                holdout_every: int = 8) -> Scene:
    """Registered images of a COLMAP model, sorted by name, with their own cameras."""
    rec = read_reconstruction(model_dir)
    img_dir = image_folder(model_dir)
    if downscale < 1:
        raise DataError(model_dir, f"downscale must be >= 1, got {downscale}")
    regs = sorted((rec.images[i] for i in rec.reg_image_ids()), key=lambda im: im.name)
    kinds, rows, images, c2w, names, depth = set(), [], [], [], [], []
    for im in regs:
        cam = rec.cameras[im.camera_id]
        kind, row = colmap_camera(model_dir, cam)
        path = os.path.join(img_dir, im.name)
        small = downscaled_copy(path, downscale)
        img = read_image(small or path)[..., :3]
        # An images/ folder at another size than the model's cameras (already downscaled
        # copies): scale by the size actually read; an images_N copy is exactly 1/N.
        scale = (1.0 / downscale) if small else img.shape[1] / cam.width
        resize = 1 if small else downscale
        if not 1 <= resize <= min(img.shape[:2]):
            raise DataError(path, f"downscale {resize} must be between 1 and the image size")
        img = resize_area(img, resize)
        if images and img.shape != images[0].shape:
            raise DataError(small or path, f"image size {img.shape[1]}x{img.shape[0]} differs from "
                                           f"{images[0].shape[1]}x{images[0].shape[0]}")
        f = scale / resize
        fx, fy, cx, cy, dist = row
        kinds.add(kind)
        rows.append((fx * f, fy * f, cx * f, cy * f, dist))
        images.append(img)
        c2w.append(c2w_from_rigid(im.cam_from_world()))
        names.append(im.name)
        z = observed_depths(rec, im)
        z = z[z > 0]
        depth.append(np.percentile(z, [0.1, 99.9]) if len(z) >= 10 else [np.nan, np.nan])
    kind = common_kind(model_dir, kinds)
    dist = np.zeros((len(rows), 5))
    for i, r in enumerate(rows):
        dist[i, :len(r[4])] = r[4]
    h, w = images[0].shape[:2]
    cams = Cameras.create(len(rows), w, h, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                          [r[3] for r in rows], kind, dist if kind != "PINHOLE" else None)
    depth = np.asarray(depth)
    depth = None if np.isnan(depth).all() else np.where(np.isnan(depth), np.nanmedian(depth, 0), depth)
    xyz = np.array([p.xyz for p in rec.points3D.values()]).reshape(-1, 3)
    rgb = np.array([p.color for p in rec.points3D.values()], np.uint8).reshape(-1, 3)
    split = Split(np.stack(images).astype(np.float32), np.stack(c2w).astype(np.float32), float(cams.fx[0]),
                  names, None, cams)
    from loaders.assemble import capture_scene

    notes = [f"COLMAP model {model_dir}: {len(regs)} registered images, {len(xyz)} points"]
    return capture_scene(model_dir, split, depth=depth, points=xyz, colors=rgb, ndc=ndc,
                         normalization=normalization, holdout_every=holdout_every, notes=notes)
