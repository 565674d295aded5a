"""Camera models: per-image intrinsics and lens distortion -> ray directions.

Conventions: pixel (column i, row j) is sampled at its centre (i + 0.5, j + 0.5), the
same as COLMAP, nerfstudio and instant-ngp, so their cx, cy are used as they are. The
distortion models are OpenCV's, applied to normalised image coordinates (x right,
y down, z = 1):

* OPENCV          dist = (k1, k2, p1, p2, k3): radial 1 + k1 r^2 + k2 r^4 + k3 r^6 plus
                  the tangential terms (COLMAP's OPENCV is k3 = 0).
* OPENCV_FISHEYE  dist = (k1, k2, k3, k4, -): theta_d = theta (1 + k1 theta^2 + ...
                  + k4 theta^8) with theta the angle off the optical axis.
* PINHOLE         no distortion.

A camera ray needs the inverse (distorted pixel -> undistorted direction), which has
no closed form: ``undistort`` runs a fixed number of Newton steps (no data-dependent
stopping, so it can live inside a captured CUDA graph). Returned directions follow
renderer.rays: OpenGL camera axes (looking down -Z, +Y up) with z = -1, so a ray's
t is depth along the optical axis.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch

KINDS = ("PINHOLE", "OPENCV", "OPENCV_FISHEYE")
N_DIST = 5
NEWTON_STEPS = 10
# The fisheye inverse stops short of 90 degrees off axis: a z = -1 direction does not
# exist there (and a NeRF ray at 89 degrees is useless anyway).
MAX_THETA = math.radians(89.0)


def _arr(x, n: int, dtype=np.float64) -> np.ndarray:
    a = np.asarray(x, dtype=dtype)
    return np.broadcast_to(a, (n,)).copy() if a.ndim == 0 else a.copy()


@dataclass
class Cameras:
    """Intrinsics of N images. Arrays are numpy float64 (int for sizes), or torch
    tensors after ``to(device)`` (what the samplers index per ray)."""

    fx: np.ndarray
    fy: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    width: np.ndarray
    height: np.ndarray
    kind: str = "PINHOLE"
    dist: np.ndarray = field(default=None)  # (N, N_DIST)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"camera model {self.kind!r} is not supported (use one of {', '.join(KINDS)})")
        if self.dist is None:
            self.dist = np.zeros((len(self.fx), N_DIST))

    @classmethod
    def create(cls, n: int, width, height, fx, fy=None, cx=None, cy=None, kind: str = "PINHOLE",
               dist=None) -> "Cameras":
        """N cameras from scalars or (N,) arrays; fy defaults to fx, the principal point
        to the image centre, dist to zeros (a (N_DIST,) vector is shared by all)."""
        w, h = _arr(width, n, np.int64), _arr(height, n, np.int64)
        fx = _arr(fx, n)
        d = np.zeros((n, N_DIST))
        if dist is not None:
            d0 = np.asarray(dist, np.float64)
            d[:, :d0.shape[-1]] = d0
        return cls(fx, fx.copy() if fy is None else _arr(fy, n), w / 2.0 if cx is None else _arr(cx, n),
                   h / 2.0 if cy is None else _arr(cy, n), w, h, kind, d)

    @classmethod
    def pinhole(cls, n: int, width: int, height: int, focal: float) -> "Cameras":
        """The old single-focal camera: principal point at the centre, no distortion."""
        return cls.create(n, width, height, focal)

    def __len__(self) -> int:
        return int(len(self.fx))

    def __getitem__(self, idx) -> "Cameras":
        """A subset (an int gives a one-camera Cameras)."""
        if isinstance(idx, (int, np.integer)):
            idx = [int(idx)]
        return replace(self, **{f.name: getattr(self, f.name)[idx] for f in fields(self) if f.name != "kind"})

    @property
    def distorted(self) -> bool:
        return self.kind != "PINHOLE" and bool((np.asarray(self.dist) != 0).any())

    def scaled(self, factor: float) -> "Cameras":
        """The cameras of images downscaled by ``factor`` (box filter over factor x factor
        blocks, cropping the remainder at the right and bottom): the pixel grid scales
        about the top-left corner, so focal lengths and the principal point divide by
        factor; the distortion (in normalised coordinates) is unchanged."""
        return replace(self, fx=self.fx / factor, fy=self.fy / factor, cx=self.cx / factor,
                       cy=self.cy / factor, width=self.width // int(factor) if float(factor).is_integer()
                       else np.round(self.width / factor).astype(np.int64),
                       height=self.height // int(factor) if float(factor).is_integer()
                       else np.round(self.height / factor).astype(np.int64))

    def resized(self, width: int, height: int) -> "Cameras":
        """The same view at another image size (intrinsics scaled per axis)."""
        sx, sy = width / self.width, height / self.height
        return replace(self, fx=self.fx * sx, fy=self.fy * sy, cx=self.cx * sx, cy=self.cy * sy,
                       width=np.full(len(self), int(width)), height=np.full(len(self), int(height)))

    def K(self, i: int = 0) -> np.ndarray:
        """Pinhole 3x3 intrinsics of camera i (float64)."""
        return np.array([[self.fx[i], 0.0, self.cx[i]], [0.0, self.fy[i], self.cy[i]], [0.0, 0.0, 1.0]])

    def to(self, device, dtype=torch.float32) -> "Cameras":
        """Tensors on ``device`` (sizes stay int64)."""
        t = lambda a, dt: torch.as_tensor(np.asarray(a), dtype=dt, device=device)  # noqa: E731
        return replace(self, fx=t(self.fx, dtype), fy=t(self.fy, dtype), cx=t(self.cx, dtype),
                       cy=t(self.cy, dtype), width=t(self.width, torch.int64),
                       height=t(self.height, torch.int64), dist=t(self.dist, dtype))

    def to_dict(self) -> dict:
        return {"kind": self.kind, **{f.name: np.asarray(getattr(self, f.name)).tolist()
                                      for f in fields(self) if f.name != "kind"}}


# -- distortion models (normalised coordinates; torch, any float dtype) -------------------------
def distort(x: torch.Tensor, y: torch.Tensor, kind: str, d: torch.Tensor):
    """Undistorted normalised (x, y) -> distorted, each (...,); d (..., N_DIST)."""
    if kind == "PINHOLE":
        return x, y
    if kind == "OPENCV":
        k1, k2, p1, p2, k3 = d.unbind(-1)
        r2 = x * x + y * y
        radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
        return (x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
                y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y)
    if kind == "OPENCV_FISHEYE":
        r = torch.sqrt(x * x + y * y)
        theta = torch.atan(r)
        theta_d = _fisheye_poly(theta, d)
        scale = torch.where(r > 1e-12, theta_d / r.clamp(min=1e-12), torch.ones_like(r))
        return x * scale, y * scale
    raise ValueError(f"unknown camera model {kind!r}")


def _fisheye_poly(theta: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    k1, k2, k3, k4 = d[..., 0], d[..., 1], d[..., 2], d[..., 3]
    t2 = theta * theta
    return theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))


def undistort(xd: torch.Tensor, yd: torch.Tensor, kind: str, d: torch.Tensor, steps: int = NEWTON_STEPS):
    """Distorted normalised (xd, yd) -> undistorted (x, y): the inverse of ``distort``.

    OPENCV: Newton on the 2-D map, started at the distorted point (a step whose 2x2
    Jacobian is near singular falls back to the fixed-point step). FISHEYE: Newton on
    the 1-D radial polynomial theta_d(theta), then r = tan(theta)."""
    if kind == "PINHOLE":
        return xd, yd
    if kind == "OPENCV":
        k1, k2, p1, p2, k3 = d.unbind(-1)
        x, y = xd, yd
        for _ in range(steps):
            r2 = x * x + y * y
            radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
            dradial = k1 + r2 * (2 * k2 + 3 * k3 * r2)  # d radial / d (r^2)
            fx = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x) - xd
            fy = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y - yd
            a = radial + 2 * x * x * dradial + 2 * p1 * y + 6 * p2 * x  # d fx / dx
            b = 2 * x * y * dradial + 2 * p1 * x + 2 * p2 * y  # d fx / dy == d fy / dx
            c = radial + 2 * y * y * dradial + 6 * p1 * y + 2 * p2 * x  # d fy / dy
            det = a * c - b * b
            ok = det.abs() > 1e-12
            det = torch.where(ok, det, torch.ones_like(det))
            x = x - torch.where(ok, (c * fx - b * fy) / det, fx)
            y = y - torch.where(ok, (a * fy - b * fx) / det, fy)
        return x, y
    if kind == "OPENCV_FISHEYE":
        k1, k2, k3, k4 = d[..., 0], d[..., 1], d[..., 2], d[..., 3]
        rd = torch.sqrt(xd * xd + yd * yd)
        theta = rd.clamp(max=MAX_THETA)
        for _ in range(steps):
            t2 = theta * theta
            f = _fisheye_poly(theta, d) - rd
            df = 1 + t2 * (3 * k1 + t2 * (5 * k2 + t2 * (7 * k3 + t2 * 9 * k4)))
            df = torch.where(df.abs() > 1e-12, df, torch.ones_like(df))
            theta = (theta - f / df).clamp(0.0, MAX_THETA)
        scale = torch.where(rd > 1e-12, torch.tan(theta) / rd.clamp(min=1e-12), torch.ones_like(rd))
        return xd * scale, yd * scale
    raise ValueError(f"unknown camera model {kind!r}")


def image_directions(cams: Cameras, img_idx, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Camera-space directions (n, 3), z = -1 (OpenGL axes), of continuous image points
    (u right, v down, in pixels; pixel (i, j)'s centre is (i + 0.5, j + 0.5)) seen by
    camera ``img_idx`` (an int or (n,) indices) of ``cams``."""
    dtype = u.dtype if u.is_floating_point() else torch.float32
    dev = u.device
    t = lambda a: torch.as_tensor(a, dtype=dtype, device=dev)  # noqa: E731 - no copy when already there
    idx = torch.as_tensor(img_idx, device=dev)
    fx, fy, cx, cy = t(cams.fx)[idx], t(cams.fy)[idx], t(cams.cx)[idx], t(cams.cy)[idx]
    xd = (u.to(dtype) - cx) / fx
    yd = (v.to(dtype) - cy) / fy
    if cams.kind != "PINHOLE":
        xd, yd = undistort(xd, yd, cams.kind, t(cams.dist)[idx])
    return torch.stack([xd, -yd, -torch.ones_like(xd)], -1)


