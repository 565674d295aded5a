"""Plenoxels: training speed and quality over time, memory and frame time.

Trains with the model's own policy and schedule (Plenoxels.options_for / policy: the
paper's 128^3 -> 256^3 -> 512^3 on CUDA, 64^3 -> 128^3 on a CPU) and prints one row per
block of steps (resolution, active vertices, ms per step, training PSNR, pruning and
upsampling events), then a table of test PSNR at checkpoints of training time (the clock
stops while evaluating), the peak GPU memory and the time of one full-size frame.

    python bench/bench_plenoxels.py                      # embedded scene, CPU, 600 steps
    python bench/bench_plenoxels.py --data ../shared/data/nerf_synthetic/lego --downscale 8
    python3 bench/bench_plenoxels.py --data .data/lego --device cuda --checkpoints 60,120,300 --eval-images 13
    ... --frame-baseline --frame-configs 32x1x4,64x2x8   # frames: before / now / other kernel settings

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


def _time_frames(frame, n: int, dev) -> float:
    """ms per frame(i) for i < n, after one warm-up frame (compiles, builds maps)."""
    frame(0)
    _sync(dev)
    t0 = time.perf_counter()
    for i in range(n):
        frame(i)
    _sync(dev)
    return 1000 * (time.perf_counter() - t0) / max(n, 1)


def _old_frame(tr, sp):
    """frame(i) as rendered before the frame kernel: 64k-ray chunks through the training
    kernels' forward (taken with gradients on), the pixels copied to the host."""
    import torch

    from renderer.cameras import Cameras, camera_grid_directions
    from renderer.rays import rays_from_dirs
    dirs = camera_grid_directions(Cameras.pinhole(1, sp.width, sp.height, sp.focal), 0, tr.device).reshape(-1, 3)

    def frame(i):
        o, d = rays_from_dirs(dirs, torch.as_tensor(sp.c2w[i % len(sp)], dtype=torch.float32).to(tr.device))
        tr.model.eval()
        with torch.enable_grad():
            rgb = [tr.model.render_rays(o[s:s + 65536], d[s:s + 65536], tr.scene.near, tr.scene.far,
                                        background=tr.background, train=False)["rgb"].detach()
                   for s in range(0, o.shape[0], 65536)]
        tr.model.train()
        return torch.cat(rgb).cpu().view(sp.height, sp.width, 3)
    return frame


def _with_frame_config(cfg: str, model, timed):
    """timed() with the frame kernel's settings from cfg ("64x2x4", "32x1x4r80"), then the
    defaults back; "failed: ..." when the kernel failed with them."""
    from models import plenoxels as plx
    from models.kernels import plenoxel_render as pr
    saved = pr.FRAME_BLOCK, pr.FRAME_WARPS, plx.FRAME_BLOCK_CELLS, pr.FRAME_MAXNREG
    head, _, regs = cfg.partition("r")
    rays, warps, cells = (int(v) for v in head.split("x"))
    pr.FRAME_BLOCK, pr.FRAME_WARPS, plx.FRAME_BLOCK_CELLS = rays, warps, cells
    pr.FRAME_MAXNREG = int(regs) if regs else None
    try:
        ms = timed()
        return f"failed: {model._frame.error}" if model._frame.error else ms
    finally:
        pr.FRAME_BLOCK, pr.FRAME_WARPS, plx.FRAME_BLOCK_CELLS, pr.FRAME_MAXNREG = saved
        model._frame.error = None


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
    p.add_argument("--frame-baseline", action="store_true",
                   help="also time frames as rendered before the frame kernel (64k-ray chunks through the training "
                        "forward) and compare their pixels with the frame kernel's")
    p.add_argument("--frame-configs", default="",
                   help="also time frames with other frame-kernel settings, rays x warps x block cells [r max "
                        "registers], e.g. 32x1x4,64x2x8r96")
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
    # Frame time: full-size test views through Trainer.render, after one warm-up frame.
    sp = scene.split("test")

    def frame(i, **kw):
        return tr.render(sp.c2w[i % len(sp)], sp.height, sp.width, sp.focal, keys=("rgb",), **kw)["rgb"]

    frame_ms = _time_frames(frame, a.frames, dev)
    if getattr(tr.model, "_frame", None) is not None and tr.model._frame.error:
        print(f"\nFRAME KERNEL FAILED (frames went through the training forward): {tr.model._frame.error}")
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else float("nan")
    rows = []
    if a.frame_baseline:
        old = _old_frame(tr, sp)
        rows.append(("before: 64k-ray chunks through the training forward", _time_frames(old, a.frames, dev)))
        rows.append(("frame kernel in 64k-ray chunks", _time_frames(lambda i: frame(i, chunk=65536), a.frames, dev)))
        diff = max(float((old(i) - frame(i)).abs().max()) for i in range(min(a.frames, len(sp))))
        print(f"\nlargest |frame kernel - before| over {min(a.frames, len(sp))} frames: {diff:.2e}")
    for cfg in filter(None, a.frame_configs.split(",")):
        ms = _with_frame_config(cfg, tr.model, lambda: _time_frames(frame, a.frames, dev))
        rows.append((f"frame kernel {cfg}", ms))
    if rows:
        print(f"\n| render of one {sp.width}x{sp.height} frame (mean of {a.frames}) | ms |\n|---|---:|")
        print(f"| Trainer.render (the default) | {frame_ms:.1f} |")
        for name, ms in rows:
            print(f"| {name} | {ms} |" if isinstance(ms, str) else f"| {name} | {ms:.1f} |")
    print(f"\n| checkpoint (s) | trained (s) | steps | grid | test PSNR ({a.eval_images} views) |")
    print("|---:|---:|---:|---:|---:|")
    for ck, t, st, r, ps in results:
        print(f"| {ck:.0f} | {t:.1f} | {st} | {r}^3 | {ps:.2f} |")
    print(f"\npeak GPU memory {peak:.2f} GiB; one {sp.width}x{sp.height} frame {frame_ms:.1f} ms "
          f"(render + copy to host, mean of {a.frames}); {tr.model.n_active} active vertices")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
