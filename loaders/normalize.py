"""Scene normalisation: one similarity transform takes any capture's world frame to the
frame every field is built for, and back.

The fields cover a fixed box around the origin ([-1.5, 1.5]^3 by default), so a real
capture is moved so that the point the cameras look at sits at the origin, world up is
+Z (the embedded and Blender scenes' up, which the orbit camera assumes) and the
cameras lie within CAMERA_RADIUS of the origin. One function does it for every format
(``normalize_cameras``); forward-facing scenes rendered in NDC use the NeRF reference
code's frame instead (the mean camera at the origin, looking down -Z, the nearest depth
bound at 1 / 0.75), because NDC needs the cameras to look down -Z.

The transform is stored in run.json, and everything that leaves the normalised frame
(meshes, point clouds, recovered poses, poses given by the user) goes through it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Cameras on the unit sphere around the focus (mip-NeRF 360's convention): with the
# fields' [-1.5, 1.5]^3 box, what lies up to 1.5 camera distances from the focus is
# inside the box; an orbit at radius 4 (the Blender scenes') would keep only 0.37 of it.
CAMERA_RADIUS = 1.0
FORWARD_FACING_DEG = 30.0
LLFF_BD_FACTOR = 0.75
# Optical axes this close to parallel (smallest eigenvalue of the mean projector
# I - d d^T, 0 for parallel axes, 2/3 for axes spread over the sphere) do not meet.
MIN_AXIS_SPREAD = 0.02


@dataclass(frozen=True)
class Similarity:
    """x -> scale * R @ x + t (R a rotation, scale > 0)."""

    R: np.ndarray
    t: np.ndarray
    scale: float = 1.0

    @classmethod
    def identity(cls) -> "Similarity":
        return cls(np.eye(3), np.zeros(3), 1.0)

    @classmethod
    def from_matrix(cls, m) -> "Similarity":
        """From a 4x4 (or 3x4) [s R | t]; ValueError when the 3x3 is not a scaled rotation."""
        m = np.asarray(m, np.float64)
        if m.shape not in ((3, 4), (4, 4)) or not np.isfinite(m).all():
            raise ValueError(f"need a finite 3x4 or 4x4 matrix, got shape {m.shape}")
        a = m[:3, :3]
        s = float(np.cbrt(np.linalg.det(a)))
        if s <= 0:
            raise ValueError("the matrix mirrors or collapses space (determinant <= 0)")
        r = a / s
        if np.abs(r.T @ r - np.eye(3)).max() > 1e-4:
            raise ValueError("the 3x3 part is not a rotation times a uniform scale")
        return cls(r, m[:3, 3].copy(), s)

    @property
    def matrix(self) -> np.ndarray:
        m = np.eye(4)
        m[:3, :3] = self.scale * self.R
        m[:3, 3] = self.t
        return m

    def __matmul__(self, other: "Similarity") -> "Similarity":
        """(self @ other)(x) = self(other(x))."""
        return Similarity(self.R @ other.R, self.scale * self.R @ other.t + self.t, self.scale * other.scale)

    def inverse(self) -> "Similarity":
        return Similarity(self.R.T, -self.R.T @ self.t / self.scale, 1.0 / self.scale)

    def points(self, x) -> np.ndarray:
        """Points (..., 3)."""
        x = np.asarray(x, np.float64)
        return self.scale * x @ self.R.T + self.t

    def poses(self, c2w) -> np.ndarray:
        """Camera-to-world (..., 4, 4) or (..., 3, 4): the camera frame turns with R and its
        centre moves as a point; the axes stay unit length (a camera is rigid)."""
        c2w = np.asarray(c2w, np.float64)
        out = c2w.copy()
        out[..., :3, :3] = self.R @ c2w[..., :3, :3]
        out[..., :3, 3] = self.points(c2w[..., :3, 3])
        return out

    def is_identity(self) -> bool:
        return bool(np.allclose(self.matrix, np.eye(4), atol=1e-12))

    def to_json(self) -> dict:
        return {"matrix": self.matrix.tolist(), "scale": self.scale}

    @classmethod
    def from_json(cls, d) -> "Similarity":
        return cls.from_matrix(d["matrix"])


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation taking unit vector a to unit vector b."""
    a, b = _unit(np.asarray(a, np.float64)), _unit(np.asarray(b, np.float64))
    v, c = np.cross(a, b), float(a @ b)
    if c < -1 + 1e-12:  # opposite: half a turn about any axis perpendicular to a
        p = np.cross(a, [1.0, 0, 0] if abs(a[0]) < 0.9 else [0, 1.0, 0])
        p = _unit(p)
        return 2 * np.outer(p, p) - np.eye(3)
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx / (1 + c)


