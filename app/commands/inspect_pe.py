"""`main.py inspect-pe`: the transformer sinusoidal encoding and the kernels that
Fourier-feature mappings induce, as PNGs (numpy + Pillow only), plus the numeric
check that PE(pos + k) = M_k PE(pos) for a fixed rotation M_k."""
from __future__ import annotations

import os
import sys

from app.cli import UserError


def _floats(text: str, name: str, positive: bool = True) -> list[float]:
    try:
        vals = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"{name}: expected comma-separated numbers, got {text!r}") from None
    if not vals or (positive and any(not v > 0 for v in vals)):
        raise UserError(f"{name}: expected positive comma-separated numbers, got {text!r}")
    return vals


def configure(p) -> None:
    p.add_argument("--d-model", type=int, default=128, help="encoding width (even)")
    p.add_argument("--max-pos", type=int, default=100, help="positions 0 .. max-pos - 1")
    p.add_argument("--base", type=float, default=10000.0, help="wavelength base (10000 in Vaswani et al.)")
    p.add_argument("--offsets", default="1,5,10", help="offsets k for the rotation check")
    p.add_argument("--sigmas", default="1,2.5,5,10,20", help="Gaussian RFF scales for the kernel plot")
    p.add_argument("--bands", default="2,4,6,8,10", help="NeRF PE band counts L for the kernel plot")
    p.add_argument("--n-features", type=int, default=256, help="Gaussian RFF features")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join("out", "inspect_pe"), help="directory for the PNGs")


def run(args) -> int:
    import numpy as np

    from app.lab import inspectors as ins
    from app.gui.rasterplot import heatmap_image, line_plot_image, save_png
    from models.encoding import gaussian_fourier_features

    if args.d_model < 2 or args.d_model % 2:
        raise UserError(f"--d-model must be an even number >= 2, got {args.d_model}")
    if args.max_pos < 2:
        raise UserError(f"--max-pos must be >= 2, got {args.max_pos}")
    if not args.base > 1:
        raise UserError(f"--base must be > 1, got {args.base}")
    if args.n_features < 1:
        raise UserError(f"--n-features must be >= 1, got {args.n_features}")
    offsets = [int(v) for v in _floats(args.offsets, "--offsets")]
    if any(not 0 < k < args.max_pos for k in offsets):
        raise UserError(f"--offsets must lie in 1..{args.max_pos - 1}, got {args.offsets}")
    sigmas = _floats(args.sigmas, "--sigmas")
    bands = [int(v) for v in _floats(args.bands, "--bands")]
    if any(L > 24 for L in bands):
        raise UserError(f"--bands must be between 1 and 24, got {args.bands}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"--out {args.out}: exists and is not a directory")

    d, P = args.d_model, args.max_pos
    pe = ins.transformer_pe(P, d, args.base)
    scale = max(1, min(8, 640 // max(d, P)))
    images = {}
    images["pe_heatmap.png"] = heatmap_image(pe, title=f"sinusoidal PE, d_model={d}", xlabel="dimension",
                                             ylabel="position", scale=scale, cmap="coolwarm", vmin=-1, vmax=1)
    # Plotted against the signed distance p - ref: the curves for different refs and
    # the closed form lie on top of each other because only the distance matters.
    refs = sorted({0, P // 2})
    pos = np.arange(P)
    dist = ins.pe_similarity_by_distance(d, P - 1, args.base) / (d / 2)
    kk = np.arange(-(P - 1), P)
    series = [(kk, dist[np.abs(kk)], "sum_i cos(w_i k)", 7, (200, 200, 200))]
    series += [(pos - r, ins.pe_similarity(pe, r) / (d / 2), f"PE({r}).PE(p)", 2) for r in refs]
    images["pe_similarity.png"] = line_plot_image(
        series, title="PE(p).PE(q) / (d/2) depends only on k = q - p",
        xlabel="distance k = p - ref", ylabel="similarity")
    m = ins.rotation_matrix(offsets[0], min(d, 32), args.base)
    images["pe_rotation_M.png"] = heatmap_image(
        m, title=f"M_k for k={offsets[0]} (first {min(d, 32)} dims): 2x2 rotation blocks",
        xlabel="column", ylabel="row", scale=max(1, 320 // m.shape[0]), cmap="coolwarm", vmin=-1, vmax=1)

    # Kernels: the same random directions for every sigma (B = sigma * G), so only
    # the scale changes between curves.
    fw_rows = []
    ks = []
    for s in sigmas:
        B, a = ins.mapping_spectrum(gaussian_fourier_features(2, args.n_features, s, args.seed))
        x, h = ins.kernel_slice(B, a, 0.5, 1001)
        fw = ins.kernel_fwhm(B, a)
        ks.append((x, h, f"sigma={s:g}  FWHM {fw:.3f}"))
        fw_rows.append(("gaussian", f"sigma={s:g}", fw))
    images["kernel_gaussian.png"] = line_plot_image(
        ks, title=f"RFF kernel h(dx, 0), {args.n_features} features", xlabel="dx", ylabel="h / h(0)",
        hlines=[0.5, 0.0])
    kp = []
    for L in bands:
        B, a = ins.nerf_pe_spectrum(1, L)  # per-axis: the 2D PE kernel is (h(dx) + h(dy)) / 2
        x, h = ins.kernel_slice(B, a, 0.25, 4001)  # fine sampling: L=10 has periods of 1/512
        fw = ins.kernel_fwhm(B, a)
        kp.append((x, h, f"L={L}  FWHM {fw:.3f}"))
        fw_rows.append(("nerf-pe", f"L={L}", fw))
    images["kernel_pe.png"] = line_plot_image(
        kp, title="NeRF PE kernel per axis, h(dx) (sin/cos part)", xlabel="dx", ylabel="h / h(0)", hlines=[0.5, 0.0])
    s_mid = sigmas[len(sigmas) // 2]
    B, a = ins.mapping_spectrum(gaussian_fourier_features(2, args.n_features, s_mid, args.seed))
    g = np.linspace(-0.25, 0.25, 161)
    dv = np.stack(np.meshgrid(g, g[::-1], indexing="xy"), -1)  # row 0 = dy = +0.25
    images["kernel_gaussian_2d.png"] = heatmap_image(
        ins.induced_kernel(B, a, dv), title=f"RFF kernel h(dx, dy), sigma={s_mid:g}", xlabel="dx", ylabel="dy",
        extent=(-0.25, 0.25, 0.25, -0.25), scale=3, cmap="coolwarm", vmin=-1, vmax=1)

    rows = ins.rotation_check(P, d, offsets, args.base)
    os.makedirs(args.out, exist_ok=True)
    for name, im in images.items():
        save_png(os.path.join(args.out, name), im)
    print(f"wrote {', '.join(images)} to {args.out}", file=sys.stderr)
    print("\nkernel width (full width at half maximum along x, in units of the [0,1) domain):")
    for kind, what, fw in fw_rows:
        print(f"  {kind:<9} {what:<12} {fw:.4f}")
    print(f"\nrotation check, d_model={d}, positions 0..{P - 1}, base {args.base:g}:")
    print(ins.format_rotation_check(rows))
    return 0
