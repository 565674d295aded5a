"""GPU benchmark: training speed, quality at fixed wall-clock budgets, render latency.

    python bench/bench_gpu.py                                   # embedded scene, all models
    python bench/bench_gpu.py --data ../shared/data/nerf_synthetic/lego --models hash --budgets 15,60,300
    python bench/bench_gpu.py --models nerf,reference --budgets 15,60 --max-seconds reference=20

Models:
  hash       models/hashgrid.py (hash grid + occupancy grid, 2^18-sample budget), lr 1e-2,
             bf16, each step one CUDA graph (--hash-fp32, --hash-eager to compare)
  nerf       models/nerf.py, preset 'paper' (8x256, 64 + 128 samples), fast path: bf16
             autocast, TF32, large batch, occupancy grid (--nerf-occupancy; 0 = off)
  nerf-plain models/nerf.py preset 'paper' with the trainer's defaults (fp32, 4096 rays)
  reference  bench/reference_nerf.py, a straightforward fp32 PyTorch NeRF (4096 rays)

For each model: a throw-away warm-up (Triton/cuBLAS compilation, excluded and
reported), then one training run; the clock counts Trainer.step() calls only
(the run pauses at each budget for a test-set evaluation, not counted). Columns:
steps/s and rays/s over the whole run; samples/s = field evaluations per second
(hash: samples actually marched; NeRF: 64 coarse + 192 fine per ray, the paper's
count, whatever the occupancy grid skipped); peak GPU memory during training;
test PSNR at each budget; render time of one 800x800 frame and of a 100x100
frame (1/8 resolution: the GUI's first frame after a camera move) through
Trainer.render, median of several after a warm-up, synchronised.

Progress goes to stderr; the Markdown table is printed last. With $OUT set (the
device tool) or --json, the numbers are also written as JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

PAPER = dict(width=256, depth=8, n_coarse=64, n_fine=128)  # app/commands/train.PRESETS['paper']


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def set_fast_math(on: bool) -> None:
    """TF32 for float32 matmuls on the fast paths; PyTorch's defaults for the reference."""
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def parse_caps(items) -> dict[str, float]:
    caps = {}
    for it in items or []:
        if "=" not in it:
            raise SystemExit(f"--max-seconds: expected MODEL=SECONDS, got {it!r}")
        k, v = it.split("=", 1)
        caps[k.strip()] = float(v)
    return caps


def budgets_for(model: str, budgets: list[float], caps: dict[str, float]) -> list[float]:
    if model not in caps:
        return budgets
    b = [x for x in budgets if x <= caps[model]]
    return b or [caps[model]]


def make_trainer(kind: str, scene, args, device: str):
    from app.engine.trainer import TrainConfig, Trainer
    if kind == "hash":
        opts = {"sample_budget": args.hash_budget, **json.loads(args.hash_options)}
        cfg = TrainConfig(model="hash", model_options=opts, batch_rays=4096,
                          lr=1e-2, lr_final=1e-2 * args.hash_lr_drop, lr_decay_steps=args.hash_decay_steps,
                          seed=args.seed, device=device, autocast=not args.hash_fp32,
                          random_background=args.random_bkgd, cuda_graph=not args.hash_eager,
                          ema_decay=args.hash_ema)
    elif kind == "nerf":
        opts = dict(PAPER)
        if args.nerf_occupancy:
            opts["occupancy_res"] = args.nerf_occupancy
            if args.nerf_occ_warmup is not None:
                opts["occupancy_warmup"] = args.nerf_occ_warmup
        cfg = TrainConfig(model="nerf", model_options=opts, batch_rays=args.nerf_batch, lr=5e-4,
                          lr_final=5e-5, lr_decay_steps=args.nerf_decay_steps, seed=args.seed,
                          device=device, autocast=True, precrop_steps=args.precrop, compile=args.compile)
    elif kind == "nerf-plain":
        cfg = TrainConfig(model="nerf", model_options=dict(PAPER), batch_rays=4096, lr=5e-4, lr_final=5e-5,
                          lr_decay_steps=args.nerf_decay_steps, seed=args.seed, device=device, autocast=False,
                          precrop_steps=args.precrop)
    else:
        raise ValueError(kind)
    return Trainer(scene, cfg)


def time_render(render, n: int) -> float:
    """Median wall time (ms) of render() over n calls after one warm-up."""
    render()
    ts = []
    for _ in range(n):
        sync()
        t0 = time.perf_counter()
        render()
        sync()
        ts.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(ts))


def evaluate(trainer, views: int | None) -> float:
    res = trainer.evaluate("test", max_images=views, ssim=False)
    return res["mean"]["psnr"]


