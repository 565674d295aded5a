"""Tiny raster plotting with numpy + Pillow (no matplotlib): heatmaps and line
plots rendered to (H, W, 3) uint8 arrays, for PNG output and GUI textures."""
from __future__ import annotations

import math

import numpy as np

# Viridis sampled at 9 evenly spaced points; linear interpolation in between is
# visually indistinguishable from the full 256-entry table at heatmap sizes.
_VIRIDIS = np.array([
    [68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
    [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]], np.float64) / 255.0
# Diverging blue-white-red for signed data (e.g. sin/cos encodings in [-1, 1]).
_COOLWARM = np.array([[59, 76, 192], [141, 176, 254], [221, 221, 221], [244, 154, 123], [180, 4, 38]],
                     np.float64) / 255.0

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127)]


def colormap(values: np.ndarray, vmin: float | None = None, vmax: float | None = None,
             cmap: str = "viridis") -> np.ndarray:
    """(...,) floats -> (..., 3) uint8 through a colour table (NaN -> black)."""
    table = {"viridis": _VIRIDIS, "coolwarm": _COOLWARM}[cmap]
    v = np.asarray(values, np.float64)
    lo = np.nanmin(v) if vmin is None else vmin
    hi = np.nanmax(v) if vmax is None else vmax
    t = np.nan_to_num(np.clip((v - lo) / (hi - lo if hi > lo else 1.0), 0, 1))
    pos = t * (len(table) - 1)
    i = np.clip(np.floor(pos).astype(int), 0, len(table) - 2)
    f = (pos - i)[..., None]
    rgb = table[i] * (1 - f) + table[i + 1] * f
    rgb[np.isnan(v)] = 0
    return (rgb * 255 + 0.5).astype(np.uint8)


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    start = math.ceil(lo / step - 1e-9) * step
    ticks, t = [], start
    while t <= hi + 1e-9 * step:
        ticks.append(0.0 if abs(t) < 1e-12 * step else t)
        t += step
    return ticks


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.0e}"
    return f"{v:.4g}"


