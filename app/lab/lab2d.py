"""2D coordinate-MLP lab: regress an image from pixel coordinates with different
input mappings (Tancik et al. 2020, "Fourier Features Let Networks Learn High
Frequency Functions in Low Dimensional Domains", section 6 / Table 1).

Setting (the paper's): an S x S image, coordinates v in [0, 1)^2 (pixel index / S),
train on the (S/2) x (S/2) grid of even pixels, test on the other 3/4 of the
pixels; MLP of ``depth`` linear layers (``depth - 1`` hidden ReLU layers of
``width``) with a sigmoid output; Adam, full batch.

Mappings (all but 'none' are FourierFeatures from models/encoding.py):
  none      v itself
  basic     [cos 2 pi v, sin 2 pi v]
  pe        log-linear axis-aligned frequencies sigma_pe^(j/m), j < m, m per axis
  gaussian  B ~ N(0, sigma^2), n_features rows

Compute only: no GUI imports. ``LabSession`` runs the training in a background
thread for the GUI; ``run_lab`` is the blocking version for the CLI/bench.
"""
from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from torch import nn

from assets import LAB_IMAGE
from models.encoding import FourierFeatures, Identity, basic_fourier_features, gaussian_fourier_features

MAPPINGS = ("none", "basic", "pe", "gaussian")
DEFAULT_IMAGE = LAB_IMAGE


class ImageError(Exception):
    """An image the lab cannot use; the message names the file and the problem."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = path, problem


@dataclass
class LabConfig:
    """Everything that defines one lab run (the paper's values are the defaults,
    except ``size``, which the callers pick: 512 is the paper, 256 the CPU default)."""

    size: int = 512
    steps: int = 2000
    lr: float = 1e-3
    width: int = 256
    depth: int = 4  # linear layers, the output layer included (the paper's "4 layers")
    n_features: int = 256  # rows of B for 'pe' (split over the 2 axes) and 'gaussian'
    sigma: float = 10.0  # Gaussian RFF scale
    pe_sigma: float = 10.0  # highest PE frequency (the paper's sigma in sigma^(j/m))
    seed: int = 0
    eval_every: int = 100  # steps between test-PSNR points on the curve
    device: str = "cpu"
    bf16: bool = False  # CPU/GPU autocast to bfloat16 for the matmuls (speed option, not the paper)
    # torch CPU threads for LabSession's training thread (None: leave as is). On a busy
    # 2-core machine 1 thread measured ~18x faster than 2 (OpenMP barriers stall
    # when a thread is descheduled): 25 vs 440 ms/step, 64x64 image, 4x128 net.
    threads: int | None = None

    def validate(self) -> None:
        if self.size < 4 or self.size % 2:
            raise ValueError(f"size must be an even number >= 4, got {self.size}")
        if self.steps < 1 or self.width < 1 or self.depth < 2 or self.n_features < 2:
            raise ValueError(f"need steps >= 1, width >= 1, depth >= 2, n_features >= 2 "
                             f"(got {self.steps}, {self.width}, {self.depth}, {self.n_features})")
        if not (self.sigma > 0 and self.pe_sigma > 0 and self.lr > 0):
            raise ValueError(f"sigma, pe_sigma and lr must be > 0 (got {self.sigma}, {self.pe_sigma}, {self.lr})")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.eval_every < 1:
            raise ValueError(f"eval_every must be >= 1, got {self.eval_every}")


# ----------------------------------------------------------------------------- image

def load_image(path: str, size: int) -> np.ndarray:
    """Any image file -> (size, size, 3) float32 in [0, 1]: centre square crop, then a
    Lanczos resize (alpha is composited on white, grey is replicated)."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.exists(path):
        raise ImageError(path, "file does not exist")
    if os.path.isdir(path):
        raise ImageError(path, "is a directory, expected an image file")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "P"):
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im)
            im = im.convert("RGB")
    except UnidentifiedImageError:
        raise ImageError(path, "not an image Pillow can read") from None
    except OSError as exc:
        raise ImageError(path, f"cannot be read ({exc})") from None
    w, h = im.size
    if min(w, h) < 4:
        raise ImageError(path, f"image is too small ({w}x{h})")
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    im = im.crop((left, top, left + s, top + s))
    if s != size:
        im = im.resize((size, size), Image.LANCZOS)
    return np.asarray(im, dtype=np.float32) / 255.0


