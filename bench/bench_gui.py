"""Benchmark the desktop app: GUI frame rate with and without training (under a
private Xvfb, the real `python main.py gui` process), and the worker's
'camera change -> first frame ready' latency (in-process, no GUI).

    python bench/bench_gui.py                       # CPU, default scene, 20 s per GUI run
    python bench/bench_gui.py --seconds 40 --cameras 20
    python bench/bench_gui.py --no-gui --device cuda        # latency only (e.g. on an H100)
    python bench/bench_gui.py --no-gui --device cuda --model hash
    python bench/bench_gui.py --gui-args "--camera-path path.json"   # with a camera path shown

GUI fps is measured with --idle-fps 0 (full rate all the time, 60 fps cap) and,
for training, also with the default idle cap (the app slows its redraws after a
second without input, to leave the CPU to training: the 'idle' row);
frames are counted between the first and the last stats line, so start-up
(torch import, scene load) is excluded. Latency: for each of N cameras around
the orbit, time from Worker.set_camera to that camera's first (1/8 resolution)
frame, with training running and with it paused. Overlay: the display thread's time to
draw the training cameras, a camera path and the crop box over one frame (all of them in
view), without the GUI. The table is printed last.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def start_xvfb():
    exe = shutil.which("Xvfb")
    if exe is None:
        raise SystemExit("Xvfb is not installed (apt-get install xvfb); use --no-gui for the latency part only")
    for n in range(90, 400):
        if not os.path.exists(f"/tmp/.X11-unix/X{n}") and not os.path.exists(f"/tmp/.X{n}-lock"):
            break
    proc = subprocess.Popen([exe, f":{n}", "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        if os.path.exists(f"/tmp/.X11-unix/X{n}"):
            return proc, f":{n}"
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"Xvfb could not start on :{n}")


def gui_run(display: str, args, training: bool, idle: bool = False) -> dict:
    """idle=False: full frame rate all the time (--idle-fps 0); True: the app's default
    slow-down after a second without input, i.e. a user watching training."""
    cmd = [sys.executable, "main.py", "gui", "--stats", "--seconds", str(args.seconds),
           "--data", args.data, "--device", "cpu"] + ([] if training else ["--paused"])
    if not idle:
        cmd += ["--idle-fps", "0"]
    if args.gui_settings:
        cmd += ["--settings", args.gui_settings]
    if args.gui_args:
        cmd += shlex.split(args.gui_args)
    env = dict(os.environ, DISPLAY=display)
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.seconds + 300)
    stats, exit_ev = [], {}
    for line in out.stdout.splitlines():
        try:
            o = json.loads(line)
        except json.JSONDecodeError:
            continue
        if o.get("event") == "exit":
            exit_ev = o
        elif "gui_frames" in o:
            stats.append(o)
    # Steady state: from the first frame on screen to the end.
    steady = [s for s in stats if s.get("uploads", 0) >= 1] or stats
    if len(steady) < 2:
        raise SystemExit(f"GUI run produced too few stats lines:\n{out.stderr[-2000:]}")
    a, b = steady[0], steady[-1]
    dt = b["t"] - a["t"]
    return {"fps": (b["gui_frames"] - a["gui_frames"]) / dt, "steps_per_s": (b["step"] - a["step"]) / dt,
            "seconds": dt, "draw_ms": exit_ev.get("draw_ms"), "tick_ms": exit_ev.get("tick_ms"),
            "stop_s": exit_ev.get("worker_stop_s"), "display": b.get("display", "")}


def latency(args, training: bool) -> dict:
    from app.gui.worker import Worker, measure_camera_latency
    from app.gui.orbit import OrbitCamera

    settings = json.loads(args.gui_settings) if args.gui_settings else {}
    if args.model:
        settings["model"] = args.model
    w = Worker(data=args.data, settings=settings, device=args.device, train=training, threads=args.threads).start()
    try:
        info = w.scene_info.wait(lambda i: True, 300)
        if info is None:
            raise SystemExit(f"worker did not load the scene: {w.status().get('error')}")
        if training:  # let training settle into its rhythm first
            w.wait_status(lambda s: s["step"] >= 3, 300)
        cam = OrbitCamera(radius=info["radius"], up=info["up"], fov=info["fov"], elevation=30)
        poses = []
        for k in range(args.cameras):
            cam.azimuth = 360.0 * k / args.cameras
            poses.append(cam.c2w())
        measure_camera_latency(w, poses[:1], info["fov"], timeout=300)  # warm-up (first render allocations)
        lat = measure_camera_latency(w, poses, info["fov"], timeout=300)
        f = w.latest_frame()
        st = w.status()
        return {"median_ms": 1000 * statistics.median(lat), "p90_ms": 1000 * sorted(lat)[int(0.9 * (len(lat) - 1))],
                "max_ms": 1000 * max(lat), "size": f"{f.size[1]}x{f.size[0]}", "device": st["device"],
                "model": st.get("model_desc", "")}
    finally:
        w.stop(2.0)


def overlay_time(args, repeats: int = 20) -> dict:
    """Median ms of app.gui.overlay.draw_layer for the scene's cameras, a three-key path and
    a crop box, seen from outside the cameras' sphere (everything in view), into the
    display texture over a full-resolution frame with its depth."""
    import numpy as np

    from app.gui.keyframes import KeyframeList
    from app.gui.orbit import OrbitCamera
    from app.gui.overlay import Layer, ViewCamera, draw_layer, lines, polyline_segments
    from app.gui.scene_info import describe_scene
    from app.gui.scene_overlay import SceneOverlay
    from app.gui.theme import TEX
    from loaders import load_scene
    from renderer.crop import CropBox

    info = describe_scene(load_scene(args.data), 1)
    ov = SceneOverlay(None)
    ov.set_scene(info)
    ov.set_crop(CropBox((-1, -1, -1), (1, 1, 1)))
    keys = KeyframeList()
    cam = OrbitCamera(radius=info["radius"], up=info["up"], fov=info["fov"], elevation=30)
    for az in (0, 60, 120):
        cam.azimuth = az
        keys.add(cam.c2w64(), 40.0)
    ov.set_path(lines(polyline_segments(keys.curve()), (1, 0, 1, 1)))
    layer: Layer = ov.layer()
    cam.radius, cam.azimuth = 2.5 * info["radius"], 30.0
    h, w = info["height"], info["width"]
    view = ViewCamera(cam.c2w64(), info["fov"], w, h)
    depth, acc = np.full((h, w), 4.0, np.float32), np.ones((h, w), np.float32)
    out = np.zeros((TEX, TEX, 4), np.float32)
    times, px = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        px = draw_layer(out, (0, 0, TEX, TEX), layer, view, depth, acc)
        times.append(time.perf_counter() - t0)
    return {"ms": 1000 * statistics.median(times), "segments": len(layer.segments), "pixels": px}


def main(argv=None) -> int:
    from app.engine.runs import DEFAULT_SCENE

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DEFAULT_SCENE)
    p.add_argument("--seconds", type=float, default=20.0, help="length of each GUI run")
    p.add_argument("--cameras", type=int, default=12, help="camera changes timed per latency run")
    p.add_argument("--device", default="cpu", help="device for the latency part (the GUI runs use cpu)")
    p.add_argument("--model", default=None, help="model for the latency part (default: the app's default)")
    p.add_argument("--threads", type=int, default=None, help="torch threads in the worker (default: cores - 1)")
    p.add_argument("--gui-settings", default=None, help="worker settings JSON passed to both parts")
    p.add_argument("--gui-args", default=None, help="more arguments for the GUI runs (e.g. \"--camera-path p.json\")")
    p.add_argument("--no-gui", action="store_true", help="skip the Xvfb GUI runs (latency only)")
    args = p.parse_args(argv)

    rows = []
    if not args.no_gui:
        xvfb, display = start_xvfb()
        try:
            for training, idle in ((False, False), (True, False), (True, True)):
                r = gui_run(display, args, training, idle)
                mode = ("training" if training else "paused") + (", idle" if idle else "")
                print(f"GUI {mode}: {r}", flush=True)
                rows.append(("GUI fps (CPU, Xvfb)" if not idle else "GUI fps, no input (idle cap)", mode,
                             f"{r['fps']:.1f}", f"{r['steps_per_s']:.2f} steps/s, draw {r['draw_ms']} ms/frame, "
                                               f"worker stop {r['stop_s']} s"))
        finally:
            xvfb.terminate()
            xvfb.wait(5)
    for training in (True, False):
        r = latency(args, training)
        print(f"latency {'training' if training else 'paused'}: {r}", flush=True)
        rows.append((f"camera -> first frame ({r['device']})", "training" if training else "paused",
                     f"{r['median_ms']:.0f} ms", f"p90 {r['p90_ms']:.0f} ms, max {r['max_ms']:.0f} ms, "
                                                 f"first level {r['size']}, {r['model']}"))
    r = overlay_time(args)
    print(f"overlay: {r}", flush=True)
    rows.append(("overlay draw, all in view (CPU)", "display", f"{r['ms']:.1f} ms",
                 f"{r['segments']} segments, {r['pixels']} pixels written per frame"))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\ncpu cores {os.cpu_count()}, load average {load:.1f} (shared machine: timings are noisy)")
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    print(f"{'measure':<{w0}}  {'mode':<{w1}} {'value':>9}  notes")
    for m, mode, v, notes in rows:
        print(f"{m:<{w0}}  {mode:<{w1}} {v:>9}  {notes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
