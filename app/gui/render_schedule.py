"""Progressive, interruptible rendering of the GUI's view on the worker thread.

A camera change renders 1/8 resolution at once (before the next training step); when the
camera stops, 1/4, 1/2 and full follow, interleaved with training, each level published as
it completes. Rendering runs in chunks of rays sized to ~50 ms so a new camera or a stop
request never waits for a whole image. While training with a still camera the view is
re-rendered now and then to show progress.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import numpy as np

from app.gui.channels import Outbox

LEVEL_DIVISORS = (8, 4, 2, 1)
MIN_LEVEL_SIZE = 16  # pixels: a 1/8 level of a small render would be unreadably tiny
CHUNK_SECONDS = 0.05  # target duration of one render chunk (bounds stop / camera latency)


def level_sizes(height: int, width: int, scale: float = 1.0) -> list[tuple[int, int]]:
    """Progressive render sizes [(h, w), ...], coarse to full, for a (height*scale, width*scale) view.

    Each level is full / 8, 4, 2, 1 with its shorter side at least MIN_LEVEL_SIZE (or the full
    size if that is smaller); duplicates are dropped so small renders have fewer levels.
    """
    fh, fw = max(1, round(height * scale)), max(1, round(width * scale))
    sizes: list[tuple[int, int]] = []
    for d in LEVEL_DIVISORS:
        k = max(1.0 / d, min(1.0, MIN_LEVEL_SIZE / min(fh, fw)))
        s = (max(1, round(fh * k)), max(1, round(fw * k)))
        if not sizes or s != sizes[-1]:
            sizes.append(s)
    return sizes


def focal_for(width: int, fov_deg: float) -> float:
    """Focal length in pixels of a pinhole ``width`` pixels wide with horizontal fov (degrees)."""
    return 0.5 * width / math.tan(0.5 * math.radians(fov_deg))


def view_bounds(scene, c2w) -> tuple[float, float]:
    """near, far for a view from c2w: the scene's, moved by how much farther from the origin
    the view is than the farthest training camera (so zooming out past ``far`` does not
    clip the scene away, nor zooming in cut it at ``near``); forward-facing (NDC) scenes
    keep theirs, which are NDC's."""
    if scene.ndc:
        return scene.near, scene.far
    shift = float(np.linalg.norm(np.asarray(c2w, np.float64)[:3, 3])) - scene.scene_radius
    near = max(scene.near + shift, 0.05 * scene.near)
    return near, max(scene.far + max(shift, 0.0), near + 1e-3)


def fov_for(width: int, focal: float) -> float:
    """Horizontal fov (degrees) of a pinhole ``width`` pixels wide with this focal length."""
    return math.degrees(2 * math.atan(0.5 * width / focal))


@dataclass
class Frame:
    """One completed render level. images: per field dicts of numpy float32
    rgb (h, w, 3), depth (h, w), acc (h, w)."""

    images: list
    labels: list
    level: int
    n_levels: int
    size: tuple
    version: int
    c2w: np.ndarray
    fov: float
    step: int
    run_id: int
    kind: str = "view"
    render_s: float = 0.0
    ready_time: float = field(default_factory=time.perf_counter)
    info: dict = field(default_factory=dict)
    bounds: tuple | None = None  # (near, far) the view was rendered between (view_bounds)

    @property
    def final(self) -> bool:
        return self.level == self.n_levels - 1


class RenderJob:
    """Progressive render of one camera for one or more models, advanced chunk by chunk."""

    def __init__(self, c2w, fov, version, sizes, first, last, kind="view", priority=False):
        self.c2w = np.asarray(c2w, dtype=np.float32)
        self.priority = priority  # a user gesture: its first level renders before anything else
        self.fov, self.version, self.sizes = float(fov), version, sizes
        self.level, self.last, self.kind = first, last, kind
        self.model_idx = 0
        self.pos = 0
        self.rays = None  # (rays_o, rays_d) on the device for the current level
        self.bounds = None  # (near, far) of this view (view_bounds)
        self.outs: list[dict] = []
        self.spent = 0.0

    @property
    def done(self) -> bool:
        return self.level > self.last


