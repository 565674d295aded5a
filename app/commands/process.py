"""`main.py process INPUT --out DIR`: photos or a video -> a posed dataset (transforms.json)
that every other command and the GUI take as --data. The pipeline is loaders/process.py."""
from __future__ import annotations

import argparse

from app.cli import UserError


def configure(p) -> None:
    from loaders.sfm_choices import CAMERA_MODELS, EXHAUSTIVE_MAX, MATCHERS

    p.add_argument("input", help="a folder of photos (JPEG/PNG, one camera) or a video file")
    p.add_argument("--out", required=True, help="dataset folder to create (must not exist)")
    p.add_argument("--frames", type=int, default=150,
                   help="video: frames to keep (the sharpest of each of N equal stretches)")
    p.add_argument("--matcher", default="auto", choices=MATCHERS,
                   help=f"image pairs to match: auto is sequential for a video and for more than "
                        f"{EXHAUSTIVE_MAX} photos, exhaustive otherwise")
    p.add_argument("--overlap", type=int, default=10, help="sequential matching: neighbours per image")
    p.add_argument("--quadratic", action=argparse.BooleanOptionalAction, default=None,
                   help="sequential matching: the neighbours are the images 1, 2, 4, ... 2^(overlap-1) "
                        "further on (COLMAP's default), not the next `overlap` ones (default: quadratic "
                        "for photos, the plain window for a video's frames)")
    p.add_argument("--loop-closure", action=argparse.BooleanOptionalAction, default=True,
                   help="sequential matching: match the image pairs the first model says overlap but "
                        "has not linked (a capture that comes back to its start), and rebuild the model "
                        "when any verify")
    p.add_argument("--camera-model", default="OPENCV", choices=CAMERA_MODELS,
                   help="COLMAP model of the one camera all images share")
    p.add_argument("--max-features", type=int, default=8192, help="SIFT features per image")
    p.add_argument("--verbose", action="store_true", help="show COLMAP's own log")


def print_report(r: dict) -> None:
    print(f"registered {r['registered']} / {r['given']} images ({100 * r['registered_fraction']:.1f} %), "
          f"{r['points']} points, mean reprojection error {r['mean_reprojection_error_px']:.3f} px, "
          f"matcher {r['matcher']}, camera {r['camera']['model']}")
    jumps = r.get("view_jumps") or []
    if jumps:
        print(f"warning: the view turns by more than 30 deg between {len(jumps)} pair(s) of consecutive images "
              f"({', '.join(' -> '.join(j) for j in jumps[:3])}{' ...' if len(jumps) > 3 else ''}). If the images "
              "were taken in this order, those cameras were placed wrongly (repetitive or symmetric texture "
              "matched far-apart views); try --matcher sequential --no-quadratic")
    loop = r.get("loop_closure") or {}
    if loop.get("candidates"):
        print(f"loop closure: {loop['verified']} of {loop['candidates']} proposed pair(s) verified"
              + ("; the model was rebuilt with them" if loop["rebuilt"] else ""))
    if r["other_models_dropped"]:
        print(f"note: {r['other_models_dropped']} smaller disconnected model(s) were dropped")
    print(f"{'stage':<20} {'seconds':>8}")
    for k, v in r["seconds"].items():
        print(f"{k:<20} {v:8.1f}")
    print(f"{'total':<20} {r['total_seconds']:8.1f}")


def run(args) -> int:
    from tqdm import tqdm

    from loaders.process import ProcessOptions, process_capture

    if not 5 <= args.frames <= 5000:
        raise UserError(f"--frames must be between 5 and 5000, got {args.frames}")
    if not 1 <= args.overlap <= 100:
        raise UserError(f"--overlap must be between 1 and 100, got {args.overlap}")
    if not 100 <= args.max_features <= 65536:
        raise UserError(f"--max-features must be between 100 and 65536, got {args.max_features}")
    opts = ProcessOptions(matcher=args.matcher, camera_model=args.camera_model, overlap=args.overlap,
                          quadratic=args.quadratic, loop_closure=args.loop_closure,
                          max_features=args.max_features, verbose=args.verbose, frames=args.frames)
    bar = lambda desc, total, unit: tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)  # noqa: E731
    report = process_capture(args.input, args.out, opts, bar=bar)
    print_report(report)
    print(f"dataset written to {report['out']} (train on it: python main.py train --data {report['out']} ...)")
    return 0
