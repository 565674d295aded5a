"""Whole views of a trainer's field: a free camera or a dataset view, and the metrics of a
split. Held-out views are rendered through their own camera (intrinsics and lens
distortion), as the training rays were."""
from __future__ import annotations

import numpy as np
import torch

from renderer.cameras import Cameras
from renderer.crop import uncropped
from renderer.render import render_image


def render_view(trainer, c2w, height: int | None = None, width: int | None = None, focal: float | None = None,
                keys=("rgb", "depth", "acc"), chunk: int | None = None, camera: Cameras | None = None,
                extra: dict | None = None) -> dict:
    """A free view (pinhole; the training focal rescaled to width x height unless given) or,
    with ``camera``, a view through that one camera. ``extra``: more keyword arguments for
    the field's render_rays (a fitted appearance code)."""
    if camera is None:
        h, w = height or trainer.height, width or trainer.width
        f = focal if focal is not None else trainer.focal * w / trainer.width
        camera = Cameras.pinhole(1, w, h, f)
    c2w = torch.as_tensor(np.asarray(c2w, dtype=np.float32))
    if chunk is None:
        chunk = trainer.model.render_chunk(trainer.device.type == "cuda")
    scene = trainer.scene
    with trainer.averaged():
        return render_image(trainer.model, c2w, camera, scene.near, scene.far, background=trainer.background,
                            chunk=chunk, ndc=scene.ndc, keys=keys, autocast=trainer.config.autocast,
                            ndc_frame=(trainer.height, trainer.width, trainer.focal), extra=extra)


def evaluate_split(trainer, split: str = "test", max_images: int | None = None, ssim: bool = True,
                   progress=None) -> dict:
    """PSNR (and SSIM) per image of a split and their means."""
    from app.engine.metrics import psnr, ssim as ssim_fn

    trainer.finish_pending()  # the result names the step it was taken at
    sp = trainer.scene.split(split)
    n = len(sp) if max_images is None else min(max_images, len(sp))
    rows = []
    with trainer.averaged(), uncropped(trainer.model):  # the field is scored, not the view
        for i in (range(n) if progress is None else progress(range(n))):
            pred = render_view(trainer, sp.c2w[i], keys=("rgb",), camera=sp.cameras[i])["rgb"].numpy()
            gt = sp.images[i]
            row = {"name": sp.names[i] if sp.names else str(i), "psnr": psnr(pred, gt)}
            if ssim:
                row["ssim"] = ssim_fn(pred, gt)
            rows.append(row)
    mean = {"psnr": float(np.mean([r["psnr"] for r in rows]))}
    if ssim:
        mean["ssim"] = float(np.mean([r["ssim"] for r in rows]))
    return {"split": split, "images": rows, "mean": mean, "step": trainer.step_count}