def budget_steps(trainer, budget: float, clock: dict, label: str, every: float = 10.0):
    """The metrics of each applied training step until clock["train"] (seconds spent in
    Trainer.step, a running total the caller keeps over successive budgets) reaches
    ``budget``; the step still in flight then is waited for and counted (with the pipeline,
    step() returns the step done on the GPU and queues the next). clock["skipped"] counts
    skipped steps, clock["steps"] applied ones; a progress line every ``every`` seconds."""
    clock.setdefault("log", (clock["train"], clock["steps"]))
    while True:
        t0 = time.perf_counter()
        m = trainer.step() if clock["train"] < budget else trainer.finish_pending()
        clock["train"] += time.perf_counter() - t0
        if m is None:
            return
        if m.get("skipped"):
            clock["skipped"] += 1
            continue
        clock["steps"] += 1
        t_log, steps_log = clock["log"]
        if clock["train"] - t_log > every:
            rate = (clock["steps"] - steps_log) / (clock["train"] - t_log)
            clock["log"] = (clock["train"], clock["steps"])
            log(f"  {label}: {clock['train']:6.1f} s  step {clock['steps']} ({rate:.0f}/s lately)  "
                f"loss {m['loss']:.5f}  train psnr {m['psnr']:.2f}  batch {trainer.batch_rays}")
        yield m


def bench_trainer_model(kind: str, scene, args, device: str, budgets: list[float]) -> dict:
    set_fast_math(kind != "nerf-plain")
    # Warm-up on a throw-away trainer: compiles Triton kernels, creates cuBLAS handles.
    t0 = time.perf_counter()
    warm = make_trainer(kind, scene, args, device)
    n_warm = args.warmup_steps
    if args.compile and kind == "nerf" and args.nerf_occupancy:
        from models.nerf import NeRFModel
        # The packed (occupancy) path starts at step occupancy_warmup and compiles anew there.
        n_warm = max(n_warm, (NeRFModel.DEFAULTS["occupancy_warmup"] if args.nerf_occ_warmup is None
                              else args.nerf_occ_warmup) + 16)
    for _ in range(n_warm):
        warm.step()
    tr_c2w = scene.split("test").c2w[0]
    warm.render(tr_c2w, 64, 64, keys=("rgb",))
    sync()
    warm_s = time.perf_counter() - t0
    del warm
    torch.cuda.empty_cache() if device == "cuda" else None

    trainer = make_trainer(kind, scene, args, device)
    trainer.pipeline = True  # one graphed step in flight between calls (hash model, CUDA graphs)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    n_samples_per_ray = (PAPER["n_coarse"] * 2 + PAPER["n_fine"]) if kind != "hash" else None
    clock = {"train": 0.0, "steps": 0, "skipped": 0}
    rays, samples, evaluated = 0, 0, 0
    psnr = {}
    for b in budgets:
        for _ in budget_steps(trainer, b, clock, kind, every=5.0):
            if kind == "hash":
                r, s = trainer.model._last_batch
                rays += r
                samples += s
            else:
                rays += trainer.batch_rays
                samples += trainer.batch_rays * n_samples_per_ray
                evaluated += sum(e for e, _ in getattr(trainer.model, "last_evaluated", {}).values())
        train_time, steps, skipped = clock["train"], clock["steps"], clock["skipped"]
        sync()
        peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device == "cuda" else float("nan")
        t0 = time.perf_counter()
        psnr[b] = evaluate(trainer, args.eval_views)
        log(f"  {kind}: budget {b:g} s -> test PSNR {psnr[b]:.2f} dB after {steps} steps "
            f"(eval {time.perf_counter() - t0:.1f} s)")
    steps_s = steps / train_time
    row = {"model": kind, "train_s": train_time, "steps": steps, "steps_per_s": steps_s,
           "rays_per_s": rays / train_time, "samples_per_s": samples / train_time,
           "samples_per_step": samples / max(steps, 1), "peak_train_gib": peak,
           "psnr": {str(k): v for k, v in psnr.items()}, "warmup_s": warm_s, "skipped_steps": skipped,
           "events": trainer.events[-5:]}
    if kind == "hash":
        row["occupied_fraction"] = float(trainer.model.occupancy.float().mean())
    if kind == "nerf" and args.nerf_occupancy:
        row["occupied_fraction"] = float(trainer.model.occupancy.float().mean())
    if kind != "hash":
        # Network evaluations actually run (the occupancy grid skips the rest), per step.
        row["evaluated_per_step"] = evaluated / max(steps, 1)
        log(f"  {kind}: {row['evaluated_per_step'] / 1e6:.2f} M samples evaluated per step of "
            f"{row['samples_per_step'] / 1e6:.2f} M")
    # Render latency (the trainer's own render path, as the GUI and CLI use it).
    big, small = args.render_size, args.lowres_size
    chunk = big * big if kind == "hash" else 65536
    row["render_ms"] = time_render(lambda: trainer.render(tr_c2w, big, big, keys=("rgb",), chunk=chunk),
                                   args.render_repeats)
    row["lowres_ms"] = time_render(lambda: trainer.render(tr_c2w, small, small, keys=("rgb",),
                                                          chunk=small * small), 10)
    log(f"  {kind}: {steps_s:.1f} steps/s, {row['rays_per_s']:.0f} rays/s, {row['samples_per_s'] / 1e6:.1f} M "
        f"samples/s, peak {peak:.2f} GiB; {big}x{big} frame {row['render_ms']:.1f} ms, {small}x{small} "
        f"{row['lowres_ms']:.1f} ms")
    trainer = None  # frees its memory before the next model; not del: the timing lambdas name it
    if device == "cuda":
        torch.cuda.empty_cache()
    return row


