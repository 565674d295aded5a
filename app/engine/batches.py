"""Training batches: random pixels of the training images and their camera rays.

The data-flow stage between cameras and samples: it owns the training images on the
device and turns (image, pixel) draws into rays and targets.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from renderer.cameras import Cameras, pixel_directions
from renderer.rays import ndc_rays


@dataclass
class RayBatch:
    rays_o: torch.Tensor  # (n, 3)
    rays_d: torch.Tensor  # (n, 3), unnormalised: t is depth along the optical axis
    target: torch.Tensor  # (n, 3) rgb, or (n, 4) rgb + alpha when alpha is kept
    image: torch.Tensor  # (n,) index of the training image each ray comes from

    @property
    def rays(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rays_o, self.rays_d

    def head(self, n: int) -> "RayBatch":
        """The first n rays (a fed batch cut to a smaller ray count)."""
        return RayBatch(self.rays_o[:n], self.rays_d[:n], self.target[:n], self.image[:n])


class RaySampler:
    """Uniform random rays over all pixels of all training images, each through its own
    image's camera (intrinsics and lens distortion, renderer.cameras)."""

    def __init__(self, images: torch.Tensor, c2w: torch.Tensor, cameras: Cameras,
                 alpha: torch.Tensor | None = None, ndc: bool = False):
        self.images, self.c2w = images, c2w
        self.cameras = cameras.to(images.device)  # indexed per ray: kept on the device
        self.focal = float(cameras.fx[0])  # NDC's frame: the first camera's (ndc_frame)
        self.alpha, self.ndc = alpha, ndc

    @classmethod
    def from_split(cls, split, device: torch.device, ndc: bool, keep_alpha: bool) -> "RaySampler":
        """From a loaders.scene split; alpha is kept only when training swaps the background."""
        alpha = (torch.from_numpy(split.alpha).to(device)
                 if keep_alpha and split.alpha is not None else None)
        return cls(torch.from_numpy(split.images).to(device), torch.from_numpy(split.c2w).to(device),
                   split.cameras, alpha, ndc)

    def sample(self, n: int, generator: torch.Generator | None, crop: float = 1.0) -> RayBatch:
        """n rays; ``crop`` < 1 draws pixels from the central crop of that fraction only
        (the precrop warm-up)."""
        n_img, h, w = self.images.shape[:3]
        dev = self.images.device
        img = torch.randint(0, n_img, (n,), device=dev, generator=generator)
        y0, y1, x0, x1 = 0, h, 0, w
        if crop < 1.0:
            ch, cw = max(1, round(h * crop)), max(1, round(w * crop))
            y0, x0 = (h - ch) // 2, (w - cw) // 2
            y1, x1 = y0 + ch, x0 + cw
        py = torch.randint(y0, y1, (n,), device=dev, generator=generator)
        px = torch.randint(x0, x1, (n,), device=dev, generator=generator)
        dirs = pixel_directions(self.cameras, img, px, py)
        c2w = self.c2w[img]
        rays_d = (c2w[:, :3, :3] @ dirs[..., None]).squeeze(-1)
        rays_o = c2w[:, :3, 3]
        if self.ndc:
            rays_o, rays_d = ndc_rays(h, w, self.focal, 1.0, rays_o, rays_d)
        target = self.images[img, py, px]
        if self.alpha is not None:
            target = torch.cat([target, self.alpha[img, py, px, None].float()], -1)
        return RayBatch(rays_o, rays_d, target, img)


def swap_background(target: torch.Tensor, background, generator: torch.Generator | None):
    """target (n, 3 or 4) -> (rgb target (n, 3), background to render with: ``background``,
    or (n, 3) random colours that the target is re-composited on when it carries alpha)."""
    if target.shape[-1] != 4:
        return target, background
    bg = torch.rand(target.shape[0], 3, device=target.device, generator=generator)
    # Exact: the stored rgb is rgb*a + (1 - a)*old, so adding (1 - a)*(bg - old) swaps it.
    return target[:, :3] + (1.0 - target[:, 3:]) * (bg - background), bg


def render_batch(model, batch: RayBatch, near, far, background) -> dict:
    """The training render of a batch: the rays moved by the field's learned camera
    corrections (Field.refine_rays, identity for most fields), and the image index of each
    ray passed to the fields that declare ``TAKES_IMAGE`` (per-image appearance)."""
    rays_o, rays_d = model.refine_rays(batch.rays_o, batch.rays_d, batch.image)
    extra = {"image": batch.image} if model.TAKES_IMAGE else {}
    return model.render_rays(rays_o, rays_d, near, far, background=background, train=True, **extra)


def render_batch_static(model, batch: RayBatch, near, far, background, active, capacity: int) -> dict:
    """``render_batch`` through the field's fixed-shape render (the CUDA-graph step)."""
    rays_o, rays_d = model.refine_rays(batch.rays_o, batch.rays_d, batch.image)
    extra = {"image": batch.image} if model.TAKES_IMAGE else {}
    return model.render_rays_static(rays_o, rays_d, near, far, background, active, capacity, **extra)
