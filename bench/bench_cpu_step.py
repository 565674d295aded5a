"""CPU NeRF step cost: what bf16, the allocator setting and the occupancy grid each buy.

    python bench/bench_cpu_step.py              # embedded scene, cpu preset, 512 rays, table last

Each row runs in its own process (glibc's allocator setting is process-wide and cannot
be undone): a few warm-up steps, then --steps timed steps; minor page faults are the
process's over the timed steps. The occupancy rows train one model past the grid's
activation (step 256) and time steps 1..N against steps 300..300+N.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _trainer(bf16: bool, occupancy: bool, batch: int):
    import torch

    from app.engine.presets import model_options, train_config
    from app.engine.runs import DEFAULT_SCENE
    from app.engine.trainer import Trainer
    from loaders import load_scene
    torch.set_num_threads(os.cpu_count() or 1)
    opts = model_options("nerf", False, dict(preset="cpu", occupancy=occupancy))
    cfg = train_config("nerf", opts, False, steps=3000, batch_rays=batch, autocast=bf16, device="cpu")
    return Trainer(load_scene(DEFAULT_SCENE), cfg)


def _timed(tr, n):
    f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    for _ in range(n):
        tr.step()
    return (time.perf_counter() - t0) / n * 1e3, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0


def child(a) -> None:
    if a.allocator:
        from app.engine.allocator import keep_freed_memory
        keep_freed_memory()
    tr = _trainer(a.bf16, a.occupancy, a.batch)
    for _ in range(5):
        tr.step()
    rows = []
    ms, faults = _timed(tr, a.steps)
    rows.append({"steps": f"6-{5 + a.steps}", "ms": ms, "faults": faults})
    if a.occupancy:
        while tr.step_count < 300:
            tr.step()
        ms, faults = _timed(tr, a.steps)
        rows.append({"steps": f"301-{300 + a.steps}", "ms": ms, "faults": faults})
    print(json.dumps(rows))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--allocator", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--occupancy", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a)
        return 0
    variants = [("fp32", []), ("bf16", ["--bf16"]), ("bf16 + allocator", ["--bf16", "--allocator"]),
                ("bf16 + allocator + occupancy", ["--bf16", "--allocator", "--occupancy"])]
    table = []
    for name, flags in variants:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--steps", str(a.steps),
               "--batch", str(a.batch), *flags]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        for r in json.loads(out):
            table.append((name, r["steps"], r["ms"], r["faults"]))
            print(f"{name}: steps {r['steps']}: {r['ms']:.0f} ms/step", file=sys.stderr, flush=True)
    print(f"\nbench_cpu_step: embedded scene, cpu preset, {a.batch} rays/step, {os.cpu_count()} threads")
    print("| variant | steps timed | ms/step | steps/s | minor page faults |\n|---|---|---|---|---|")
    for name, steps, ms, faults in table:
        print(f"| {name} | {steps} | {ms:.0f} | {1e3 / ms:.2f} | {faults:,} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
