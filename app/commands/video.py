"""`main.py render-video RUN_DIR`: an orbit around the scene to mp4 (GIF without ffmpeg)."""
from __future__ import annotations

import os

from app.cli import UserError


def configure(p) -> None:
    p.add_argument("run_dir")
    p.add_argument("--out", default="orbit.mp4", help="output video (.mp4, or .gif)")
    p.add_argument("--frames", type=int, default=60, help="frames in one full turn")
    p.add_argument("--fps", type=float, default=30)
    p.add_argument("--elevation", type=float, default=30, help="camera elevation, degrees")
    p.add_argument("--radius", type=float, default=None,
                   help="camera distance from the origin (default: the training cameras')")
    p.add_argument("--size", type=int, default=None, help="width in pixels (default: dataset width)")
    p.add_argument("--device", default="auto")


def run(args) -> int:
    from tqdm import tqdm

    from app.engine.runs import load_run
    from app.tools.video import check_args, render_orbit_video

    try:
        check_args(args.out, args.frames, args.fps, args.size, args.elevation, args.radius)
    except ValueError as exc:
        msg = str(exc)
        # check_args names the parameter first ("frames must ..."), or the path for --out.
        raise UserError(("--" + msg) if msg.split()[0] in ("frames", "fps", "size", "elevation", "radius")
                        else f"--out: {msg}") from None
    if os.path.isdir(args.out):
        raise UserError(f"--out: {args.out} is a directory")
    trainer, _, _ = load_run(args.run_dir, args.device)
    bar = tqdm(total=args.frames, unit="frame", desc="render", dynamic_ncols=True)

    def progress(done, total):
        bar.update(done - bar.n)
    try:
        path = render_orbit_video(trainer, args.out, frames=args.frames, fps=args.fps, radius=args.radius,
                                  elevation=args.elevation, size=args.size, progress=progress, log=bar.write)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    finally:
        bar.close()
    print(f"wrote {path}")
    return 0
