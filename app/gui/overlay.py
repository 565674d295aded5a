"""Lines and points in the scene (training cameras, the SfM point cloud, the crop box, the
camera path) drawn over a rendered view, depth-tested against that view's depth.

Pure numpy, each stage a small function:

    frustum_segments / box_segments / polyline_segments   world-space geometry
    project             world points -> pixel coordinates and z-depth of a view
    clip_near           segments cut where they cross the view's near plane
    sample_segments     samples one pixel apart along each segment on screen, with z-depth
                        interpolated perspective-correctly
    draw_layer          samples and points -> pixels of the display texture, each one
                        compared with the rendered depth under it: behind the surface it
                        is drawn faint, in front of it solid

The display thread runs draw_layer after composing a frame (app.gui.gl_display), so the
lines cost nothing per GUI frame and always match the frame's own camera; dearpygui draw
items would be redrawn every frame. Depth is the renderer's expected z-depth (t along
rays whose direction has z = -1 in the camera, renderer/rays.py); forward-facing scenes
render in NDC, where there is no such depth, and are drawn untested.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

OCCLUDED_ALPHA = 0.25  # how strongly a line behind the surface is drawn
OPAQUE = 0.5  # a pixel whose opacity reaches this has a surface at its depth
DEPTH_SLACK = 0.02  # relative: a line this close behind the surface still counts as on it
MAX_SAMPLES_PER_SEGMENT = 4096


@dataclass
class Layer:
    """World-space drawing. segments (S, 2, 3), seg_colors (S, 4) RGBA in [0, 1];
    points (P, 3), point_colors (P, 4); point_size in texture pixels (a square)."""

    segments: np.ndarray = field(default_factory=lambda: np.zeros((0, 2, 3)))
    seg_colors: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    point_colors: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    point_size: int = 2

    def __len__(self) -> int:
        return len(self.segments) + len(self.points)

    @staticmethod
    def merge(layers) -> "Layer":
        layers = [x for x in layers if x is not None]
        if not layers:
            return Layer()
        return Layer(np.concatenate([x.segments for x in layers]), np.concatenate([x.seg_colors for x in layers]),
                     np.concatenate([x.points for x in layers]), np.concatenate([x.point_colors for x in layers]),
                     max(x.point_size for x in layers))


def lines(segments, color) -> Layer:
    """A layer of segments (S, 2, 3) in one RGBA colour."""
    s = np.asarray(segments, np.float64).reshape(-1, 2, 3)
    return Layer(s, np.tile(np.asarray(color, np.float32), (len(s), 1)))


@dataclass(frozen=True)
class ViewCamera:
    """The pinhole a GUI frame was rendered with (app.gui.render_schedule): c2w (4, 4)
    OpenGL, horizontal fov in degrees, square pixels, principal point at the centre."""

    c2w: np.ndarray
    fov: float
    width: int
    height: int

    @property
    def focal(self) -> float:
        return 0.5 * self.width / math.tan(0.5 * math.radians(self.fov))


# -- geometry -------------------------------------------------------------------------------


def frustum_segments(c2w, fx, fy, cx, cy, width, height, depth: float) -> np.ndarray:
    """(N * 8, 2, 3): per camera the 4 edges from its centre to the corners of its image
    at ``depth`` in front of it, and the 4 edges of that image rectangle. c2w (N, 4, 4);
    the intrinsics are scalars or (N,) arrays in pixels."""
    c2w = np.asarray(c2w, np.float64).reshape(-1, 4, 4)
    n = len(c2w)
    fx, fy, cx, cy, w, h = (np.broadcast_to(np.asarray(v, np.float64), (n,)) for v in (fx, fy, cx, cy, width, height))
    # Corners in the camera frame (x right, y up, looking down -z): pixel (0, 0) is top-left.
    us = np.stack([np.zeros(n), w, w, np.zeros(n)], 1)
    vs = np.stack([np.zeros(n), np.zeros(n), h, h], 1)
    cam = np.stack([(us - cx[:, None]) / fx[:, None] * depth, -(vs - cy[:, None]) / fy[:, None] * depth,
                    np.full((n, 4), -depth)], -1)  # (N, 4, 3)
    corners = np.einsum("nij,nkj->nki", c2w[:, :3, :3], cam) + c2w[:, None, :3, 3]
    apex = np.broadcast_to(c2w[:, None, :3, 3], (n, 4, 3))
    spokes = np.stack([apex, corners], 2)  # (N, 4, 2, 3)
    rim = np.stack([corners, np.roll(corners, -1, axis=1)], 2)
    return np.concatenate([spokes, rim], 1).reshape(-1, 2, 3)


def box_segments(lo, hi) -> np.ndarray:
    """(12, 2, 3): the edges of the axis-aligned box [lo, hi]."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    corner = lambda k: np.where([(k >> i) & 1 for i in range(3)], hi, lo)  # noqa: E731
    edges = [(a, a | (1 << i)) for a in range(8) for i in range(3) if not (a >> i) & 1]
    return np.array([[corner(a), corner(b)] for a, b in edges])


