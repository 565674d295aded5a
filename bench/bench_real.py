"""Real-capture benchmark: the nerfacto field on captures at fixed wall-clock budgets.

    python bench/bench_real.py --scene beer=../shared/data/captures/beer --budgets 60
    python bench/bench_real.py --scene beer=DIR --variant base={} --variant norefine='{"refine_poses": false}'
    python bench/bench_real.py --scene bonsai=DIR --budgets 120,300 --eval-views 8

Each scene is loaded as the CLI loads it (every 8th image held out by the loaders) and
trained with the presets the CLI uses (app/engine/presets.train_config), once per
variant. A variant is a name and a JSON object of model options (models/nerfacto.py's
DEFAULTS: refine_poses, pose_lr, distortion_weight, n_proposal, n_samples,
proposal_update_every, ...) plus the trainer keys "batch" (rays per step), "bf16", "lr",
"lr_final" and "ema_decay" (held-out views scored with a moving average of the weights;
the raw weights' figure is then logged and kept as "mean_raw" too).
The flags --no-refine, --distortion, --batch, --proposal, --samples, --pose-lr set the
same keys for every variant (a variant's own keys win).

The learning rate decays over the steps the largest budget is expected to take, from
the warm-up's step rate (the CLI decays over --steps; a time budget has no step count),
or over --decay-steps; the JSON rows record the learning rate reached.

Columns: steps/s and rays/s over the run (the clock counts Trainer.step() calls only,
each of which syncs on its loss); field samples per step (rays x n_samples: what the
radiance field evaluates) and proposal samples per step (rays x sum(n_proposal)); peak
GPU memory while training; at each budget the training PSNR (mean over the last 500
steps' batches) and three held-out PSNRs: "mean" the whole view
rendered with the MEAN appearance embedding, "mean R" and "fit R" the right half of each
view with the mean embedding and with an embedding FITTED on its left half
(app/engine/appearance.py evaluate_appearance, NeRF-W's protocol); with --fit-pose
also "pose R", the right half with the embedding AND the camera fitted on the left half
(fit_view: the photometric alignment pose-refining methods evaluate with); the time of one
800x800 frame and of one capture-size frame (median after a warm-up, synchronised).

Progress goes to stderr; the Markdown table is printed last. With $OUT set (the device
tool) or --json, the rows are also written as JSON after each run; --save-heldout DIR
writes, per scene, the first held-out view rendered beside its photo (PNG).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.bench_gpu import budget_steps, log, sync, time_render  # noqa: E402
from bench.render_profile import profile_frame  # noqa: E402

MODEL = "nerfacto"
TRAINER_KEYS = ("batch", "bf16", "lr", "lr_final", "ema_decay")


def parse_named(items, what: str) -> list[tuple[str, str]]:
    out = []
    for it in items or []:
        if "=" not in it:
            raise SystemExit(f"{what}: expected NAME=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        out.append((k.strip(), v.strip()))
    return out


def common_keys(args) -> dict:
    """The flags that apply to every variant, as variant keys."""
    c = {}
    if args.no_refine:
        c["refine_poses"] = False
    if args.distortion is not None:
        c["distortion_weight"] = args.distortion
    if args.batch is not None:
        c["batch"] = args.batch
    if args.proposal is not None:
        c["n_proposal"] = [int(v) for v in args.proposal.split(",")]
    if args.samples is not None:
        c["n_samples"] = args.samples
    if args.pose_lr is not None:
        c["pose_lr"] = args.pose_lr
    if args.options:
        c.update(json.loads(args.options))
    return c


def make_trainer(scene, keys: dict, cuda: bool, device: str, decay_steps: int, seed: int):
    from app.engine.presets import model_options, train_config
    from app.engine.trainer import Trainer

    extra = {k: v for k, v in keys.items() if k not in TRAINER_KEYS}
    opts = model_options(MODEL, cuda, extra=extra)
    cfg = train_config(MODEL, opts, cuda, steps=decay_steps, batch_rays=keys.get("batch"),
                       autocast=keys.get("bf16"), lr=keys.get("lr"), lr_final=keys.get("lr_final"),
                       ema_decay=keys.get("ema_decay"), seed=seed, device=device)
    return Trainer(scene, cfg)


def per_step_samples(trainer) -> tuple[int, int]:
    """(radiance-field samples, proposal samples) of one training step."""
    c = trainer.model.config
    return trainer.batch_rays * int(c["n_samples"]), trainer.batch_rays * int(sum(c["n_proposal"]))


def side_by_side(trainer, path: str, max_width: int) -> None:
    """The first held-out view (mean embedding) beside its photo, scaled to max_width."""
    import imageio.v3 as iio

    sp = trainer.scene.split("test")
    pred = trainer.render(sp.c2w[0], keys=("rgb",), camera=sp.cameras[0])["rgb"].numpy()
    img = np.concatenate([pred, sp.images[0]], axis=1)
    step = max(1, int(np.ceil(img.shape[1] / max_width)))
    img = img[::step, ::step]
    iio.imwrite(path, (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8))
    log(f"  wrote {path} ({img.shape[1]}x{img.shape[0]}; left: render, right: photo {sp.names[0] if sp.names else 0})")


def run_variant(scene_name: str, scene, var_name: str, keys: dict, args, device: str, budgets: list[float],
                rate_hint: float) -> dict:
    from app.engine.appearance import evaluate_appearance

    cuda = device == "cuda"
    decay = args.decay_steps or max(int(rate_hint * max(budgets)), 100)
    trainer = make_trainer(scene, keys, cuda, device, decay, args.seed)
    trainer.pipeline = True
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    fs, ps = per_step_samples(trainer)
    clock = {"train": 0.0, "steps": 0, "skipped": 0}
    rays, res = 0, {}
    peak = float("nan")
    for b in budgets:
        recent = []  # the training PSNR of the last steps before each budget (one batch each)
        for m in budget_steps(trainer, b, clock, f"{scene_name}/{var_name}"):
            rays += trainer.batch_rays
            recent = (recent + [m["psnr"]])[-500:]
        train_time, steps, skipped = clock["train"], clock["steps"], clock["skipped"]
        sync()
        if cuda:
            peak = torch.cuda.max_memory_allocated() / 2 ** 30
        t0 = time.perf_counter()
        ev = trainer.evaluate("test", max_images=args.eval_views, ssim=False)
        whole = ev["mean"]["psnr"]
        raw = raw_weights_psnr(trainer, args.eval_views)
        app = evaluate_appearance(trainer, "test", max_images=args.eval_views, steps=args.fit_steps,
                                  fit_pose=args.fit_pose)["mean"]
        train_psnr = float(np.mean(recent)) if recent else float("nan")
        res[str(b)] = {"mean": whole, "mean_right": app["psnr_mean_right"], "fit_right": app["psnr_fitted_right"],
                       "pose_right": app.get("psnr_pose_right"), "train": train_psnr, "mean_raw": raw,
                       "views": {r["name"]: r["psnr"] for r in ev["images"]}}
        log(f"  {scene_name}/{var_name}: {b:g} s, {steps} steps -> held-out PSNR {whole:.2f} (mean emb.), "
            f"right half {app['psnr_mean_right']:.2f} (mean) / {app['psnr_fitted_right']:.2f} (fitted)"
            + (f" / {app['psnr_pose_right']:.2f} (fitted with the camera)" if args.fit_pose else "") + ", "
            f"training PSNR {train_psnr:.2f} (last {len(recent)} steps) "
            + (f"(raw weights: {raw:.2f}) " if raw is not None else "") +
            f"(eval {time.perf_counter() - t0:.1f} s)")
        log("    per view: " + ", ".join(f"{os.path.basename(r['name'])} {r['psnr']:.2f}" for r in ev["images"]))
    pose = trainer.model.applied_deltas().detach()
    if len(pose) and trainer.model.config["refine_poses"]:
        res["neighbour_deltas"] = neighbour_delta_psnr(trainer)
        log(f"  {scene_name}/{var_name}: held-out PSNR with the neighbours' deltas {res['neighbour_deltas']:.2f}")
    row = {"scene": scene_name, "variant": var_name, "keys": keys, "train_s": train_time, "steps": steps,
           "steps_per_s": steps / max(train_time, 1e-9), "rays_per_s": rays / max(train_time, 1e-9),
           "batch_rays": trainer.batch_rays, "field_samples_per_step": fs, "proposal_samples_per_step": ps,
           "peak_train_gib": peak, "psnr": res, "skipped_steps": skipped, "decay_steps": decay,
           "lr_end": trainer.lr_at(trainer.step_count),
           "bf16": trainer.config.autocast, "events": trainer.events[-5:],
           "pose_delta_deg_max": float(pose[:, :3].norm(dim=-1).max() * 180 / np.pi) if len(pose) else 0.0,
           "pose_deltas": pose.cpu().tolist()}
    c2w = scene.split("test").c2w[0]
    n = args.render_size
    row["frame_ms"] = time_render(lambda: trainer.render(c2w, n, n, keys=("rgb",), chunk=args.render_chunk),
                                  args.render_repeats)
    row["capture_frame_ms"] = time_render(lambda: trainer.render(c2w, keys=("rgb",), chunk=args.render_chunk),
                                          args.render_repeats)
    row["capture_size"] = f"{trainer.width}x{trainer.height}"
    if args.profile:
        log_profile(f"{scene_name}/{var_name}", trainer, c2w, args)
    row["render_sweep"] = render_sweep(trainer, args, c2w) if args.render_configs else []
    if args.save_heldout:
        os.makedirs(args.save_heldout, exist_ok=True)
        side_by_side(trainer, os.path.join(args.save_heldout, f"{scene_name}_{var_name}_heldout.png"),
                     args.heldout_width)
    log(f"  {scene_name}/{var_name}: {row['steps_per_s']:.1f} steps/s, {row['rays_per_s']:.0f} rays/s, "
        f"peak {peak:.2f} GiB, {n}x{n} frame {row['frame_ms']:.1f} ms")
    trainer = None  # not del: the timing lambdas name it
    if cuda:
        torch.cuda.empty_cache()
    return row


def raw_weights_psnr(trainer, max_images) -> float | None:
    """The held-out PSNR (mean embedding) with the raw weights, where the trainer scores
    with their moving average (ema_decay > 0); None otherwise."""
    avg = trainer.average
    if avg.values is None:
        return None
    kept, avg.values = avg.values, None
    try:
        return trainer.evaluate("test", max_images=max_images, ssim=False)["mean"]["psnr"]
    finally:
        avg.values = kept


def log_profile(label: str, trainer, c2w, args) -> None:
    """Where one render_size² frame's time goes (bench/render_profile.py), to the log."""
    n = args.render_size
    log(f"  {label}, one {n}x{n} frame:\n" + profile_frame(
        lambda: trainer.render(c2w, n, n, keys=("rgb",), chunk=args.render_chunk)))


