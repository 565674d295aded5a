"""`main.py export-points RUN_DIR`: a coloured point cloud (PLY) from the expected depth of
the training views, inside the run's crop box, in the capture's own frame."""
from __future__ import annotations

import os

from app.cli import UserError
from app.commands.render import add_crop_option, apply_crop, parse_crop


def configure(p) -> None:
    p.add_argument("run_dir")
    p.add_argument("--out", default="points.ply", help="output point cloud (binary PLY)")
    p.add_argument("--points", type=int, default=200_000,
                   help="pixels tried over all views (points written: those opaque enough)")
    p.add_argument("--min-opacity", type=float, default=0.9,
                   help="drop pixels whose opacity is below this (their depth mixes surface and background)")
    p.add_argument("--split", default="train", help="whose cameras look at the field")
    p.add_argument("--seed", type=int, default=0, help="which pixels are picked")
    add_crop_option(p)
    p.add_argument("--device", default="auto")


def run(args) -> int:
    from tqdm import tqdm

    from app.engine.runs import load_run
    from app.tools.pointcloud import MAX_POINTS, export_points

    # Every argument is checked before the (slow) model load and before any output exists.
    if not args.out.lower().endswith(".ply"):
        raise UserError(f"--out: {args.out}: point cloud output must be a .ply file")
    if os.path.isdir(args.out):
        raise UserError(f"--out: {args.out} is a directory")
    if not (1 <= args.points <= MAX_POINTS):
        raise UserError(f"--points must be between 1 and {MAX_POINTS}, got {args.points}")
    if not (0.0 <= args.min_opacity <= 1.0):
        raise UserError(f"--min-opacity must be in [0, 1], got {args.min_opacity}")
    crop = parse_crop(args.crop)
    trainer, scene, _ = load_run(args.run_dir, args.device)
    apply_crop(trainer, crop)
    scene.split(args.split)  # a DataError naming the splits there are
    bar = tqdm(unit="view", desc="points", dynamic_ncols=True)

    def progress(done, total):
        bar.total = total
        bar.update(done - bar.n)
    try:
        res = export_points(trainer, args.out, points=args.points, min_opacity=args.min_opacity,
                            split=args.split, seed=args.seed,
                            progress=progress)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    finally:
        bar.close()
    print(f"wrote {res['path']}: {res['points']} points from {res['views']} views ({res['seconds']:.1f} s)")
    return 0