def bench_reference(scene, args, device: str, budgets: list[float]) -> dict:
    from bench.reference_nerf import ReferenceNeRF
    set_fast_math(False)  # PyTorch defaults: true float32 matmuls
    tr = scene.split("train")
    t0 = time.perf_counter()
    warm = ReferenceNeRF(tr.images, tr.c2w, tr.focal, scene.near, scene.far, scene.white_bkgd,
                         batch=args.ref_batch, device=device, seed=args.seed)
    for _ in range(max(3, args.warmup_steps // 10)):
        warm.step()
    sync()
    warm_s = time.perf_counter() - t0
    del warm
    torch.cuda.empty_cache() if device == "cuda" else None
    ref = ReferenceNeRF(tr.images, tr.c2w, tr.focal, scene.near, scene.far, scene.white_bkgd,
                        batch=args.ref_batch, device=device, seed=args.seed)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    train_time, steps, psnr = 0.0, 0, {}
    te = scene.split("test")
    for b in budgets:
        while train_time < b:
            t0 = time.perf_counter()
            loss = ref.step()  # ends in .item(): synchronised
            train_time += time.perf_counter() - t0
            steps += 1
        peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device == "cuda" else float("nan")
        if args.ref_eval:
            from app.engine.metrics import psnr as psnr_fn
            n = len(te) if args.eval_views is None else min(args.eval_views, len(te))
            vals = [psnr_fn(ref.render_image(te.c2w[i], te.height, te.width, te.focal).numpy(), te.images[i])
                    for i in range(n)]
            psnr[b] = float(np.mean(vals))
        log(f"  reference: {train_time:.1f} s, {steps} steps, loss {loss:.5f}"
            + (f", test PSNR {psnr[b]:.2f}" if b in psnr else ""))
    spr = ref.n_coarse * 2 + ref.n_fine
    row = {"model": "reference", "train_s": train_time, "steps": steps, "steps_per_s": steps / train_time,
           "rays_per_s": steps * ref.batch / train_time, "samples_per_s": steps * ref.batch * spr / train_time,
           "samples_per_step": ref.batch * spr, "peak_train_gib": peak,
           "psnr": {str(k): v for k, v in psnr.items()}, "warmup_s": warm_s}
    small = args.lowres_size
    sp = scene.split("train")
    row["lowres_ms"] = time_render(lambda: ref.render_image(te.c2w[0], small, small, sp.focal * small / sp.width),
                                   5)
    if args.ref_render:
        big = args.render_size
        row["render_ms"] = time_render(lambda: ref.render_image(te.c2w[0], big, big, sp.focal * big / sp.width), 2)
    log(f"  reference: {row['steps_per_s']:.2f} steps/s, {row['rays_per_s']:.0f} rays/s, peak {peak:.2f} GiB")
    ref = None  # as trainer above
    if device == "cuda":
        torch.cuda.empty_cache()
    return row


def fmt(v, spec):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return format(v, spec)


def table(rows: list[dict], budgets: list[float], info: str, big: int = 800, small: int = 100) -> str:
    head = ["model", "steps/s", "rays/s", "samples/s", "samples/step", "peak train GiB"]
    head += [f"PSNR @{b:g} s" for b in budgets] + [f"{big}² frame ms", f"{small}² frame ms"]
    lines = [info, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], fmt(r["steps_per_s"], ".1f"), fmt(r["rays_per_s"], ",.0f"),
                 fmt(r["samples_per_s"] / 1e6, ".1f") + " M", fmt(r["samples_per_step"], ",.0f"),
                 fmt(r["peak_train_gib"], ".2f")]
        cells += [fmt(r["psnr"].get(str(b)), ".2f") for b in budgets]
        cells += [fmt(r.get("render_ms"), ".1f"), fmt(r.get("lowres_ms"), ".1f")]
        lines.append("| " + " | ".join(cells) + " |")
    ref = next((r for r in rows if r["model"] == "reference"), None)
    if ref:
        for r in rows:
            if r["model"].startswith("nerf"):
                lines.append(f"\n{r['model']} / reference rays/s: {r['rays_per_s'] / ref['rays_per_s']:.1f}x")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=os.path.join(ROOT, "assets", "scene"), help="Blender-format scene")
    p.add_argument("--downscale", type=int, default=1)
    p.add_argument("--models", default="hash,nerf,reference")
    p.add_argument("--budgets", default="15,60,300", help="training seconds at which test PSNR is taken")
    p.add_argument("--max-seconds", action="append", help="MODEL=S: cut that model's budgets at S")
    p.add_argument("--eval-views", type=int, default=None, help="test views per evaluation (default all)")
    p.add_argument("--warmup-steps", type=int, default=40)
    p.add_argument("--render-size", type=int, default=800)
    p.add_argument("--lowres-size", type=int, default=100)
    p.add_argument("--render-repeats", type=int, default=5)
    p.add_argument("--hash-budget", type=int, default=1 << 18, help="samples per training step")
    p.add_argument("--hash-options", default="{}", help="extra hash model options as JSON")
    p.add_argument("--hash-decay-steps", type=int, default=30000)
    p.add_argument("--hash-lr-drop", type=float, default=0.1, help="lr_final / lr for the hash model")
    p.add_argument("--hash-ema", type=float, default=None,
                   help="hash model: decay of the weight average that is evaluated (TrainConfig.ema_decay; "
                        "default: the model's, 0.95; 0: raw weights)")
    p.add_argument("--hash-fp32", action="store_true",
                   help="hash model: fp32 MLPs (default bf16 autocast, as the GUI and the graphed step use)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the nerf fields (TrainConfig.compile; default: on CUDA, where it "
                        "gave 9.0x the reference's rays/s against 7.4x without; not the hash model, where "
                        "it was measured not to pay); the warm-up then runs past the occupancy grid's "
                        "activation so that compilation stays out of the timed run")
    p.add_argument("--hash-eager", action="store_true",
                   help="hash model: the eager step instead of one CUDA graph per step (TrainConfig.cuda_graph)")
    p.add_argument("--random-bkgd", action="store_true",
                   help="hash model: random training background behind transparent pixels")
    p.add_argument("--nerf-batch", type=int, default=8192)
    p.add_argument("--nerf-occupancy", type=int, default=64, help="NeRF occupancy grid res (0: off)")
    p.add_argument("--nerf-occ-warmup", type=int, default=None,
                   help="NeRF steps before the occupancy grid skips samples (default: the model's)")
    p.add_argument("--nerf-decay-steps", type=int, default=100000)
    p.add_argument("--precrop", type=int, default=500, help="NeRF centre-crop warm-up steps (0: off)")
    p.add_argument("--ref-batch", type=int, default=4096)
    p.add_argument("--ref-eval", action="store_true", help="also evaluate the reference (slow: fp32)")
    p.add_argument("--ref-render", action="store_true", help="also time the reference's 800x800 frame")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default=None, help="write results here (default $OUT/bench_gpu.json)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.compile is None:
        args.compile = args.device == "cuda"

    from loaders import DataError, load_scene
    budgets = sorted(float(x) for x in args.budgets.split(","))
    caps = parse_caps(args.max_seconds)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in ("hash", "nerf", "nerf-plain", "reference"):
            raise SystemExit(f"--models: unknown model {m!r}")
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    try:
        import triton
        tv = triton.__version__
    except Exception:  # noqa: BLE001
        tv = "none"
    t0 = time.perf_counter()
    try:
        scene = load_scene(args.data, downscale=args.downscale)
    except DataError as exc:
        raise SystemExit(f"error: {exc}") from None
    tr = scene.split("train")
    info = (f"{gpu}, torch {torch.__version__}, triton {tv}; scene {args.data} ({len(tr)} train / "
            f"{len(scene.split('test'))} test views, {tr.width}x{tr.height}); budgets {budgets}"
            + ("; nerf compiled" if args.compile and "nerf" in models else ""))
    log(info, f"(loaded in {time.perf_counter() - t0:.1f} s)")
    rows = []
    for m in models:
        b = budgets_for(m, budgets, caps)
        log(f"== {m}: budgets {b}")
        if m == "reference":
            rows.append(bench_reference(scene, args, args.device, b))
        else:
            rows.append(bench_trainer_model(m, scene, args, args.device, b))
    out = args.json or (os.path.join(os.environ["OUT"], "bench_gpu.json") if os.environ.get("OUT") else None)
    if out:
        with open(out, "w", encoding="utf-8") as f:
            json.dump({"info": info, "args": vars(args), "rows": rows}, f, indent=2)
    print(table(rows, budgets, info, args.render_size, args.lowres_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
