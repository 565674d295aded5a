"""Worker -> GUI channels: latest-value slots, queues and the status snapshot.

The worker thread writes, the GUI thread reads; nothing here knows about torch.
"""
from __future__ import annotations

import copy
import queue
import threading
import time


class Latest:
    """A latest-value slot: writers replace, readers see the newest (and can wait for one)."""

    def __init__(self):
        self._cv = threading.Condition()
        self._value = None
        self.seq = 0

    def put(self, value) -> None:
        with self._cv:
            self._value = value
            self.seq += 1
            self._cv.notify_all()

    def get(self):
        with self._cv:
            return self._value

    def wait(self, pred, timeout: float):
        """First value v (current or future) with pred(v) true, or None after timeout."""
        end = time.monotonic() + timeout
        with self._cv:
            while self._value is None or not pred(self._value):
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self._cv.wait(left)
            return self._value


def drain(q: queue.Queue) -> list:
    out = []
    try:
        while True:
            out.append(q.get_nowait())
    except queue.Empty:
        return out


class Outbox:
    """Everything the worker tells the GUI.

    frames (the newest rendered level), probes (weights along the ray under the cursor) and
    scene_info are latest-value slots; metrics (one dict per step) and notes ((level, text),
    level info / warn / error) are queues; ``status()`` is a snapshot dict.
    """

    def __init__(self):
        self.frames = Latest()
        self.probes = Latest()
        self.scene_info = Latest()
        self.metrics: queue.Queue = queue.Queue()
        self.notes: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._status = {"state": "starting", "device": "?", "step": 0, "steps_per_s": 0.0,
                        "error": None, "run_id": 0, "settings": {}, "settings_seq": 0,
                        "models": [], "labels": [], "render": "", "inerf": None}

    def note(self, level: str, text: str) -> None:
        self.notes.put((level, text))

    def set_status(self, **kw) -> None:
        with self._lock:
            self._status.update(kw)

    def status(self) -> dict:
        with self._lock:
            return copy.copy(self._status)

    def publish_settings(self, settings: dict) -> None:
        """The settings in force; the GUI re-syncs its widgets whenever settings_seq moves."""
        with self._lock:
            self._status.update(settings=dict(settings), settings_seq=self._status["settings_seq"] + 1)
