"""Shared fixtures for the core-engine tests: tiny synthetic scenes built in memory
or written to tmp_path, so no test depends on ../shared or on assets/scene."""
from __future__ import annotations

import itertools
import json
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

# One intra-op thread: the 2-core machine is shared, and with other jobs running a
# 2-thread OpenMP pool spin-waits (measured 20x slower per tiny training step).
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by CLI subprocesses

SIZE = 16  # pixels; every file-based scene here is SIZE x SIZE
CAMERA_ANGLE_X = 0.69  # close to NeRF-synthetic's 0.691


def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """OpenGL camera-to-world (4, 4) float64: camera at eye looking at target (-Z forward)."""
    eye = np.asarray(eye, np.float64)
    back = eye - np.asarray(target, np.float64)
    back /= np.linalg.norm(back)
    right = np.cross(np.asarray(up, np.float64), back)
    right /= np.linalg.norm(right)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, np.cross(back, right), back, eye
    return m


def orbit_poses(n: int, radius: float = 4.0, elevation_deg: float = 30.0, offset_deg: float = 0.0):
    """n cameras (n, 4, 4) evenly spaced in azimuth, looking at the origin, world up +Z."""
    el = np.radians(elevation_deg)
    out = []
    for k in range(n):
        az = np.radians(offset_deg + 360.0 * k / n)
        eye = radius * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        out.append(look_at(eye))
    return np.stack(out)


def tiny_nerfacto(n_levels: int, g: torch.Generator):
    """A small nerfacto field bound to an orbit scene, its radiance field's table and nets
    drawn from ``g`` (outputs that vary), for the render kernels' tests."""
    from models import build_model
    m = build_model("nerfacto", n_levels=n_levels, log2_hashmap_size=10, max_res=32, hidden=16, color_hidden=16,
                    appearance_dim=2, proposal_levels=2, proposal_log2_hashmap_size=10,
                    proposal_max_res=[16, 32], proposal_hidden=8, n_proposal=[8, 4], n_samples=4)
    m.bind_scene(orbit_poses(4).astype(np.float32), 2.0, 6.0, False)
    with torch.no_grad():
        m.field.encoding.table.normal_(0.0, 1.0, generator=g)
        for p in list(m.field.mlp.parameters()) + list(m.color_net.parameters()):
            p.normal_(0.0, 0.5, generator=g)
    return m


def write_png(path, img) -> str:
    """Write uint8 (H, W, C) or float in [0, 1] as PNG; creates parent dirs."""
    import imageio.v3 as iio

    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    os.makedirs(os.path.dirname(str(path)) or ".", exist_ok=True)
    iio.imwrite(str(path), img)
    return str(path)


def write_transforms(path, frames, camera_angle_x=CAMERA_ANGLE_X, **extra) -> str:
    """Write a Blender/instant-ngp transforms json. frames: list of (file_path, c2w) or dicts.
    camera_angle_x=None leaves the key out."""
    meta = dict(extra)
    if camera_angle_x is not None:
        meta["camera_angle_x"] = camera_angle_x
    meta["frames"] = [f if isinstance(f, dict) else
                      {"file_path": f[0], "transform_matrix": np.asarray(f[1]).tolist()}
                      for f in frames]
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(meta, fh)
    return str(path)


