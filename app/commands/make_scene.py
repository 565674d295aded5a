"""`main.py make-scene`: regenerate the embedded scene (assets/make_scene.py) at any size."""
from __future__ import annotations

from assets import SCENE_DIR

import os

from app.cli import UserError


def configure(p) -> None:
    p.add_argument("--out", required=True, help="directory to write (Blender format)")
    p.add_argument("--res", type=int, default=128, help="square image size in pixels")
    p.add_argument("--n-train", type=int, default=100)
    p.add_argument("--n-val", type=int, default=10)
    p.add_argument("--n-test", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    if not (16 <= args.res <= 4096):
        raise UserError(f"--res must be between 16 and 4096, got {args.res}")
    if min(args.n_train, args.n_val, args.n_test) < 1:
        raise UserError("--n-train, --n-val and --n-test must each be at least 1")
    if os.path.abspath(args.out) == SCENE_DIR:
        print("note: overwriting the embedded scene")
    from assets.make_scene import write_dataset

    write_dataset(args.out, args.res, args.n_train, args.n_val, args.n_test, args.seed)
    return 0
