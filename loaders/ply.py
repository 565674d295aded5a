"""Point clouds as PLY: what ``process`` writes (sparse points) and what a nerfstudio
transforms.json points to (``ply_file_path``). Vertices only: x, y, z (float or double)
and optionally red, green, blue (uchar); binary little-endian or ASCII."""
from __future__ import annotations

import numpy as np

from loaders.scene import DataError

_TYPES = {"float": "<f4", "float32": "<f4", "double": "<f8", "float64": "<f8", "uchar": "u1", "uint8": "u1",
          "char": "i1", "int8": "i1", "short": "<i2", "ushort": "<u2", "int": "<i4", "int32": "<i4",
          "uint": "<u4", "uint32": "<u4"}


def points_ply_bytes(xyz: np.ndarray, rgb: np.ndarray | None = None, comments: tuple[str, ...] = ()) -> bytes:
    """Binary little-endian PLY of points (M, 3) with optional uint8 colours (M, 3)."""
    xyz = np.asarray(xyz, np.float32).reshape(-1, 3)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    head = ["ply", "format binary_little_endian 1.0", *[f"comment {c}" for c in comments],
            f"element vertex {len(xyz)}", "property float x", "property float y", "property float z"]
    if rgb is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
        head += ["property uchar red", "property uchar green", "property uchar blue"]
    rec = np.empty(len(xyz), dtype=np.dtype(fields))
    rec["x"], rec["y"], rec["z"] = xyz.T
    if rgb is not None:
        rgb = np.asarray(rgb, np.uint8).reshape(-1, 3)
        rec["red"], rec["green"], rec["blue"] = rgb.T
    return ("\n".join(head + ["end_header"]) + "\n").encode("ascii") + rec.tobytes()


def read_points_ply(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(xyz (M, 3) float64, rgb (M, 3) uint8 or None) of a PLY's vertex element."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise DataError(path, f"cannot read ({exc.strerror})") from None
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise DataError(path, "not a PLY file (no 'ply' magic or no end_header)")
    body = data[data.index(b"\n", end) + 1:]
    fmt, n, props, in_vertex, before = None, 0, [], False, 0
    for line in data[:end].decode("ascii", "replace").splitlines():
        w = line.split()
        if not w:
            continue
        if w[0] == "format":
            fmt = w[1]
        elif w[0] == "element":
            in_vertex = w[1] == "vertex"
            if in_vertex:
                n = int(w[2])
            elif not props:
                before += 1  # an element before the vertices: not a layout this reader handles
        elif w[0] == "property" and in_vertex:
            if w[1] == "list" or w[1] not in _TYPES:
                raise DataError(path, f"vertex property type {w[1]!r} is not supported")
            props.append((w[2], _TYPES[w[1]]))
    names = [p[0] for p in props]
    if before or not {"x", "y", "z"} <= set(names):
        raise DataError(path, "need a vertex element (first) with x, y, z properties")
    if fmt == "binary_little_endian":
        dt = np.dtype(props)
        if len(body) < n * dt.itemsize:
            raise DataError(path, f"truncated: {n} vertices need {n * dt.itemsize} bytes, have {len(body)}")
        rec = np.frombuffer(body, dt, count=n)
        col = lambda k: rec[k].astype(np.float64)  # noqa: E731
    elif fmt == "ascii":
        try:
            table = np.loadtxt(body.decode("ascii").splitlines()[:n], ndmin=2)
        except ValueError as exc:
            raise DataError(path, f"malformed ASCII vertex data ({exc})") from None
        col = lambda k: table[:, names.index(k)]  # noqa: E731
    else:
        raise DataError(path, f"PLY format {fmt!r} is not supported (binary_little_endian or ascii)")
    xyz = np.stack([col("x"), col("y"), col("z")], 1)
    rgb = np.stack([col(c) for c in ("red", "green", "blue")], 1).astype(np.uint8) \
        if {"red", "green", "blue"} <= set(names) else None
    if not np.isfinite(xyz).all():
        raise DataError(path, "points contain NaN or infinity")
    return xyz, rgb
