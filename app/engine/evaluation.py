"""Held-out evaluation of a trainer's field: PSNR (and SSIM) per image and their mean, and,
for fields with per-image appearance, NeRF-W's protocol (a code fitted on the left half of
each held-out view, scored on the right half)."""
from __future__ import annotations

import numpy as np
import torch


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


def fit_appearance(trainer, image: np.ndarray, c2w: np.ndarray, focal: float, steps: int = 200,
                   batch: int = 1024, lr: float = 1e-2, seed: int = 0) -> torch.Tensor | None:
    """An appearance code fitted to the left half of ``image`` (H, W, 3) seen from c2w, the
    field frozen (NeRF-W's protocol for held-out views); None for a field without
    per-image appearance (Field.appearance_code)."""
    from renderer.rays import camera_directions, intrinsics, ndc_rays, rays_from_dirs

    model = trainer.model
    code = model.appearance_code()
    if code is None:
        return None
    h, w = image.shape[:2]
    dev = trainer.device
    dirs = camera_directions(h, w, intrinsics(w, h, focal), dev)[:, : w // 2].reshape(-1, 3)
    rays_o, rays_d = rays_from_dirs(dirs, torch.as_tensor(np.asarray(c2w, np.float32), device=dev))
    if trainer.scene.ndc:
        rays_o, rays_d = ndc_rays(h, w, focal, 1.0, rays_o, rays_d)
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
    """Held-out PSNR of a field with per-image appearance, two ways, both on the right half
    of each view: with the mean appearance code (what renders use) and with a code fitted
    on the left half (``fit_appearance``). The full-image mean-code PSNR is ``evaluate_split``."""
    from app.engine.metrics import psnr
    from renderer.rays import intrinsics
    from renderer.render import render_image

    if trainer.model.appearance_code() is None:
        raise ValueError(f"{type(trainer.model).__name__} has no per-image appearance to fit")
    trainer.finish_pending()
    sp = trainer.scene.split(split)
    n = len(sp) if max_images is None else min(max_images, len(sp))
    it = range(n) if progress is None else progress(range(n))
    rows = []
    with trainer.averaged():
        for i in it:
            gt = sp.images[i]
            w = sp.width
            row = {"name": sp.names[i] if sp.names else str(i)}
            for key, code in (("psnr_mean_right", trainer.model.appearance_code()),
                              ("psnr_fitted_right", fit_appearance(trainer, gt, sp.c2w[i], sp.focal, steps))):
                K = intrinsics(w, sp.height, sp.focal)
                pred = render_image(trainer.model, torch.as_tensor(sp.c2w[i]), sp.height, w, K, trainer.scene.near,
                                    trainer.scene.far, background=trainer.background,
                                    chunk=65536 if trainer.device.type == "cuda" else 4096, ndc=trainer.scene.ndc,
                                    keys=("rgb",), autocast=trainer.config.autocast,
                                    extra={"appearance": code})["rgb"].numpy()
                row[key] = psnr(pred[:, w // 2:], gt[:, w // 2:])
            rows.append(row)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("psnr_mean_right", "psnr_fitted_right")}
    return {"split": split, "images": rows, "mean": mean, "step": trainer.step_count, "fit_steps": steps}
