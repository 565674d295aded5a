"""Mesh export: density on a grid -> marching cubes -> coloured binary PLY.

Pipeline (each stage a small function, tested on its own):

    density_grid     field density sampled on a res^3 lattice (chunked, no grad)
    extract_surface  skimage marching cubes -> vertices, faces, outward normals
    vertex_colors    colour each vertex by looking at it head-on (see below)
    write_ply        binary little-endian PLY written with numpy, atomically

Vertex colour: a short ray is cast at each vertex along its inward normal,
from 2 voxels outside the surface to 2 voxels inside, and composited with the
model's own ``render_rays``; the result is divided by the ray's opacity. That
is "the colour a camera looking straight at the surface sees", taken from where
the field is actually opaque rather than exactly at the iso-level (which for a
trained NeRF often sits in a semi-transparent shell), and it works for every
model in the registry because it only uses the model protocol.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from app.engine.checkpoint import atomic_write

DEFAULT_BBOX = ((-1.5, -1.5, -1.5), (1.5, 1.5, 1.5))
# sigma = 10 per scene unit: a 0.1-unit thick shell already has opacity
# 1 - e^-1 = 63 %, so the level set sits where the object becomes solid at the
# scale of these scenes (radius ~1.5). Trained NeRFs put free space at ~0 and
# surfaces in the hundreds, so the result is not sensitive to the exact value.
DEFAULT_THRESHOLD = 10.0
MAX_RES = 1024


def _model_of(trainer_or_model):
    """The radiance-field model (an nn.Module with density/render_rays)."""
    model = getattr(trainer_or_model, "model", trainer_or_model)
    for attr in ("density", "render_rays"):
        if not callable(getattr(model, attr, None)):
            raise TypeError(f"expected a Trainer or a model with .{attr}(), got {type(model).__name__}")
    return model


def _device_of(model) -> torch.device:
    p = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return p.device if p is not None else torch.device("cpu")


def check_bbox(bbox) -> tuple[np.ndarray, np.ndarray]:
    """((x0,y0,z0),(x1,y1,z1)) -> lo (3,), hi (3,) float64; ValueError when empty or non-finite."""
    try:
        lo, hi = (np.asarray(b, dtype=np.float64).reshape(3) for b in bbox)
    except (TypeError, ValueError):
        raise ValueError(f"bbox must be ((x0, y0, z0), (x1, y1, z1)), got {bbox!r}") from None
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()) or (hi <= lo).any():
        raise ValueError(f"bbox must be finite with min < max on every axis, got {lo.tolist()} .. {hi.tolist()}")
    return lo, hi


def grid_axes(res: int, bbox) -> list[np.ndarray]:
    """The three (res,) sample coordinates per axis, endpoints included."""
    lo, hi = check_bbox(bbox)
    return [np.linspace(lo[i], hi[i], res) for i in range(3)]


@torch.no_grad()
def density_grid(model, res: int, bbox=DEFAULT_BBOX, chunk: int = 65536, progress=None) -> np.ndarray:
    """sigma (res, res, res) float32 indexed [ix, iy, iz] on the lattice of ``grid_axes``.

    Points are generated per chunk from flat indices so memory stays at
    O(chunk) besides the output grid. progress(done, total) is called per chunk.
    """
    if not (2 <= int(res) <= MAX_RES):
        raise ValueError(f"res must be between 2 and {MAX_RES}, got {res}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    res = int(res)
    device = _device_of(model)
    axes = [torch.as_tensor(a, dtype=torch.float32, device=device) for a in grid_axes(res, bbox)]
    total = res ** 3
    out = np.empty(total, dtype=np.float32)
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        for s in range(0, total, chunk):
            idx = torch.arange(s, min(s + chunk, total), device=device)
            pts = torch.stack([axes[0][idx // (res * res)], axes[1][(idx // res) % res], axes[2][idx % res]], -1)
            out[s:s + len(idx)] = model.density(pts).float().reshape(-1).cpu().numpy()
            if progress is not None:
                progress(min(s + chunk, total), total)
    finally:
        if hasattr(model, "train"):
            model.train(was_training)
    return out.reshape(res, res, res)


def extract_surface(grid: np.ndarray, threshold: float, bbox=DEFAULT_BBOX):
    """Marching cubes on a density grid (res, res, res) at ``threshold``.

    Returns vertices (V, 3) float32 in world units, faces (F, 3) int32 wound
    counter-clockwise seen from outside (the density is high inside), and unit
    outward normals (V, 3) float32 (pointing towards lower density).
    """
    from skimage.measure import marching_cubes

    lo, hi = check_bbox(bbox)
    if grid.ndim != 3 or min(grid.shape) < 2:
        raise ValueError(f"density grid must be 3-D with at least 2 samples per axis, got {grid.shape}")
    if not np.isfinite(grid).all():
        raise ValueError("the field's density contains NaN or infinity inside the box")
    gmin, gmax = float(grid.min()), float(grid.max())
    if not (gmin < threshold < gmax):
        raise ValueError(f"no surface at threshold {threshold:g}: density in the box ranges over "
                         f"[{gmin:.4g}, {gmax:.4g}] (is the field trained? try another threshold)")
    spacing = tuple((hi - lo) / (np.asarray(grid.shape) - 1))
    verts, faces, normals, _ = marching_cubes(grid, level=threshold, spacing=spacing)
    verts = verts + lo
    # skimage's default winding is clockwise seen along its (descent) normals;
    # swapping two indices makes faces face outward, as PLY viewers expect.
    faces = faces[:, [0, 2, 1]]
    n = normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    return verts.astype(np.float32), faces.astype(np.int32), n.astype(np.float32)


@torch.no_grad()
def vertex_colors(model, vertices: np.ndarray, normals: np.ndarray, half_length: float,
                  chunk: int = 4096, progress=None) -> np.ndarray:
    """uint8 (V, 3): each vertex seen head-on along -normal over [-half_length, +half_length].

    The composited colour is divided by the segment's opacity so a thin or
    partly transparent shell still gives its own colour, not the background's.
    """
    device = _device_of(model)
    v = torch.as_tensor(vertices, dtype=torch.float32, device=device)
    n = torch.as_tensor(normals, dtype=torch.float32, device=device)
    out = np.empty((len(v), 3), dtype=np.float32)
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        for s in range(0, len(v), chunk):
            vs, ns = v[s:s + chunk], n[s:s + chunk]
            r = model.render_rays(vs + ns * half_length, -ns, 0.0, 2.0 * half_length,
                                  background=None, train=False)
            acc = r["acc"].float().reshape(-1, 1)
            rgb = r["rgb"].float() / acc.clamp(min=1e-6)
            # Nothing opaque on the segment: grey rather than a colour made of noise.
            rgb = torch.where(acc > 1e-4, rgb, torch.full_like(rgb, 0.5))
            out[s:s + chunk] = rgb.clamp(0, 1).cpu().numpy()
            if progress is not None:
                progress(min(s + chunk, len(v)), len(v))
    finally:
        if hasattr(model, "train"):
            model.train(was_training)
    return (out * 255.0 + 0.5).astype(np.uint8)


def ply_bytes(vertices: np.ndarray, faces: np.ndarray | None, colors: np.ndarray | None = None,
              comments: tuple[str, ...] = ()) -> bytes:
    """Binary little-endian PLY: vertex x y z float (+ red green blue uchar),
    face as 'list uchar int vertex_indices'; faces None: a point cloud (no face element)."""
    vertices = np.asarray(vertices)
    points_only = faces is None
    faces = np.zeros((0, 3), np.int32) if points_only else np.asarray(faces)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices must be (V, 3), got {vertices.shape}")
    if faces.size and (faces.ndim != 2 or faces.shape[1] != 3):
        raise ValueError(f"faces must be (F, 3), got {faces.shape}")
    faces = faces.reshape(-1, 3)
    if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise ValueError("face indices out of range")
    header = ["ply", "format binary_little_endian 1.0"]
    header += [f"comment {c}" for c in comments]
    header += [f"element vertex {len(vertices)}", "property float x", "property float y", "property float z"]
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if colors is not None:
        colors = np.asarray(colors)
        if colors.shape != vertices.shape or colors.dtype != np.uint8:
            raise ValueError(f"colors must be uint8 {vertices.shape}, got {colors.dtype} {colors.shape}")
        header += ["property uchar red", "property uchar green", "property uchar blue"]
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    if not points_only:
        header += [f"element face {len(faces)}", "property list uchar int vertex_indices"]
    header += ["end_header"]
    vrec = np.empty(len(vertices), dtype=np.dtype(fields))  # packed: no alignment padding
    vrec["x"], vrec["y"], vrec["z"] = vertices[:, 0], vertices[:, 1], vertices[:, 2]
    if colors is not None:
        vrec["red"], vrec["green"], vrec["blue"] = colors[:, 0], colors[:, 1], colors[:, 2]
    frec = np.empty(len(faces), dtype=np.dtype([("n", "u1"), ("idx", "<i4", (3,))]))
    frec["n"] = 3
    frec["idx"] = faces
    return ("\n".join(header) + "\n").encode("ascii") + vrec.tobytes() + frec.tobytes()


def write_ply(path: str, vertices: np.ndarray, faces: np.ndarray | None, colors: np.ndarray | None = None,
              comments: tuple[str, ...] = ()) -> None:
    """ply_bytes written atomically (a reader never sees a half-written mesh)."""
    data = ply_bytes(vertices, faces, colors, comments)

    def w(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    atomic_write(path, w)


def crop_grid_box(bbox, crop):
    """(lo, hi, cut) of the grid to sample: ``bbox`` limited to the crop box (None: no crop),
    and cut (2, 3) bool saying which faces of the grid the box cuts (min faces, max faces).
    ValueError when they do not overlap."""
    lo, hi = check_bbox(bbox)
    if crop is None:
        return lo, hi, np.zeros((2, 3), dtype=bool)
    box = crop.intersect(lo, hi)
    if box is None:
        raise ValueError(f"the crop box {list(crop.lo)} .. {list(crop.hi)} does not overlap the "
                         f"export box {lo.tolist()} .. {hi.tolist()}")
    clo, chi = np.asarray(box.lo), np.asarray(box.hi)
    return clo, chi, np.stack([clo > lo, chi < hi])


def close_cut_faces(grid: np.ndarray, cut: np.ndarray) -> np.ndarray:
    """The grid with its outer layer emptied on the faces a crop box cuts, so the surface
    closes there (a cap one voxel inside the box) instead of ending in an open rim."""
    grid = grid.copy()
    for axis in range(3):
        idx = [slice(None)] * 3
        for side, at in ((0, 0), (1, -1)):
            if cut[side, axis]:
                idx[axis] = at
                grid[tuple(idx)] = 0.0
    return grid


def export_mesh(trainer_or_model, path: str, res: int = 256, threshold: float | None = None,
                bbox=DEFAULT_BBOX, chunk: int = 65536, colors: bool = True, progress=None,
                log=print, crop=None) -> dict:
    """Marching-cubes mesh of a field's density, coloured, to a binary PLY at ``path``.

    threshold: density level of the surface; None uses DEFAULT_THRESHOLD (10).
    progress(done, total) is called per chunk of each slow stage: the density grid
    (total = res^3 points), then the vertex colours (total = vertex count).
    bbox is in the scene's (normalised) frame; the vertices are written in the capture's
    own frame (Scene.to_world_points) when a Trainer is given.
    crop: a renderer.crop.CropBox; None takes the field's own (``Field.crop``). The grid then
    spans only the part of ``bbox`` inside the box, and the surface is closed where the box
    cuts it.
    Returns dict(vertices=int, faces=int, threshold=float, path=str, seconds=float).
    Raises ValueError (nothing written) for bad arguments or a field with no
    surface at that level.
    """
    model = _model_of(trainer_or_model)
    if getattr(getattr(trainer_or_model, "scene", None), "ndc", False):
        raise ValueError("mesh export needs a 360-degree scene: a forward-facing (NDC) field's "
                         "coordinates are warped, so a box in them is not a box in the world")
    if threshold is None:
        threshold = DEFAULT_THRESHOLD
        if log:
            log(f"threshold: {threshold:g} (default; density per scene unit)")
    threshold = float(threshold)
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold}")
    if not str(path).lower().endswith(".ply"):
        raise ValueError(f"{path}: mesh output must be a .ply file")
    if crop is None:
        crop = getattr(model, "crop", None)  # analytic test fields have no crop attribute
    lo, hi, cut = crop_grid_box(bbox, crop)
    t0 = time.perf_counter()
    grid = close_cut_faces(density_grid(model, res, (lo, hi), chunk, progress), cut)
    verts, faces, normals = extract_surface(grid, threshold, (lo, hi))
    if colors:
        voxel = float(((hi - lo) / (res - 1)).max())
        rgb = vertex_colors(model, verts, normals, half_length=2.0 * voxel, progress=progress)
    else:
        rgb = None
    scene = getattr(trainer_or_model, "scene", None)
    if scene is not None:  # out of the normalised frame, into the capture's own
        verts = scene.to_world_points(verts).astype(np.float32)
    write_ply(path, verts, faces, rgb, comments=(f"NeRF Lab mesh: res {res}, threshold {threshold:g}",
                                                   f"bbox {lo.tolist()} {hi.tolist()} (scene units)")
              + ((f"crop {list(crop.lo)} {list(crop.hi)} (scene units)",) if crop is not None else ()))
    return {"vertices": int(len(verts)), "faces": int(len(faces)), "threshold": threshold,
            "path": str(path), "seconds": time.perf_counter() - t0}
