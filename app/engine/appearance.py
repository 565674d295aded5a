"""Held-out views of a field with per-image appearance (NeRF-W's protocol).

Such a field renders a view it was not trained on with the mean appearance code, which
cannot know that photo's exposure or white balance. NeRF-W and nerfstudio also report
the PSNR after fitting the code (the field frozen) on the left half of each held-out
photo, scored on the right half; ``evaluate_appearance`` gives both figures on that
right half, so they compare like with like. The whole-image mean-code PSNR is
app/engine/views.py's ``evaluate_split``.
"""
from __future__ import annotations

import numpy as np
import torch

from renderer.cameras import Cameras, camera_grid_directions
from renderer.crop import uncropped
from renderer.rays import ndc_rays, rays_from_dirs


def fit_appearance(trainer, image: np.ndarray, c2w: np.ndarray, camera: Cameras, steps: int = 200,
                   batch: int = 1024, lr: float = 1e-2, seed: int = 0) -> torch.Tensor | None:
    """An appearance code fitted to the left half of ``image`` (H, W, 3) seen from c2w
    through ``camera`` (one camera), the field frozen; None for a field without
    per-image appearance (Field.appearance_code)."""
    model = trainer.model
    code = model.appearance_code()
    if code is None:
        return None
    h, w = image.shape[:2]
    dev = trainer.device
    dirs = camera_grid_directions(camera, 0, dev)[:, : w // 2].reshape(-1, 3)
    rays_o, rays_d = rays_from_dirs(dirs, torch.as_tensor(np.asarray(c2w, np.float32), device=dev))
    if trainer.scene.ndc:  # the training cameras' NDC frame, as every view of the scene
        rays_o, rays_d = ndc_rays(trainer.height, trainer.width, trainer.focal, 1.0, rays_o, rays_d)
    target = torch.from_numpy(np.ascontiguousarray(image[:, : w // 2])).reshape(-1, 3).to(dev)
    code = code.to(dev).requires_grad_(True)
    opt = torch.optim.Adam([code], lr=lr)
    g = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        for _ in range(steps):
            pick = torch.randint(0, target.shape[0], (min(batch, target.shape[0]),), generator=g).to(dev)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=trainer.config.autocast):
                out = model.render_rays(rays_o[pick], rays_d[pick], trainer.scene.near, trainer.scene.far,
                                        background=trainer.background, train=False, appearance=code)
            loss = ((out["rgb"].float() - target[pick]) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward(inputs=[code])  # the field's weights get no gradients
            opt.step()
    finally:
        model.train(was_training)
    return code.detach()


def evaluate_appearance(trainer, split: str = "test", max_images: int | None = None, steps: int = 200,
                        progress=None) -> dict:
    """Per held-out view, PSNR on the right half of the photo with the mean appearance code
    ("psnr_mean_right") and with a code fitted on the left half ("psnr_fitted_right")."""
    from app.engine.metrics import psnr
    from app.engine.views import render_view

    if trainer.model.appearance_code() is None:
        raise ValueError(f"{type(trainer.model).__name__} has no per-image appearance to fit")
    trainer.finish_pending()
    sp = trainer.scene.split(split)
    n = len(sp) if max_images is None else min(max_images, len(sp))
    rows = []
    with trainer.averaged(), uncropped(trainer.model):
        for i in (range(n) if progress is None else progress(range(n))):
            gt, cam, half = sp.images[i], sp.cameras[i], sp.width // 2
            row = {"name": sp.names[i] if sp.names else str(i)}
            for key, code in (("psnr_mean_right", trainer.model.appearance_code()),
                              ("psnr_fitted_right", fit_appearance(trainer, gt, sp.c2w[i], cam, steps))):
                pred = render_view(trainer, sp.c2w[i], keys=("rgb",), camera=cam,
                                   extra={"appearance": code})["rgb"].numpy()
                row[key] = psnr(pred[:, half:], gt[:, half:])
            rows.append(row)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("psnr_mean_right", "psnr_fitted_right")}
    return {"split": split, "images": rows, "mean": mean, "step": trainer.step_count, "fit_steps": steps}
