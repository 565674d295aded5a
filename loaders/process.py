"""Photos or a video -> a posed dataset (``main.py process``).

Stages, each with its own progress bar and time in the report:

    frames     the photos checked (decodable, one size) and copied, or a video's
               sharpest frames (loaders.frames)
    features   SIFT (loaders.sfm)
    matching   exhaustive or sequential, geometrically verified
    mapping    incremental reconstruction (the largest model is kept)
    loop closure   after sequential matching: the pairs the model says overlap but that
               it has not linked are matched, and the model rebuilt when any verify
    bundle adjustment
    writing    transforms.json, sparse points PLY, sparse/0, images_2 / images_4, report.json

Nothing half-written: everything is built in a hidden folder next to the output and
renamed to it at the end; an error or Ctrl-C removes it.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
from dataclasses import asdict, dataclass

import numpy as np

from loaders.frames import IMAGE_EXT, JPEG_QUALITY, check_images, list_images, video_frames
from loaders.images import resize_area
from loaders.scene import DataError
from loaders.sfm import (SfmOptions, bundle_adjust, choose_matcher, expected_pairs, extract_features,
                         incremental_mapping, loop_pairs, match_features, match_pairs, overlap_scores,
                         pair_chunks, reconstruction_overlap, set_logging, sparse_points, timed,
                         transforms_dict, verified_pairs)

MIN_REGISTERED = 0.5
DOWNSCALES = (2, 4)
PLY_NAME = "sparse_points.ply"


@dataclass
class ProcessOptions(SfmOptions):
    frames: int = 150  # frames kept from a video


def _null_bar(desc, total, unit):
    class Bar:
        n = 0

        def update(self, k=1):
            self.n += k

        def close(self):
            pass
    b = Bar()
    b.total = total
    return b


def check_output(out: str) -> str:
    """The absolute output path; DataError when it exists or its parent does not."""
    out = os.path.abspath(out)
    if os.path.exists(out):
        raise DataError(out, "already exists; choose a new --out (process never overwrites)")
    parent = os.path.dirname(out)
    if not os.path.isdir(parent):
        raise DataError(parent, "the folder --out would be created in does not exist")
    if not os.access(parent, os.W_OK):
        raise DataError(parent, "the folder --out would be created in is not writable")
    return out


def _gather(src: str, images: str, opts: ProcessOptions, bar, seconds: dict) -> tuple[list[str], bool]:
    """Input -> images/ in the build folder. Returns (image names, is_video)."""
    os.makedirs(images)
    with timed(seconds, "frames"):
        if os.path.isfile(src):
            bars: dict = {}

            def progress(stage, done, total):
                b = bars.get(stage)
                if b is None:
                    for o in bars.values():
                        o.close()
                    b = bars[stage] = bar(f"frames ({stage})", total, "frame")
                b.total = total  # the scan's total is an estimate from the duration until its end
                b.update(done - b.n)
            try:
                names = video_frames(src, images, opts.frames, progress)
            finally:
                for o in bars.values():
                    o.close()
            return names, True
        names = list_images(src)
        b = bar("frames (check)", len(names), "image")
        try:
            check_images(src, names, b.update)
        finally:
            b.close()
        for n in names:
            shutil.copy2(os.path.join(src, n), os.path.join(images, n))
        return names, False


def _downscaled_copies(root: str, names: list[str], bar) -> None:
    """images_2/, images_4/: box-filtered copies (loaders.images.resize_area, what
    --downscale does in memory), JPEG or PNG as the original."""
    from PIL import Image

    b = bar("writing (images_2, images_4)", len(names) * len(DOWNSCALES), "image")
    try:
        for f in DOWNSCALES:
            os.makedirs(os.path.join(root, f"images_{f}"))
        for n in names:
            with Image.open(os.path.join(root, "images", n)) as im:
                a = np.asarray(im.convert("RGB"), np.float32)
            for f in DOWNSCALES:
                small = Image.fromarray((resize_area(a, f) + 0.5).clip(0, 255).astype(np.uint8))
                p = os.path.join(root, f"images_{f}", n)
                small.save(p, quality=JPEG_QUALITY) if n.lower().endswith((".jpg", ".jpeg")) else small.save(p)
                b.update(1)
    finally:
        b.close()


def advice(registered: int, given: int, video: bool, matcher: str) -> str:
    tips = ["more overlap between neighbouring views (move slower, take more photos)"]
    if matcher != "exhaustive":
        tips.append("--matcher exhaustive (matches every pair; slower)")
    if video:
        tips.append("more and sharper frames (--frames, steadier or slower camera motion)")
    else:
        tips.append("dropping blurred photos")
    tips.append("a textured, static scene with even light")
    return (f"only {registered} of {given} images could be placed (need at least "
            f"{int(MIN_REGISTERED * 100)}%); try: " + "; ".join(tips))


def ordered_jumps(rec, names: list[str], deg: float = 30.0) -> list[list[str]]:
    """Pairs of images adjacent in the input order (a video's frames, photos by name) that
    both registered and whose views turn by more than ``deg``: in a capture taken in that
    order, cameras placed wrongly."""
    from loaders.colmap import c2w_from_rigid
    from loaders.normalize import view_jumps

    pos = {im.name: im for im in (rec.images[i] for i in rec.reg_image_ids())}
    out = []
    for a, b in zip(names[:-1], names[1:]):
        if a in pos and b in pos:
            pair = np.stack([c2w_from_rigid(pos[a].cam_from_world()), c2w_from_rigid(pos[b].cam_from_world())])
            if len(view_jumps(pair, deg)):
                out.append([a, b])
    return out


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM (a plain `kill`) cleans up like Ctrl-C: raised as KeyboardInterrupt on the
    main thread while the dataset is being built."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def process_capture(src: str, out: str, opts: ProcessOptions | None = None, bar=None) -> dict:
    """Build the dataset for ``src`` (a folder of images or a video file) at ``out``;
    returns the report. bar(desc, total, unit) makes a tqdm-like progress bar."""
    opts = opts or ProcessOptions()
    bar = bar or _null_bar
    if not os.path.exists(src):
        raise DataError(src, "does not exist")
    if os.path.isfile(src) and src.lower().endswith(IMAGE_EXT):
        raise DataError(src, "is a single image; give the folder of images, or a video file")
    out = check_output(out)
    set_logging(opts.verbose)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.partial-", dir=os.path.dirname(out))
    with _terminate_as_interrupt():
        try:
            report = _build(src, tmp, opts, bar)
            os.rename(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    report["out"] = out
    return report


@contextlib.contextmanager
def _stage(seconds: dict, name: str, bar, desc: str, total, unit: str):
    """One stage: its progress bar (closed whatever happens) and its time in seconds[name]."""
    b = bar(desc, total, unit)
    try:
        with timed(seconds, name):
            yield b
    finally:
        b.close()


def _close_loops(db, images, root, names, rec, others, matched, opts, bar, seconds):
    """Match the loop-closure pairs that the first model proposes (sfm.loop_pairs) and,
    when any of them verify, rebuild the model from all the matches; the rebuilt model is
    kept unless it registers fewer images. Returns (model, others, a report dict)."""
    pairs = loop_pairs(*overlap_scores(*reconstruction_overlap(rec, names)), matched, opts.loop_per_image)
    loop = {"candidates": len(pairs), "verified": 0, "rebuilt": False}
    if not pairs:
        return rec, others, loop
    before = verified_pairs(db)
    with _stage(seconds, "loop closure", bar, "matching (loop closure)", len(pairs), "pair") as b:
        match_pairs(db, names, [pairs[k:k + 64] for k in range(0, len(pairs), 64)], root, b)
    loop["verified"] = verified_pairs(db) - before
    if loop["verified"] == 0:
        return rec, others, loop
    scratch = os.path.join(root, "mapping_loops")
    os.makedirs(scratch)
    with _stage(seconds, "mapping", bar, "mapping (loops closed)", len(names), "image") as b:
        rec2, others2 = incremental_mapping(db, images, scratch, len(names), opts, b)
    if rec2 is not None and rec2.num_reg_images() >= rec.num_reg_images():
        rec, others, loop["rebuilt"] = rec2, others2, True
    return rec, others, loop


def _build(src: str, root: str, opts: ProcessOptions, bar) -> dict:
    import pycolmap

    seconds: dict[str, float] = {}
    images = os.path.join(root, "images")
    names, video = _gather(src, images, opts, bar, seconds)
    matcher = choose_matcher(len(names), video, opts.matcher)
    quadratic = (not video) if opts.quadratic is None else opts.quadratic
    db = os.path.join(root, "database.db")
    with _stage(seconds, "features", bar, "features", len(names), "image") as b:
        extract_features(db, images, names, opts, b)
    n_pairs = expected_pairs(len(names), matcher, opts.overlap, quadratic)
    with _stage(seconds, "matching", bar, f"matching ({matcher})", n_pairs, "pair") as b:
        match_features(db, names, matcher, opts, root, b, quadratic)
    scratch = os.path.join(root, "mapping")
    os.makedirs(scratch)
    with _stage(seconds, "mapping", bar, "mapping", len(names), "image") as b:
        rec, others = incremental_mapping(db, images, scratch, len(names), opts, b)
    loop = {"candidates": 0, "verified": 0, "rebuilt": False}
    if matcher == "sequential" and opts.loop_closure and rec is not None:
        matched = {p for chunk in pair_chunks(len(names), matcher, opts.overlap, quadratic) for p in chunk}
        rec, others, loop = _close_loops(db, images, root, names, rec, others, matched, opts, bar, seconds)
    registered = rec.num_reg_images() if rec is not None else 0
    if registered < MIN_REGISTERED * len(names):
        raise DataError(src, advice(registered, len(names), video, matcher))
    with _stage(seconds, "bundle adjustment", bar, "bundle adjustment", 1, "run") as b:
        bundle_adjust(rec)
        b.update(1)
    with timed(seconds, "writing"):
        from loaders.ply import points_ply_bytes

        sparse = os.path.join(root, "sparse", "0")
        os.makedirs(sparse)
        rec.write(sparse)
        xyz, rgb = sparse_points(rec)
        with open(os.path.join(root, PLY_NAME), "wb") as f:
            f.write(points_ply_bytes(xyz, rgb, ("NeRF Lab process: COLMAP sparse points, world frame",)))
        with open(os.path.join(root, "transforms.json"), "w", encoding="utf-8") as f:
            json.dump(transforms_dict(rec, "images", PLY_NAME), f, indent=2)
        _downscaled_copies(root, names, bar)
        os.remove(db)
        for d in ("mapping", "mapping_loops"):
            shutil.rmtree(os.path.join(root, d), ignore_errors=True)
    cam = rec.cameras[next(iter(rec.cameras))]
    report = {
        "input": os.path.abspath(src), "video": video, "given": len(names), "registered": registered,
        "registered_fraction": round(registered / len(names), 4), "other_models_dropped": others,
        "points": int(len(xyz)), "mean_reprojection_error_px": round(float(rec.compute_mean_reprojection_error()), 4),
        "matcher": matcher if matcher == "exhaustive" else
        f"sequential ({'quadratic ' if quadratic else ''}overlap {opts.overlap})",
        "camera": {"model": cam.model.name, "params": [float(v) for v in cam.params], "width": int(cam.width),
                   "height": int(cam.height)},
        "loop_closure": loop, "view_jumps": ordered_jumps(rec, names), "options": asdict(opts), "seconds": seconds,
        "total_seconds": round(sum(seconds.values()), 2), "pycolmap": pycolmap.__version__}
    with open(os.path.join(root, "report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    return report
