"""Benchmark the 2D lab: full-batch training steps of the coordinate MLP per mapping.

    python bench/bench_lab2d.py                              # CPU, 256x256 image, 2000 steps, pe
    python bench/bench_lab2d.py --steps 100 --mappings none,pe,gaussian
    python bench/bench_lab2d.py --device cuda --size 512     # the paper's setting on a GPU
    python bench/bench_lab2d.py --net small --bf16 --threads 1

--size S is the image side: training uses the (S/2)^2 even pixels each step (S=256:
16384 pixels/step; S=512, the paper: 65536). Seconds count optimisation steps
only (the mapping is encoded once beforehand; the final evaluation is excluded).
'est 2000' extrapolates seconds to 2000 steps when fewer are run. The table is
printed last.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from app.lab.lab2d import DEFAULT_IMAGE, LabConfig, load_image, make_mapping, parse_mappings, train_mapping  # noqa: E402

NETS = {"paper": dict(width=256, depth=4, n_features=256), "small": dict(width=128, depth=4, n_features=128)}


def flops_per_step(cfg: LabConfig, in_dim: int) -> float:
    """Matmul FLOPs of one full-batch step: forward 2*N*sum(fan_in*fan_out); backward
    twice that, less the first layer's input gradient (its input is not trained)."""
    n = (cfg.size // 2) ** 2
    dims = [in_dim] + [cfg.width] * (cfg.depth - 1) + [3]
    fwd = sum(a * b for a, b in zip(dims[:-1], dims[1:]))
    return 2.0 * n * (3 * fwd - dims[0] * dims[1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--mappings", default="pe")
    p.add_argument("--net", default="paper", choices=sorted(NETS), help="paper: 4x256, 256 features; small: 4x128, 128")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--image", default=DEFAULT_IMAGE)
    a = p.parse_args(argv)
    from app.engine.allocator import keep_freed_memory
    keep_freed_memory()  # as main.py does for every command
    if a.threads:
        torch.set_num_threads(a.threads)
    kinds = parse_mappings(a.mappings)
    img = load_image(a.image, a.size)
    rows = []
    for k in kinds:
        cfg = LabConfig(size=a.size, steps=a.steps, device=a.device, bf16=a.bf16, eval_every=a.steps, **NETS[a.net])
        t0 = time.perf_counter()
        r = train_mapping(k, img, cfg)
        wall = time.perf_counter() - t0
        in_dim = make_mapping(k, cfg).out_dim
        gflop = flops_per_step(cfg, in_dim) / 1e9
        rows.append((k, r.steps, r.seconds, r.steps / r.seconds, r.seconds / r.steps * 2000, gflop,
                     gflop * r.steps / r.seconds, r.test_psnr, wall))
        print(f"{k}: {r.steps} steps in {r.seconds:.1f} s (wall incl. setup/eval {wall:.1f} s)", file=sys.stderr)
    dev = torch.cuda.get_device_name() if a.device.startswith("cuda") else f"cpu x{torch.get_num_threads()} threads"
    print(f"\nbench_lab2d: {a.size}x{a.size} image ({(a.size // 2) ** 2} train px/step), net {a.net} "
          f"{'bf16' if a.bf16 else 'fp32'}, {dev}")
    print(f"{'mapping':<9} {'steps':>6} {'seconds':>8} {'steps/s':>8} {'est 2000':>9} {'GFLOP/step':>10} "
          f"{'GFLOP/s':>8} {'test PSNR':>9}")
    for k, n, s, sps, est, gf, rate, te, _ in rows:
        print(f"{k:<9} {n:>6} {s:>8.2f} {sps:>8.2f} {est:>9.1f} {gf:>10.2f} {rate:>8.1f} {te:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
