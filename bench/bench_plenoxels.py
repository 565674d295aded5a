"""Plenoxels: training speed and quality over time, memory and frame time.

Trains with the model's own policy and schedule (Plenoxels.options_for / policy: the
paper's 128^3 -> 256^3 -> 512^3 on CUDA, 64^3 -> 128^3 on a CPU) and prints one row per
block of steps (resolution, active vertices, ms per step, training PSNR, pruning and
upsampling events), then a table of test PSNR at checkpoints of training time (the clock
stops while evaluating), the peak GPU memory and the time of one full-size frame.

    python bench/bench_plenoxels.py                      # embedded scene, CPU, 600 steps
    python bench/bench_plenoxels.py --data ../shared/data/nerf_synthetic/lego --downscale 8
    python3 bench/bench_plenoxels.py --data .data/lego --device cuda --checkpoints 60,120,300 --eval-images 13

A run ends at --steps or at the last checkpoint, whichever comes first. The CPU is
usually shared: read its numbers as noisy. One thread by default (on a loaded 2-core
machine a 2-thread OpenMP pool spin-waits and runs several times slower).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _sync(dev) -> None:
    import torch
    if dev.type == "cuda":
        torch.cuda.synchronize()


def main() -> int:
    import torch

    from app.engine.presets import model_options, train_config
    from app.engine.runs import DEFAULT_SCENE
    from app.engine.trainer import Trainer
    from loaders import load_scene

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=DEFAULT_SCENE)
    p.add_argument("--downscale", type=int, default=1)
    p.add_argument("--steps", type=int, default=None, help="default 600 on a CPU, unlimited on CUDA")
    p.add_argument("--checkpoints", default="", help="seconds of training at which to evaluate, e.g. 60,120,300")
    p.add_argument("--block", type=int, default=100, help="steps per printed row")
    p.add_argument("--batch", type=int, default=None, help="rays per step (default: the model's policy)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-images", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--options", default="{}", help="model options (JSON) over the policy's")
    p.add_argument("--kernel-config", default=None, help="rays x warps per kernel program, e.g. 8x4")
    p.add_argument("--frames", type=int, default=5, help="timed full-size frames at the end")
    p.add_argument("--profile", type=int, default=0, help="profile this many more steps at the end (torch.profiler)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.kernel_config:
        from models.kernels import plenoxel_render as pr
        pr.BLOCK, pr.NUM_WARPS = (int(v) for v in a.kernel_config.split("x"))
    cuda = a.device == "cuda"
    checkpoints = sorted(float(s) for s in a.checkpoints.split(",") if s)
    steps = a.steps if a.steps is not None else (None if cuda and checkpoints else 600)
    scene = load_scene(a.data, downscale=a.downscale)
    opts = model_options("plenoxels", cuda, {"ndc": scene.ndc}, json.loads(a.options))
    cfg = train_config("plenoxels", opts, cuda, steps=steps, batch_rays=a.batch, device=a.device)
    tr = Trainer(scene, cfg)
    dev = tr.device
    print(f"{os.path.basename(os.path.normpath(a.data))}: {tr.width}x{tr.height}, {cfg.batch_rays} rays/step, "
          f"{a.threads} thread(s), torch {torch.__version__}, {torch.cuda.get_device_name() if cuda else 'cpu'}")
    print(f"options: {json.dumps({k: v for k, v in opts.items()})}")
    print(f"{'steps':>13} {'res':>4} {'active':>9} {'ms/step':>8} {'psnr':>6}  events")

    def evaluate(n):
        t0 = time.perf_counter()
        res = tr.evaluate("test", max_images=n, ssim=False)
        return res["mean"]["psnr"], time.perf_counter() - t0

    total, results = 0.0, []
    pending = list(checkpoints)
    while (steps is None or tr.step_count < steps) and (not checkpoints or pending):
        start, psnrs, n_events = tr.step_count, [], len(tr.events)
        t0 = time.perf_counter()
        while (tr.step_count < start + a.block and (steps is None or tr.step_count < steps)
               and not (pending and total + time.perf_counter() - t0 >= pending[0])):
            m = tr.step()
            if not m.get("skipped"):
                psnrs.append(m["psnr"])
        _sync(dev)
        total += time.perf_counter() - t0
        ev = "; ".join(e.split(": ", 1)[1] for e in tr.events[n_events:])
        done = max(tr.step_count - start, 1)
        print(f"{start + 1:>6}-{tr.step_count:<6} {tr.model.resolution:>4} {tr.model.n_active:>9} "
              f"{1000 * (time.perf_counter() - t0) / done:>8.2f} {sum(psnrs) / max(len(psnrs), 1):>6.2f}  {ev}",
              flush=True)
        if pending and total >= pending[0]:
            psnr, dt = evaluate(a.eval_images)
            results.append((pending.pop(0), total, tr.step_count, tr.model.resolution, psnr))
            print(f"  checkpoint {results[-1][0]:.0f} s: test PSNR {psnr:.2f} on {a.eval_images} views "
                  f"(evaluation took {dt:.1f} s, not counted)", flush=True)
    if not results:
        psnr, _ = evaluate(a.eval_images)
        results.append((total, total, tr.step_count, tr.model.resolution, psnr))
    if a.profile:
        from torch.profiler import ProfilerActivity, profile
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=acts) as prof:
            for _ in range(a.profile):
                tr.step()
            _sync(dev)
        key = "cuda_time_total" if cuda else "cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=25))
    # Frame time: full-size test views, after one warm-up frame.
    sp = scene.split("test")
    tr.render(sp.c2w[0], sp.height, sp.width, sp.focal, keys=("rgb",))
    _sync(dev)
    t0 = time.perf_counter()
    for i in range(a.frames):
        tr.render(sp.c2w[i % len(sp)], sp.height, sp.width, sp.focal, keys=("rgb",))
    _sync(dev)
    frame_ms = 1000 * (time.perf_counter() - t0) / max(a.frames, 1)
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else float("nan")
    print(f"\n| checkpoint (s) | trained (s) | steps | grid | test PSNR ({a.eval_images} views) |")
    print("|---:|---:|---:|---:|---:|")
    for ck, t, st, r, ps in results:
        print(f"| {ck:.0f} | {t:.1f} | {st} | {r}^3 | {ps:.2f} |")
    print(f"\npeak GPU memory {peak:.2f} GiB; one {sp.width}x{sp.height} frame {frame_ms:.1f} ms "
          f"(render + copy to host, mean of {a.frames}); {tr.model.n_active} active vertices")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
