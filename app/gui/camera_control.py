"""Mouse and auto-orbit -> the orbit camera -> camera requests to the worker."""
from __future__ import annotations

import time

import numpy as np

from app.gui.orbit import OrbitCamera

WHEEL_SETTLE_S = 0.25  # no wheel clicks for this long: the zoom has ended, refine the view
BUTTONS = ("left", "right", "middle")


class Interaction:
    """Mouse gestures -> orbit camera. Fed by real mouse polling or by the test hooks.

    press(button, pos) starts a drag if pos is inside ``hit(pos)``; move(pos) orbits
    (left) or pans (right/middle); release() ends it. ``on_change(moving)`` is called
    whenever the camera changed (moving=False when a gesture ends); ``on_click(button, pos)``
    when a button was pressed and released without moving. ``grab(pos)`` is asked on a
    left press: an object it returns (a crop-box handle under the mouse) takes the drag's
    moves, ``grabbed.move(pos)``, and the camera stays put; None lets the camera orbit.
    """

    def __init__(self, camera: OrbitCamera, on_change, hit, view_height, on_click=None, grab=None):
        self.camera, self.on_change, self.hit, self.view_height = camera, on_change, hit, view_height
        self.on_click, self.grab = on_click, grab
        self.grabbed = None
        self.button = None
        self.last = None
        self.moved = False
        self.source = "mouse"  # who drives the drag in progress: the mouse, or automation

    @property
    def dragging(self) -> bool:
        return self.button is not None

    def press(self, button: str, pos, source: str = "mouse") -> bool:
        if self.button is not None or not self.hit(pos):
            return False
        self.button, self.last, self.moved, self.source = button, tuple(pos), False, source
        self.grabbed = self.grab(pos) if button == "left" and self.grab is not None else None
        return True

    def move(self, pos) -> None:
        if self.button is None:
            return
        dx, dy = pos[0] - self.last[0], pos[1] - self.last[1]
        self.last = tuple(pos)
        if dx == 0 and dy == 0:
            return
        self.moved = True
        if self.grabbed is not None:
            self.grabbed.move(pos)
            return
        if self.button == "left":
            self.camera.orbit(dx, dy)
        else:
            self.camera.pan(dx, dy, self.view_height())
        self.on_change(True)

    def release(self) -> None:
        if self.button is None:
            return
        moved, button, grabbed = self.moved, self.button, self.grabbed
        self.button = self.grabbed = None
        if grabbed is not None and moved:
            return  # a handle was dragged; the camera did not move
        if moved:
            self.on_change(False)
        elif self.on_click is not None:
            self.on_click(button, self.last)

    def wheel(self, clicks: float, pos) -> bool:
        if clicks == 0 or not self.hit(pos):
            return False
        self.camera.zoom(clicks)
        self.on_change(True)
        return True