def pixel_coords(n: int) -> np.ndarray:
    """(n, n, 2) float32 coordinates of an n x n grid: [..., 0] = column / n (x),
    [..., 1] = row / n (y), so every coordinate is in [0, 1)."""
    t = np.arange(n, dtype=np.float32) / n
    yy, xx = np.meshgrid(t, t, indexing="ij")
    return np.stack([xx, yy], -1)


@dataclass
class Split:
    """Train on pixels whose row and column are both even, test on the rest."""

    coords: np.ndarray  # (S, S, 2) all pixel coordinates
    train_mask: np.ndarray  # (S, S) bool
    train_xy: np.ndarray  # (N, 2), N = (S/2)^2
    train_rgb: np.ndarray  # (N, 3)
    test_xy: np.ndarray  # (M, 2), M = S^2 - N
    test_rgb: np.ndarray  # (M, 3)


def split_every_other(img: np.ndarray) -> Split:
    """(S, S, 3) image -> the paper's train/test pixel split (S even)."""
    if img.ndim != 3 or img.shape[0] != img.shape[1] or img.shape[0] % 2 or img.shape[2] != 3:
        raise ValueError(f"need an (S, S, 3) image with S even, got shape {img.shape}")
    s = img.shape[0]
    coords = pixel_coords(s)
    mask = np.zeros((s, s), bool)
    mask[::2, ::2] = True
    return Split(coords, mask, coords[mask], img[mask], coords[~mask], img[~mask])


# ----------------------------------------------------------------------------- mappings

def loglinear_fourier_features(in_dim: int, n_features: int, sigma: float) -> FourierFeatures:
    """The paper's 'positional encoding': per axis d, rows sigma^(j/m) e_d for j < m,
    with m = n_features // in_dim (so the total matches a Gaussian mapping of
    n_features rows). B is (m * in_dim, in_dim), axis-major."""
    m = n_features // in_dim
    if m < 1 or sigma <= 0:
        raise ValueError(f"need n_features >= in_dim and sigma > 0, got {n_features}, {sigma}")
    freqs = sigma ** (torch.arange(m, dtype=torch.float64) / m)  # (m,)
    B = torch.zeros(in_dim * m, in_dim, dtype=torch.float64)
    for d in range(in_dim):
        B[d * m:(d + 1) * m, d] = freqs
    return FourierFeatures(B.float())


def make_mapping(kind: str, cfg: LabConfig) -> nn.Module:
    """kind in MAPPINGS -> an encoding module (2 -> out_dim)."""
    if kind == "none":
        return Identity(2)
    if kind == "basic":
        return basic_fourier_features(2)
    if kind == "pe":
        return loglinear_fourier_features(2, cfg.n_features, cfg.pe_sigma)
    if kind == "gaussian":
        return gaussian_fourier_features(2, cfg.n_features, cfg.sigma, cfg.seed)
    raise ValueError(f"unknown mapping {kind!r}; choose from {', '.join(MAPPINGS)}")


def parse_mappings(text: str) -> list[str]:
    """'none,pe' -> ['none', 'pe'] (order kept, duplicates dropped)."""
    kinds = [k.strip().lower() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in MAPPINGS]
    if not kinds or bad:
        raise ValueError(f"mappings must be a comma-separated subset of {','.join(MAPPINGS)}, got {text!r}")
    return list(dict.fromkeys(kinds))


class CoordMLP(nn.Sequential):
    """(N, in_dim) -> (N, 3) in (0, 1): (depth - 1) x [Linear, ReLU], Linear, Sigmoid."""

    def __init__(self, in_dim: int, width: int = 256, depth: int = 4):
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(depth - 1):
            layers += [nn.Linear(d, width), nn.ReLU(inplace=True)]
            d = width
        layers += [nn.Linear(d, 3), nn.Sigmoid()]
        super().__init__(*layers)


def psnr_from_mse(mse: float) -> float:
    return float("inf") if mse <= 0 else -10.0 * math.log10(mse)


# ----------------------------------------------------------------------------- training

@dataclass
class LabResult:
    """One mapping's outcome. ``curve`` holds (step, train PSNR, test PSNR) rows."""

    mapping: str
    steps: int
    train_psnr: float
    test_psnr: float
    seconds: float  # optimisation time only (encoding is precomputed once, outside)
    pred: np.ndarray  # (S, S, 3) float32 prediction on every pixel
    curve: list = field(default_factory=list)


