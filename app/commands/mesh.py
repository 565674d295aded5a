"""`main.py export-mesh RUN_DIR`: marching cubes on the density -> coloured PLY, inside the
run's crop box (or --crop)."""
from __future__ import annotations

import os

from app.cli import UserError
from app.commands.render import add_crop_option, apply_crop, parse_crop


def configure(p) -> None:
    p.add_argument("run_dir")
    p.add_argument("--out", default="mesh.ply", help="output mesh (binary PLY)")
    p.add_argument("--res", type=int, default=256, help="grid samples per axis")
    p.add_argument("--threshold", type=float, default=None,
                   help="density level of the surface (default 10, per scene unit)")
    p.add_argument("--bbox", default="-1.5,-1.5,-1.5,1.5,1.5,1.5", metavar="X0,Y0,Z0,X1,Y1,Z1",
                   help="box the grid spans, in the scene's normalised units (the mesh itself is written in "
                        "the capture's own frame)")
    p.add_argument("--no-colors", action="store_true", help="geometry only")
    add_crop_option(p)
    p.add_argument("--device", default="auto")


def parse_bbox(text: str):
    try:
        v = [float(x) for x in text.split(",")]
    except ValueError:
        raise UserError(f"--bbox: need 6 comma-separated numbers, got {text!r}") from None
    if len(v) != 6:
        raise UserError(f"--bbox: need 6 comma-separated numbers, got {len(v)}")
    from app.tools.export import check_bbox
    try:
        check_bbox((v[:3], v[3:]))
    except ValueError as exc:
        raise UserError(f"--bbox: {exc}") from None
    return (tuple(v[:3]), tuple(v[3:]))


def run(args) -> int:
    import math

    from tqdm import tqdm

    from app.tools.export import MAX_RES, export_mesh
    from app.engine.runs import load_run

    # Every argument is checked before the (slow) model load and before any output exists.
    if not (2 <= args.res <= MAX_RES):
        raise UserError(f"--res must be between 2 and {MAX_RES}, got {args.res}")
    if args.threshold is not None and not math.isfinite(args.threshold):
        raise UserError(f"--threshold must be a finite number, got {args.threshold}")
    if not args.out.lower().endswith(".ply"):
        raise UserError(f"--out: {args.out}: mesh output must be a .ply file")
    if os.path.isdir(args.out):
        raise UserError(f"--out: {args.out} is a directory")
    bbox = parse_bbox(args.bbox)
    crop = parse_crop(args.crop)
    trainer, _, _ = load_run(args.run_dir, args.device)
    apply_crop(trainer, crop)
    bars = []

    def progress(done, total):
        # One bar per stage: density grid (res^3 points), then vertex colours.
        if not bars or bars[-1].total != total or done < bars[-1].n:
            if bars:
                bars[-1].close()
            bars.append(tqdm(total=total, unit="pt" if not bars else "vertex", unit_scale=True,
                             desc="density" if not bars else "colours", dynamic_ncols=True))
        bars[-1].update(done - bars[-1].n)
    try:
        info = export_mesh(trainer, args.out, res=args.res, threshold=args.threshold, bbox=bbox,
                           colors=not args.no_colors, progress=progress, log=tqdm.write)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    finally:
        for b in bars:
            b.close()
    print(f"wrote {info['path']}: {info['vertices']} vertices, {info['faces']} faces, "
          f"threshold {info['threshold']:g} ({info['seconds']:.1f} s)")
    return 0
