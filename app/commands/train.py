"""`main.py train`: headless training into a run directory."""
from __future__ import annotations

import argparse
import json
import os
import time

from app.cli import UserError
from app.engine.runs import CKPT, DEFAULT_SCENE, scene_record, write_json

def positive(kind):
    def parse(s):
        v = kind(s)
        if v <= 0:
            raise ValueError
        return v
    parse.__name__ = f"positive {kind.__name__}"
    return parse


def add_scene_flags(p) -> None:
    """Loader flags shared by train and gui."""
    p.add_argument("--ndc", action=argparse.BooleanOptionalAction, default=None,
                   help="render in normalised device coordinates (default: only for forward-facing "
                        "captures, every view within 30 deg of the mean; the choice is printed)")
    p.add_argument("--skip-missing", action="store_true",
                   help="transforms.json: train on the frames whose images exist (default: a missing "
                        "image is an error)")


DATA_HELP = ("scene directory: Blender/instant-ngp/nerfstudio transforms.json, LLFF poses_bounds.npy, "
             "a COLMAP sparse model, or what `main.py process` made from photos or a video")


def configure(p) -> None:
    p.add_argument("--data", default=DEFAULT_SCENE, help=DATA_HELP)
    p.add_argument("--out", required=True, help="run directory to create")
    p.add_argument("--steps", type=positive(int), default=5000, help="optimisation steps")
    p.add_argument("--time-limit", type=positive(float), default=None,
                   help="stop after this many seconds of training even if steps remain")
    import models
    from models.nerf_presets import PRESETS

    p.add_argument("--model", default=None, choices=models.available(),
                   help="field to train (default: nerfacto for real captures, see models.is_capture; "
                        "otherwise the NeRF on a CPU, the hash grid on CUDA)")
    p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="NeRF size preset (default: cpu on CPU, paper on CUDA)")
    p.add_argument("--no-pe", action="store_true", help="plain MLP on raw (x, d): shows spectral bias")
    p.add_argument("--encoding", default=None, choices=["pe", "none", "basic", "gaussian"],
                   help="position encoding (default pe; --no-pe means none)")
    p.add_argument("--L-xyz", type=int, default=10, help="PE frequencies for position")
    p.add_argument("--L-dir", type=int, default=4, help="PE frequencies for view direction")
    p.add_argument("--sigma", type=positive(float), default=10.0, help="Gaussian Fourier feature scale")
    p.add_argument("--n-coarse", type=positive(int), default=None, help="coarse samples per ray")
    p.add_argument("--n-fine", type=int, default=None, help="fine (importance) samples per ray")
    p.add_argument("--width", type=positive(int), default=None)
    p.add_argument("--batch", type=positive(int), default=None, help="rays per step")
    p.add_argument("--lr", type=positive(float), default=None,
                   help="Adam learning rate (default: the model's; NeRF 5e-4 paper preset, 3e-3 cpu "
                        "preset; grid models 1e-2)")
    p.add_argument("--precrop-steps", type=int, default=None,
                   help="first steps that sample only the central half of each image "
                        "(default: the model's; 500 with the NeRF paper preset, else 0)")
    p.add_argument("--downscale", type=positive(int), default=1, help="integer image downscale (2 = half-res)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 mixed precision for the matmuls (default: the model's: on CUDA for "
                        "the models with MLPs; on a CPU only where bf16 is native, avx512_bf16 / "
                        "AMX; Plenoxels has no matmuls and stays fp32)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the NeRF networks on CUDA (20-25%% more steps/s on lego and less "
                        "memory, after ~20 s of compilation; ignored on CPU and by other models)")
    p.add_argument("--no-cuda-graph", action="store_true",
                   help="models with a fixed-shape step (hash, nerfacto) on CUDA: run the eager step instead of "
                        "replaying each training step as one CUDA graph")
    p.add_argument("--random-bkgd", action="store_true",
                   help="train with a random colour behind transparent pixels (scenes with alpha; "
                        "instant-ngp's default), which discourages floaters; eval keeps white/black")
    p.add_argument("--black-bkgd", action="store_true", help="composite RGBA on black instead of white")
    add_scene_flags(p)
    p.add_argument("--ema", type=float, default=None, metavar="DECAY",
                   help="evaluate and save for use a moving average of the weights with this decay "
                        "(default: the model's, 0.95 for hash, 0 otherwise)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--eval-images", type=int, default=8, help="test views to evaluate at the end (0: none)")
    p.add_argument("--log-every", type=positive(int), default=50)
    p.add_argument("--save-every", type=positive(int), default=1000)
    p.add_argument("--resume", action="store_true", help="continue from OUT's checkpoint")
    p.add_argument("--options", default=None, help="extra model options as JSON, e.g. '{\"resolution\": 128}'")


