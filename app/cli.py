"""Command-line entry: subcommands live in app/commands/<name>.py, each with
``configure(parser)`` and ``run(args) -> int``, loaded only when used so that
headless commands never import the GUI stack."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module, one-line help). Order is the order --help shows.
COMMANDS = {
    "gui": ("app.commands.gui", "open the desktop app (the default with no command)"),
    "train": ("app.commands.train", "train a field on a scene and write a run directory"),
    "eval": ("app.commands.evaluate", "PSNR/SSIM of a run on its test split"),
    "render": ("app.commands.render", "render one view (RGB, depth, opacity) of a run to PNG"),
    "render-video": ("app.commands.video", "render an orbit or a camera path to video (mp4, or GIF without ffmpeg)"),
    "export-mesh": ("app.commands.mesh", "marching cubes on the density -> coloured PLY mesh"),
    "export-points": ("app.commands.export_points", "depth of the training views -> coloured PLY point cloud"),
    "crop": ("app.commands.crop", "show or set a run's crop box (used by render, videos and exports)"),
    "inerf": ("app.commands.inerf", "recover a camera pose from an image by inverting a trained field"),
    "lab2d": ("app.commands.lab2d", "2D coordinate-MLP lab: spectral bias, PE and Fourier features"),
    "inspect-pe": ("app.commands.inspect_pe", "transformer sinusoidal PE and mapping kernels, to PNG"),
    "make-scene": ("app.commands.make_scene", "regenerate the embedded scene at any resolution"),
    "process": ("app.commands.process", "photos or a video -> a posed dataset (structure from motion)"),
}

EPILOG = """examples:
  python main.py                                   # GUI on the embedded scene
  python main.py train --steps 3000 --out runs/a   # headless training
  python main.py eval runs/a
  python main.py render runs/a --view test:0 --out view.png
  python main.py process my_photos/ --out data/mine  # photos or a video -> a dataset
"""


class UserError(Exception):
    """An error whose message is the whole story for the user (no traceback)."""


def check_device(name: str) -> None:
    """A --device value must name a device this machine has; 'auto' always does.
    Checked once here so no command dies in torch with a traceback instead."""
    if name == "auto":
        return
    import torch

    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"--device: unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise UserError(f"--device {name}: CUDA is not available on this machine (use cpu or auto)")
        if dev.index is not None and dev.index >= n:
            raise UserError(f"--device {name}: this machine has {n} CUDA device(s), cuda:0..cuda:{n - 1}")
        return
    if dev.type == "mps" and torch.backends.mps.is_available():
        return
    raise UserError(f"--device {name}: unsupported device type '{dev.type}' (use auto, cpu or cuda)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="main.py", description="NeRF Lab: watch and use neural radiance fields.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (mod, help_) in COMMANDS.items():
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise
            continue  # a command whose module is not present in this build
        sp = sub.add_parser(name, help=help_, description=help_,
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        module.configure(sp)
        sp.set_defaults(_run=module.run)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv or ["gui"])
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    from app.engine.allocator import keep_freed_memory
    from app.engine.files import CheckpointError
    from loaders.scene import DataError

    keep_freed_memory()

    try:
        if isinstance(getattr(args, "device", None), str):
            check_device(args.device)
        return int(args._run(args) or 0)
    except (DataError, CheckpointError, UserError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        _exit_now_if_native_threads_run(130)
        return 130


def _exit_now_if_native_threads_run(code: int) -> None:
    """Exit at once, skipping interpreter shutdown, while a pycolmap worker thread is still
    alive after an interrupt: a thread inside native code that reaches for the GIL during
    shutdown aborts the whole process (SIGABRT instead of the exit code). The caller has
    already cleaned up; only the streams are flushed here."""
    import threading

    if any(t.name == "pycolmap" and t.is_alive() for t in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
