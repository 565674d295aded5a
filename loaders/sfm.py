"""Structure from motion with pycolmap (COLMAP's library; its PyPI wheel runs on the CPU
without a COLMAP binary): SIFT features, matching, incremental mapping, bundle
adjustment, and the result as a nerfstudio / instant-ngp transforms.json.

Sequential matching links each image only to the next few, so a capture that comes back
to where it began (a walk around a room or an object) is reconstructed as an open chain
whose two ends drift apart by pixels. COLMAP closes such loops with a vocabulary tree,
which needs a downloaded file; here a first reconstruction proposes the pairs instead
(``loop_pairs``: images that see the same sparse points by its poses but share almost
none of them), those are matched, and the model is rebuilt when any of them verify.

Each pycolmap call runs on a worker thread (pycolmap releases the GIL) while the calling
thread waits, reports progress and turns Ctrl-C into a cancellation of the running call
(``run_cancellable``). Features and matches are computed in chunks so that the progress
bars move between calls.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass

import numpy as np

from loaders.colmap import c2w_from_rigid, colmap_camera

from loaders.sfm_choices import CAMERA_MODELS, EXHAUSTIVE_MAX, MATCHERS  # noqa: F401 - re-exported
EXTRACT_CHUNK = 8
MATCH_BLOCK = 16
# nerfstudio's camera_model names and distortion keys for our kinds.
NS_DIST_KEYS = {"PINHOLE": (), "OPENCV": ("k1", "k2", "p1", "p2", "k3"),
                "OPENCV_FISHEYE": ("k1", "k2", "k3", "k4")}


@dataclass
class SfmOptions:
    matcher: str = "auto"  # auto: sequential for a video, exhaustive for <= EXHAUSTIVE_MAX photos
    camera_model: str = "OPENCV"  # one camera shared by every image
    overlap: int = 10  # sequential matching: neighbours per image (sequential_pairs)
    # Quadratic overlap (images 1, 2, 4, ... apart; COLMAP's default) reaches far along an
    # ordered photo capture for the same cost; for a video's frames the plain window of the
    # next `overlap` frames is used, because far-apart frames of a repeated orbit around a
    # symmetric object on a tiled floor matched into wrongly turned blocks of cameras
    # (docs/captures.md). None: that choice; True / False force it.
    quadratic: bool | None = None
    max_features: int = 8192
    # Sequential matching: match the pairs a first reconstruction says overlap but are not
    # linked (loop_pairs, up to loop_per_image per image) and rebuild when any verify.
    loop_closure: bool = True
    loop_per_image: int = 4
    seed: int = 0
    verbose: bool = False  # COLMAP's own log on stderr


def choose_matcher(n_images: int, video: bool, matcher: str = "auto") -> str:
    if matcher not in MATCHERS:
        raise ValueError(f"matcher must be one of {', '.join(MATCHERS)}, got {matcher!r}")
    if matcher != "auto":
        return matcher
    return "sequential" if video or n_images > EXHAUSTIVE_MAX else "exhaustive"


def sequential_pairs(n: int, overlap: int, quadratic: bool = True) -> set[tuple[int, int]]:
    """The image pairs (i, j > i) of sequential matching, as COLMAP 4.2's sequential
    matcher makes them (without loop detection): with quadratic overlap each image
    against the images 1, 2, 4, ..., 2^(overlap-1) further on, else against the next
    ``overlap`` images."""
    steps = [1 << k for k in range(overlap)] if quadratic else range(1, overlap + 1)
    return {(i, i + d) for i in range(n) for d in steps if i + d < n}


def run_cancellable(fn, poll=None, interval: float = 0.25):
    """fn(token) on a worker thread; poll() every ``interval`` s on this thread. Ctrl-C
    (KeyboardInterrupt here) cancels the pycolmap call through its token, waits for it
    to stop, and re-raises. Returns fn's result; re-raises its exception."""
    import pycolmap

    token = pycolmap.CancellationToken()
    box: dict = {}
    done = threading.Event()

    def work():
        try:
            box["result"] = fn(token)
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
            box["error"] = exc
        finally:
            done.set()

    t = threading.Thread(target=work, name="pycolmap", daemon=True)
    try:
        t.start()
        while not done.wait(interval):
            if poll is not None:
                poll()
    except BaseException:
        # Whatever stops this thread (Ctrl-C, an error in poll), pycolmap is cancelled and
        # waited for: a pycolmap thread still running when the interpreter exits aborts
        # the process. Waited on the event, not on Thread.join: a join that a
        # KeyboardInterrupt broke off can return at once the next time (CPython 3.11).
        token.cancel()
        while t.ident is not None and not done.is_set():
            try:
                done.wait(interval)
            except KeyboardInterrupt:
                continue  # cancelling already: wait for pycolmap to stop
        raise
    t.join()
    if poll is not None:
        poll()
    if "error" in box:
        raise box["error"]
    return box.get("result")


