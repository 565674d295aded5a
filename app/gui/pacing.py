"""Pacing of the GUI loop: how fast to draw, and counting what was drawn."""
from __future__ import annotations

import time


class Activity:
    """Full frame rate until ``until`` (input, new renders, a drag in progress); the idle cap
    after that. Without input or new renders a slower loop is indistinguishable, and on a
    small CPU-only machine every skipped frame (software GL under X) is time for training."""

    def __init__(self):
        self.until = 0.0

    def poke(self, seconds: float = 1.0) -> None:
        self.until = max(self.until, time.perf_counter() + seconds)

    def active(self, now: float) -> bool:
        return now < self.until


class FrameClock:
    """GUI frames drawn, frames per second (over the last second), and the time spent in
    our per-frame Python (tick) vs dearpygui's drawing (draw)."""

    def __init__(self):
        self.frames = 0
        self.fps = 0.0
        self.time_tick = self.time_draw = 0.0
        self.start = time.perf_counter()
        self._fps_t, self._fps_n = self.start, 0

    def count(self, t0: float) -> None:
        self.frames += 1
        self._fps_n += 1
        if t0 - self._fps_t >= 1.0:
            self.fps, self._fps_t, self._fps_n = self._fps_n / (t0 - self._fps_t), t0, 0

    def per_frame_ms(self) -> dict:
        n = max(self.frames, 1)
        return {"tick_ms": round(1000 * self.time_tick / n, 2), "draw_ms": round(1000 * self.time_draw / n, 2)}