def neighbour_delta_psnr(trainer) -> float:
    """Mean held-out PSNR (mean embedding) with each held-out camera moved by the mean of
    the applied deltas of its two nearest training cameras. Refinement that moved the
    training cameras together with their neighbours (a smooth warp of the capture, which
    the held-out cameras did not follow) scores well here; deltas that are noise do not."""
    from app.engine.metrics import psnr
    from app.engine.views import render_view
    from renderer.crop import uncropped
    from renderer.lie import so3_exp

    m = trainer.model
    tr, te = trainer.scene.split("train"), trainer.scene.split("test")
    deltas = m.applied_deltas().detach().double().cpu().numpy()
    centres = tr.c2w[:, :3, 3].astype(np.float64)
    scores = []
    with uncropped(m):
        for i in range(len(te)):
            c2w = te.c2w[i].astype(np.float64).copy()
            d = deltas[np.argsort(np.linalg.norm(centres - c2w[:3, 3], axis=1))[:2]].mean(0)
            c2w[:3, :3] = so3_exp(torch.from_numpy(d[:3])).numpy() @ c2w[:3, :3]
            c2w[:3, 3] += d[3:] / m._scale
            pred = render_view(trainer, c2w, keys=("rgb",), camera=te.cameras[i])["rgb"].numpy()
            scores.append(psnr(pred, te.images[i]))
    return float(np.mean(scores))


