"""Image quality metrics (numpy in, float out)."""
from __future__ import annotations

import numpy as np


def psnr(pred: np.ndarray, gt: np.ndarray) -> float:
    """PSNR in dB for images in [0, 1] of equal shape (H, W, C)."""
    mse = float(np.mean((np.clip(pred, 0, 1).astype(np.float64) - gt.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else -10.0 * np.log10(mse)


def ssim(pred: np.ndarray, gt: np.ndarray) -> float:
    """Structural similarity (Wang et al. 2004, Gaussian window σ=1.5, as the NeRF
    papers report it) via scikit-image, which is well tested and matches their numbers."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(np.clip(pred, 0, 1), gt, channel_axis=-1, data_range=1.0,
                                       gaussian_weights=True, sigma=1.5, use_sample_covariance=False))
