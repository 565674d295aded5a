"""`main.py eval RUN_DIR`: PSNR/SSIM per test image and mean."""
from __future__ import annotations

import os

from app.cli import UserError
from app.engine.runs import load_run, write_json


def configure(p) -> None:
    p.add_argument("run_dir")
    p.add_argument("--split", default="test")
    p.add_argument("--max-images", type=int, default=None, help="evaluate only the first N views")
    p.add_argument("--device", default="auto")


def report(res: dict) -> None:
    print(f"{'view':<24} {'PSNR':>7} {'SSIM':>7}")
    for r in res["images"]:
        print(f"{r['name']:<24} {r['psnr']:7.2f} {r.get('ssim', float('nan')):7.4f}")
    m = res["mean"]
    print(f"{'mean (' + str(len(res['images'])) + ' views)':<24} {m['psnr']:7.2f} {m.get('ssim', float('nan')):7.4f}")


def run(args) -> int:
    from tqdm import tqdm

    if args.max_images is not None and args.max_images < 1:
        raise UserError(f"--max-images must be >= 1, got {args.max_images}")
    trainer, _, _ = load_run(args.run_dir, args.device)
    res = trainer.evaluate(args.split, args.max_images, progress=lambda it: tqdm(it, desc="eval", unit="view"))
    report(res)
    write_json(os.path.join(args.run_dir, "eval.json"), res)
    return 0
