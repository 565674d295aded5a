"""The ray-weights inspector: what the field does along the ray under the cursor."""
from __future__ import annotations

import numpy as np

from app.gui.channels import Outbox
from app.gui.render_schedule import focal_for, render_eval, view_bounds


def ray_through_pixel(c2w: np.ndarray, u: float, v: float, width: int, height: int,
                      focal: float) -> tuple[np.ndarray, np.ndarray]:
    """World ray (origin (3,), direction (3,)) through image point (u, v) in [0,1]^2 (v down).

    Same convention as renderer.rays: camera looks down -Z, direction z = -1 (z-depth t).
    """
    px, py = u * width, v * height
    d_cam = np.array([(px - width / 2) / focal, -(py - height / 2) / focal, -1.0])
    m = np.asarray(c2w, dtype=np.float64)
    return m[:3, 3].copy(), m[:3, :3] @ d_cam


class RayProbe:
    """Renders the one ray through (u, v) of the current view of field ``index`` and puts
    its samples' depths and weights (coarse, and fine if the model has a fine pass) into
    ``out.probes``; a model without per-sample weights gets a result saying so."""

    def __init__(self, out: Outbox, fields, render):
        self.out, self.fields, self.render = out, fields, render

    def run(self, index: int, u: float, v: float) -> None:
        import torch

        if self.render.cam is None:
            return
        c2w, fov, _, _ = self.render.cam
        scene = self.render.scene
        index = min(max(int(index), 0), len(self.fields.trainers) - 1)
        t = self.fields.trainers[index]
        h, w = self.render.sizes()[-1]
        focal = focal_for(w, fov)
        o, d = ray_through_pixel(c2w, u, v, w, h, focal)
        o = torch.tensor(o, dtype=torch.float32, device=t.device)[None]
        d = torch.tensor(d, dtype=torch.float32, device=t.device)[None]
        if scene.ndc:
            from renderer.rays import ndc_rays

            o, d = ndc_rays(t.height, t.width, t.focal, 1.0, o, d)
        bounds = view_bounds(scene, c2w)
        out = render_eval(t, scene, o, d, autocast=False, bounds=bounds)
        res = {"index": index, "u": u, "v": v, "bounds": bounds, "depth": float(out["depth"][0]),
               "acc": float(out["acc"][0]),
               "rgb": out["rgb"][0].float().cpu().numpy()}
        if "weights_coarse" in out:
            res.update(t_coarse=out["t_coarse"][0].float().cpu().numpy(),
                       w_coarse=out["weights_coarse"][0].float().cpu().numpy())
            if "weights_fine" in out:
                res.update(t_fine=out["t_fine"][0].float().cpu().numpy(),
                           w_fine=out["weights_fine"][0].float().cpu().numpy())
        else:
            label = type(t.model).LABEL or type(t.model).__name__
            res["unavailable"] = f"{label} does not expose per-sample weights"
        self.out.probes.put(res)
