"""iNeRF (Yen-Chen et al. 2021): recover a camera pose by inverting a trained field.

The field is frozen; only a 6-vector xi = (omega, v) in se(3) is optimised, with

    c2w(xi) = exp(xi^) @ c2w_init,

so xi = 0 is the initial pose and the perturbation acts in the world frame (as
in iNeRF: a rotation omega turns the camera about the world origin, v shifts it).
Each step renders a batch of the target's pixels from the current pose and
takes an Adam step on the photometric MSE. Pixels are drawn either uniformly
('random') or from dilated regions around corner keypoints of the target
('interest', iNeRF's interest-region sampling): flat background pixels carry no
pose gradient, corners and edges do.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from renderer.lie import hat, se3_exp  # noqa: F401 - hat is part of this module's API


def rotation_error_deg(c2w_a: np.ndarray, c2w_b: np.ndarray) -> float:
    """Geodesic angle (degrees) between the two camera orientations."""
    ra, rb = np.asarray(c2w_a, np.float64)[:3, :3], np.asarray(c2w_b, np.float64)[:3, :3]
    cos = (np.trace(ra.T @ rb) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def translation_error(c2w_a: np.ndarray, c2w_b: np.ndarray) -> float:
    """Distance between the two camera centres, scene units."""
    return float(np.linalg.norm(np.asarray(c2w_a, np.float64)[:3, 3] - np.asarray(c2w_b, np.float64)[:3, 3]))


def perturb_pose(c2w: np.ndarray, rot_deg: float, trans: float, seed: int = 0) -> np.ndarray:
    """[R | t] @ c2w with R a rotation by exactly ``rot_deg`` about a random axis
    through the world origin and t a random direction of length ``trans``
    (iNeRF's protocol: the camera moves on the sphere around the object)."""
    rng = np.random.default_rng(seed)
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    d = rng.normal(size=3)
    d /= np.linalg.norm(d)
    xi = torch.tensor(np.concatenate([axis * math.radians(rot_deg), np.zeros(3)]), dtype=torch.float64)
    m = se3_exp(xi).numpy()
    m[:3, 3] = d * trans
    return (m @ np.asarray(c2w, np.float64)).astype(np.float32)


def interest_points(image: np.ndarray, max_points: int = 256, min_distance: int = 2) -> np.ndarray:
    """(K, 2) int (row, col) Harris corners of an (H, W, 3) image in [0, 1], strongest first."""
    from skimage.feature import corner_harris, corner_peaks

    gray = np.asarray(image, np.float64) @ np.array([0.299, 0.587, 0.114])
    response = corner_harris(gray, sigma=1.0)
    pts = corner_peaks(response, min_distance=min_distance, threshold_rel=0.01, num_peaks=max_points)
    return np.asarray(pts, dtype=np.int64).reshape(-1, 2)


def interest_mask(shape: tuple[int, int], points: np.ndarray, radius: int) -> np.ndarray:
    """bool (H, W): squares of side 2 radius + 1 around each (row, col) point (a dilation)."""
    h, w = shape
    mask = np.zeros((h, w), bool)
    for r, c in points:
        mask[max(r - radius, 0):r + radius + 1, max(c - radius, 0):c + radius + 1] = True
    return mask


class InvertPose:
    """Steppable pose recovery; the GUI calls step(), the CLI run().

    trainer_or_model: a Trainer (near/far/background/focal come from it) or a
    bare model (then pass K or focal, near, far and background).
    target (H, W, 3) float in [0, 1], already on the scene's background.
    init_c2w (4, 4) OpenGL camera-to-world, the starting guess.
    K: None (the trainer's focal rescaled to the target width), a focal length in
    pixels, or a 3x3 intrinsics matrix. camera: instead of K, the target's own
    renderer.cameras.Cameras (one camera: intrinsics and lens distortion; a dataset view).
    """

    def __init__(self, trainer_or_model, target, init_c2w, K=None, near: float | None = None,
                 far: float | None = None, background=None, lr: float = 1e-2, batch: int = 512,
                 sampling: str = "interest", dilate: int = 3, max_points: int = 256,
                 lr_decay: float = 0.8, seed: int = 0, camera=None):
        from renderer.cameras import camera_grid_directions
        from renderer.rays import camera_directions, intrinsics

        trainer = trainer_or_model if hasattr(trainer_or_model, "scene") else None
        self.model = getattr(trainer_or_model, "model", trainer_or_model)
        if not callable(getattr(self.model, "render_rays", None)):
            raise TypeError(f"expected a Trainer or a model with render_rays(), got {type(self.model).__name__}")
        target = np.asarray(target, dtype=np.float32)
        if target.ndim != 3 or target.shape[2] != 3 or min(target.shape[:2]) < 2:
            raise ValueError(f"target must be an (H, W, 3) image, got shape {target.shape}")
        if not np.isfinite(target).all():
            raise ValueError("target image contains NaN or infinity")
        init = np.asarray(init_c2w, dtype=np.float64)
        if init.shape != (4, 4) or not np.isfinite(init).all():
            raise ValueError(f"init_c2w must be a finite 4x4 matrix, got shape {init.shape}")
        if sampling not in ("interest", "random"):
            raise ValueError(f"sampling must be 'interest' or 'random', got {sampling!r}")
        if batch < 1 or not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"need batch >= 1 and lr > 0, got batch={batch}, lr={lr}")
        h, w = target.shape[:2]
        if trainer is not None:
            scene = trainer.scene
            if getattr(scene, "ndc", False):
                raise ValueError("pose recovery supports 360-degree scenes only, not forward-facing (NDC)")
            near = scene.near if near is None else near
            far = scene.far if far is None else far
            background = trainer.background if background is None else background
            if K is None and camera is None:
                K = trainer.focal * w / trainer.width
        if (K is None and camera is None) or near is None or far is None:
            raise ValueError("with a bare model, pass K (or focal), near and far")
        if camera is not None and (int(camera.width[0]), int(camera.height[0])) != (w, h):
            raise ValueError(f"camera is {int(camera.width[0])}x{int(camera.height[0])} but the target "
                             f"image {w}x{h}")
        if camera is None:
            K = intrinsics(w, h, float(K)) if np.ndim(K) == 0 else torch.as_tensor(np.asarray(K, np.float32))
        self.near, self.far, self.background = float(near), float(far), background
        try:
            self.device = next(self.model.parameters()).device
        except (StopIteration, AttributeError):
            self.device = torch.device("cpu")
        self.height, self.width = h, w
        self.dirs = (camera_grid_directions(camera, 0, self.device) if camera is not None
                     else camera_directions(h, w, K, self.device)).reshape(-1, 3)  # (H*W, 3)
        self.target = torch.from_numpy(target.reshape(-1, 3)).to(self.device)  # (H*W, 3)
        self.init = torch.as_tensor(init, dtype=torch.float32, device=self.device)
        self.xi = torch.zeros(6, device=self.device, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.xi], lr=lr)
        self.lr, self.lr_decay, self.batch = lr, lr_decay, int(batch)
        self.rng = torch.Generator().manual_seed(seed)
        self.step_count = 0
        self.notes: list[str] = []
        self.sampling = sampling
        self.keypoints = np.zeros((0, 2), np.int64)
        pool = np.arange(h * w)
        if sampling == "interest":
            self.keypoints = interest_points(target, max_points)
            if len(self.keypoints) == 0:
                self.notes.append("no corners found in the target; sampling pixels uniformly")
                self.sampling = "random"
            else:
                pool = np.flatnonzero(interest_mask((h, w), self.keypoints, dilate))
        self.pool = torch.from_numpy(pool)  # flat pixel indices rays are drawn from

    @property
    def c2w(self) -> np.ndarray:
        """Current estimate (4, 4) float64."""
        with torch.no_grad():
            return (se3_exp(self.xi.double()) @ self.init.double()).cpu().numpy()

    def _pixels(self) -> torch.Tensor:
        n = len(self.pool)
        if n <= self.batch:
            return self.pool.to(self.device)
        pick = torch.randperm(n, generator=self.rng)[:self.batch]
        return self.pool[pick].to(self.device)

    def step(self) -> dict:
        """One Adam step on xi. Returns step, c2w (4, 4) numpy after the update, and
        loss, the photometric MSE of the batch at the pose before the update."""
        lr = self.lr * self.lr_decay ** (self.step_count / 100.0)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        idx = self._pixels()
        pose = se3_exp(self.xi) @ self.init
        rays_d = self.dirs[idx] @ pose[:3, :3].T
        rays_o = pose[:3, 3].expand_as(rays_d)
        was_training = getattr(self.model, "training", False)
        self.model.eval()
        try:
            out = self.model.render_rays(rays_o, rays_d, self.near, self.far,
                                         background=self.background, train=False)
        finally:
            self.model.train(was_training)
        loss = torch.mean((out["rgb"].float() - self.target[idx]) ** 2)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"step {self.step_count}: rendering loss is {loss.item()}")
        self.optimizer.zero_grad(set_to_none=True)
        # Only xi is differentiated: the field's weights get no gradients (and no memory for them).
        loss.backward(inputs=[self.xi])
        self.optimizer.step()
        self.step_count += 1
        return {"step": self.step_count, "c2w": self.c2w, "loss": float(loss.item()), "lr": lr}

    def run(self, steps: int, gt_c2w=None, callback=None) -> list[dict]:
        """``steps`` steps; with gt_c2w each record also has rot_err_deg and trans_err.
        callback(record) after each step; returning False stops early."""
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        history = []
        for _ in range(int(steps)):
            rec = self.step()
            if gt_c2w is not None:
                rec["rot_err_deg"] = rotation_error_deg(rec["c2w"], gt_c2w)
                rec["trans_err"] = translation_error(rec["c2w"], gt_c2w)
            history.append(rec)
            if callback is not None and callback(rec) is False:
                break
        return history