def _chunks(items: list, size: int):
    for k in range(0, len(items), size):
        yield items[k:k + size]


def extract_features(db_path: str, image_dir: str, names: list[str], opts: SfmOptions, bar) -> None:
    """SIFT keypoints and descriptors of every image into the database, one camera shared
    by all (CameraMode.SINGLE) of model opts.camera_model, focal guessed from EXIF or
    1.2 x the larger side, refined later by bundle adjustment.

    In chunks of EXTRACT_CHUNK images, so that the bar moves and Ctrl-C stops between
    calls too: the first call creates the camera, the others reuse it. (Progress is not
    read from the database while COLMAP writes it: a concurrent reader can make COLMAP
    fail to open it.)"""
    import pycolmap

    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = opts.camera_model
    ext = pycolmap.FeatureExtractionOptions()
    ext.use_gpu = False
    ext.sift.max_num_features = opts.max_features
    for part in _chunks(names, EXTRACT_CHUNK):
        run_cancellable(lambda tok, part=part: pycolmap.extract_features(
            db_path, image_dir, image_names=part, camera_mode=pycolmap.CameraMode.SINGLE,
            reader_options=reader, extraction_options=ext, device=pycolmap.Device.cpu, cancellation_token=tok))
        if reader.existing_camera_id < 0:
            db = pycolmap.Database.open(db_path)
            try:
                reader.existing_camera_id = db.read_all_cameras()[0].camera_id
            finally:
                db.close()
        bar.update(len(part))