class MappingRun:
    """One mapping + MLP + Adam on one image split, steppable.

    The mapping is fixed (B is never trained), so gamma(v) is computed once for the
    train pixels (N, F) and for every pixel (S^2, F): a step is then just the MLP.
    """

    def __init__(self, kind: str, split: Split, cfg: LabConfig):
        self.kind, self.cfg = kind, cfg
        self.device = torch.device(cfg.device)
        self.size = split.coords.shape[0]
        torch.manual_seed(cfg.seed)  # same MLP init for every mapping (up to its input width)
        enc = make_mapping(kind, cfg)
        with torch.no_grad():
            self.x_train = enc(torch.from_numpy(split.train_xy)).to(self.device).contiguous()  # (N, F)
            self.x_all = enc(torch.from_numpy(split.coords.reshape(-1, 2))).to(self.device).contiguous()  # (S^2, F)
        self.y_train = torch.from_numpy(split.train_rgb).to(self.device)  # (N, 3)
        self.mask = torch.from_numpy(split.train_mask.reshape(-1)).to(self.device)  # (S^2,)
        self.model = CoordMLP(enc.out_dim, cfg.width, cfg.depth).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.step_count = 0
        self.last_loss = float("nan")

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16)

    def step(self) -> float:
        """One full-batch Adam step; returns the train MSE before the update."""
        with self._autocast():
            pred = self.model(self.x_train)
        loss = torch.mean((pred.float() - self.y_train) ** 2)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step_count += 1
        self.last_loss = float(loss.detach())
        return self.last_loss

    @torch.no_grad()
    def predict(self) -> torch.Tensor:
        """(S, S, 3) float32 prediction on every pixel (in chunks to bound memory)."""
        outs = []
        with self._autocast():
            for i in range(0, self.x_all.shape[0], 1 << 16):
                outs.append(self.model(self.x_all[i:i + (1 << 16)]).float())
        return torch.cat(outs).reshape(self.size, self.size, 3)

    def evaluate(self, img: torch.Tensor) -> tuple[float, float, np.ndarray]:
        """img (S, S, 3) on the run's device -> (train PSNR, test PSNR, prediction (S, S, 3))."""
        pred = self.predict()
        err = ((pred - img) ** 2).mean(-1).reshape(-1).double()  # (S^2,)
        tr = psnr_from_mse(float(err[self.mask].mean()))
        te = psnr_from_mse(float(err[~self.mask].mean()))
        return tr, te, pred.cpu().numpy()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_mapping(kind: str, img: np.ndarray, cfg: LabConfig, progress=None,
                  stop: threading.Event | None = None) -> LabResult:
    """Train one mapping on ``img`` (S, S, 3) for cfg.steps; ``progress(kind, step,
    train_psnr, test_psnr)`` is called at every curve point. Blocking."""
    cfg.validate()
    split = split_every_other(img)
    run = MappingRun(kind, split, cfg)
    img_t = torch.from_numpy(img).to(run.device)
    curve = []
    seconds = 0.0
    for s in range(1, cfg.steps + 1):
        if stop is not None and stop.is_set():
            break
        t0 = time.perf_counter()
        run.step()
        if s % cfg.eval_every == 0 or s == cfg.steps:
            _sync(run.device)
        seconds += time.perf_counter() - t0
        if s % cfg.eval_every == 0 or s == cfg.steps:
            tr, te, _ = run.evaluate(img_t)
            curve.append((s, tr, te))
            if progress is not None:
                progress(kind, s, tr, te)
    _sync(run.device)
    tr, te, pred = run.evaluate(img_t)
    return LabResult(kind, run.step_count, tr, te, seconds, pred, curve)


def run_lab(img: np.ndarray, kinds: list[str], cfg: LabConfig, progress=None) -> list[LabResult]:
    """Every mapping in ``kinds`` on the same image and config, one after another."""
    return [train_mapping(k, img, cfg, progress) for k in kinds]


def format_table(results: list[LabResult]) -> str:
    rows = [f"{'mapping':<10} {'steps':>6} {'train PSNR':>11} {'test PSNR':>10} {'seconds':>9}"]
    for r in results:
        rows.append(f"{r.mapping:<10} {r.steps:>6} {r.train_psnr:>11.2f} {r.test_psnr:>10.2f} {r.seconds:>9.1f}")
    return "\n".join(rows)


