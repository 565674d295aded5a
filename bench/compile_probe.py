"""Probe: does torch.compile pay on the NeRF / hash training steps? (ms per step, table last)

    python3 bench/compile_probe.py --data .data/lego

Variants: nerf (paper preset, bf16, 8192 rays, occupancy 64^3), nerf-c (its two networks
compiled, what TrainConfig.compile does), nerf-noocc-c (compiled, no occupancy grid: static
shapes), hash, hash-c (the hash model's per-sample path compiled by monkeypatching; the
model has no compile option because this did not pay in bench_gpu.py's 60 s runs).
Each variant warms up first (NeRF: past the occupancy grid's activation at step 256),
then times a fixed number of steps. Needs CUDA.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402


def trainer_for(kind, scene, occ):
    from app.engine.trainer import TrainConfig, Trainer
    if kind == "nerf":
        opts = dict(width=256, depth=8, n_coarse=64, n_fine=128)
        if occ:
            opts.update(occupancy_res=64)
        cfg = TrainConfig(model="nerf", model_options=opts, batch_rays=8192, lr=5e-4, lr_final=5e-5,
                          lr_decay_steps=100000, device="cuda", autocast=True)
    else:
        cfg = TrainConfig(model="hash", model_options={}, batch_rays=4096, lr=1e-2, lr_final=1e-3,
                          lr_decay_steps=30000, device="cuda", autocast=False)
    return Trainer(scene, cfg)


def timed(tr, n):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        tr.step()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1e3


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="assets/scene")
    p.add_argument("--variants", default="nerf,nerf-c,nerf-noocc-c,hash,hash-c")
    a = p.parse_args()
    from loaders import load_scene
    torch.backends.cuda.matmul.allow_tf32 = True
    scene = load_scene(a.data)
    rows = []
    for v in a.variants.split(","):
        kind = "nerf" if v.startswith("nerf") else "hash"
        tr = trainer_for(kind, scene, "noocc" not in v)
        m = tr.model
        if v in ("nerf-c", "nerf-noocc-c"):
            m.compile_fields()
        if v == "hash-c":
            m._field_packed = torch.compile(m._field_packed, dynamic=True)
        t0 = time.perf_counter()
        warm = 300 if kind == "nerf" else 400
        for _ in range(warm):
            tr.step()
        torch.cuda.synchronize()
        w = time.perf_counter() - t0
        ms = timed(tr, 60 if kind == "nerf" else 300)
        extra = f"batch {tr.batch_rays}"
        if kind == "hash":
            extra += f", samples {m._last_batch[1]}"
        rows.append((v, w, ms, 1e3 / ms, extra, tr.last_metrics["psnr"]))
        print(f"{v}: warm {w:.1f} s, {ms:.2f} ms/step, {extra}", file=sys.stderr, flush=True)
        del tr
        torch.cuda.empty_cache()
    print("| variant | warm-up s (incl. compile) | ms/step | steps/s | batch | train PSNR |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.1f} | {r[2]:.2f} | {r[3]:.1f} | {r[4]} | {r[5]:.2f} |")


if __name__ == "__main__":
    main()
