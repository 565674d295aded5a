"""Held-out evaluation of a trainer's field: PSNR (and SSIM) per image and their mean."""
from __future__ import annotations

import numpy as np


def evaluate_split(trainer, split: str = "test", max_images: int | None = None, ssim: bool = True,
                   progress=None) -> dict:
    """Render each view of ``split`` (the first max_images) with the trainer's averaged
    weights, if any, and score it against its photo."""
    from app.engine.metrics import psnr, ssim as ssim_fn

    trainer.finish_pending()  # the result names the step it was taken at
    sp = trainer.scene.split(split)
    n = len(sp) if max_images is None else min(max_images, len(sp))
    it = range(n) if progress is None else progress(range(n))
    rows = []
    with trainer.averaged():
        for i in it:
            pred = trainer.render(sp.c2w[i], sp.height, sp.width, sp.focal, keys=("rgb",))["rgb"].numpy()
            gt = sp.images[i]
            row = {"name": sp.names[i] if sp.names else str(i), "psnr": psnr(pred, gt)}
            if ssim:
                row["ssim"] = ssim_fn(pred, gt)
            rows.append(row)
    mean = {"psnr": float(np.mean([r["psnr"] for r in rows]))}
    if ssim:
        mean["ssim"] = float(np.mean([r["ssim"] for r in rows]))
    return {"split": split, "images": rows, "mean": mean, "step": trainer.step_count}