class RenderScheduler:
    """What to render next for the GUI, and rendering it in bounded chunks.

    ``interrupted()`` says whether commands are waiting (a chunk loop yields to them);
    ``scale()`` is the render scale relative to the training images.
    """

    def __init__(self, out: Outbox, fields, stop, interrupted, scale):
        self.out, self.fields, self.stop = out, fields, stop
        self.interrupted, self.scale = interrupted, scale
        self.scene = None
        self.job: RenderJob | None = None
        self.cam = None  # (c2w, fov, version, moving)
        self._max_level_seen = 0
        self._last_publish = 0.0
        self._refresh_every = 1.0
        self._rays_per_s = None

    def sizes(self) -> list[tuple[int, int]]:
        tr = self.scene.split("train")
        return level_sizes(tr.height, tr.width, float(self.scale()))

    @property
    def gesture_pending(self) -> bool:
        """A gesture's first look is waiting: it goes before training and everything else."""
        return self.job is not None and self.job.priority and self.job.level == 0

    def cancel(self) -> None:
        self.job = None

    # -- what to render ---------------------------------------------------------------------
    def camera(self, c2w, fov, version, moving, priority=True) -> None:
        prev = self.cam
        self.cam = (c2w, fov, version, moving)
        same_pose = prev is not None and prev[1] == fov and np.array_equal(prev[0], c2w)
        if not same_pose:
            self.restart(priority=priority)
            return
        # Same pose, new version (typically the mouse was released): keep what is rendered.
        job = self.job
        if job is not None:
            job.version = version
            if not moving and job.kind == "view":
                job.last = len(job.sizes) - 1
            return
        self._refine(more=not moving)

    def restart(self, priority: bool = True) -> None:
        if self.cam is None or not self.fields.trainers:
            return
        c2w, fov, version, moving = self.cam
        sizes = self.sizes()
        self.job = RenderJob(c2w, fov, version, sizes, 0, 0 if moving else len(sizes) - 1, priority=priority)
        self._max_level_seen = 0

    def _refine(self, more: bool = True) -> None:
        """Same camera again: continue from the level after the one shown (if ``more``),
        or, when there is nothing to add, re-issue the shown frame under the new version."""
        c2w, fov, version, _ = self.cam
        sizes = self.sizes()
        f = self.out.frames.get()
        shown = (f is not None and f.kind in ("view", "refresh") and f.run_id == self.fields.run_id
                 and np.array_equal(f.c2w, c2w) and f.fov == fov and f.n_levels == len(sizes))
        if not shown:
            self.restart()
            return
        if more and f.level + 1 < len(sizes):
            self.job = RenderJob(c2w, fov, version, sizes, f.level + 1, len(sizes) - 1)
        else:
            self.out.frames.put(dataclasses.replace(f, version=version, ready_time=time.perf_counter()))

    def refresh_due(self, training: bool) -> bool:
        """While training with a still camera, re-render the view now and then to show progress."""
        return (training and self.job is None and self.cam is not None and not self.cam[3]
                and bool(self.fields.trainers) and time.perf_counter() - self._last_publish > self._refresh_every)

    def start_refresh(self) -> None:
        c2w, fov, version, _ = self.cam
        sizes = self.sizes()
        lvl = min(self._max_level_seen, len(sizes) - 1)
        # Replace the shown image only when the new one is complete, at the best level reached.
        self.job = RenderJob(c2w, fov, version, sizes, lvl, lvl, kind="refresh")

    # -- rendering ------------------------------------------------------------------------------
    def work(self, budget: float) -> None:
        """Render chunks of the job for about ``budget`` seconds. An infinite budget means:
        finish the current level, whatever else is waiting."""
        job = self.job
        t_end = time.perf_counter() + budget
        level = job.level
        while not job.done and not self.stop.is_set():
            t0 = time.perf_counter()
            self._chunk(job)
            job.spent += time.perf_counter() - t0
            if budget == math.inf:
                if job.level != level:
                    break
            elif time.perf_counter() >= t_end or self.interrupted():
                break  # let a new camera or setting in before spending more
        if job.done and self.job is job:
            self.job = None

    def _chunk(self, job: RenderJob) -> None:
        import torch

        trainers = self.fields.trainers
        h, w = job.sizes[job.level]
        if job.rays is None:
            job.rays = self._rays(job, trainers[0].device)
            job.bounds = view_bounds(self.scene, job.c2w)
            job.outs = [{"rgb": torch.empty(h * w, 3), "depth": torch.empty(h * w),
                         "acc": torch.empty(h * w)} for _ in trainers]
            job.model_idx, job.pos = 0, 0
        n = h * w
        s, e = job.pos, min(job.pos + self._chunk_rays(), n)
        t0 = time.perf_counter()
        out = render_eval(trainers[job.model_idx], self.scene, job.rays[0][s:e], job.rays[1][s:e], bounds=job.bounds)
        for k in ("rgb", "depth", "acc"):
            job.outs[job.model_idx][k][s:e] = out[k].float().cpu()
        rate = (e - s) / max(time.perf_counter() - t0, 1e-6)
        self._rays_per_s = rate if self._rays_per_s is None else 0.7 * self._rays_per_s + 0.3 * rate
        job.pos = e
        if e < n:
            return
        job.model_idx, job.pos = job.model_idx + 1, 0
        if job.model_idx < len(trainers):
            return
        images = [{"rgb": o["rgb"].view(h, w, 3).numpy(), "depth": o["depth"].view(h, w).numpy(),
                   "acc": o["acc"].view(h, w).numpy()} for o in job.outs]
        self.publish(job, images)
        job.level += 1
        job.rays = None

    def _rays(self, job: RenderJob, device):
        import torch

        from renderer.rays import camera_directions, intrinsics, ndc_rays, rays_from_dirs

        h, w = job.sizes[job.level]
        focal = focal_for(w, job.fov)
        dirs = camera_directions(h, w, intrinsics(w, h, focal), device).reshape(-1, 3)
        o, d = rays_from_dirs(dirs, torch.from_numpy(job.c2w).to(device))
        if self.scene.ndc:  # the training cameras' NDC frame, whatever this view's size
            tr0 = self.scene.split("train")
            o, d = ndc_rays(tr0.height, tr0.width, tr0.focal, 1.0, o, d)
        return o, d

    def _chunk_rays(self) -> int:
        if self._rays_per_s is None:
            return 1024 if self.fields.trainers[0].device.type == "cpu" else 65536
        return int(np.clip(self._rays_per_s * CHUNK_SECONDS, 256, 1 << 18))

    def publish(self, job: RenderJob, images, kind=None, labels=None, info=None) -> None:
        h, w = job.sizes[job.level]
        self._max_level_seen = max(self._max_level_seen, job.level)
        f = Frame(images=images, labels=labels or list(self.fields.labels), level=job.level,
                  n_levels=len(job.sizes), size=(h, w), version=job.version, c2w=job.c2w, fov=job.fov,
                  step=self.fields.trainers[0].step_count, run_id=self.fields.run_id, kind=kind or job.kind,
                  render_s=job.spent, info=info or {}, bounds=job.bounds)
        job.spent = 0.0
        self.out.frames.put(f)
        self._last_publish = time.perf_counter()
        # Keep refreshes to about a quarter of the time: after an R-second render wait 3R.
        self._refresh_every = max(0.5, 3.0 * f.render_s)
        self.out.set_status(render=f"{w}x{h} (level {job.level + 1}/{len(job.sizes)})",
                            rays_per_s=self._rays_per_s)


def render_eval(trainer, scene, rays_o, rays_d, autocast: bool = True, bounds=None) -> dict:
    """render_rays in eval mode without gradients, with the weights evaluation and export use
    (trainer.averaged()), in the trainer's precision unless ``autocast`` is False; between
    ``bounds`` (near, far), default the scene's."""
    near, far = bounds or (scene.near, scene.far)
    import torch

    model = trainer.model
    was = model.training
    model.eval()
    try:
        with trainer.averaged(), torch.no_grad(), \
                torch.autocast(trainer.device.type, dtype=torch.bfloat16, enabled=autocast and trainer.config.autocast):
            return model.render_rays(rays_o, rays_d, near, far, background=trainer.background, train=False)
    finally:
        model.train(was)
