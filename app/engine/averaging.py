"""A moving average of the weights, swapped in for rendering.

instant-ngp's "Ema" optimiser wrapper: at a large learning rate the last Adam step leaves
the weights noisy, and the average over ~1 / (1 - decay) steps is what the user should see.
Training itself always uses the raw weights.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch


class WeightAverage:
    """ema <- decay * ema + (1 - decay) * weights after each applied step.

    ``params`` returns the live parameter tensors (they change when a grid is upsampled or
    the optimiser rebuilt); an average that no longer matches them in shape restarts."""

    def __init__(self, params: Callable[[], list[torch.Tensor]]):
        self.params = params
        self.values: list[torch.Tensor] | None = None
        self._active = False
        self._raw: list[torch.Tensor] | None = None

    def fits(self, tensors: list[torch.Tensor] | None) -> bool:
        """True when ``tensors`` match the parameters one for one in shape."""
        params = self.params()
        return tensors is not None and len(tensors) == len(params) and all(
            t.shape == p.shape for t, p in zip(tensors, params))

    @torch.no_grad()
    def update(self, decay: float) -> None:
        if decay <= 0.0:
            return
        params = self.params()
        if not self.fits(self.values):
            self.values = [p.detach().clone() for p in params]
        else:
            torch._foreach_lerp_(self.values, [p.detach() for p in params], 1.0 - decay)

    @torch.no_grad()
    def apply(self) -> None:
        """Replace the weights by the average for good (a run loaded to be used)."""
        if self.fits(self.values):
            torch._foreach_copy_(self.params(), self.values)
        self.values = None

    @contextlib.contextmanager
    def swapped_in(self):
        """Within the block the parameters hold the average. Copies in place, because a
        captured CUDA graph holds the parameters' addresses; the raw weights come back on
        exit, whatever happens inside."""
        params = self.params()
        if self._active or not self.fits(self.values):
            yield
            return
        self._active = True
        with torch.no_grad():
            if not self.fits(self._raw):  # one kept buffer: the GUI enters this every chunk
                self._raw = [torch.empty_like(p) for p in params]
            torch._foreach_copy_(self._raw, [p.detach() for p in params])
            torch._foreach_copy_(params, self.values)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(params, self._raw)
            self._active = False
