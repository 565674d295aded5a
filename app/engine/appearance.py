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
    if trainer.model.appearance_code() is None:
        return None
    return fit_view(trainer, image, c2w, camera, steps, batch, lr, seed=seed)[0]


def fit_view(trainer, image: np.ndarray, c2w: np.ndarray, camera: Cameras, steps: int = 200,
             batch: int = 1024, lr: float = 1e-2, fit_pose: bool = False, pose_lr: float = 3e-3,
             seed: int = 0) -> tuple[torch.Tensor | None, np.ndarray]:
    """(appearance code or None, camera-to-world) fitted to the left half of ``image``, the
    field frozen, under the field's own prior on codes (Field.appearance_prior: a code
    far from those it was trained with renders what the field never learnt). With
    ``fit_pose`` the camera is fitted too (iNeRF's photometric alignment, as
    pose-refining methods evaluate held-out views): a rotation about its
    centre and a shift in units of the scene's radius, each at ``pose_lr`` per step. Why:
    a field trained with camera refinement, or on poses that are a little off, sits in a
    frame that a held-out camera's recorded pose does not quite match."""
    from renderer.lie import apply_rotation, so3_exp

    model = trainer.model
    code = model.appearance_code()
    h, w = image.shape[:2]
    dev = trainer.device
    dirs = camera_grid_directions(camera, 0, dev)[:, : w // 2].reshape(-1, 3)
    rays_o, rays_d = rays_from_dirs(dirs, torch.as_tensor(np.asarray(c2w, np.float32), device=dev))
    if trainer.scene.ndc:  # the training cameras' NDC frame, as every view of the scene
        rays_o, rays_d = ndc_rays(trainer.height, trainer.width, trainer.focal, 1.0, rays_o, rays_d)
        fit_pose = False  # an NDC ray is no rigid motion of the camera's
    target = torch.from_numpy(np.ascontiguousarray(image[:, : w // 2])).reshape(-1, 3).to(dev)
    groups = []
    if code is not None:
        code = code.to(dev).requires_grad_(True)
        groups.append({"params": [code], "lr": lr})
    rot = torch.zeros(3, device=dev, requires_grad=fit_pose)
    shift = torch.zeros(3, device=dev, requires_grad=fit_pose)
    radius = max(trainer.scene.scene_radius, 1e-6)
    if fit_pose:
        groups.append({"params": [rot, shift], "lr": pose_lr})
    if not groups:
        return None, np.asarray(c2w, np.float32)
    opt = torch.optim.Adam(groups)
    g = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        for _ in range(steps):
            pick = torch.randint(0, target.shape[0], (min(batch, target.shape[0]),), generator=g).to(dev)
            o, d = rays_o[pick], rays_d[pick]
            if fit_pose:
                o, d = o + shift * radius, apply_rotation(so3_exp(rot), d)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=trainer.config.autocast):
                out = model.render_rays(o, d, trainer.scene.near, trainer.scene.far,
                                        background=trainer.background, train=False, appearance=code)
            loss = ((out["rgb"].float() - target[pick]) ** 2).mean()
            if code is not None:
                loss = loss + model.appearance_prior(code)
            opt.zero_grad(set_to_none=True)
            loss.backward(inputs=[p for grp in groups for p in grp["params"]])  # the field gets none
            opt.step()
    finally:
        model.train(was_training)
    fitted = np.array(c2w, dtype=np.float32)
    with torch.no_grad():
        fitted[:3, :3] = so3_exp(rot).cpu().numpy() @ fitted[:3, :3]  # d' = R d for every ray
        fitted[:3, 3] += (shift * radius).cpu().numpy()
    return (None if code is None else code.detach()), fitted


def evaluate_appearance(trainer, split: str = "test", max_images: int | None = None, steps: int = 200,
                        progress=None, fit_pose: bool = False) -> dict:
    """Per held-out view, PSNR on the right half of the photo with the mean appearance code
    ("psnr_mean_right") and with a code fitted on the left half ("psnr_fitted_right"); with
    ``fit_pose`` also with the code and the camera fitted on the left half
    ("psnr_pose_right", fit_view)."""
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
            fits = [("psnr_mean_right", trainer.model.appearance_code(), sp.c2w[i]),
                    ("psnr_fitted_right", fit_appearance(trainer, gt, sp.c2w[i], cam, steps), sp.c2w[i])]
            if fit_pose:
                fits.append(("psnr_pose_right", *fit_view(trainer, gt, sp.c2w[i], cam, steps, fit_pose=True)))
            for key, code, c2w in fits:
                pred = render_view(trainer, c2w, keys=("rgb",), camera=cam, extra={"appearance": code})["rgb"].numpy()
                row[key] = psnr(pred[:, half:], gt[:, half:])
            rows.append(row)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k.startswith("psnr")} if rows else {}
    return {"split": split, "images": rows, "mean": mean, "step": trainer.step_count, "fit_steps": steps}
