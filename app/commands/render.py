"""`main.py render RUN_DIR`: one view to PNG (RGB, and optionally depth/opacity). With --pose,
--size WxH and --fov it is the screenshot of any camera at any resolution."""
from __future__ import annotations

import json

import numpy as np

from app.cli import UserError
from app.engine.runs import load_run


def configure(p) -> None:
    p.add_argument("run_dir")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--view", default="test:0", help="SPLIT:INDEX of a dataset camera")
    g.add_argument("--pose", default=None,
                   help="camera-to-world 4x4 as JSON (16 numbers or nested), OpenGL convention, in the "
                        "capture's own frame (that of its transforms.json / COLMAP model)")
    g.add_argument("--orbit", default=None, metavar="AZ,EL,R",
                   help="orbit camera around the scene's centre: degrees, degrees, radius in scene units")
    p.add_argument("--out", default="render.png", help="RGB output PNG")
    p.add_argument("--depth-out", default=None, help="also write a depth PNG (turbo colour map)")
    p.add_argument("--acc-out", default=None, help="also write an opacity PNG")
    p.add_argument("--size", default=None, metavar="WxH",
                   help="output size in pixels: WxH, or one number for a square (default: dataset size)")
    p.add_argument("--fov", type=float, default=None, metavar="DEG",
                   help="vertical field of view in degrees (default: the training cameras' horizontal "
                        "field of view, kept at any size)")
    add_crop_option(p)
    p.add_argument("--device", default="auto")


def parse_pose(text: str) -> np.ndarray:
    try:
        m = np.asarray(json.loads(text), dtype=np.float64)
    except (json.JSONDecodeError, ValueError, TypeError):
        raise UserError(f"--pose: not a JSON list of numbers: {text[:60]!r}") from None
    if m.size == 12:
        m = np.vstack([m.reshape(3, 4), [0, 0, 0, 1]])
    if m.size != 16:
        raise UserError(f"--pose: need 12 or 16 numbers, got {m.size}")
    m = m.reshape(4, 4)
    from loaders.blender import check_pose
    from loaders.scene import DataError
    try:
        return check_pose("--pose", 0, m)
    except DataError as exc:
        raise UserError(str(exc)) from None


KEEP = object()  # --crop not given: the run's own box (run.json, else the checkpoint's)


def add_crop_option(p) -> None:
    p.add_argument("--crop", default=None, metavar="X0,Y0,Z0,X1,Y1,Z1",
                   help="crop box for this command, or 'none' for the whole field (default: the run's own); "
                        "write --crop=-1,... when it starts with a minus")


def parse_crop(text: str | None):
    """--crop -> KEEP, None (no box) or a CropBox; checked before the model loads."""
    from renderer.crop import CropBox

    if text is None:
        return KEEP
    if text.strip().lower() == "none":
        return None
    try:
        return CropBox.parse(text)
    except ValueError as exc:
        raise UserError(f"--crop: {exc}") from None


def apply_crop(trainer, crop) -> None:
    if crop is KEEP:
        return
    from app.engine.runs import set_crop
    try:
        set_crop(trainer, crop)
    except ValueError as exc:
        raise UserError(f"--crop: {exc}") from None


def parse_size(text: str | None, flag: str = "--size") -> tuple[int, int | None] | None:
    """"W" or "WxH" -> (W, H or None); None when not given. Each side 8..4096."""
    if text is None:
        return None
    parts = str(text).lower().split("x")
    try:
        if len(parts) not in (1, 2):
            raise ValueError
        vals = [int(v) for v in parts]
    except ValueError:
        raise UserError(f"{flag}: need W or WxH in pixels, got {text!r}") from None
    for v in vals:
        if not (8 <= v <= 4096):
            raise UserError(f"{flag} must be between 8 and 4096 pixels per side, got {text}")
    return vals[0], (vals[1] if len(vals) == 2 else None)


def orbit_pose(az_deg: float, el_deg: float, radius: float) -> np.ndarray:
    """c2w (4, 4) on a sphere around the origin, world up +Z (Blender scenes)."""
    az, el = np.radians(az_deg), np.radians(el_deg)
    eye = radius * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
    back = eye / np.linalg.norm(eye)
    right = np.cross([0.0, 0.0, 1.0], back)
    if np.linalg.norm(right) < 1e-6:
        right = np.array([1.0, 0.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, up, back, eye
    return m.astype(np.float32)


def to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def colorize_depth(depth: np.ndarray, acc: np.ndarray, near: float, far: float) -> np.ndarray:
    """(H, W) depth -> (H, W, 3) in [0,1]; empty pixels (low opacity) white."""
    d = np.clip((depth - near) / max(far - near, 1e-6), 0, 1)
    # A compact turbo-like ramp so no plotting library is needed.
    x = d[..., None]
    rgb = np.clip(np.concatenate([1.5 - np.abs(4 * x - 3), 1.5 - np.abs(4 * x - 2), 1.5 - np.abs(4 * x - 1)], -1), 0, 1)
    a = np.clip(acc, 0, 1)[..., None]
    return rgb * a + (1 - a)


def run(args) -> int:
    import os

    import imageio.v3 as iio

    for flag, path in (("--out", args.out), ("--depth-out", args.depth_out), ("--acc-out", args.acc_out)):
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise UserError(f"{flag}: the folder of {path} does not exist")
    size = parse_size(args.size)
    if args.fov is not None and not (0 < args.fov < 180):
        raise UserError(f"--fov must be between 0 and 180 degrees, got {args.fov}")
    crop = parse_crop(args.crop)
    trainer, scene, _ = load_run(args.run_dir, args.device)
    apply_crop(trainer, crop)
    camera = None
    if args.pose:
        c2w = scene.from_world_poses(parse_pose(args.pose)).astype(np.float32)
    elif args.orbit:
        try:
            az, el, r = (float(v) for v in args.orbit.split(","))
        except ValueError:
            raise UserError(f"--orbit: need AZ,EL,R numbers, got {args.orbit!r}") from None
        c2w = orbit_pose(az, el, r)
    else:
        split, _, idx = args.view.partition(":")
        sp = scene.split(split)
        try:
            i = int(idx or 0)
            if i < 0:
                raise IndexError
            c2w = sp.c2w[i]
            camera = sp.cameras[i]  # a dataset view: its own intrinsics and distortion
        except (ValueError, IndexError):
            raise UserError(f"--view: {args.view!r} is not SPLIT:INDEX with INDEX < {len(sp)}") from None
    if size is None and args.fov is None:
        out = trainer.render(c2w, camera=camera)
    else:
        from app.tools.camera_path import focal_for_fov
        w, h = (size[0], size[1] or size[0]) if size else (trainer.width, trainer.height)
        out = trainer.render(c2w, h, w, focal_for_fov(h, args.fov) if args.fov is not None else None)
    iio.imwrite(args.out, to_uint8(out["rgb"].numpy()))
    print(f"wrote {args.out}")
    if args.depth_out:
        iio.imwrite(args.depth_out, to_uint8(colorize_depth(out["depth"].numpy(), out["acc"].numpy(),
                                                            scene.near, scene.far)))
        print(f"wrote {args.depth_out}")
    if args.acc_out:
        iio.imwrite(args.acc_out, to_uint8(out["acc"].numpy()))
        print(f"wrote {args.acc_out}")
    return 0