def random_rgba(seed: int, size: int = SIZE) -> np.ndarray:
    """uint8 (size, size, 4) with alpha spanning 0..255 (fully transparent and opaque pixels)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (size, size, 4), dtype=np.uint8)
    img[0, 0, 3], img[0, 1, 3] = 0, 255
    return img


@pytest.fixture
def blender_dir(tmp_path):
    """A valid Blender scene: 3 splits (train 3, val 2, test 2 views) of SIZE px RGBA PNGs.

    Train file_paths omit '.png' (as the original dataset does), val/test include it.
    Returns a namespace with root, rgba {split: [uint8 (H, W, 4)]}, poses {split: (N, 4, 4)}.
    """
    root = tmp_path / "scene"
    root.mkdir()
    counts = {"train": 3, "val": 2, "test": 2}
    ns = SimpleNamespace(root=str(root), rgba={}, poses={})
    seed = 0
    for split, n in counts.items():
        poses = orbit_poses(n, offset_deg=17.0 * seed)
        frames, imgs = [], []
        for i in range(n):
            img = random_rgba(seed)
            seed += 1
            write_png(root / split / f"r_{i}.png", img)
            rel = f"./{split}/r_{i}" + ("" if split == "train" else ".png")
            frames.append((rel, poses[i]))
            imgs.append(img)
        write_transforms(root / f"transforms_{split}.json", frames)
        ns.rgba[split], ns.poses[split] = imgs, poses
    return ns


def sphere_images(c2w: np.ndarray, size: int, focal: float, radius: float = 1.0,
                  colour=(0.9, 0.3, 0.2), background: float = 1.0) -> np.ndarray:
    """Analytic views (N, size, size, 3) float32 of a flat-coloured sphere at the origin.

    Ray-sphere intersection in numpy, independent of renderer/rays.py.
    """
    j, i = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    d_cam = np.stack([(i - size / 2) / focal, -(j - size / 2) / focal, -np.ones_like(i)], -1)
    out = []
    for m in c2w:
        d = d_cam @ m[:3, :3].T
        o = m[:3, 3]
        # |o + t d|^2 = r^2 has a real root iff the discriminant is >= 0.
        b = d @ o
        disc = b ** 2 - (d * d).sum(-1) * (o @ o - radius ** 2)
        hit = disc >= 0
        img = np.where(hit[..., None], np.asarray(colour), background)
        out.append(img)
    return np.stack(out).astype(np.float32)


def make_sphere_scene(n_views: int = 8, size: int = SIZE, white: bool = True):
    """In-memory Scene (no files): n_views orbit views of a sphere, near 2 far 6, test = 2 views."""
    from loaders.scene import Scene, Split

    focal = 0.5 * size / np.tan(0.5 * CAMERA_ANGLE_X)
    poses = orbit_poses(n_views)
    imgs = sphere_images(poses, size, focal, background=1.0 if white else 0.0)
    test_poses = orbit_poses(2, offset_deg=45.0)
    test = Split(sphere_images(test_poses, size, focal, background=1.0 if white else 0.0),
                 test_poses.astype(np.float32), focal, ["t0", "t1"])
    train = Split(imgs, poses.astype(np.float32), focal, [f"v{k}" for k in range(n_views)])
    return Scene({"train": train, "val": test, "test": test}, 2.0, 6.0, white, "<memory>")


# Small enough for hundreds of CPU steps per second-ish; same architecture family.
TINY_NERF = dict(width=32, depth=2, skips=[], dir_width=16, L_xyz=4, L_dir=2, n_coarse=8, n_fine=8)


@pytest.fixture
def sphere_scene():
    return make_sphere_scene()


def make_trainer(scene=None, seed: int = 0, batch: int = 256, lr: float = 5e-3, **model_options):
    from app.engine.trainer import TrainConfig, Trainer

    cfg = TrainConfig(model="nerf", model_options={**TINY_NERF, **model_options}, batch_rays=batch,
                      lr=lr, lr_final=lr / 10, lr_decay_steps=1000, seed=seed, device="cpu")
    return Trainer(scene if scene is not None else make_sphere_scene(), cfg)


@pytest.fixture
def scene_dir(tmp_path):
    """A tiny sphere scene written to disk in Blender format (train 8, test 2, 16 px)."""
    sc = make_sphere_scene()
    root = tmp_path / "sphere"
    for split in ("train", "test"):
        sp = sc.split(split)
        frames = []
        for k in range(len(sp)):
            write_png(root / split / f"{k:03d}.png", sp.images[k])
            frames.append((f"{split}/{k:03d}.png", sp.c2w[k]))
        write_transforms(root / f"transforms_{split}.json", frames)
    return str(root)


def _has_triton() -> bool:
    try:
        import triton  # noqa: F401
        return True
    except Exception:  # noqa: BLE001 - a broken triton install counts as absent
        return False


needs_triton = pytest.mark.skipif(not _has_triton(),
                                  reason="triton not installed (kernels run only on CUDA machines)")


def run_in_triton_interpreter(code: str, kernels: str = "triton") -> None:
    """Run ``code`` (which prints OK at the end) in a fresh interpreter with Triton's CPU
    interpreter on, NERFLAB_KERNELS=``kernels``; fail with its stderr otherwise. A fresh
    process because TRITON_INTERPRET is read when Triton is imported."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TRITON_INTERPRET="1", NERFLAB_KERNELS=kernels,
               PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]


def gen(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``."""
    return torch.Generator().manual_seed(seed)


def trilinear_reference(grid, p):
    """float64 loop: grid (n, n, n, C) numpy, p (N, 3) grid coordinates in [0, n-1]."""
    n = grid.shape[0]
    out = np.zeros((len(p), grid.shape[3]))
    for s, (x, y, z) in enumerate(p):
        i, j, k = (min(int(math.floor(v)), n - 2) for v in (x, y, z))
        fx, fy, fz = x - i, y - j, z - k
        for a, b, c in itertools.product((0, 1), repeat=3):
            wt = (fx if a else 1 - fx) * (fy if b else 1 - fy) * (fz if c else 1 - fz)
            out[s] += wt * grid[i + a, j + b, k + c]
    return out


# A tiny NeRF for the GUI worker's tests: they test the worker, not the field.
WORKER_SETTINGS = dict(arch={"nerf": dict(width=32, depth=2, skips=[], dir_width=16)}, L_xyz=4, L_dir=2,
                       n_coarse=8, n_fine=8, batch_rays=128, model="nerf", preset="cpu")


@pytest.fixture
def worker():
    """A started GUI worker (app/gui/worker.py) training WORKER_SETTINGS on the sphere scene;
    stopped after the test."""
    from app.gui.worker import Worker

    w = Worker(scene=make_sphere_scene(), settings=dict(WORKER_SETTINGS), device="cpu", threads=1)
    w.start()
    yield w
    w.stop(5.0)


@pytest.fixture(scope="module")
def gl_ctx():
    """A standalone OpenGL context for assets/make_scene.py's renders; skips without one."""
    from assets import make_scene as ms

    try:
        ctx = ms.create_context()
    except Exception as e:  # noqa: BLE001 - any failure to make a context means: none here
        pytest.skip(f"no standalone OpenGL context (install the Mesa EGL packages in assets/README.md): {e}")
    yield ctx
    ctx.release()
