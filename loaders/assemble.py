"""The last stage every capture format shares: posed images in the capture's world frame
-> NDC choice, normalisation, near/far, held-out test views -> Scene."""
from __future__ import annotations

import numpy as np

from loaders.normalize import (CAMERA_RADIUS, FORWARD_FACING_DEG, Similarity, depth_bounds, forward_facing_angle,
                               normalize_cameras, view_jumps)
from loaders.scene import DataError, Scene, Split

# Without depth information (no bounds, no sparse points): a near plane close to the
# cameras and a far one past the fields' box ([-1.5, 1.5]^3: its farthest corner is
# 1.5 sqrt(3) = 2.6 from the centre) seen from a camera at CAMERA_RADIUS.
DEFAULT_NEAR = 0.05 * CAMERA_RADIUS
DEFAULT_FAR = CAMERA_RADIUS + 3.0


def choose_ndc(source: str, c2w: np.ndarray, depth, ndc: bool | None, kind: str) -> tuple[bool, str]:
    """(use NDC, the sentence saying why). Automatic: only a capture whose every view is
    within FORWARD_FACING_DEG of the mean view, and whose depths are known (NDC puts the
    near plane at the nearest depth)."""
    angle = forward_facing_angle(c2w)
    spread = f"every view within {angle:.0f} deg of the mean" if angle <= FORWARD_FACING_DEG else \
        f"views up to {angle:.0f} deg from the mean"
    if ndc is None:
        ndc = kind == "capture" and depth is not None and angle <= FORWARD_FACING_DEG
        why = "forward-facing" if ndc else ("not forward-facing" if angle > FORWARD_FACING_DEG else
                                            "no depth bounds" if kind == "capture" else "an object scene")
        flag = "--no-ndc" if ndc else "--ndc"
        return ndc, f"NDC {'on' if ndc else 'off'} ({why}: {spread}; {flag} to override)"
    if ndc and depth is None:
        raise DataError(source, "NDC needs the scene's depth bounds (LLFF poses_bounds.npy, or sparse "
                                "points), and this capture has neither; train without --ndc")
    return ndc, f"NDC {'on' if ndc else 'off'} (as asked; {spread})"


def jump_note(c2w: np.ndarray, names, deg: float = 30.0) -> str | None:
    """A sentence when the given poses turn the view by more than ``deg`` between images
    adjacent in the capture's order (a video's frames, photos by name), else None.
    Structure from motion can place a block of cameras rotated about a near-symmetric
    subject; training on such poses fits each view and renders held-out ones wrongly
    (docs/captures.md), and the user should hear it before training, not from the PSNR."""
    named = names is not None and len(names) == len(c2w)
    order = np.argsort(np.asarray(names)) if named else np.arange(len(c2w))  # unnamed: the order given
    names = names if named else [str(i) for i in range(len(c2w))]
    idx = view_jumps(c2w[order], deg)
    if not len(idx):
        return None
    pairs = ", ".join(f"{names[order[i]]} -> {names[order[i + 1]]}" for i in idx[:3]) + (" ..." if len(idx) > 3 else "")
    return (f"the view turns by more than {deg:g} deg between {len(idx)} pair(s) of images adjacent by name "
            f"({pairs}): if they were taken in that order (a video's frames), these poses disagree and held-out "
            "views will suffer; `main.py process` on the images makes new ones")


def capture_scene(source: str, frames: Split, *, test: Split | None = None, depth: np.ndarray | None = None,
                  points=None, colors=None, ndc: bool | None = None, normalization: Similarity | None = None,
                  holdout_every: int = 8, notes: list[str] | None = None, kind: str = "capture",
                  white_bkgd: bool = False, aabb: np.ndarray | None = None) -> Scene:
    """frames: every posed image, c2w in the capture's world frame (test: a test split of
    its own, else every holdout_every-th view is held out). depth (N, 2) per-view near/far
    depths when known, else from points (M, 3) world when given; aabb (2, 3) world box
    of the scene (instant-ngp's aabb_scale). normalization: a stored world -> scene
    transform (a run being reloaded) instead of computing one."""
    notes = list(notes or [])
    c2w = frames.c2w.astype(np.float64)
    if depth is None and points is not None and len(points):
        cams = frames.cameras
        K = np.stack([cams.K(i) for i in range(len(cams))])
        depth = depth_bounds(c2w, K, np.stack([cams.width, cams.height], 1), points)
    ndc, why = choose_ndc(source, c2w, depth, ndc, kind)
    notes.append(why)
    jumps = jump_note(c2w, frames.names) if kind == "capture" else None
    if jumps:
        notes.append(jumps)
    if normalization is None:
        normalization = normalize_cameras(c2w, depth, forward=ndc)
    s = normalization.scale
    moved = lambda sp: Split(sp.images, normalization.poses(sp.c2w).astype(np.float32), sp.focal,  # noqa: E731
                             sp.names, sp.alpha, sp.cameras)
    frames = moved(frames)
    sc_c2w = frames.c2w
    if ndc:
        near, far = 0.0, 1.0
    elif depth is not None:
        near, far = 0.9 * float(np.min(depth)) * s, float(np.max(depth)) * s
        near = max(near, 1e-3 * CAMERA_RADIUS)
    else:
        near, far = DEFAULT_NEAR, DEFAULT_FAR
        if aabb is not None:  # the scene's own box: far enough to leave it from any camera
            corners = np.array([[x, y, z] for x in aabb[:, 0] for y in aabb[:, 1] for z in aabb[:, 2]])
            cn = normalization.points(corners)
            far = float(np.linalg.norm(cn[None] - sc_c2w[:, None, :3, 3], axis=-1).max())
    if test is not None:
        train, test = frames, moved(test)
    else:
        train, test = frames.holdout(holdout_every)
        notes.append(f"held out every {holdout_every}th view ({len(test)} views) as test")
    pts = None if points is None else normalization.points(points).astype(np.float32)
    return Scene({"train": train, "test": test, "val": test}, float(near), float(far), white_bkgd, source,
                 ndc=ndc, notes=notes, kind=kind, normalization=normalization, points=pts,
                 point_colors=None if colors is None else np.asarray(colors, np.uint8))