def view_dirs(c2w: np.ndarray) -> np.ndarray:
    """Unit viewing directions (N, 3): an OpenGL camera looks down its -Z axis."""
    d = -np.asarray(c2w, np.float64)[:, :3, 2]
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def focus_point(c2w: np.ndarray) -> np.ndarray | None:
    """The point nearest (least squares) to every optical axis: where an orbit's cameras
    look. None when the axes are close to parallel (a forward-facing capture) or the
    point lies behind most cameras (an inside-out capture)."""
    o = np.asarray(c2w, np.float64)[:, :3, 3]
    d = view_dirs(c2w)
    proj = np.eye(3)[None] - d[:, :, None] * d[:, None, :]  # (N, 3, 3) projectors off each axis
    a = proj.mean(0)
    if np.linalg.eigvalsh(a)[0] < MIN_AXIS_SPREAD:
        return None
    p = np.linalg.solve(a, (proj @ o[:, :, None]).mean(0)[:, 0])
    if np.mean(((p - o) * d).sum(1) > 0) < 0.5:
        return None
    return p


def forward_facing_angle(c2w: np.ndarray) -> float:
    """Largest angle (degrees) between a view direction and the mean view direction."""
    d = view_dirs(c2w)
    m = d.sum(0)
    if np.linalg.norm(m) < 1e-9:
        return 180.0
    return float(np.degrees(np.arccos(np.clip(d @ _unit(m), -1, 1))).max())


def _up_rotation(c2w: np.ndarray) -> np.ndarray:
    """Rotation taking the mean camera up vector to +Z, then turning about Z so that the
    first camera (the first image by name) sits on the -Y side looking towards +Y (a
    "front" view): fixing the heading makes the result independent of how the input
    frame was rotated."""
    up = np.asarray(c2w, np.float64)[:, :3, 1].sum(0)
    r = rotation_between(up, [0, 0, 1]) if np.linalg.norm(up) > 1e-9 else np.eye(3)
    f = r @ view_dirs(c2w[:1])[0]
    if np.hypot(f[0], f[1]) < 1e-6:  # the first camera looks straight down or up
        f = r @ np.asarray(c2w, np.float64)[0, :3, 1]
    heading = np.arctan2(f[0], f[1])  # angle of f from +Y, about +Z
    c, s = np.cos(heading), np.sin(heading)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ r


def normalize_cameras(c2w, depth: np.ndarray | None = None, forward: bool = False,
                      radius: float = CAMERA_RADIUS) -> Similarity:
    """The similarity from a capture's world frame to the normalised frame.

    c2w (N, 4, 4) OpenGL camera-to-world; depth (N, 2) per-camera near/far depths of
    the scene (LLFF bounds, or from sparse points) when known.

    forward=False (orbits and anything not rendered in NDC): +Z up (mean camera up),
    the focus point (``focus_point``; else, with depths, the point the mean camera sees
    at the median depth; else the mean camera centre) at the origin, the farthest camera
    at ``radius``. forward=True (NDC): the NeRF reference code's LLFF frame, which needs
    ``depth``. Both are equivariant: a similarity applied to the input poses (and depths
    scaled with it) gives the same normalised cameras.
    """
    c2w = np.asarray(c2w, np.float64)
    o = c2w[:, :3, 3]
    if forward:
        if depth is None:
            raise ValueError("the forward-facing (NDC) frame needs depth bounds")
        from loaders.llff import average_pose

        s = 1.0 / (float(np.min(depth)) * LLFF_BD_FACTOR)
        avg = average_pose(c2w)
        r = avg[:3, :3].T
        return Similarity(r, -s * r @ avg[:3, 3], s)
    rot = _up_rotation(c2w)
    p = focus_point(c2w)
    if p is None:
        if depth is not None:
            d = view_dirs(c2w).mean(0)
            p = o.mean(0) + _unit(d) * float(np.median(np.asarray(depth)))
        else:
            p = o.mean(0)
    spread = float(np.linalg.norm(o - p, axis=1).max())
    s = radius / spread if spread > 1e-12 else 1.0
    return Similarity(rot, -s * rot @ p, s)