def pixel_directions(cams: Cameras, img_idx, px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """Directions (n, 3) through the centres of integer pixels (px column, py row)."""
    dtype = px.dtype if px.is_floating_point() else torch.float32
    return image_directions(cams, img_idx, px.to(dtype) + 0.5, py.to(dtype) + 0.5)


def camera_grid_directions(cams: Cameras, i: int = 0, device=None) -> torch.Tensor:
    """Directions (H, W, 3) of every pixel of camera i (a whole-image render)."""
    h, w = int(cams.height[i]), int(cams.width[i])
    py, px = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return pixel_directions(cams, i, px.reshape(-1), py.reshape(-1)).reshape(h, w, 3)


def project(cams: Cameras, i: int, points_cam: np.ndarray) -> np.ndarray:
    """(n, 2) continuous pixel coordinates of camera-space points (n, 3) in OpenGL axes
    (in front of the camera: z < 0), through the distortion model. A float64 reference
    for tests and for checking loaders; not used on the training path."""
    p = torch.as_tensor(np.asarray(points_cam, np.float64))
    x, y = p[:, 0] / -p[:, 2], -p[:, 1] / -p[:, 2]
    d = torch.as_tensor(np.asarray(cams.dist[i], np.float64)).expand(len(p), N_DIST)
    xd, yd = distort(x, y, cams.kind, d)
    return torch.stack([xd * float(cams.fx[i]) + float(cams.cx[i]),
                        yd * float(cams.fy[i]) + float(cams.cy[i])], -1).numpy()
