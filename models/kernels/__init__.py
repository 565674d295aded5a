"""Optional Triton kernels for models (availability is shared with renderer.kernels)."""
from __future__ import annotations


def latest(cache: dict, tensors, extra: tuple, make):
    """make()'s result, kept in ``cache`` for these tensors and ``extra`` and made again
    only when one of them changed. A tensor is known by its storage and version: a frame
    renders in several chunks with the same parameters, and a training step (an in-place
    update) bumps a parameter's version. Only the last result is kept."""
    key = tuple((t.data_ptr(), t._version, tuple(t.shape)) for t in tensors) + tuple(extra)
    if key not in cache:
        cache.clear()
        cache[key] = make()
    return cache[key]
