"""Flying the view along a smooth path in real time: playing the camera path, and the
short flight to a training camera that was clicked.

Frame-locked like the auto-orbit: a new pose is sent only once the previous one has been
rendered, at the time that has passed by then, so a slow device shows fewer frames of the
same flight rather than falling behind. Any mouse gesture ends the flight."""
from __future__ import annotations

import time

import numpy as np

from app.gui.keyframes import horizontal_fov
from app.tools.camera_path import CameraPath, Keyframe

FLY_SECONDS = 0.8  # a click on a training camera flies there in this long


class PathPlayer:
    """``camera`` is the CameraControl; ``aspect()`` returns the view's (width, height),
    to turn the path's vertical fov into the view's horizontal one."""

    def __init__(self, camera, aspect):
        self.camera, self.aspect = camera, aspect
        self.spline = None
        self.name = ""
        self.t0 = self.t_end = 0.0
        self._start = 0.0
        self._sent = False
        self.frames_sent = 0
        self.finished = 0  # flights completed (for tests and the status)

    @property
    def playing(self) -> bool:
        return self.spline is not None

    def play(self, path: CameraPath, name: str = "path") -> None:
        """Fly along ``path`` (poses in the scene's frame) from its first key to its end."""
        self.spline = path.spline()
        self.t0 = path.keyframes[0].time
        self.t_end = path.seconds
        self.name = name
        self._start = time.perf_counter()
        self._sent = False
        self.frames_sent = 0

    def fly_to(self, c2w, fov_h: float, seconds: float = FLY_SECONDS) -> None:
        """From the current view to c2w with horizontal fov ``fov_h``."""
        from app.gui.keyframes import vertical_fov

        cam = self.camera.camera
        if cam is None:
            return
        w, h = self.aspect()
        keys = [Keyframe(cam.c2w64(), vertical_fov(cam.fov, w, h), 0.0),
                Keyframe(np.asarray(c2w, np.float64), vertical_fov(fov_h, w, h), float(seconds))]
        self.play(CameraPath(keys), name="fly")

    def stop(self) -> None:
        self.spline = None

    def tick(self) -> bool:
        """Send the next pose if the last one has been shown; True while flying."""
        if self.spline is None:
            return False
        if self.camera.dragging:
            self.stop()
            return False
        frame = self.camera.viewport.frame
        if self._sent and (frame is None or frame.version < self.camera.sent_version):
            return True  # the previous pose is still being rendered
        t = time.perf_counter() - self._start
        done = t >= self.t_end
        c2w, fov_v = self.spline.evaluate(self.t0 + min(t, self.t_end))
        w, h = self.aspect()
        self.camera.show_pose(c2w, horizontal_fov(fov_v, w, h), moving=not done)
        self._sent = True
        self.frames_sent += 1
        if done:
            self.spline = None
            self.finished += 1
        return not done
