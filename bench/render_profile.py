"""Where a nerfacto frame's time goes: each render stage timed on its own, and the top
GPU kernels of one frame (bench_real.py --profile).

Stages are timed by wrapping the field's and the proposal sampler's functions with a
synchronising clock, so a stage's figure includes its own kernels only (the wrapped
functions do not call each other). The synchronisation itself makes the frame a little
slower than the unwrapped one that bench_real times; "other" is the frame less the
stages (ray generation, compositing, the copy to the host).
"""
from __future__ import annotations

import contextlib
import time

import torch

from bench.bench_gpu import sync

# (module, attribute) pairs wrapped by the stage clock; none calls another.
STAGES = (
    ("renderer.proposal", "uniform_edges"),
    ("renderer.proposal", "sample_histogram"),
    ("models.nerfacto", "NerfactoField._proposal_weights"),
    ("models.nerfacto", "NerfactoField._radiance_n"),
)


@contextlib.contextmanager
def stage_clock(totals: dict):
    """Within the block, each STAGES function adds its synchronised wall time (ms) to
    totals[name]; restored on exit."""
    import importlib

    saved = []
    for mod_name, attr in STAGES:
        mod = importlib.import_module(mod_name)
        owner, name = mod, attr
        if "." in attr:
            cls, name = attr.split(".")
            owner = getattr(mod, cls)
        fn = getattr(owner, name)
        saved.append((owner, name, fn))

        def timed(*a, _fn=fn, _key=name, **k):
            sync()
            t0 = time.perf_counter()
            out = _fn(*a, **k)
            sync()
            totals[_key] = totals.get(_key, 0.0) + (time.perf_counter() - t0) * 1e3
            return out

        setattr(owner, name, timed)
    try:
        yield
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)


def profile_frame(render, repeats: int = 2) -> str:
    """A Markdown table of a frame's stages (ms, mean of ``repeats`` frames after a
    warm-up) and the 12 GPU kernels that took longest over those frames."""
    render()
    totals: dict[str, float] = {}
    sync()
    t0 = time.perf_counter()
    with stage_clock(totals):
        for _ in range(repeats):
            render()
    sync()
    frame = (time.perf_counter() - t0) * 1e3 / repeats
    lines = ["| stage | ms per frame |", "|---|---:|"]
    staged = 0.0
    for k, v in sorted(totals.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {k} | {v / repeats:.1f} |")
        staged += v / repeats
    lines += [f"| other | {frame - staged:.1f} |", f"| frame (synchronised stages) | {frame:.1f} |"]
    if torch.cuda.is_available():
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(repeats):
                render()
            sync()
        lines += ["", prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=60)]
    return "\n".join(lines)