def umeyama(src, dst, with_scale: bool = True) -> Similarity:
    """The similarity minimising sum |dst_i - T(src_i)|^2 (Umeyama 1991), src and dst
    (N, 3) corresponding points, N >= 3 not collinear. Rotations only: a reflection is
    never returned."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or len(src) < 3:
        raise ValueError(f"need two (N, 3) arrays with N >= 3, got {src.shape} and {dst.shape}")
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    cov = b.T @ a / len(src)
    u, sig, vt = np.linalg.svd(cov)
    fix = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        fix[2, 2] = -1
    r = u @ fix @ vt
    var = (a * a).sum() / len(src)
    if var <= 0:
        raise ValueError("the source points coincide")
    s = float(np.trace(np.diag(sig) @ fix) / var) if with_scale else 1.0
    return Similarity(r, md - s * r @ ms, s)


def depth_bounds(c2w: np.ndarray, K: np.ndarray, sizes: np.ndarray, points: np.ndarray,
                 lo: float = 0.1, hi: float = 99.9) -> np.ndarray | None:
    """Per-camera (near, far) (N, 2) as percentiles of the depths of the sparse points
    that project inside each image (LLFF's imgs2poses takes 0.1 / 99.9 of the points each
    image observes; without visibility, the frustum stands in for it). K (N, 3, 3)
    pinhole intrinsics, sizes (N, 2) width, height. None when too few points are seen."""
    pts = np.asarray(points, np.float64)
    out = []
    for m, k, (w, h) in zip(np.asarray(c2w, np.float64), K, sizes):
        cam = (pts - m[:3, 3]) @ m[:3, :3]  # world -> camera (OpenGL axes)
        z = -cam[:, 2]
        front = z > 1e-9
        u = k[0, 0] * cam[front, 0] / z[front] + k[0, 2]
        v = -k[1, 1] * cam[front, 1] / z[front] + k[1, 2]
        inside = (u >= 0) & (u < w) & (v >= 0) & (v < h)
        zs = z[front][inside]
        if len(zs) < 10:
            return None
        out.append(np.percentile(zs, [lo, hi]))
    return np.asarray(out)


def rotation_angle_deg(r: np.ndarray) -> np.ndarray:
    """Angles (degrees) of rotation matrices (..., 3, 3)."""
    tr = np.trace(np.asarray(r, np.float64), axis1=-2, axis2=-1)
    return np.degrees(np.arccos(np.clip((tr - 1) / 2, -1, 1)))


def pose_errors(est_c2w, ref_c2w, robust: bool = False) -> dict:
    """Camera poses against reference poses of the same cameras, up to the similarity that
    structure from motion cannot know: Umeyama on the camera centres, then per camera the
    rotation error (degrees) and the centre error relative to the reference cameras'
    spread (the RMS distance of their centres from their centroid).

    robust: fit the similarity on the cameras that agree (least median of squares, then
    those within 3x the median error), so that a block of cameras one of the two
    reconstructions got wrong does not drag the alignment of all the others; errors are
    still reported for every camera.

    Returns rot_deg (N,), centre_rel (N,), spread, inliers (N,) bool (cameras the
    alignment was fitted on), and the alignment (a Similarity taking est to ref)."""
    est, ref = np.asarray(est_c2w, np.float64), np.asarray(ref_c2w, np.float64)
    c = ref[:, :3, 3]
    spread = float(np.sqrt(((c - c.mean(0)) ** 2).sum(1).mean()))
    use = np.ones(len(est), bool)
    sim = umeyama(est[:, :3, 3], c)
    if robust:
        # Least median of squares over fits to random 4-camera samples (seeded: the same
        # answer every time), then refits on the cameras within 3x that median error.
        rng = np.random.default_rng(0)
        med = lambda t: float(np.median(np.linalg.norm(t.points(est[:, :3, 3]) - c, axis=1)))  # noqa: E731
        best = med(sim)
        for _ in range(300):
            pick = rng.choice(len(est), 4, replace=False)
            try:
                t = umeyama(est[pick, :3, 3], c[pick])
            except (ValueError, np.linalg.LinAlgError):
                continue
            if med(t) < best:
                sim, best = t, med(t)
        for _ in range(5):
            err = np.linalg.norm(sim.points(est[:, :3, 3]) - c, axis=1)
            new = err <= 3 * np.median(err) + 1e-12 * spread
            if new.sum() < 3 or (new == use).all():
                break
            use = new
            sim = umeyama(est[use, :3, 3], c[use])
    aligned = sim.poses(est)
    rot = rotation_angle_deg(np.swapaxes(ref[:, :3, :3], -1, -2) @ aligned[:, :3, :3])
    return {"rot_deg": rot, "centre_rel": np.linalg.norm(aligned[:, :3, 3] - c, axis=1) / spread,
            "spread": spread, "inliers": use, "alignment": sim}


def view_jumps(c2w, deg: float = 30.0) -> np.ndarray:
    """Indices i where the view direction turns by more than ``deg`` from camera i to i + 1:
    for the frames of one video (in order) these are reconstruction errors, since a hand
    cannot turn a phone that far between two kept frames."""
    d = view_dirs(c2w)
    return np.flatnonzero(np.degrees(np.arccos(np.clip((d[1:] * d[:-1]).sum(1), -1, 1))) > deg)
