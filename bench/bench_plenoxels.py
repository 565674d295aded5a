"""Plenoxels on the CPU: time per training step through the default schedule.

Prints one row per block of steps: grid resolution, active vertices (what Adam
and the TV term touch), ms per step, train PSNR, and the pruning/upsampling
events in between (their own cost included in the block they fall in).

    python bench/bench_plenoxels.py                      # embedded scene
    python bench/bench_plenoxels.py --data ../shared/data/nerf_synthetic/lego --downscale 8
    python3 bench/bench_plenoxels.py --data .data/lego --device cuda --steps 3000 --batch 8192

The CPU is usually shared: run it on a quiet machine, and read the numbers as
noisy. One thread by default (with other jobs on a 2-core machine, a 2-thread
OpenMP pool spin-waits and runs several times slower).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> int:
    import torch

    from app.engine.runs import DEFAULT_SCENE
    from app.engine.trainer import TrainConfig, Trainer
    from loaders import load_scene

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=DEFAULT_SCENE)
    p.add_argument("--downscale", type=int, default=1)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--block", type=int, default=100)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-images", type=int, default=4)
    p.add_argument("--device", default="cpu", help="cpu or cuda (on CUDA the grid goes on to 256^3)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    scene = load_scene(a.data, downscale=a.downscale)
    cfg = TrainConfig(model="plenoxels", batch_rays=a.batch, lr=1e-2, lr_final=1e-3,
                      lr_decay_steps=a.steps, device=a.device)
    tr = Trainer(scene, cfg)
    print(f"{os.path.basename(os.path.normpath(a.data))}: {tr.width}x{tr.height}, {a.batch} rays/step, "
          f"{a.threads} thread(s), torch {torch.__version__}")
    print(f"{'steps':>11} {'res':>4} {'active':>8} {'ms/step':>8} {'psnr':>6}  events")
    total = 0.0
    while tr.step_count < a.steps:
        start, psnrs = tr.step_count, []
        t0 = time.perf_counter()
        n_events = len(tr.events)
        while tr.step_count < min(start + a.block, a.steps):
            m = tr.step()
            if not m.get("skipped"):
                psnrs.append(m["psnr"])
        if tr.device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        total += dt
        ev = "; ".join(e.split(": ", 1)[1] for e in tr.events[n_events:])
        print(f"{start + 1:>5}-{tr.step_count:<5} {tr.model.resolution:>4} {tr.model.n_active:>8} "
              f"{1000 * dt / max(tr.step_count - start, 1):>8.1f} {sum(psnrs) / max(len(psnrs), 1):>6.2f}  {ev}")
    print(f"total training time {total:.1f} s" + (f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
                                                   if tr.device.type == "cuda" else ""))
    if a.eval_images > 0:
        t0 = time.perf_counter()
        res = tr.evaluate("test", max_images=a.eval_images, ssim=False)
        dt = time.perf_counter() - t0
        print(f"test PSNR {res['mean']['psnr']:.2f} on {a.eval_images} views "
              f"({1000 * dt / a.eval_images:.0f} ms per {tr.width}x{tr.height} view)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