def model_options(args, cuda: bool, ndc: bool = False) -> dict:
    """The model's options from the flags (and whether the scene is in NDC); each model reads
    the knobs it has."""
    from app.engine.presets import model_options as build

    if not (0 <= args.L_xyz <= 24 and 0 <= args.L_dir <= 24):
        raise UserError(f"--L-xyz and --L-dir must be between 0 and 24 (got {args.L_xyz}, {args.L_dir})")
    if args.n_coarse is not None and args.n_coarse < 2:
        raise UserError("--n-coarse must be at least 2")
    if args.n_fine is not None and args.n_fine < 0:
        raise UserError("--n-fine must be >= 0")
    extra = None
    if args.options:
        try:
            extra = json.loads(args.options)
        except json.JSONDecodeError as exc:
            raise UserError(f"--options is not valid JSON: {exc.msg}") from None
        if not isinstance(extra, dict):
            raise UserError("--options must be a JSON object")
    knobs = dict(preset=args.preset, pos_encoding=args.encoding or ("none" if args.no_pe else "pe"),
                 L_xyz=args.L_xyz, L_dir=args.L_dir, sigma_scale=args.sigma, n_coarse=args.n_coarse,
                 n_fine=args.n_fine, width=args.width, ndc=ndc)
    return build(args.model, cuda, knobs, extra)


