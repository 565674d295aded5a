"""Input frames for structure from motion: a folder of photos checked up front, or the
sharpest frames of a video.

Video frames come through imageio-ffmpeg. The video is cut into N equal runs of
frames and the sharpest frame of each run is kept (sharpness: the variance of the
Laplacian, a standard blur measure: blur removes exactly the high frequencies the
Laplacian responds to), so the kept frames cover the whole video evenly and a blurred
frame is replaced by a sharp neighbour.
"""
from __future__ import annotations

import os

import numpy as np

from loaders.scene import DataError

IMAGE_EXT = (".png", ".jpg", ".jpeg")
VIDEO_EXT = (".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm")
MIN_IMAGES = 5  # structure from motion needs overlapping views; fewer is never a NeRF dataset
JPEG_QUALITY = 95


def list_images(folder: str) -> list[str]:
    """Sorted image file names in ``folder``; DataError when there are none."""
    if not os.path.isdir(folder):
        raise DataError(folder, "not a folder of images" if os.path.exists(folder) else "does not exist")
    names = sorted(f for f in os.listdir(folder)
                   if f.lower().endswith(IMAGE_EXT) and os.path.isfile(os.path.join(folder, f)))
    if not names:
        raise DataError(folder, f"no images ({', '.join(IMAGE_EXT)}) in this folder")
    return names


def check_images(folder: str, names: list[str], progress=None) -> tuple[int, int]:
    """Decode every image (a corrupt file fails here, not deep inside SfM) and check they
    share one size. Returns (width, height). progress(n) after each image."""
    from PIL import Image

    if len(names) < MIN_IMAGES:
        raise DataError(folder, f"only {len(names)} images: structure from motion needs at least "
                                f"{MIN_IMAGES} overlapping views (a NeRF wants dozens)")
    size = None
    for name in names:
        p = os.path.join(folder, name)
        try:
            with Image.open(p) as im:
                im.load()  # the whole file: a truncated JPEG fails here
                this = im.size
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad files
            raise DataError(p, f"cannot decode image ({type(exc).__name__}: {exc})") from None
        if size is None:
            size, first = this, name
        elif this != size:
            raise DataError(p, f"image size {this[0]}x{this[1]} differs from {first}'s {size[0]}x{size[1]}; "
                               "one capture needs one camera (resize them, or process each size apart)")
        if progress is not None:
            progress(1)
    return size


def laplacian_variance(gray: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of a grey image (H, W) over its interior."""
    g = np.asarray(gray, np.float64)
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4 * g[1:-1, 1:-1]
    return float(lap.var())


def sharpness(frame: np.ndarray) -> float:
    """laplacian_variance of an (H, W, 3) uint8 frame's luma at half resolution (blur
    shows there as well, and it is 4x cheaper)."""
    f = np.asarray(frame, np.float32)
    h, w = f.shape[0] // 2 * 2, f.shape[1] // 2 * 2
    y = f[:h, :w] @ np.array([0.299, 0.587, 0.114], np.float32)
    return laplacian_variance(y.reshape(h // 2, 2, w // 2, 2).mean((1, 3)))


def select_sharpest(scores, n: int) -> list[int]:
    """Indices of n frames: the sharpest of each of n equal runs of the sequence (all
    frames when there are no more than n)."""
    scores = np.asarray(scores, np.float64)
    if len(scores) <= n:
        return list(range(len(scores)))
    edges = np.linspace(0, len(scores), n + 1).round().astype(int)
    return [int(a + np.argmax(scores[a:b])) for a, b in zip(edges[:-1], edges[1:])]


def _video_reader(path: str):
    """imageio-ffmpeg's frame generator with its metadata read; DataError if ffmpeg
    cannot open the file as a video."""
    import imageio_ffmpeg

    try:
        gen = imageio_ffmpeg.read_frames(path)
        meta = gen.__next__()
    except Exception as exc:  # noqa: BLE001 - ffmpeg failures come as RuntimeError/OSError/...
        msg = str(exc).strip().splitlines()
        raise DataError(path, f"ffmpeg cannot read this video ({msg[-1] if msg else type(exc).__name__})") from None
    return gen, meta


def _frames(path: str):
    """(size, generator of (H, W, 3) uint8 frames)."""
    gen, meta = _video_reader(path)
    w, h = meta["size"]

    def it():
        try:
            for raw in gen:
                yield np.frombuffer(raw, np.uint8).reshape(h, w, 3)
        finally:
            gen.close()
    return (w, h), meta, it()


def video_frames(path: str, out_dir: str, n: int, progress=None) -> list[str]:
    """Write the n kept frames of a video to out_dir as frame_00001.jpg, ... (in video
    order); returns their names. Two passes over the video (score, then write), so memory
    stays one frame. progress(stage, done, total) is called per frame read."""
    from PIL import Image

    (w, h), meta, frames = _frames(path)
    est = int(round(float(meta.get("duration") or 0) * float(meta.get("fps") or 0)))
    scores = []
    for f in frames:
        scores.append(sharpness(f))
        if progress is not None:
            progress("scan", len(scores), max(est, len(scores)))
    if len(scores) < MIN_IMAGES:
        raise DataError(path, f"only {len(scores)} frames could be decoded: need at least {MIN_IMAGES}")
    keep = set(select_sharpest(scores, n))
    names = []
    _, _, frames = _frames(path)
    for i, f in enumerate(frames):
        if i in keep:
            names.append(f"frame_{len(names) + 1:05d}.jpg")
            Image.fromarray(f).save(os.path.join(out_dir, names[-1]), quality=JPEG_QUALITY)
        if progress is not None:
            progress("write", i + 1, len(scores))
    if len(names) != len(keep):  # the second decode ended early: the file changed under us
        raise DataError(path, f"the video gave {i + 1} frames on the second read, {len(scores)} on the first")
    return names
