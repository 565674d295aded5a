"""`main.py render-video RUN_DIR`: an orbit around the scene, or a camera path
(--path camera_path.json, nerfstudio's format), to mp4 (GIF without ffmpeg)."""
from __future__ import annotations

import os

from app.cli import UserError
from app.commands.render import add_crop_option, apply_crop, parse_crop, parse_size


def configure(p) -> None:
    p.add_argument("run_dir")
    p.add_argument("--path", default=None, metavar="JSON",
                   help="camera path (nerfstudio's camera_path.json); default: an orbit")
    p.add_argument("--out", default=None, help="output video (.mp4, or .gif) (default: orbit.mp4 or path.mp4)")
    p.add_argument("--frames", type=int, default=60, help="orbit: frames in one full turn")
    p.add_argument("--fps", type=float, default=None, help="frames per second (default: the path's, or 30)")
    p.add_argument("--elevation", type=float, default=30, help="orbit: camera elevation, degrees")
    p.add_argument("--radius", type=float, default=None,
                   help="orbit: camera distance from the origin (default: the training cameras')")
    p.add_argument("--size", default=None, metavar="WxH",
                   help="frame size in pixels, WxH or a width (aspect kept) (default: the path's, or the dataset's)")
    add_crop_option(p)
    p.add_argument("--device", default="auto")


def run(args) -> int:
    from tqdm import tqdm

    from app.engine.runs import load_run
    from app.tools.video import check_args, check_fps, check_video_path

    size = parse_size(args.size)
    out = args.out or ("path.mp4" if args.path else "orbit.mp4")
    fps = 30.0 if args.fps is None and not args.path else args.fps
    try:
        if args.path:
            check_video_path(out)
            if fps is not None:
                check_fps(fps)
        else:
            check_args(out, args.frames, fps, size, args.elevation, args.radius)
    except ValueError as exc:
        msg = str(exc)
        # check_args names the parameter first ("frames must ..."), or the path for --out.
        raise UserError(("--" + msg) if msg.split()[0] in ("frames", "fps", "size", "elevation", "radius")
                        else f"--out: {msg}") from None
    if os.path.isdir(out):
        raise UserError(f"--out: {out} is a directory")
    camera_path = None
    if args.path:
        from app.tools.camera_path import load_path
        camera_path = load_path(args.path)  # a DataError names the file
    crop = parse_crop(args.crop)
    trainer, _, _ = load_run(args.run_dir, args.device)
    apply_crop(trainer, crop)
    bar = tqdm(unit="frame", desc="render", dynamic_ncols=True)

    def progress(done, total):
        bar.total = total  # known once the frames are (the path's depend on --fps)
        bar.update(done - bar.n)
    try:
        if camera_path is not None:
            from app.tools.video import render_path_video
            path = render_path_video(trainer, out, camera_path, fps=fps, size=size, progress=progress,
                                     log=bar.write)
        else:
            from app.tools.video import render_orbit_video
            path = render_orbit_video(trainer, out, frames=args.frames, fps=fps, radius=args.radius,
                                      elevation=args.elevation, size=size, progress=progress, log=bar.write)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    finally:
        bar.close()
    print(f"wrote {path}")
    return 0
