"""Videos of a trained field: mp4 through imageio-ffmpeg, GIF without it.

Two camera sources: an orbit, circling the world +Z axis (Blender scenes) at a fixed
elevation and radius, looking at the origin, with ``app.commands.render.orbit_pose`` (the
same camera as ``main.py render --orbit``); or a camera path (app/tools/camera_path.py).
"""
from __future__ import annotations

import os

import numpy as np

from app.engine.checkpoint import atomic_write

FFMPEG_EXT = (".mp4", ".mov", ".mkv", ".webm", ".avi")
MAX_SIZE = 4096
MAX_FRAMES = 10000
MAX_FPS = 240


class Cancelled(Exception):
    """progress() returned False: the video was abandoned and nothing was written."""


def ffmpeg_exe() -> str | None:
    """Path of the ffmpeg binary imageio-ffmpeg would use, or None when there is none."""
    try:
        import imageio_ffmpeg
        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError, OSError):
        return None


def orbit_poses(frames: int, elevation: float, radius: float, start_azimuth: float = 0.0) -> np.ndarray:
    """c2w (frames, 4, 4): one full turn, evenly spaced, the last frame one step before the first
    so the video loops without a repeated frame."""
    from app.commands.render import orbit_pose

    az = start_azimuth + 360.0 * np.arange(frames) / frames
    return np.stack([orbit_pose(a, elevation, radius) for a in az])


def video_size(trainer, size) -> tuple[int, int]:
    """(height, width) rounded down to even numbers, because H.264 in yuv420p needs even
    dimensions and imageio would otherwise rescale. size: None (the training size), a
    width (the training aspect kept) or (width, height or None)."""
    w, h = size if isinstance(size, tuple) else (size, None)
    w = int(w) if w else int(trainer.width)
    h = int(h) if h else max(2, int(round(w * trainer.height / trainer.width)))
    return h - h % 2, w - w % 2


def check_video_path(path: str) -> None:
    ext = os.path.splitext(str(path))[1].lower()
    if ext not in FFMPEG_EXT + (".gif",):
        raise ValueError(f"{path}: unsupported video type {ext or '(none)'!r}; use .mp4 or .gif")


def check_fps(fps) -> None:
    if not (0 < float(fps) <= MAX_FPS):
        raise ValueError(f"fps must be in (0, {MAX_FPS}], got {fps}")


def check_args(path: str, frames: int, fps: float, size, elevation: float,
               radius: float | None) -> None:
    check_video_path(path)
    if not (1 <= int(frames) <= MAX_FRAMES):
        raise ValueError(f"frames must be between 1 and {MAX_FRAMES}, got {frames}")
    check_fps(fps)
    for v in (size if isinstance(size, tuple) else (size,)):
        if v is not None and not (8 <= int(v) <= MAX_SIZE):
            raise ValueError(f"size must be between 8 and {MAX_SIZE}, got {v}")
    if not np.isfinite(elevation) or abs(elevation) >= 90:
        raise ValueError(f"elevation must be strictly between -90 and 90 degrees, got {elevation}")
    if radius is not None and not (np.isfinite(radius) and radius > 0):
        raise ValueError(f"radius must be a positive number, got {radius}")


def render_orbit_video(trainer, path: str, frames: int = 60, fps: float = 30, radius: float | None = None,
                       elevation: float = 30, size=None, progress=None, log=print) -> str:
    """Render ``frames`` views on an orbit and write them to ``path``; returns the path written.

    radius: camera distance from the origin (default: the farthest training camera's).
    size: see video_size. The rest as write_video.
    """
    check_args(path, frames, fps, size, elevation, radius)
    scene = trainer.scene
    if getattr(scene, "ndc", False):
        raise ValueError("orbit videos need a 360-degree scene; this one is forward-facing (NDC)")
    if radius is None:
        radius = scene.scene_radius
    h, w = video_size(trainer, size)
    views = [(c2w, None) for c2w in orbit_poses(int(frames), float(elevation), float(radius))]
    return write_video(trainer, path, views, h, w, fps, progress, log)