def polyline_segments(points) -> np.ndarray:
    """(K - 1, 2, 3): consecutive points joined."""
    p = np.asarray(points, np.float64).reshape(-1, 3)
    return np.stack([p[:-1], p[1:]], 1)


# -- projection ---------------------------------------------------------------------------------


def to_camera(x, cam: ViewCamera) -> np.ndarray:
    """World points (..., 3) -> the camera's frame (x right, y up, -z forward)."""
    m = np.asarray(cam.c2w, np.float64)
    return (np.asarray(x, np.float64) - m[:3, 3]) @ m[:3, :3]


def project(x, cam: ViewCamera) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u, v, z) for world points (..., 3): continuous pixel coordinates (pixel (i, j)
    covers [i, i + 1) x [j, j + 1), as the renderer's pixel-centre rays) and the z-depth
    in front of the camera (<= 0 behind it; u, v are then meaningless)."""
    p = to_camera(x, cam)
    z = -p[..., 2]
    safe = np.where(np.abs(z) > 1e-12, z, 1e-12)
    f = cam.focal
    return 0.5 * cam.width + f * p[..., 0] / safe, 0.5 * cam.height - f * p[..., 1] / safe, z


def clip_near(segments, cam: ViewCamera, near: float) -> tuple[np.ndarray, np.ndarray]:
    """Segments (S, 2, 3) cut to the part with z-depth >= near; returns (segments kept,
    indices of the input they came from). A segment wholly behind near is dropped."""
    s = np.asarray(segments, np.float64).reshape(-1, 2, 3)
    z = -to_camera(s, cam)[..., 2]  # (S, 2)
    keep = (z >= near).any(1)
    s, z, idx = s[keep].copy(), z[keep], np.flatnonzero(keep)
    for a, b in ((0, 1), (1, 0)):
        cut = z[:, a] < near
        t = (near - z[cut, a]) / (z[cut, b] - z[cut, a])
        s[cut, a] = s[cut, a] + t[:, None] * (s[cut, b] - s[cut, a])
    return s, idx


def sample_segments(segments, cam: ViewCamera, scale: float):
    """Samples along each segment (already in front of the camera) one texture pixel apart
    along the line's major axis, as a DDA line (``scale`` texture pixels per image pixel).
    Sampled on screen, with z interpolated perspective-correctly (1/z is affine in screen
    space). Returns (u, v, z, index of the segment of each sample)."""
    s = np.asarray(segments, np.float64)
    if not len(s):
        e = np.zeros(0)
        return e, e, e, np.zeros(0, np.int64)
    u, v, z = project(s, cam)
    length = np.maximum(np.abs(u[:, 1] - u[:, 0]), np.abs(v[:, 1] - v[:, 0])) * scale
    # (1.1: steps of exactly one pixel would leave gaps where rounding lands two in one.)
    k = np.clip(np.ceil(1.1 * np.nan_to_num(length, nan=0.0, posinf=MAX_SAMPLES_PER_SEGMENT)) + 1,
                2, MAX_SAMPLES_PER_SEGMENT).astype(np.int64)
    seg = np.repeat(np.arange(len(s)), k)
    start = np.cumsum(k) - k
    t = (np.arange(int(k.sum())) - start[seg]) / (k[seg] - 1)
    iz0, iz1 = 1.0 / z[seg, 0], 1.0 / z[seg, 1]
    return (u[seg, 0] + t * (u[seg, 1] - u[seg, 0]), v[seg, 0] + t * (v[seg, 1] - v[seg, 0]),
            1.0 / (iz0 + t * (iz1 - iz0)), seg)


def visible(u, v, z, depth, acc) -> np.ndarray:
    """alpha factor per point: 1 in front of (or without) a surface, OCCLUDED_ALPHA behind
    the rendered surface at its pixel. depth, acc (h, w) or None (no depth test)."""
    if depth is None:
        return np.ones(len(z), np.float32)
    h, w = depth.shape
    i = np.clip(u.astype(np.int64), 0, w - 1)
    j = np.clip(v.astype(np.int64), 0, h - 1)
    d, a = depth[j, i], acc[j, i]
    behind = (a >= OPAQUE) & np.isfinite(d) & (z > d * (1.0 + DEPTH_SLACK))
    return np.where(behind, OCCLUDED_ALPHA, 1.0).astype(np.float32)


def draw_layer(out: np.ndarray, rect, layer: Layer, cam: ViewCamera, depth=None, acc=None,
               near: float = 1e-3) -> int:
    """Draw ``layer`` as seen by ``cam`` into out (H, W, 4) float32 (the display texture),
    where the view's image occupies rect (x, y, w, h) in texture pixels. depth, acc: the
    view's rendered depth and opacity (any size: looked up at each point's pixel), or None.
    Returns the number of texture pixels written."""
    if not len(layer):
        return 0
    rx, ry, rw, rh = rect
    segs, idx = clip_near(layer.segments, cam, near)
    u, v, z, seg = sample_segments(segs, cam, max(rw / cam.width, rh / cam.height))
    written = _splat(out, rect, cam, u, v, z, layer.seg_colors[idx][seg], 1, depth, acc)
    if len(layer.points):
        u, v, z = project(layer.points, cam)
        front = z >= near
        written += _splat(out, rect, cam, u[front], v[front], z[front], layer.point_colors[front],
                          layer.point_size, depth, acc, occluded_hidden=True)
    return written


def _splat(out, rect, cam, u, v, z, colors, size, depth, acc, occluded_hidden=False) -> int:
    """Image positions (u, v) at z-depths z -> size x size squares of ``colors`` (RGBA)."""
    if not len(u):
        return 0
    rx, ry, rw, rh = rect
    if depth is not None:
        dh, dw = depth.shape
        a = visible(u * (dw / cam.width), v * (dh / cam.height), z, depth, acc)
    else:
        a = np.ones(len(z), np.float32)
    a = a * colors[:, 3]
    if occluded_hidden:  # points behind the surface clutter the view: leave them out
        keep = a >= colors[:, 3] * 0.999
        u, v, a, colors = u[keep], v[keep], a[keep], colors[keep]
    X = np.floor(rx + u * (rw / cam.width)).astype(np.int64)
    Y = np.floor(ry + v * (rh / cam.height)).astype(np.int64)
    if size > 1:
        off = np.arange(size) - size // 2
        dx, dy = (g.ravel() for g in np.meshgrid(off, off))
        X, Y = (X[:, None] + dx).ravel(), (Y[:, None] + dy).ravel()
        a, colors = np.repeat(a, len(dx)), np.repeat(colors, len(dx), axis=0)
    inside = (X >= rx) & (X < rx + rw) & (Y >= ry) & (Y < ry + rh)
    flat = (Y * out.shape[1] + X)[inside]
    if not len(flat):
        return 0
    a, colors = a[inside, None].astype(np.float32), colors[inside, :3].astype(np.float32)
    # Blend against the picture as it was: a pixel that several samples hit gets the
    # same value, not a darker one for each.
    pixels = out.reshape(-1, out.shape[-1])
    pixels[flat, :3] = a * colors + (1.0 - a) * pixels[flat, :3]
    return int(len(flat))
