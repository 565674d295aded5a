"""Strict image reading: every failure becomes a DataError naming the file."""
from __future__ import annotations

import os

import numpy as np


def read_image(path: str) -> np.ndarray:
    """Read an 8-bit or 16-bit PNG/JPEG as float32 (H, W, C) in [0, 1], C in {3, 4}.

    Grey images are expanded to RGB and grey + alpha (2 channels, PNG colour
    type 4) to RGBA; anything else (>4 channels, float images) is rejected
    rather than guessed at. 16-bit colour PNGs are decoded by loaders.png16
    because Pillow keeps only their high byte.
    """
    from loaders.scene import DataError
    import imageio.v3 as iio

    if not os.path.isfile(path):
        raise DataError(path, "image file is missing")
    try:
        from loaders.png16 import is_16bit_colour_png, read_png
        img = read_png(path) if is_16bit_colour_png(path) else iio.imread(path)
    except Exception as exc:  # imageio raises many types for corrupt files
        raise DataError(path, f"cannot decode image ({type(exc).__name__}: {exc})") from None
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[-1] == 4 and not path.lower().endswith(".png"):
        # A CMYK JPEG/TIFF also has 4 channels; read as RGBA it would be nonsense.
        try:
            cmyk = iio.immeta(path).get("mode") == "CMYK"
        except Exception:  # noqa: BLE001 - no metadata: not a Pillow CMYK image
            cmyk = False
        if cmyk:
            raise DataError(path, "CMYK (print) colour image; save it as RGB or RGBA")
    if img.dtype == np.uint8:
        scale = 255.0
    elif img.dtype == np.uint16:
        scale = 65535.0
    else:
        raise DataError(path, f"unsupported pixel type {img.dtype} (need 8- or 16-bit)")
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, -1)
    elif img.ndim == 3 and img.shape[-1] == 2:  # grey + alpha -> RGBA
        img = np.concatenate([np.repeat(img[..., :1], 3, -1), img[..., 1:]], -1)
    if img.ndim != 3 or img.shape[-1] not in (3, 4):
        raise DataError(path, f"unsupported image shape {img.shape} (need H x W x 3 or 4 channels)")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise DataError(path, "image is empty")
    return img.astype(np.float32) / scale


def composite_alpha(img: np.ndarray, white: bool) -> np.ndarray:
    """RGBA (H, W, 4) -> RGB (H, W, 3) over a white or black background."""
    if img.shape[-1] == 3:
        return img
    rgb, a = img[..., :3], img[..., 3:]
    return rgb * a + (1.0 - a) * (1.0 if white else 0.0)


def resize_area(img: np.ndarray, factor: int) -> np.ndarray:
    """Box-filter downscale (H, W, C) by an integer factor (the --half-res style)."""
    if factor == 1:
        return img
    h, w = img.shape[0] // factor * factor, img.shape[1] // factor * factor
    img = img[:h, :w]
    return img.reshape(h // factor, factor, w // factor, factor, -1).mean((1, 3))
