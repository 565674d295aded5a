"""`main.py lab2d`: the Fourier-features image-regression experiment (Tancik et al.
2020, Table 1) from the command line: train a coordinate MLP per mapping on every
other pixel, test on the rest, print a table and write the reconstructions."""
from __future__ import annotations

import json
import os
import sys

from app.cli import UserError


from app.commands.train import positive as _positive  # noqa: E402


from assets import LAB_IMAGE as DEFAULT_IMAGE


def configure(p) -> None:
    p.add_argument("--image", default=DEFAULT_IMAGE, help="any image file (centre-cropped to a square)")
    p.add_argument("--mappings", default="none,basic,pe,gaussian", help="comma-separated: none,basic,pe,gaussian")
    p.add_argument("--steps", type=_positive(int), default=2000, help="full-batch Adam steps per mapping")
    p.add_argument("--size", type=_positive(int), default=None,
                   help="image side S (even); train on the (S/2)^2 even pixels, test on the rest. "
                        "Unset: 512 (the paper) on CUDA, 256 on CPU")
    p.add_argument("--out", default=os.path.join("out", "lab2d"),
                   help="directory for lab2d.png (side by side), curves.png and results.json")
    p.add_argument("--sigma", type=_positive(float), default=10.0, help="Gaussian RFF scale: B ~ N(0, sigma^2)")
    p.add_argument("--pe-sigma", type=_positive(float), default=10.0,
                   help="PE: frequencies pe_sigma^(j/m), j < m (the paper's log-linear PE)")
    p.add_argument("--n-features", type=_positive(int), default=256,
                   help="rows of B for gaussian; for pe, split evenly over x and y")
    p.add_argument("--width", type=_positive(int), default=256)
    p.add_argument("--depth", type=_positive(int), default=4, help="linear layers including the output layer")
    p.add_argument("--lr", type=_positive(float), default=1e-3)
    p.add_argument("--eval-every", type=_positive(int), default=100, help="steps between PSNR curve points")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--threads", type=_positive(int), default=None,
                   help="CPU threads for torch (unset: torch's choice); 1 can be much faster on a busy machine")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the matmuls (faster, not the paper)")


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device: unknown device {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return name


def run(args) -> int:
    import numpy as np
    import torch

    from app.engine.checkpoint import atomic_write
    from app.lab.lab2d import ImageError, LabConfig, format_table, load_image, parse_mappings, run_lab, side_by_side
    from app.gui.rasterplot import line_plot_image, save_png

    try:
        kinds = parse_mappings(args.mappings)
    except ValueError as exc:
        raise UserError(f"--mappings: {exc}") from None
    device = _device(args.device)
    size = args.size or (512 if device.startswith("cuda") else 256)
    cfg = LabConfig(size=size, steps=args.steps, lr=args.lr, width=args.width, depth=args.depth,
                    n_features=args.n_features, sigma=args.sigma, pe_sigma=args.pe_sigma, seed=args.seed,
                    eval_every=args.eval_every, device=device, bf16=args.bf16)
    try:
        cfg.validate()
    except ValueError as exc:
        raise UserError(f"lab2d: {exc}") from None
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"--out {args.out}: exists and is not a directory")
    try:
        img = load_image(args.image, size)
    except ImageError as exc:
        raise UserError(f"--image {exc}") from None
    if args.threads:
        torch.set_num_threads(args.threads)

    n_train = (size // 2) ** 2
    print(f"lab2d: {args.image} at {size}x{size} (train {n_train} px, test {size * size - n_train} px), "
          f"{args.steps} steps, MLP {args.depth}x{args.width}, device {device}, threads {torch.get_num_threads()}",
          file=sys.stderr)

    def progress(kind, step, tr, te):
        print(f"  {kind:<8} step {step:>5}  train {tr:6.2f} dB  test {te:6.2f} dB", file=sys.stderr, flush=True)

    results = run_lab(img, kinds, cfg, progress)

    panel = side_by_side(img, results)
    curves = line_plot_image([(np.array([c[0] for c in r.curve]), np.array([c[2] for c in r.curve]), r.mapping)
                              for r in results], title=f"test PSNR, {size}x{size} image",
                             xlabel="step", ylabel="test PSNR (dB)")
    summary = {"image": os.path.abspath(args.image), "config": dict(cfg.__dict__),
               "results": [{"mapping": r.mapping, "steps": r.steps, "train_psnr": r.train_psnr,
                            "test_psnr": r.test_psnr, "seconds": r.seconds,
                            "curve": [list(c) for c in r.curve]} for r in results]}
    os.makedirs(args.out, exist_ok=True)
    save_png(os.path.join(args.out, "lab2d.png"), panel)
    save_png(os.path.join(args.out, "curves.png"), curves)

    def write_summary(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
    atomic_write(os.path.join(args.out, "results.json"), write_summary)
    print(f"wrote {os.path.join(args.out, 'lab2d.png')}, curves.png, results.json", file=sys.stderr)
    print(format_table(results))
    return 0