def render_sweep(trainer, args, c2w) -> list[dict]:
    """Held-out PSNR (mean embedding) and frame times of the trained field rendered with
    each of --render-configs: sample counts (proposal nets', then the field's, per ray) of
    the proposal render, or a JSON object of render options (render_march, march_res,
    march_steps, march_min_opacity, march_min_transmittance) of the marched one (add
    "render_march": false for the proposal render with other options:
    render_proposal, render_samples)."""
    cfg = trainer.model.config
    names = ("render_proposal", "render_samples", "render_march", "march_res", "march_steps",
             "march_min_opacity", "march_min_transmittance")
    keep = {k: cfg[k] for k in names if k in cfg}
    out, n = [], args.render_size
    try:
        for spec in args.render_configs.split(";"):
            cfg.update(keep)
            if spec.strip().startswith("{"):
                cfg.update({"render_march": True, **json.loads(spec)})
            else:
                counts = [int(v) for v in spec.split(",")]
                cfg.update(render_proposal=counts[:-1], render_samples=counts[-1], render_march=False)
            psnr = trainer.evaluate("test", max_images=args.eval_views, ssim=False)["mean"]["psnr"]
            ms = time_render(lambda: trainer.render(c2w, n, n, keys=("rgb",), chunk=args.render_chunk),
                             args.render_repeats)
            cap = time_render(lambda: trainer.render(c2w, keys=("rgb",), chunk=args.render_chunk),
                              args.render_repeats)
            spr = samples_per_ray(trainer)
            if args.profile:
                log_profile(f"render {spec}", trainer, c2w, args)
            out.append({"counts": spec, "psnr": psnr, "frame_ms": ms, "capture_frame_ms": cap,
                         "samples_per_ray": spr})
            log(f"  render {spec}: held-out PSNR {psnr:.2f}, {n}x{n} {ms:.1f} ms, capture size {cap:.1f} ms, "
                f"{spr:.1f} samples per ray")
    finally:
        cfg.update(keep)
    return out