def heatmap_image(values: np.ndarray, title: str = "", xlabel: str = "", ylabel: str = "",
                  extent: tuple[float, float, float, float] | None = None, scale: int = 1,
                  cmap: str = "viridis", vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """(H, W) values drawn with row 0 at the top, with axes, title and a colour bar.

    extent = (x0, x1, y0, y1) labels the axes (default: column and row indices).
    Returns (H', W', 3) uint8.
    """
    from PIL import Image, ImageDraw

    v = np.asarray(values, np.float64)
    h, w = v.shape
    lo = float(np.nanmin(v)) if vmin is None else vmin
    hi = float(np.nanmax(v)) if vmax is None else vmax
    body = Image.fromarray(colormap(v, lo, hi, cmap)).resize((w * scale, h * scale), Image.NEAREST)
    bw, bh = body.size
    ml, mr, mt, mb = 60, 90, 30, 44
    img = Image.new("RGB", (ml + bw + mr, mt + bh + mb), (255, 255, 255))
    img.paste(body, (ml, mt))
    d = ImageDraw.Draw(img)
    f = _font(12)
    d.rectangle([ml - 1, mt - 1, ml + bw, mt + bh], outline=(0, 0, 0))
    x0, x1, y0, y1 = extent if extent is not None else (0, w, 0, h)
    for t in _nice_ticks(min(x0, x1), max(x0, x1)):
        px = ml + (t - x0) / (x1 - x0) * bw
        d.line([px, mt + bh, px, mt + bh + 4], fill=(0, 0, 0))
        d.text((px, mt + bh + 6), _fmt(t), fill=(0, 0, 0), font=f, anchor="mt")
    for t in _nice_ticks(min(y0, y1), max(y0, y1)):
        py = mt + (t - y0) / (y1 - y0) * bh
        d.line([ml - 4, py, ml, py], fill=(0, 0, 0))
        d.text((ml - 6, py), _fmt(t), fill=(0, 0, 0), font=f, anchor="rm")
    d.text((ml + bw / 2, 6), title, fill=(0, 0, 0), font=_font(14), anchor="mt")
    d.text((ml + bw / 2, mt + bh + 24), xlabel, fill=(0, 0, 0), font=f, anchor="mt")
    if ylabel:
        lab = Image.new("RGB", (bh, 16), (255, 255, 255))
        ImageDraw.Draw(lab).text((bh / 2, 8), ylabel, fill=(0, 0, 0), font=f, anchor="mm")
        img.paste(lab.rotate(90, expand=True), (4, mt))
    # colour bar
    cb = colormap(np.linspace(hi, lo, bh)[:, None].repeat(14, 1), lo, hi, cmap)
    cx = ml + bw + 14
    img.paste(Image.fromarray(cb), (cx, mt))
    d.rectangle([cx - 1, mt - 1, cx + 14, mt + bh], outline=(0, 0, 0))
    for t in _nice_ticks(lo, hi, 4):
        py = mt + (hi - t) / (hi - lo if hi > lo else 1) * bh
        d.text((cx + 18, py), _fmt(t), fill=(0, 0, 0), font=f, anchor="lm")
    return np.asarray(img)


def line_plot_image(series: list[tuple[np.ndarray, np.ndarray, str]], title: str = "", xlabel: str = "",
                    ylabel: str = "", size: tuple[int, int] = (640, 400),
                    ylim: tuple[float, float] | None = None, hlines: list[float] = ()) -> np.ndarray:
    """Lines through (x, y) points, one per series (x, y, label[, width[, rgb]]), with
    axes, ticks, legend and optional dashed horizontal reference lines -> (H, W, 3) uint8."""
    from PIL import Image, ImageDraw

    W, H = size
    ml, mr, mt, mb = 64, 16, 32, 48
    pw, ph = W - ml - mr, H - mt - mb
    img = Image.new("RGB", (W, H), (255, 255, 255))
    d = ImageDraw.Draw(img)
    f = _font(12)
    xs = np.concatenate([np.asarray(s[0], float) for s in series]) if series else np.zeros(1)
    ys = np.concatenate([np.asarray(s[1], float) for s in series]) if series else np.zeros(1)
    ys = ys[np.isfinite(ys)]
    x0, x1 = float(xs.min()), float(xs.max())
    y0, y1 = ylim if ylim is not None else (float(ys.min()) if ys.size else 0.0, float(ys.max()) if ys.size else 1.0)
    if x1 <= x0:
        x1 = x0 + 1
    if y1 <= y0:
        y1 = y0 + 1
    pad = 0.04 * (y1 - y0) if ylim is None else 0.0
    y0, y1 = y0 - pad, y1 + pad

    def px(x):
        return ml + (np.asarray(x, float) - x0) / (x1 - x0) * pw

    def py(y):
        return mt + (y1 - np.asarray(y, float)) / (y1 - y0) * ph

    for t in _nice_ticks(x0, x1):
        X = float(px(t))
        d.line([X, mt, X, mt + ph], fill=(230, 230, 230))
        d.line([X, mt + ph, X, mt + ph + 4], fill=(0, 0, 0))
        d.text((X, mt + ph + 6), _fmt(t), fill=(0, 0, 0), font=f, anchor="mt")
    for t in _nice_ticks(y0, y1):
        Y = float(py(t))
        d.line([ml, Y, ml + pw, Y], fill=(230, 230, 230))
        d.line([ml - 4, Y, ml, Y], fill=(0, 0, 0))
        d.text((ml - 6, Y), _fmt(t), fill=(0, 0, 0), font=f, anchor="rm")
    for hv in hlines:
        Y = float(py(hv))
        for X in range(ml, ml + pw, 8):
            d.line([X, Y, min(X + 4, ml + pw), Y], fill=(90, 90, 90))
    labelled = [s[2] for s in series if s[2]]
    def colour(i):
        return series[i][4] if len(series[i]) > 4 else PALETTE[i % len(PALETTE)]

    for i, (x, y, *_rest) in enumerate(series):
        pts = [(float(a), float(b)) for a, b in zip(px(x), py(y)) if math.isfinite(b)]
        col = colour(i)
        if len(pts) > 1:
            d.line(pts, fill=col, width=series[i][3] if len(series[i]) > 3 else 2)
        elif pts:
            d.ellipse([pts[0][0] - 2, pts[0][1] - 2, pts[0][0] + 2, pts[0][1] + 2], fill=col)
    if labelled:  # legend on an opaque box so lines under it don't garble the text
        d.rectangle([ml + pw - 156, mt + 1, ml + pw - 2, mt + 16 * len(series) + 2], fill=(255, 255, 255),
                    outline=(160, 160, 160))
        for i, (_, _, label, *_rest) in enumerate(series):
            if label:
                ly = mt + 8 + 16 * i
                col = colour(i)
                d.line([ml + pw - 150, ly, ml + pw - 130, ly], fill=col, width=3)
                d.text((ml + pw - 125, ly), label, fill=(0, 0, 0), font=f, anchor="lm")
    d.rectangle([ml, mt, ml + pw, mt + ph], outline=(0, 0, 0))
    d.text((ml + pw / 2, 8), title, fill=(0, 0, 0), font=_font(14), anchor="mt")
    d.text((ml + pw / 2, mt + ph + 24), xlabel, fill=(0, 0, 0), font=f, anchor="mt")
    if ylabel:
        lab = Image.new("RGB", (ph, 16), (255, 255, 255))
        ImageDraw.Draw(lab).text((ph / 2, 8), ylabel, fill=(0, 0, 0), font=f, anchor="mm")
        img.paste(lab.rotate(90, expand=True), (4, mt))
    return np.asarray(img)


def save_png(path: str, rgb: np.ndarray) -> None:
    """Write (H, W, 3) uint8 atomically (a crash never leaves a half-written PNG)."""
    from PIL import Image

    from app.engine.checkpoint import atomic_write

    atomic_write(path, lambda tmp: Image.fromarray(rgb).save(tmp, format="PNG"))
