"""What the GUI thread knows of the worker's scene (the worker publishes it once per loaded
scene): the training and held-out cameras, image size, depth range, the sparse points, and
the normalisation between the capture's frame and the scene's."""
from __future__ import annotations

import numpy as np

from app.gui.render_schedule import fov_for

MAX_OVERLAY_POINTS = 20000  # SfM points drawn over the view (a seeded subset beyond this)


def camera_arrays(split) -> dict:
    """A split's cameras as plain arrays: c2w (N, 4, 4) and per-image fx, fy, cx, cy,
    width, height (renderer.cameras.Cameras)."""
    c = split.cameras
    return {"c2w": np.asarray(split.c2w, np.float64).copy(), "fx": np.asarray(c.fx, np.float64),
            "fy": np.asarray(c.fy, np.float64), "cx": np.asarray(c.cx, np.float64),
            "cy": np.asarray(c.cy, np.float64), "width": np.asarray(c.width, np.float64),
            "height": np.asarray(c.height, np.float64)}


def overlay_points(points, colors, limit: int = MAX_OVERLAY_POINTS, seed: int = 0):
    """At most ``limit`` of the points (N, 3) and their colours (N, 3) uint8 (grey when
    the capture has none); (None, None) when there are no points."""
    if points is None or not len(points):
        return None, None
    points = np.asarray(points, np.float64)
    colors = np.full((len(points), 3), 200, np.uint8) if colors is None else np.asarray(colors, np.uint8)
    if len(points) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(len(points), limit, replace=False))
        points, colors = points[keep], colors[keep]
    return points, colors


def describe_scene(scene, seq: int = 0) -> dict:
    """What the GUI needs to know of the scene. ``seq`` counts the scenes the worker has
    loaded, so the GUI can tell a new scene from the same one."""
    from app.gui.orbit import scene_up

    tr = scene.split("train")
    test = scene.split("test") if "test" in scene.splits else tr
    cameras = {"train": camera_arrays(tr)}
    if "test" in scene.splits:
        cameras["held_out"] = camera_arrays(test)
    points, colors = overlay_points(scene.points, scene.point_colors)
    return dict(train_c2w=tr.c2w.copy(), height=tr.height, width=tr.width, focal=tr.focal, near=scene.near,
                far=scene.far, radius=scene.scene_radius, up=scene_up(tr.c2w),
                fov=fov_for(tr.width, tr.focal), n_test=len(test), source=scene.source, cameras=cameras,
                points=points, point_colors=colors, ndc=bool(scene.ndc), normalization=scene.normalization,
                seq=seq)