def pair_chunks(n: int, matcher: str, overlap: int, quadratic: bool = True,
                block: int = MATCH_BLOCK) -> list[list[tuple[int, int]]]:
    """The image pairs to match (index pairs i < j) in chunks that each touch few images
    (exhaustive: all pairs between two blocks of ``block`` images; sequential: COLMAP's
    sequential pairs, by blocks of the first image), so each chunk's call loads few
    descriptors."""
    if matcher == "exhaustive":
        blocks = [range(a, min(a + block, n)) for a in range(0, n, block)]
        out = []
        for bi, a in enumerate(blocks):
            for b in blocks[bi:]:
                out.append([(i, j) for i in a for j in b if i < j])
        return [c for c in out if c]
    pairs = sorted(sequential_pairs(n, overlap, quadratic))
    out: dict[int, list] = {}
    for i, j in pairs:
        out.setdefault(i // block, []).append((i, j))
    return [out[k] for k in sorted(out)]


def expected_pairs(n: int, matcher: str, overlap: int, quadratic: bool = True) -> int:
    return sum(len(c) for c in pair_chunks(n, matcher, overlap, quadratic))


def match_features(db_path: str, names: list[str], matcher: str, opts: SfmOptions, work_dir: str, bar,
                   quadratic: bool = True) -> None:
    """Match and geometrically verify image pairs (exhaustive, or sequential_pairs),
    chunk by chunk (pair_chunks)."""
    match_pairs(db_path, names, pair_chunks(len(names), matcher, opts.overlap, quadratic), work_dir, bar)


def match_pairs(db_path: str, names: list[str], chunks: list[list[tuple[int, int]]], work_dir: str, bar) -> None:
    """Match and geometrically verify the given index pairs, one pycolmap call per chunk."""
    import pycolmap

    mopt = pycolmap.FeatureMatchingOptions()
    mopt.use_gpu = False
    pairing = pycolmap.ImportedPairingOptions()
    pairing.match_list_path = os.path.join(work_dir, "pairs.txt")
    for chunk in chunks:
        with open(pairing.match_list_path, "w", encoding="utf-8") as f:
            f.writelines(f"{names[i]} {names[j]}\n" for i, j in chunk)
        run_cancellable(lambda tok: pycolmap.match_image_pairs(
            db_path, matching_options=mopt, pairing_options=pairing, device=pycolmap.Device.cpu,
            cancellation_token=tok))
        bar.update(len(chunk))
    os.remove(pairing.match_list_path)


def verified_pairs(db_path: str) -> int:
    """How many image pairs of the database passed geometric verification."""
    import pycolmap

    db = pycolmap.Database.open(db_path)
    try:
        return int(db.num_verified_image_pairs())
    finally:
        db.close()


def overlap_scores(cam_from_world: np.ndarray, intrinsics: tuple, observed: list[np.ndarray],
                   xyz: np.ndarray, sample: int = 200, max_angle_deg: float = 60.0, seed: int = 0):
    """(predicted, shared), both (N, N): of a sample of the sparse points that image i
    observes, the fraction that image j should see by the poses (in front of it, inside
    its frame by the pinhole intrinsics (fx, fy, cx, cy, w, h), and seen from directions
    at most ``max_angle_deg`` apart, beyond which SIFT rarely matches) and the fraction
    that j does observe. cam_from_world (N, 3, 4); observed[i]: indices into xyz (M, 3).
    Images without observations (not registered) score zero."""
    fx, fy, cx, cy, w, h = intrinsics
    n = len(cam_from_world)
    R, t = cam_from_world[:, :, :3], cam_from_world[:, :, 3]
    centres = -np.einsum("nji,nj->ni", R, t)
    # Which images observe each point: a point -> images table as sorted (point, image) rows.
    rows = np.concatenate([np.full(len(o), i) for i, o in enumerate(observed)] + [np.zeros(0, int)])
    pts = np.concatenate(list(observed) + [np.zeros(0, int)]).astype(np.int64)
    order = np.argsort(pts, kind="stable")
    pts, rows = pts[order], rows[order]
    rng = np.random.default_rng(seed)
    predicted, shared = np.zeros((n, n)), np.zeros((n, n))
    cos_max = np.cos(np.radians(max_angle_deg))
    for i, obs in enumerate(observed):
        if len(obs) == 0:
            continue
        ids = np.unique(obs)
        ids = rng.choice(ids, sample, replace=False) if len(ids) > sample else ids
        p = xyz[ids]  # (s, 3)
        xc = np.einsum("nij,sj->nsi", R, p) + t[:, None, :]  # (N, s, 3)
        z = xc[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u, v = fx * xc[..., 0] / z + cx, fy * xc[..., 1] / z + cy
        ray_i = p - centres[i]
        ray_j = p[None] - centres[:, None]
        cos = (ray_j * ray_i).sum(-1) / (np.linalg.norm(ray_j, axis=-1) * np.linalg.norm(ray_i, axis=-1) + 1e-12)
        seen = (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h) & (cos >= cos_max)
        predicted[i] = seen.mean(1)
        lo, hi = np.searchsorted(pts, ids, "left"), np.searchsorted(pts, ids, "right")
        holders = np.concatenate([rows[a:b] for a, b in zip(lo, hi)])
        shared[i] = np.bincount(holders, minlength=n)[:n] / len(ids)
    return predicted, shared


def loop_pairs(predicted: np.ndarray, shared: np.ndarray, matched: set[tuple[int, int]], per_image: int,
               min_overlap: float = 0.25) -> list[tuple[int, int]]:
    """Loop-closure candidates (i < j), at most ``per_image`` from each image, the most
    overlapping first: pairs that should see at least ``min_overlap`` of each other's
    sampled points (both ways), were not matched already, and are not within two steps
    of each other in the model's co-visibility graph (images linked when they share a
    point). Two images that share nothing but see the same things, and that the model
    links only through a long chain of others, are where a sequence has come back to
    where it was; neighbours along the chain are linked already."""
    n = len(predicted)
    both = np.minimum(predicted, predicted.T)
    linked = (np.maximum(shared, shared.T) > 0).astype(np.float32)
    near = (linked + linked @ linked + np.eye(n, dtype=np.float32)) > 0
    ok = (both >= min_overlap) & ~near
    out: set[tuple[int, int]] = set()
    for i in range(n):
        cands = [int(j) for j in np.argsort(-both[i], kind="stable") if ok[i, j]
                 and (min(i, j), max(i, j)) not in matched]
        out.update((min(i, j), max(i, j)) for j in cands[:per_image])
    return sorted(out)


def reconstruction_overlap(rec, names: list[str]):
    """overlap_scores' inputs from a pycolmap reconstruction, images in ``names`` order."""
    cam = rec.cameras[next(iter(rec.cameras))]
    fx, fy, cx, cy = cam.focal_length_x, cam.focal_length_y, cam.principal_point_x, cam.principal_point_y
    by_name = {rec.images[i].name: rec.images[i] for i in rec.reg_image_ids()}
    point_ids = sorted(rec.points3D)
    index = {pid: k for k, pid in enumerate(point_ids)}
    xyz = np.array([rec.points3D[pid].xyz for pid in point_ids], np.float64).reshape(-1, 3)
    poses, observed = np.zeros((len(names), 3, 4)), []
    for k, name in enumerate(names):
        im = by_name.get(name)
        if im is None:
            poses[k, :, :3] = np.eye(3)
            observed.append(np.zeros(0, np.int64))
            continue
        poses[k] = np.asarray(im.cam_from_world().matrix())
        observed.append(np.array([index[p.point3D_id] for p in im.points2D if p.has_point3D()], np.int64))
    return poses, (fx, fy, cx, cy, cam.width, cam.height), observed, xyz


def incremental_mapping(db_path: str, image_dir: str, out_dir: str, n_images: int, opts: SfmOptions, bar):
    """Incremental reconstruction; returns the largest model (most registered images) and
    how many other models hold images it lacks (disconnected parts, dropped)."""
    import pycolmap

    mopts = pycolmap.IncrementalPipelineOptions()
    mopts.random_seed = opts.seed
    mopts.min_model_size = min(10, max(3, n_images // 2))
    mopts.extract_colors = True
    done = [0]

    def on_pair():
        done[0] += 2

    def on_image():
        done[0] += 1

    def poll():
        if done[0] > bar.n:
            bar.update(min(done[0], bar.total) - bar.n)
    models = run_cancellable(lambda tok: pycolmap.incremental_mapping(
        db_path, image_dir, out_dir, mopts, initial_image_pair_callback=on_pair, next_image_callback=on_image,
        cancellation_token=tok), poll)
    if not models:
        return None, 0
    best = max(models.values(), key=lambda r: r.num_reg_images())
    names = {best.images[i].name for i in best.reg_image_ids()}
    # COLMAP retries from new seed pairs and may rebuild parts of the best model: only a
    # model holding images the best one lacks is a piece of the capture left out.
    others = sum(1 for r in models.values() if r is not best
                 and any(r.images[i].name not in names for i in r.reg_image_ids()))
    return best, others


def bundle_adjust(rec) -> None:
    """A last global bundle adjustment of every pose, point and the shared camera (the
    gauge fixed by three points, as COLMAP's own global adjustment does). Through the
    adjuster object: pycolmap.bundle_adjustment turns COLMAP's info log back on."""
    import pycolmap

    ba = pycolmap.BundleAdjustmentOptions()
    ba.print_summary = False
    cfg = pycolmap.BundleAdjustmentConfig()
    for i in rec.reg_image_ids():
        cfg.add_image(i)
    cfg.fix_gauge(pycolmap.BundleAdjustmentGauge.THREE_POINTS)
    run_cancellable(lambda tok: pycolmap.create_default_bundle_adjuster(ba, cfg, rec).solve())


def transforms_dict(rec, image_folder: str = "images", ply_name: str | None = None) -> dict:
    """A reconstruction as a transforms.json dict (nerfstudio / instant-ngp): the camera's
    model and intrinsics at the top level when shared (else per frame), frames sorted by
    name with OpenGL camera-to-world transform_matrix in COLMAP's world frame."""
    regs = sorted((rec.images[i] for i in rec.reg_image_ids()), key=lambda im: im.name)
    cam_ids = sorted({im.camera_id for im in regs})

    def intrinsics(cam) -> dict:
        kind, (fx, fy, cx, cy, dist) = colmap_camera("sparse model", rec.cameras[cam])
        d = {"camera_model": kind, "fl_x": float(fx), "fl_y": float(fy), "cx": float(cx), "cy": float(cy),
             "w": int(rec.cameras[cam].width), "h": int(rec.cameras[cam].height)}
        keys = NS_DIST_KEYS[kind]
        vals = list(dist) + [0.0] * (len(keys) - len(dist))
        d.update({k: float(v) for k, v in zip(keys, vals)})
        if kind == "OPENCV_FISHEYE":
            d["is_fisheye"] = True  # instant-ngp's flag for the same model
        return d

    shared = intrinsics(cam_ids[0]) if len(cam_ids) == 1 else None
    frames = []
    for im in regs:
        fr = {"file_path": f"{image_folder}/{im.name}",
              "transform_matrix": c2w_from_rigid(im.cam_from_world()).tolist(), "colmap_im_id": int(im.image_id)}
        if shared is None:
            fr.update({k: v for k, v in intrinsics(im.camera_id).items() if k != "camera_model"})
        frames.append(fr)
    out = dict(shared) if shared else {"camera_model": intrinsics(cam_ids[0])["camera_model"]}
    if ply_name:
        out["ply_file_path"] = ply_name
    out["frames"] = frames
    return out


def sparse_points(rec) -> tuple[np.ndarray, np.ndarray]:
    """(xyz (M, 3) float64, rgb (M, 3) uint8) of the reconstruction's 3-D points."""
    pts = list(rec.points3D.values())
    return (np.array([p.xyz for p in pts], np.float64).reshape(-1, 3),
            np.array([p.color for p in pts], np.uint8).reshape(-1, 3))


def set_logging(verbose: bool) -> None:
    import pycolmap

    pycolmap.logging.minloglevel = 0 if verbose else 2  # 2: errors only


@contextlib.contextmanager
def timed(seconds: dict, name: str):
    """Adds the block's wall time to seconds[name]."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        seconds[name] = round(seconds.get(name, 0.0) + time.perf_counter() - t0, 2)