def run(args) -> int:
    from tqdm import tqdm

    from app.engine.checkpoint import load_into, save_checkpoint
    from app.engine.presets import policy_for, train_config
    from app.engine.trainer import Trainer, pick_device
    from loaders import load_scene

    # Upper bounds far past any machine this app targets: on a CPU an allocation that
    # large may be granted lazily and end in the kernel's OOM killer, not in an error.
    if args.precrop_steps is not None and args.precrop_steps < 0:
        raise UserError(f"--precrop-steps must be >= 0, got {args.precrop_steps}")
    for flag, value, most in (("--batch", args.batch, 1 << 20), ("--width", args.width, 4096),
                              ("--n-coarse", args.n_coarse, 4096), ("--n-fine", args.n_fine, 4096)):
        if value is not None and value > most:
            raise UserError(f"{flag} must be at most {most}, got {value}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"--out {args.out}: exists and is not a directory")
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    if os.path.exists(os.path.join(args.out, CKPT)) and not args.resume:
        raise UserError(f"{args.out}: already holds a run (use --resume to continue, or another --out)")
    if args.resume and not os.path.isfile(os.path.join(args.out, CKPT)):
        raise UserError(f"{args.out}: no {CKPT} to resume from")
    # Validate everything before touching the output directory: bad input leaves nothing behind.
    kept = {}
    if args.resume and os.path.isfile(os.path.join(args.out, "run.json")):
        # The field was trained in the normalised frame recorded then: keep it (and the NDC choice).
        from app.engine.runs import read_run, scene_options
        old = scene_options(read_run(args.out), os.path.join(args.out, "run.json"))
        kept = {k: old[k] for k in ("normalization", "ndc") if k in old}
        if args.ndc is not None and kept.get("ndc", args.ndc) != args.ndc:
            raise UserError(f"--resume: the run was trained with NDC {'on' if kept['ndc'] else 'off'}")
    scene = load_scene(args.data, downscale=args.downscale, white_bkgd=not args.black_bkgd,
                       skip_missing=args.skip_missing, **{"ndc": args.ndc, **kept})
    if args.model is None:
        import models

        args.model = models.default_model(cuda, scene)
    # Forward-facing scenes: models that place a grid put it over the NDC cube.
    opts = model_options(args, cuda, ndc=scene.ndc)
    for note in scene.notes:
        print(f"note: {note}")
    if args.bf16 and not cuda:
        from app.engine.trainer import cpu_has_native_bf16
        if not cpu_has_native_bf16():
            print("note: this CPU lists neither avx512_bf16 nor amx_bf16: --bf16 is emulated here "
                  "and will likely be slower than fp32")
    try:
        config = train_config(args.model, opts, cuda, steps=args.steps, lr=args.lr, batch_rays=args.batch,
                              autocast=args.bf16, compile=args.compile, cuda_graph=not args.no_cuda_graph,
                              precrop_steps=args.precrop_steps, seed=args.seed, device=str(device),
                              random_background=args.random_bkgd, ema_decay=args.ema)
        note = policy_for(args.model, cuda, opts).cpu_note
        if note and not cuda:
            print(f"note: {note}")
        trainer = Trainer(scene, config)
    except ValueError as exc:
        raise UserError(f"invalid model settings: {exc}") from None
    from app.engine.faults import install_from_env
    try:  # testing only: NERFLAB_FAULT=oom@3,nan@5 injects faults (see app/engine/faults.py)
        install_from_env(trainer)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    os.makedirs(args.out, exist_ok=True)
    ckpt = os.path.join(args.out, CKPT)
    if args.resume:
        load_into(ckpt, trainer)
        print(f"resumed at step {trainer.step_count}")
    write_json(os.path.join(args.out, "run.json"), {
        "data": os.path.abspath(args.data), "downscale": args.downscale,
        "white_bkgd": not args.black_bkgd, **scene_record(scene, args), "config": trainer.config_dict()})
    n_params = sum(p.numel() for p in trainer.model.parameters())
    print(f"training {args.model} ({n_params / 1e6:.2f} M parameters) on {device}, "
          f"{len(scene.split('train'))} views {trainer.width}x{trainer.height}, {config.batch_rays} rays/step")
    log = open(os.path.join(args.out, "metrics.jsonl"), "a", encoding="utf-8")
    t_start = time.perf_counter()
    train_time = 0.0
    first_step = trainer.step_count
    bar = tqdm(total=args.steps, initial=trainer.step_count, unit="step", dynamic_ncols=True)
    seen_events = len(trainer.events)
    try:
        # On CUDA one graphed step stays in flight between step() calls (Trainer.pipeline),
        # so the loop stops launching when the one in flight completes the count.
        trainer.pipeline = cuda
        while trainer.step_count < args.steps:
            t0 = time.perf_counter()
            prev = trainer.step_count
            if trainer.step_count + trainer.steps_in_flight >= args.steps:
                m = trainer.finish_pending()
            else:
                m = trainer.step()
            # No device-wide sync here: step() returns once the step it reports is done (the
            # eager step reads its loss back), and a sync would drain the pipeline.
            train_time += time.perf_counter() - t0
            if m is None:
                break
            for ev in trainer.events[seen_events:]:  # recoveries and fallbacks, skipped or not
                bar.write(f"warning: {ev}")
            seen_events = len(trainer.events)
            if m.get("skipped"):
                continue
            # A step can advance the count by more than one (the CUDA-graph step's first call
            # includes its warm-up steps), so periodic work triggers on crossing a multiple.
            crossed = lambda every, prev=prev: trainer.step_count // every != prev // every  # noqa: E731
            bar.update(trainer.step_count - prev)
            if crossed(args.log_every):
                rec = {k: m[k] for k in ("step", "loss", "psnr", "lr")} | {"time": round(train_time, 3)}
                log.write(json.dumps(rec) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{m['loss']:.4f}", psnr=f"{m['psnr']:.2f}")
            if crossed(args.save_every):
                save_checkpoint(ckpt, trainer)
            if args.time_limit is not None and train_time >= args.time_limit:
                bar.write(f"time limit reached after {trainer.step_count} steps")
                break
    finally:
        bar.close()
        log.close()
        save_checkpoint(ckpt, trainer)
    rate = (trainer.step_count - first_step) / max(train_time, 1e-9)
    print(f"trained {trainer.step_count} steps in {train_time:.1f} s ({rate:.1f} steps/s, "
          f"{rate * trainer.batch_rays:,.0f} rays/s); wall {time.perf_counter() - t_start:.1f} s")
    if args.eval_images > 0:
        from app.commands.evaluate import report
        res = trainer.evaluate("test", max_images=args.eval_images,
                               progress=lambda it: tqdm(it, desc="eval", unit="view"))
        res["train_time_s"] = train_time
        write_json(os.path.join(args.out, "eval.json"), res)
        report(res)
    print(f"run written to {args.out}")
    return 0
