"""`main.py gui` (the default command): the desktop app.

Nothing heavy is imported at module level: the CLI imports this module to build
its parser, and without a display we must say so before loading dearpygui.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

NO_DISPLAY_EXIT = 3

HEADLESS_HELP = """\
The desktop GUI needs a display, and {why}.
Everything the GUI does is also available from the headless CLI:
  python main.py train --help                      train a field into a run directory
  python main.py eval RUN_DIR                      PSNR / SSIM on the test views
  python main.py render RUN_DIR --orbit 30,20,4    render any view to PNG
  python main.py --help                            all commands
To run the GUI on a server without a screen: xvfb-run -s "-screen 0 1280x800x24" python main.py"""


def configure(p) -> None:
    from app.commands.train import DATA_HELP, add_scene_flags
    from app.engine.runs import DEFAULT_SCENE

    p.add_argument("--data", default=DEFAULT_SCENE, help=DATA_HELP)
    p.add_argument("--downscale", type=int, default=1, help="integer image downscale when loading")
    add_scene_flags(p)
    import models

    p.add_argument("--model", default=None, choices=models.available(),
                   help="field to train (default: the registry's default for the device: the small "
                        "NeRF on a CPU, the hash grid on CUDA)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--snapshot", default=None, metavar="PATH",
                   help="start from a checkpoint file or a run directory (with its logged history)")
    p.add_argument("--paused", action="store_true", help="open with training paused")
    p.add_argument("--camera-path", default=None, metavar="JSON",
                   help="open with this camera path (camera_path.json, nerfstudio format) in the path editor")
    p.add_argument("--compare", action="store_true", help="start in A/B mode: PE on vs off on the same rays")
    p.add_argument("--res-scale", type=float, default=None, help="render resolution relative to the dataset")
    p.add_argument("--settings", default=None,
                   help="worker settings as JSON (e.g. '{\"L_xyz\": 6, \"batch_rays\": 256}')")
    p.add_argument("--no-gl", action="store_true", help="upsample on the CPU (numpy) instead of moderngl")
    p.add_argument("--fps-cap", type=float, default=60.0, help="GUI frame-rate cap while in use")
    p.add_argument("--idle-fps", type=float, default=10.0,
                   help="frame-rate cap after 1 s without input or new renders (0: same as --fps-cap)")
    p.add_argument("--width", type=int, default=1280, help="window width")
    p.add_argument("--height", type=int, default=800, help="window height")
    g = p.add_argument_group("automation (tests, benchmarks, screenshots)")
    g.add_argument("--stats", action="store_true",
                   help="print GUI fps, training step and camera state to stdout as JSON lines")
    g.add_argument("--control", action="store_true",
                   help="read JSON commands from stdin: screenshot, drag, set, click, quit")
    g.add_argument("--frames", type=int, default=None, help="exit after N GUI frames")
    g.add_argument("--seconds", type=float, default=None, help="exit after this many seconds")
    g.add_argument("--screenshot", default=None, metavar="PATH", help="save the window to PNG on exit")
    g.add_argument("--drag", action="store_true",
                   help="perform a synthetic left-drag through the GUI's input path once the first frame shows")


def display_problem(env=None) -> str | None:
    """Why no dearpygui window can open here, or None. Cheap: no GL, no dearpygui import.

    dearpygui's GLFW backend is X11 (XWayland on Wayland desktops) and aborts the
    process when it cannot open the display, so this is checked up front.
    """
    env = os.environ if env is None else env
    disp, wayland = env.get("DISPLAY"), env.get("WAYLAND_DISPLAY")
    if not disp and not wayland:
        return "no display is available (DISPLAY and WAYLAND_DISPLAY are both unset)"
    if not disp:
        return (f"WAYLAND_DISPLAY={wayland} is set but DISPLAY is not: dearpygui needs X11 "
                "(enable XWayland)")
    name = ctypes.util.find_library("X11")
    if name is None:
        return "libX11 is not installed, so no X11 window can be opened"
    try:
        x11 = ctypes.CDLL(name)
        x11.XOpenDisplay.restype = ctypes.c_void_p
        x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
        x11.XCloseDisplay.argtypes = [ctypes.c_void_p]
        handle = x11.XOpenDisplay(disp.encode())
    except OSError as exc:
        return f"libX11 could not be loaded ({exc})"
    if not handle:
        return f"the X display {disp!r} cannot be opened (no X server there, or access denied)"
    x11.XCloseDisplay(handle)
    return None


def gl_problem() -> str | None:
    """None if an OpenGL >= 3.3 context can be made on the display (what dearpygui needs)."""
    from renderer.kernels import preload_before_gl

    preload_before_gl()  # before the first GL context of the process: see its docstring
    try:
        import moderngl

        ctx = moderngl.create_standalone_context(require=330)
        ctx.release()
    except Exception as exc:  # noqa: BLE001 - any failure means no usable GL
        return f"no OpenGL 3.3 context on this display ({str(exc).splitlines()[0] if str(exc) else exc!r})"
    return None


def headless_message(why: str) -> str:
    return HEADLESS_HELP.format(why=why)


def run(args) -> int:
    why = display_problem()
    if why is None:
        why = gl_problem()
    if why is not None:
        print(headless_message(why), file=sys.stderr)
        return NO_DISPLAY_EXIT
    import json

    from app.cli import UserError

    settings = {}
    if args.settings:
        try:
            settings = json.loads(args.settings)
        except json.JSONDecodeError as exc:
            raise UserError(f"--settings is not valid JSON: {exc.msg}") from None
        if not isinstance(settings, dict):
            raise UserError("--settings must be a JSON object")
    if args.model:
        settings["model"] = args.model
    if args.compare:
        settings["compare"] = True
    if args.res_scale is not None:
        if not 0.05 <= args.res_scale <= 8:
            raise UserError(f"--res-scale must be between 0.05 and 8, got {args.res_scale}")
        settings["res_scale"] = args.res_scale
    if args.downscale < 1:
        raise UserError(f"--downscale must be >= 1, got {args.downscale}")
    if not os.path.exists(args.data):
        raise UserError(f"--data {args.data}: no such scene directory")
    if args.camera_path and not os.path.isfile(args.camera_path):
        raise UserError(f"--camera-path {args.camera_path}: no such file")
    if args.snapshot and not os.path.exists(args.snapshot):
        raise UserError(f"--snapshot {args.snapshot}: no such file or run directory")
    from app.gui.window import App, ViewportError

    try:
        app = App(args, settings)
    except ViewportError as exc:
        print(headless_message(str(exc)), file=sys.stderr)
        return NO_DISPLAY_EXIT
    return app.run()