def render_path_video(trainer, path: str, camera_path, fps: float | None = None, size=None,
                      progress=None, log=print) -> str:
    """Render a camera path (app.tools.camera_path.CameraPath, poses in the capture's own
    frame) to ``path``: fps x seconds frames, each with the path's pose and field of view
    at its time.

    fps: default the path's. size: (width, height or None) or a width; default the path's
    render size; a width alone keeps the path's aspect. Rounded down to even numbers.
    """
    from app.tools.camera_path import focal_for_fov

    check_video_path(path)
    if fps is not None:
        check_fps(fps)
        camera_path.fps = float(fps)
    if camera_path.n_frames > MAX_FRAMES:
        raise ValueError(f"the path would need {camera_path.n_frames} frames (limit {MAX_FRAMES})")
    if size is None:
        w, h = camera_path.width, camera_path.height
    else:
        w, h = size if isinstance(size, tuple) else (size, None)
        h = h or max(2, int(round(w * camera_path.height / camera_path.width)))
    if not (8 <= w <= MAX_SIZE and 8 <= h <= MAX_SIZE):
        raise ValueError(f"size must be between 8 and {MAX_SIZE} per side, got {w}x{h}")
    h, w = h - h % 2, w - w % 2
    # Path files hold poses in the capture's own frame, like render --pose and the meshes.
    views = [(trainer.scene.from_world_poses(c2w).astype(np.float32), focal_for_fov(h, fov))
             for c2w, fov in camera_path.frames()]
    return write_video(trainer, path, views, h, w, camera_path.fps, progress, log)


def write_video(trainer, path: str, views, h: int, w: int, fps: float, progress=None, log=print) -> str:
    """Render ``views`` [(c2w, focal in pixels or None for the training one)] at h x w and
    write them to ``path``; returns the path written.

    path: .mp4 (or .mov/.mkv/.webm/.avi) is encoded with H.264 by imageio-ffmpeg;
    if no ffmpeg binary is available the video is written as a GIF next to it
    (same name, .gif) and ``log`` says so. .gif is written directly.
    progress(done, total) is called after each frame; returning False cancels
    (raises Cancelled; nothing is written). The file appears atomically.
    """
    def frames_iter():
        from app.commands.render import to_uint8
        for i, (c2w, focal) in enumerate(views):
            img = to_uint8(trainer.render(c2w, h, w, focal, keys=("rgb",))["rgb"].numpy())
            if progress is not None and progress(i + 1, len(views)) is False:
                raise Cancelled(f"cancelled after {i + 1} of {len(views)} frames")
            yield img

    path = str(path)
    root, ext = os.path.splitext(path)
    if ext.lower() in FFMPEG_EXT:
        exe = ffmpeg_exe()
        if exe is not None:
            atomic_write(path, lambda tmp: _write_ffmpeg(tmp, frames_iter(), fps))
            return path
        path = root + ".gif"
        _check_gif_memory(len(views), h, w)
        if log:
            log(f"warning: ffmpeg is not available (imageio-ffmpeg found no binary); "
                f"writing a GIF instead: {path}")
    _check_gif_memory(len(views), h, w)
    atomic_write(path, lambda tmp: _write_gif(tmp, frames_iter(), fps))
    return path


GIF_MAX_BYTES = 2 ** 31


def _check_gif_memory(frames: int, h: int, w: int) -> None:
    """The GIF writer holds every frame in memory (unlike ffmpeg): refuse before rendering."""
    need = frames * h * w * 3
    if need > GIF_MAX_BYTES:
        raise ValueError(f"a GIF of {frames} frames at {w}x{h} needs {need / 2**30:.1f} GiB of memory "
                         f"(limit {GIF_MAX_BYTES / 2**30:.0f}); use fewer frames, a smaller size, or mp4 with ffmpeg")


def _write_ffmpeg(tmp: str, frames, fps: float) -> None:
    import imageio.v2 as imageio

    # Frames are streamed to ffmpeg, so memory does not grow with the frame count.
    # The temporary file keeps the real extension (atomic_write's suffix), which is
    # how ffmpeg picks the container.
    writer = imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                quality=8, pixelformat="yuv420p", macro_block_size=1,
                                ffmpeg_log_level="error")
    try:
        for img in frames:
            writer.append_data(img)
    finally:
        writer.close()


def _write_gif(tmp: str, frames, fps: float) -> None:
    import imageio.v3 as iio

    stack = np.stack(list(frames))
    # GIF frame times are whole centiseconds; loop=0 repeats forever.
    iio.imwrite(tmp, stack, extension=".gif", duration=int(round(1000.0 / fps)), loop=0)