@torch.no_grad()
def samples_per_ray(trainer, chunk: int = 1 << 16) -> float:
    """Samples the field's render evaluated per ray (the proposal nets' and the radiance
    field's, or the marched ones) over the first held-out view at its own size."""
    from renderer.cameras import camera_grid_directions
    from renderer.rays import rays_from_dirs

    sp, model, dev = trainer.scene.split("test"), trainer.model, trainer.device
    dirs = camera_grid_directions(sp.cameras[0], 0, dev).reshape(-1, 3)
    rays_o, rays_d = rays_from_dirs(dirs, torch.as_tensor(np.asarray(sp.c2w[0], np.float32), device=dev))
    total, was_training = 0.0, model.training
    model.eval()
    try:
        with trainer.averaged(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=trainer.config.autocast):
            for a in range(0, rays_o.shape[0], chunk):
                out = model.render_rays(rays_o[a:a + chunk], rays_d[a:a + chunk], trainer.scene.near,
                                        trainer.scene.far, background=trainer.background)
                total += float(out["samples"])
    finally:
        model.train(was_training)
    return total / max(rays_o.shape[0], 1)


def sweep_table(rows: list[dict]) -> str:
    lines = ["| scene | variant | render samples (proposals, field) | held-out PSNR | 800² ms | capture ms | "
             "samples / ray |", "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        for e in r.get("render_sweep", []):
            lines.append(f"| {r['scene']} | {r['variant']} | {e['counts']} | {fmt(e['psnr'])} | "
                         f"{fmt(e['frame_ms'], '.1f')} | {fmt(e['capture_frame_ms'], '.1f')} | "
                         f"{fmt(e['samples_per_ray'], '.1f')} |")
    return "\n".join(lines)


def warm_up(scene, keys: dict, args, device: str) -> float:
    """Compile the kernels on a throw-away trainer; its step rate (after the first few
    steps) sets the learning-rate decay of the runs."""
    tr = make_trainer(scene, keys, device == "cuda", device, 1000, args.seed)
    for _ in range(3):
        tr.step()
    sync()
    t0 = time.perf_counter()
    for _ in range(args.warmup_steps):
        tr.step()
    sync()
    rate = args.warmup_steps / max(time.perf_counter() - t0, 1e-9)
    tr.render(scene.split("test").c2w[0], 64, 64, keys=("rgb",))
    del tr
    if device == "cuda":
        torch.cuda.empty_cache()
    return rate


def fmt(v, spec=".2f") -> str:
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def table(rows: list[dict], budgets: list[float]) -> str:
    head = ["scene", "variant", "steps/s", "rays/s", "rays/step", "field smp/step", "prop smp/step", "peak GiB"]
    posed = int(any(p.get("pose_right") is not None for r in rows for p in r["psnr"].values() if isinstance(p, dict)))
    raw = int(any(p.get("mean_raw") is not None for r in rows for p in r["psnr"].values() if isinstance(p, dict)))
    for b in budgets:
        head += [f"{b:g}s train", f"{b:g}s mean"] + [f"{b:g}s mean raw"] * raw + [f"{b:g}s mean R", f"{b:g}s fit R"]
        head += [f"{b:g}s pose R"] * posed
    head += ["800² ms", "capture ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["scene"], r["variant"], fmt(r["steps_per_s"], ".1f"), fmt(r["rays_per_s"], ".3g"),
                 str(r["batch_rays"]), str(r["field_samples_per_step"]), str(r["proposal_samples_per_step"]),
                 fmt(r["peak_train_gib"])]
        for b in budgets:
            p = r["psnr"].get(str(b), {})
            cells += [fmt(p.get("train")), fmt(p.get("mean"))] + [fmt(p.get("mean_raw"))] * raw
            cells += [fmt(p.get("mean_right")), fmt(p.get("fit_right"))]
            cells += [fmt(p.get("pose_right"))] * posed
        cells += [fmt(r["frame_ms"], ".1f"), f"{fmt(r['capture_frame_ms'], '.1f')} ({r['capture_size']})"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scene", action="append", required=True, help="NAME=DIR (repeatable)")
    p.add_argument("--variant", action="append", help="NAME=JSON of option overrides (repeatable; "
                   "default one variant 'default' = {})")
    p.add_argument("--budgets", default="60", help="training seconds at which held-out PSNR is taken")
    p.add_argument("--downscale", type=int, default=1)
    p.add_argument("--no-refine", action="store_true", help="camera refinement off")
    p.add_argument("--distortion", type=float, default=None, help="distortion loss weight")
    p.add_argument("--batch", type=int, default=None, help="rays per step")
    p.add_argument("--proposal", default=None, help="proposal samples per ray, e.g. 256,96")
    p.add_argument("--samples", type=int, default=None, help="radiance-field samples per ray")
    p.add_argument("--pose-lr", type=float, default=None)
    p.add_argument("--options", default=None, help="more model options as JSON, for every variant")
    p.add_argument("--eval-views", type=int, default=None, help="held-out views per evaluation (default all)")
    p.add_argument("--fit-steps", type=int, default=200, help="steps fitting an embedding on a left half")
    p.add_argument("--warmup-steps", type=int, default=30)
    p.add_argument("--decay-steps", type=int, default=None,
                   help="steps the learning rate decays over (default: estimated from the warm-up)")
    p.add_argument("--render-size", type=int, default=800)
    p.add_argument("--render-chunk", type=int, default=None,
                   help="rays per render call (default: the field's own, what the app renders with)")
    p.add_argument("--render-repeats", type=int, default=3)
    p.add_argument("--render-configs", default=None,
                   help="after training, render with these too, ';'-separated: proposal-render sample "
                        "counts (per ray: each proposal net's, then the field's, e.g. 256,96,48) or a JSON "
                        "object of marched-render options, e.g. '{\"march_res\": 256}'")
    p.add_argument("--profile", action="store_true",
                   help="print where each rendered frame's time goes (bench/render_profile.py)")
    p.add_argument("--save-heldout", default=None, help="folder for held-out render | photo PNGs")
    p.add_argument("--heldout-width", type=int, default=720, help="width of the side-by-side PNG")
    p.add_argument("--fit-pose", action="store_true",
                   help="also score each right half with the camera fitted on the left half (pose R)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    from loaders import load_scene

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    budgets = [float(x) for x in args.budgets.split(",")]
    common = common_keys(args)
    variants = [(k, {**common, **json.loads(v)}) for k, v in parse_named(args.variant, "--variant")] \
        or [("default", dict(common))]
    json_path = args.json or (os.path.join(os.environ["OUT"], "bench_real.json") if os.environ.get("OUT") else None)
    rows = []
    for scene_name, path in parse_named(args.scene, "--scene"):
        t0 = time.perf_counter()
        scene = load_scene(path, downscale=args.downscale)
        tr = scene.split("train")
        log(f"{scene_name}: {path}, {len(tr)} training and {len(scene.split('test'))} held-out views "
            f"{tr.width}x{tr.height}, ndc {scene.ndc}, kind {scene.kind} (loaded in {time.perf_counter() - t0:.1f} s)")
        for var_name, keys in variants:
            rate = warm_up(scene, keys, args, device)
            log(f"{scene_name}/{var_name} {json.dumps(keys)}: warm-up {rate:.1f} steps/s")
            rows.append(run_variant(scene_name, scene, var_name, keys, args, device, budgets, rate))
            if json_path:
                with open(json_path, "w", encoding="utf-8") as f:
                    json.dump({"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                               "budgets": budgets, "rows": rows}, f, indent=1, default=str)
            print(table(rows[-1:], budgets), flush=True)
    print()
    print(f"nerfacto on captures, {device}; mean = whole held-out views, MEAN appearance embedding; "
          f"mean R / fit R = right halves, mean embedding / embedding fitted on the left half"
          + ("; pose R = right halves, embedding and camera fitted on the left half" if args.fit_pose else ""))
    print(table(rows, budgets))
    if args.render_configs:
        print()
        print("The trained fields rendered with other sample counts (held-out PSNR with the mean embedding):")
        print(sweep_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
