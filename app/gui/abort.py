"""Cutting torch work short on the worker thread: a stop request, or a user gesture that
wants a frame before the training step in progress has finished."""
from __future__ import annotations

import threading
from contextlib import contextmanager


class WorkerStopped(Exception):
    """Raised inside the worker's torch forward passes once stop() has been called."""


class Preempted(Exception):
    """Raised inside a training step's forward pass when a user gesture wants a frame now."""


class AbortHook:
    """A forward pre-hook on every module, active only on the worker's thread: it ends a
    forward pass at once when ``stop`` is set, or, inside ``preemptible(True)``, when
    ``preempt`` is set (the step is dropped whole: no update happens, the next step samples
    a fresh batch). Only a backward pass already running can delay either."""

    def __init__(self):
        self.stop = threading.Event()
        self.preempt = threading.Event()  # set by a gesture's camera, cleared when it is taken
        self._in_step = False
        self._handle = None

    def install(self, thread: threading.Thread) -> None:
        import torch

        def hook(module, args):
            if threading.current_thread() is thread:
                if self.stop.is_set():
                    raise WorkerStopped()
                if self._in_step and self.preempt.is_set():
                    raise Preempted()

        self._handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    @contextmanager
    def preemptible(self, on: bool):
        self._in_step = on
        try:
            yield
        finally:
            self._in_step = False
