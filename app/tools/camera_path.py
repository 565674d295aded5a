"""Camera paths: keyframes (pose, field of view, time) joined by a smooth curve, saved as
JSON that nerfstudio's viewer and ``ns-render camera-path`` read and write.

The curve (each part a pure function below):

    positions, fov   cubic Hermite segments in time; the tangent at a key is the slope of
                     the parabola through it and its neighbours (Catmull-Rom for uneven key
                     times), scaled by (1 - tension) as in Kochanek-Bartels; free ends have
                     zero second derivative (nerfstudio's "natural" end condition).
    rotations        unit quaternions. Segment i is q_i * exp(h(t) / 2), h a cubic Hermite
                     curve of rotation vectors from 0 to log(q_i^-1 q_i+1), whose end
                     tangents are chosen so that the angular velocity leaving a key equals
                     the one arriving (exp's right Jacobian relates the two), so the
                     rotation is C1 in time at every key as well as the position.

Times are seconds from the start. A loop adds a segment from the last key back to the
first (``loop_seconds`` long) and wraps the tangents.

JSON: nerfstudio's camera_path.json (keys, as its render panel writes them):
``keyframes`` [{matrix (flattened 4x4 row-major camera-to-world, OpenGL axes: the camera
looks down -Z), fov (vertical, degrees), aspect, override_transition_enabled,
override_transition_sec}], ``default_fov``, ``default_transition_sec``, ``camera_type``,
``render_width``, ``render_height``, ``fps``, ``seconds``, ``is_cycle``,
``smoothness_value`` and ``camera_path`` (every frame, [{camera_to_world, fov, aspect}]),
which is what ``ns-render`` renders. Each keyframe also carries ``time`` (seconds), which
nerfstudio ignores and this reader prefers: summed transitions would not give back the
exact times. Poses are in the frame the file's author worked in: nerfstudio's are in its
normalised frame, this app's in the capture's own frame (that of its transforms.json or
COLMAP model, as ``render --pose`` and the exported meshes and point clouds), which
``Scene.from_world_poses`` takes to the field's.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from app.engine.checkpoint import atomic_write
from loaders.scene import DataError

# -- quaternions (w, x, y, z), float64 --------------------------------------------------


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return np.array([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw])


def quat_conj(q: np.ndarray) -> np.ndarray:
    return q * np.array([1.0, -1.0, -1.0, -1.0])


def quat_exp(v: np.ndarray) -> np.ndarray:
    """Unit quaternion of the rotation by |v| radians about v (a rotation vector)."""
    a = float(np.linalg.norm(v))
    s = 0.5 if a < 1e-8 else math.sin(0.5 * a) / a  # sin(a/2)/a -> 1/2
    return np.concatenate([[math.cos(0.5 * a)], s * np.asarray(v, dtype=np.float64)])


def quat_log(q: np.ndarray) -> np.ndarray:
    """Rotation vector of a unit quaternion, angle in [0, pi] (q and -q are one rotation)."""
    q = q if q[0] >= 0 else -q
    n = float(np.linalg.norm(q[1:]))
    if n < 1e-12:
        return 2.0 * q[1:]
    return (2.0 * math.atan2(n, q[0]) / n) * q[1:]


def quat_from_matrix(r: np.ndarray) -> np.ndarray:
    """Unit quaternion (w >= 0) of a 3x3 rotation matrix (Shepperd's method: the largest
    diagonal term picks the stable formula)."""
    m = np.asarray(r, dtype=np.float64)
    tr = m[0, 0] + m[1, 1] + m[2, 2]
    k = int(np.argmax([tr, m[0, 0], m[1, 1], m[2, 2]]))
    if k == 0:
        s = 2.0 * math.sqrt(1.0 + tr)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    else:
        i = k - 1
        j, l = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * math.sqrt(max(1.0 + m[i, i] - m[j, j] - m[l, l], 0.0))
        q = [0.0] * 4
        q[0] = (m[l, j] - m[j, l]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (m[j, i] + m[i, j]) / s
        q[1 + l] = (m[l, i] + m[i, l]) / s
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return q if q[0] >= 0 else -q


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def right_jacobian_inv(v: np.ndarray) -> np.ndarray:
    """J_r(v)^-1 for SO(3): maps the body angular velocity of exp(v) to dv/dt."""
    a = float(np.linalg.norm(v))
    k = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    if a < 1e-6:
        return np.eye(3) + 0.5 * k + (k @ k) / 12.0
    c = 1.0 / a ** 2 - (1.0 + math.cos(a)) / (2.0 * a * math.sin(a))
    return np.eye(3) + 0.5 * k + c * (k @ k)


def focal_for_fov(height: int, fov_deg: float) -> float:
    """Focal length in pixels for a vertical field of view in degrees (nerfstudio's and
    three.js's convention for a camera's fov)."""
    return 0.5 * height / math.tan(math.radians(fov_deg) / 2.0)


# -- Hermite splines ------------------------------------------------------------------------


def hermite(p0, p1, m0, m1, h: float, s: float):
    """Cubic through p0 (s=0) and p1 (s=h) with slopes m0, m1 (per unit of s), at s."""
    u = s / h
    h00, h10 = 2 * u ** 3 - 3 * u ** 2 + 1, u ** 3 - 2 * u ** 2 + u
    h01, h11 = -2 * u ** 3 + 3 * u ** 2, u ** 3 - u ** 2
    return h00 * p0 + h10 * h * m0 + h01 * p1 + h11 * h * m1


def key_tangents(slopes: list, gaps: np.ndarray, loop: bool, tension: float) -> list:
    """Tangent at each key from the slopes of the segments around it. slopes[i], gaps[i]:
    segment i (key i to the next). Interior: the slope of the parabola through the key and
    its neighbours, (h_i d_{i-1} + h_{i-1} d_i) / (h_{i-1} + h_i); open ends: zero second
    derivative; (1 - tension) scales them all."""
    n = len(slopes) + (0 if loop else 1)  # keys
    out = []
    for i in range(n):
        if loop or 0 < i < n - 1:
            a, b = (i - 1) % len(slopes), i % len(slopes)
            out.append((gaps[b] * slopes[a] + gaps[a] * slopes[b]) / (gaps[a] + gaps[b]))
        else:
            out.append(None)
    if not loop:
        if n == 2:
            out = [slopes[0], slopes[0]]
        else:
            out[0] = (3.0 * slopes[0] - out[1]) / 2.0
            out[-1] = (3.0 * slopes[-1] - out[-2]) / 2.0
    return [(1.0 - tension) * m for m in out]


# -- keyframes and the path -------------------------------------------------------------


@dataclass
class Keyframe:
    """c2w (4, 4) float64 OpenGL camera-to-world; fov: vertical, degrees; time: seconds."""

    c2w: np.ndarray
    fov: float
    time: float

    def __post_init__(self):
        self.c2w = np.asarray(self.c2w, dtype=np.float64).reshape(4, 4)
        self.fov, self.time = float(self.fov), float(self.time)


@dataclass
class CameraPath:
    """Keyframes in time order plus what a render of the path needs."""

    keyframes: list[Keyframe] = field(default_factory=list)
    loop: bool = False
    loop_seconds: float = 1.0  # the closing segment's length, when loop
    tension: float = 0.0  # 0: Catmull-Rom; 1: tangents 0 (stops at every key)
    width: int = 1280
    height: int = 720
    fps: float = 30.0

    @property
    def seconds(self) -> float:
        if not self.keyframes:
            return 0.0
        return self.keyframes[-1].time - self.keyframes[0].time + (self.loop_seconds if self.loop else 0.0)

    @property
    def n_frames(self) -> int:
        """Frames of a render: fps x seconds (at least one)."""
        return max(1, int(round(self.fps * self.seconds)))

    def check(self, source: str = "camera path") -> None:
        """DataError naming ``source`` unless the path can be evaluated."""
        ks = self.keyframes
        if not ks:
            raise DataError(source, "the camera path has no keyframes")
        for i, k in enumerate(ks):
            _check_pose(source, i, k.c2w)
            if not (0.0 < k.fov < 180.0):
                raise DataError(source, f"keyframe {i}: fov must be between 0 and 180 degrees, got {k.fov}")
            if not math.isfinite(k.time):
                raise DataError(source, f"keyframe {i}: time is not a number")
            if i and not k.time > ks[i - 1].time:
                raise DataError(source, f"keyframe {i}: time {k.time:g} s is not after keyframe {i - 1}'s "
                                        f"({ks[i - 1].time:g} s); keyframe times must increase")
        if self.loop and not (self.loop_seconds > 0 and math.isfinite(self.loop_seconds)):
            raise DataError(source, f"a looping path needs a closing transition > 0 s, got {self.loop_seconds}")
        if not (0.0 <= self.tension <= 1.0):
            raise DataError(source, f"tension must be in [0, 1], got {self.tension}")
        if not (8 <= self.width <= 8192 and 8 <= self.height <= 8192):
            raise DataError(source, f"render size {self.width}x{self.height} is out of range (8..8192)")
        if not (0 < self.fps <= 240):
            raise DataError(source, f"fps must be in (0, 240], got {self.fps}")

    def spline(self) -> "PathSpline":
        self.check()
        return PathSpline(self)

    def frames(self) -> list[tuple[np.ndarray, float]]:
        """(c2w (4, 4), fov) of each of n_frames frames, frame k at k / fps seconds (as
        nerfstudio renders: the path's end is one frame after the last)."""
        sp = self.spline()
        t0, n = self.keyframes[0].time, self.n_frames
        return [sp.evaluate(t0 + self.seconds * k / n) for k in range(n)]


class PathSpline:
    """The smooth curve through a CameraPath's keys; evaluate(t) -> (c2w, fov)."""

    def __init__(self, path: CameraPath):
        ks = path.keyframes
        self.loop = path.loop and len(ks) > 1
        self.times = np.array([k.time for k in ks] + ([ks[-1].time + path.loop_seconds] if self.loop else []))
        self.pos = [k.c2w[:3, 3].copy() for k in ks]
        self.fov = [k.fov for k in ks]
        self.quat = [quat_from_matrix(k.c2w[:3, :3]) for k in ks]
        if len(ks) == 1:
            return
        n = len(ks)
        nxt = [(i + 1) % n for i in range(len(self.times) - 1)]
        gaps = np.diff(self.times)
        dp = [(self.pos[j] - self.pos[i]) / g for i, (j, g) in enumerate(zip(nxt, gaps))]
        df = [(self.fov[j] - self.fov[i]) / g for i, (j, g) in enumerate(zip(nxt, gaps))]
        # Rotation from key i to the next, in key i's frame (equally in the next's: the axis
        # of a rotation is fixed by it), so slopes on either side of a key are comparable.
        self.rel = [quat_log(quat_mul(quat_conj(self.quat[i]), self.quat[j])) for i, j in enumerate(nxt)]
        dq = [r / g for r, g in zip(self.rel, gaps)]
        t = path.tension
        self.mp = key_tangents(dp, gaps, self.loop, t)
        self.mf = key_tangents(df, gaps, self.loop, t)
        self.mq = key_tangents(dq, gaps, self.loop, t)  # body angular velocities at the keys

    def evaluate(self, t: float) -> tuple[np.ndarray, float]:
        times = self.times
        if len(self.pos) == 1:
            i, s, h = 0, 0.0, 1.0
        else:
            if self.loop:
                t = times[0] + (t - times[0]) % (times[-1] - times[0])
            t = min(max(t, times[0]), times[-1])
            i = min(int(np.searchsorted(times, t, side="right")) - 1, len(times) - 2)
            s, h = t - times[i], times[i + 1] - times[i]
        c2w = np.eye(4)
        if len(self.pos) == 1:
            c2w[:3, :3], c2w[:3, 3] = quat_to_matrix(self.quat[0]), self.pos[0]
            return c2w, self.fov[0]
        j = (i + 1) % len(self.pos)
        c2w[:3, 3] = hermite(self.pos[i], self.pos[j], self.mp[i], self.mp[j], h, s)
        fov = float(hermite(self.fov[i], self.fov[j], self.mf[i], self.mf[j], h, s))
        r = self.rel[i]
        # h(0) = 0, h(h) = r; h'(0) = w_i since J_r(0) = I; at the far end the rotation is
        # q_j * exp(0), and its body velocity is J_r(r) h'(h): solve for h'(h).
        v = hermite(np.zeros(3), r, self.mq[i], right_jacobian_inv(r) @ self.mq[j], h, s)
        c2w[:3, :3] = quat_to_matrix(quat_mul(self.quat[i], quat_exp(v)))
        return c2w, min(max(fov, 1e-3), 179.0)


# -- JSON ---------------------------------------------------------------------------------


def _check_pose(source: str, index: int, m) -> np.ndarray:
    from loaders.blender import check_pose

    try:
        return check_pose(source, index, m)
    except DataError as exc:
        raise DataError(source, exc.problem.replace("frame", "keyframe", 1).replace(
            "transform_matrix", "matrix")) from None


def path_to_json(path: CameraPath) -> dict:
    """nerfstudio's camera_path.json, with every frame of the render in camera_path."""
    path.check()
    aspect = path.width / path.height
    ks = path.keyframes
    keyframes = []
    for i, k in enumerate(ks):
        gap = k.time - ks[i - 1].time if i else (path.loop_seconds if path.loop else None)
        keyframes.append({"matrix": k.c2w.reshape(-1).tolist(), "fov": k.fov, "aspect": aspect,
                          "override_transition_enabled": gap is not None, "override_transition_sec": gap,
                          "time": k.time})
    frames = [{"camera_to_world": c2w.reshape(-1).tolist(), "fov": fov, "aspect": aspect}
              for c2w, fov in path.frames()]
    gaps = np.diff([k.time for k in ks])
    return {"camera_type": "perspective", "render_width": path.width, "render_height": path.height,
            "fps": path.fps, "seconds": path.seconds, "is_cycle": path.loop, "smoothness_value": path.tension,
            "default_fov": ks[0].fov, "default_transition_sec": float(gaps.mean()) if len(gaps) else 1.0,
            "keyframes": keyframes, "camera_path": frames}


def _number(source: str, obj: dict, key: str, default=None, where: str = "") -> float:
    v = obj.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise DataError(source, f"{where}'{key}' must be a number, got {v!r}")
    return float(v)


def _keyframes(source: str, meta: dict) -> tuple[list[Keyframe], float | None]:
    """Keyframes and the loop's closing transition (None: not given) from either list."""
    default_gap = _number(source, meta, "default_transition_sec", 1.0)
    if meta.get("keyframes"):
        raw, mkey = meta["keyframes"], "matrix"
    elif meta.get("camera_path"):
        # A path with frames only (hand-written, older exporters): frames are the keys,
        # evenly spread over 'seconds'.
        raw, mkey = meta["camera_path"], "camera_to_world"
        n = len(raw)
        default_gap = _number(source, meta, "seconds", 1.0) / max(n - (0 if meta.get("is_cycle") else 1), 1)
    else:
        raise DataError(source, "no 'keyframes' and no 'camera_path': not a camera path file")
    if not isinstance(raw, list):
        raise DataError(source, "'keyframes' and 'camera_path' must be lists")
    out, t, closing = [], 0.0, None
    for i, k in enumerate(raw):
        where = f"keyframe {i}: "
        if not isinstance(k, dict) or mkey not in k:
            raise DataError(source, f"{where}no '{mkey}'")
        try:
            m = np.asarray(k[mkey], dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise DataError(source, f"{where}'{mkey}' is not a list of numbers") from None
        if m.size not in (12, 16):
            raise DataError(source, f"{where}'{mkey}' needs 16 numbers (a 4x4 matrix), got {m.size}")
        m = np.vstack([m.reshape(3, 4), [0, 0, 0, 1]]) if m.size == 12 else m.reshape(4, 4)
        gap = default_gap
        if k.get("override_transition_enabled") and k.get("override_transition_sec") is not None:
            gap = _number(source, k, "override_transition_sec", where=where)
        if i == 0:
            closing = gap
        else:
            t += gap
        time = _number(source, k, "time", where=where) if "time" in k else t
        fov = _number(source, k, "fov", meta.get("default_fov", 50.0), where=where)
        out.append(Keyframe(m, fov, time))
    return out, closing


def path_from_json(meta, source: str = "camera path") -> CameraPath:
    """A CameraPath from nerfstudio's camera_path.json (or this app's, which is one); every
    problem is a DataError naming ``source``."""
    if not isinstance(meta, dict):
        raise DataError(source, "a camera path must be a JSON object")
    camera_type = str(meta.get("camera_type", "perspective")).lower()
    if camera_type != "perspective":
        raise DataError(source, f"camera_type {camera_type!r} is not supported (only perspective)")
    keys, closing = _keyframes(source, meta)
    width = _number(source, meta, "render_width", 1280)
    height = _number(source, meta, "render_height", 720)
    path = CameraPath(keys, loop=bool(meta.get("is_cycle", False)), loop_seconds=closing or 1.0,
                      tension=_number(source, meta, "smoothness_value", 0.0),
                      width=int(round(width)), height=int(round(height)), fps=_number(source, meta, "fps", 30.0))
    path.check(source)
    return path


def save_path(path: CameraPath, filename: str) -> None:
    """Write the path as camera_path.json, atomically."""
    data = json.dumps(path_to_json(path), indent=1)

    def w(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(data)
    atomic_write(filename, w)


def load_path(filename: str) -> CameraPath:
    """Read a camera_path.json; DataError naming the file for every problem."""
    from loaders.blender import _read_json  # the loaders' JSON reader and its error messages

    return path_from_json(_read_json(filename), filename)