def side_by_side(img: np.ndarray, results: list[LabResult], tile: int | None = None) -> np.ndarray:
    """Ground truth then each reconstruction, left to right, each captioned with its
    test PSNR -> (H, W, 3) uint8. ``tile`` rescales the panels (nearest, so the
    pixel-level detail the mappings differ in stays visible)."""
    from PIL import Image, ImageDraw, ImageFont

    s = img.shape[0]
    t = tile or s
    cap = max(18, t // 14)
    panels = [("ground truth", img)] + [(f"{r.mapping}: test {r.test_psnr:.2f} dB", r.pred) for r in results]
    gap = 6
    out = Image.new("RGB", (len(panels) * t + (len(panels) - 1) * gap, t + cap + 4), (255, 255, 255))
    font = ImageFont.load_default(size=max(10, cap - 6))
    draw = ImageDraw.Draw(out)
    for i, (label, arr) in enumerate(panels):
        im = Image.fromarray((np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8))
        if t != s:
            im = im.resize((t, t), Image.NEAREST)
        x = i * (t + gap)
        out.paste(im, (x, 0))
        draw.text((x + 4, t + 2), label, fill=(0, 0, 0), font=font)
    return np.asarray(out)


# ----------------------------------------------------------------------------- background session (GUI)

class LabSession:
    """Trains several mappings in one background thread, interleaving their steps
    so all PSNR curves advance together; the GUI polls ``snapshot()``.

    Only this thread touches the models; the GUI reads copies under a lock, so a
    frame never waits on a training step.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state: dict = {"running": False, "error": None, "runs": {}, "version": 0, "config": None}

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, img: np.ndarray, kinds: list[str], cfg: LabConfig, preview_every: int = 10) -> None:
        """Start (restarting if needed) training on ``img`` (S, S, 3)."""
        cfg.validate()
        if not kinds:
            raise ValueError("choose at least one mapping")
        self.stop()
        self._stop = threading.Event()
        with self._lock:
            self._state = {"running": True, "error": None, "version": self._state["version"] + 1,
                           "config": asdict(cfg), "image": img,
                           "runs": {k: {"step": 0, "curve": [], "pred": None, "train_psnr": None,
                                        "test_psnr": None, "seconds": 0.0} for k in kinds}}
        self._thread = threading.Thread(target=self._loop, args=(img, list(kinds), replace(cfg),
                                                                  preview_every, self._stop),
                                        name="lab2d-train", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def snapshot(self) -> dict:
        """Shallow copy of the state: running, error, version, config, runs[kind] =
        {step, curve [(step, train, test)], pred (S, S, 3) or None, train_psnr,
        test_psnr, seconds}. ``version`` bumps on every change."""
        with self._lock:
            st = dict(self._state)
            st["runs"] = {k: dict(v, curve=list(v["curve"])) for k, v in self._state["runs"].items()}
            return st

    def _publish(self, kind: str, **kw) -> None:
        with self._lock:
            self._state["runs"][kind].update(kw)
            self._state["version"] += 1

    def _loop(self, img, kinds, cfg, preview_every, stop) -> None:
        # torch's thread count is only partly per-thread (threads started later
        # inherit it), so put it back when this run ends.
        old_threads = torch.get_num_threads()
        try:
            if cfg.threads:
                torch.set_num_threads(cfg.threads)
            split = split_every_other(img)
            runs = {}
            for k in kinds:
                if stop.is_set():
                    return
                runs[k] = MappingRun(k, split, cfg)
            img_t = torch.from_numpy(img).to(torch.device(cfg.device))
            every = max(1, min(preview_every, cfg.eval_every))
            for s in range(1, cfg.steps + 1):
                for k, r in runs.items():
                    if stop.is_set():
                        return
                    t0 = time.perf_counter()
                    r.step()
                    _sync(r.device)  # so the per-mapping seconds are real on CUDA too
                    dt = time.perf_counter() - t0
                    with self._lock:
                        self._state["runs"][k]["seconds"] += dt
                        self._state["runs"][k]["step"] = s
                    if s % every == 0 or s == cfg.steps or s == 1:
                        tr, te, pred = r.evaluate(img_t)
                        with self._lock:
                            st = self._state["runs"][k]
                            st.update(pred=pred, train_psnr=tr, test_psnr=te)
                            st["curve"].append((s, tr, te))
                            self._state["version"] += 1
        except Exception as exc:  # surfaced in the GUI instead of dying silently in a thread
            with self._lock:
                self._state["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            torch.set_num_threads(old_threads)
            with self._lock:
                self._state["running"] = False
                self._state["version"] += 1
