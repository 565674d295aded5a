"""`main.py crop RUN_DIR`: show or set the run's crop box (run.json), which render,
render-video, export-mesh and export-points then use."""
from __future__ import annotations

import os

from app.cli import UserError


def configure(p) -> None:
    p.add_argument("run_dir")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--set", default=None, metavar="X0,Y0,Z0,X1,Y1,Z1",
                   help="save this box (write --set=-1,... when it starts with a minus)")
    g.add_argument("--clear", action="store_true", help="save 'no box' (the whole field)")


def run(args) -> int:
    from app.engine.checkpoint import read_checkpoint
    from app.engine.runs import CKPT, read_run, set_run_crop
    from renderer.crop import CropBox

    info = read_run(args.run_dir)
    if args.set is not None or args.clear:
        try:
            box = CropBox.parse(args.set) if args.set is not None else None
        except ValueError as exc:
            raise UserError(f"--set: {exc}") from None
        set_run_crop(args.run_dir, box)
        print(f"crop box of {args.run_dir}: {_text(box)} (saved in run.json)")
        return 0
    if "crop" in info:
        print(f"crop box of {args.run_dir}: {_text(info['crop'])} (run.json)")
    else:
        meta, _ = read_checkpoint(os.path.join(args.run_dir, CKPT))
        saved = meta.get("crop")
        print(f"crop box of {args.run_dir}: {_text(CropBox.from_json(saved) if saved else None)} (checkpoint)")
    return 0


def _text(box) -> str:
    return "none" if box is None else ",".join(f"{v:g}" for v in box.lo + box.hi)