class CameraControl:
    """Owns the orbit camera (once the scene is known) and sends each new pose to the worker.

    Gestures ask for priority (their first frame before the next training step); the
    auto-orbit does not, and is frame-locked: it advances only once its previous pose has
    been rendered, so a slow device shows a slower but steady spin and training keeps its
    share of time.
    """

    def __init__(self, dpg, worker, viewport, activity):
        self.dpg, self.worker, self.viewport, self.activity = dpg, worker, viewport, activity
        self.camera: OrbitCamera | None = None
        self.interaction: Interaction | None = None
        self.auto_on = False
        self.auto_speed = 20.0  # degrees per second
        self.sent_version = 0
        self._dirty = False
        self._moving = False
        self._auto_last = time.perf_counter()
        self._auto_acc = 0.0
        self._wheel_clicks = 0.0
        self._wheel_time = 0.0
        self._last_mouse = None
        self.on_click = None  # (button, pos) of a click on the view without a drag
        self.grab = None  # pos -> an object that takes a left drag (a crop-box handle), or None

    @property
    def dragging(self) -> bool:
        return self.interaction is not None and self.interaction.dragging

    def set_scene(self, info: dict) -> None:
        """The first training view's pose, orbiting the origin (again, if called again)."""
        cam = OrbitCamera(radius=info["radius"], up=info["up"], fov=info["fov"])
        cam.set_from_c2w(info["train_c2w"][0])
        cam.target = np.zeros(3)
        cam.radius = info["radius"]
        if self.camera is None:
            self.camera = cam
            self.interaction = Interaction(cam, self.changed, self.viewport.hit,
                                           lambda: self.viewport.rects_screen()[0][3],
                                           on_click=lambda b, p: self.on_click and self.on_click(b, p),
                                           grab=lambda p: self.grab(p) if self.grab else None)
        else:
            self.camera.__dict__.update(cam.__dict__)
        self.changed(False)

    def changed(self, moving: bool) -> None:
        self._dirty = True
        self._moving = moving

    # -- actions (the Camera section) ----------------------------------------------------------
    def set_fov(self, fov: float) -> None:
        if self.camera:
            self.camera.set_fov(fov)
            self.changed(False)

    def snap(self, train_c2w) -> int | None:
        """Move to the nearest training view; its index, or None before the scene is known."""
        if self.camera is None:
            return None
        i = self.camera.snap_to_nearest(train_c2w)
        self.changed(False)
        return i

    def show_pose(self, c2w, fov: float, moving: bool) -> None:
        """Render an arbitrary pose (a camera path being played). The last one of a flight
        (moving=False) becomes the orbit camera's pose, so dragging goes on from there."""
        if self.camera is None:
            return
        if not moving:
            self.camera.set_from_c2w(c2w)
            self.camera.set_fov(fov)
            self._dirty = False
        self.sent_version = self.worker.set_camera(c2w, fov, moving=moving, priority=True)

    def set_auto(self, on: bool) -> None:
        self.auto_on = bool(on)
        if not on:
            self.changed(False)  # stopped: refine the last pose

    # -- per frame -----------------------------------------------------------------------------------
    def on_wheel(self, delta: float) -> None:
        self._wheel_clicks += float(delta)
        self.activity.poke()

    def poll_mouse(self):
        """Drive the interaction from the mouse; returns (mouse position, over the view and
        not dragging) for the probe."""
        dpg = self.dpg
        pos = dpg.get_mouse_pos(local=False)
        codes = dict(zip(BUTTONS, (dpg.mvMouseButton_Left, dpg.mvMouseButton_Right, dpg.mvMouseButton_Middle)))
        if pos != self._last_mouse or any(dpg.is_mouse_button_down(c) for c in codes.values()):
            self._last_mouse = pos
            self.activity.poke()
        it = self.interaction
        if it is None:
            return pos, False
        over_view = self.viewport.hovered()
        if it.dragging and it.source != "mouse":
            pass  # an automated drag (--control): the real mouse does not end or move it
        elif it.dragging:
            it.move(pos)
            if not dpg.is_mouse_button_down(codes[it.button]):
                it.release()
        elif over_view:
            for name, code in codes.items():
                if dpg.is_mouse_button_down(code):
                    it.press(name, pos)
                    break
        if self._wheel_clicks:
            if over_view and it.wheel(self._wheel_clicks, pos):
                self._wheel_time = time.perf_counter()
            self._wheel_clicks = 0.0
        if self._wheel_time and time.perf_counter() - self._wheel_time > WHEEL_SETTLE_S and not it.dragging:
            self._wheel_time = 0.0
            self.changed(False)
        return pos, over_view and not it.dragging

    def auto_orbit(self) -> bool:
        """Advance the auto-orbit; True while it is running."""
        now = time.perf_counter()
        dt, self._auto_last = now - self._auto_last, now
        if not self.auto_on or self.camera is None or self.dragging:
            return False
        self._auto_acc += dt
        f = self.viewport.frame
        if f is not None and f.version < self.sent_version:
            return True
        self.camera.spin(min(self._auto_acc, 0.25), self.auto_speed)
        self._auto_acc = 0.0
        self.changed(True)
        return True

    def send(self, priority: bool = True) -> None:
        if not self._dirty or self.camera is None:
            return
        self._dirty = False
        self.sent_version = self.worker.set_camera(self.camera.c2w(), self.camera.fov, moving=self._moving,
                                                   priority=priority)

    def tick(self):
        """Mouse, auto-orbit, and the pose to the worker; returns poll_mouse's answer."""
        pos, probe_ok = self.poll_mouse()
        auto = self.auto_orbit()
        # Gestures get priority; auto-orbit alternates with training.
        self.send(priority=not (auto and not self.dragging))
        return pos, probe_ok
