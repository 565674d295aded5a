"""The "2D lab" tab of the GUI (dearpygui): Fourier-feature image regression with a
live PSNR plot, plus the PE and kernel inspectors.

The main GUI calls ``build_lab_tab(parent)`` once, inside its tab, and
``.update()`` on the returned object every frame. Training runs in
app.lab.lab2d.LabSession's background thread; update() only copies finished
snapshots into textures and plots, so a frame never waits on a training step.
All widgets get generated ids (no string tags) so they cannot collide with the
main GUI's.
"""
from __future__ import annotations

import math
import os

import numpy as np

from app.lab import inspectors as ins
from app.lab.lab2d import DEFAULT_IMAGE, MAPPINGS, ImageError, LabConfig, LabSession, load_image
from app.gui.rasterplot import PALETTE, colormap
from renderer.kernels import preload_before_gl

# At import, before any GL context: see preload_before_gl (Triton and llvmpipe's LLVM).
preload_before_gl()

DISP = 160  # reconstruction thumbnails are DISP x DISP (nearest-neighbour resampled)
HEAT_W, HEAT_H = 384, 240  # PE heatmap texture
SIZES = ["64", "128", "256", "512"]
NETS = {"fast 4x128, 128 features": dict(width=128, n_features=128),
        "paper 4x256, 256 features": dict(width=256, n_features=256)}
LABEL = {"none": "no mapping", "basic": "basic", "pe": "positional enc.", "gaussian": "Gaussian RFF"}
OK, WARN, ERROR = (140, 210, 140), (230, 190, 90), (240, 110, 100)


def _resample(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """(H, W, C) -> (h, w, C) by nearest neighbour (keeps pixel-level detail honest)."""
    ys = (np.arange(h) * img.shape[0] // h).clip(0, img.shape[0] - 1)
    xs = (np.arange(w) * img.shape[1] // w).clip(0, img.shape[1] - 1)
    return img[ys][:, xs]


def _rgba(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) float in [0, 1] or uint8 -> flat float32 RGBA, what dynamic textures take."""
    a = img.astype(np.float32) / (255.0 if img.dtype == np.uint8 else 1.0)
    out = np.ones(a.shape[:2] + (4,), np.float32)
    out[..., :3] = np.clip(a, 0, 1)
    return out.reshape(-1)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


class LabTab:
    def __init__(self, parent, dpg=None):
        if dpg is None:
            import dearpygui.dearpygui as dpg
        self.dpg = dpg
        self.session = LabSession()
        self.device = "cuda" if _cuda() else "cpu"
        self.seen_version = -1
        self.kernel_dirty = True
        self.pe_dirty = True
        self.image_path = DEFAULT_IMAGE
        self._build(parent)
        self._show_ground_truth(self.image_path, int(self.dpg.get_value(self.w_size)), quiet=True)

    # -- layout ---------------------------------------------------------------------------------
    def _build(self, parent) -> None:
        dpg = self.dpg
        blank = _rgba(np.full((DISP, DISP, 3), 0.12, np.float32))
        with dpg.texture_registry() as self.textures:
            self.tex_gt = dpg.add_dynamic_texture(DISP, DISP, blank)
            self.tex = {k: dpg.add_dynamic_texture(DISP, DISP, blank) for k in MAPPINGS}
            self.tex_heat = dpg.add_dynamic_texture(HEAT_W, HEAT_H, _rgba(np.zeros((HEAT_H, HEAT_W, 3), np.float32)))
        self.series_theme = {}
        for i, k in enumerate(MAPPINGS):
            with dpg.theme() as t:
                with dpg.theme_component(dpg.mvLineSeries):
                    dpg.add_theme_color(dpg.mvPlotCol_Line, PALETTE[i], category=dpg.mvThemeCat_Plots)
                    dpg.add_theme_style(dpg.mvPlotStyleVar_LineWeight, 2, category=dpg.mvThemeCat_Plots)
            self.series_theme[k] = t
        self.file_dialog = dpg.add_file_dialog(show=False, callback=self._on_file, width=640, height=400,
                                               directory_selector=False, modal=True)
        for ext in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".*"):
            dpg.add_file_extension(ext, parent=self.file_dialog)

        with dpg.group(horizontal=True, parent=parent):
            with dpg.child_window(width=300, border=False):
                self._build_controls()
            with dpg.child_window(border=False) as self.right_pane:
                self._build_results()
                with dpg.collapsing_header(label="PE inspector (transformer sinusoidal encoding)", default_open=True):
                    self._build_pe_inspector()
                with dpg.collapsing_header(label="Kernel inspector (what a mapping lets the MLP interpolate)",
                                           default_open=True):
                    self._build_kernel_inspector()

    def _build_controls(self) -> None:
        dpg = self.dpg
        dpg.add_text("Image (train: every other pixel, test: the rest)")
        self.w_path = dpg.add_input_text(default_value=self.image_path, width=-1, on_enter=True,
                                         callback=lambda s, a: self._pick(a))
        with dpg.group(horizontal=True):
            dpg.add_button(label="Browse...", callback=lambda: dpg.show_item(self.file_dialog))
            dpg.add_button(label="Default", callback=self._default_image)
        self.w_size = dpg.add_combo(SIZES, default_value="512" if self.device == "cuda" else "128",
                                    label="image size", width=90)
        self.w_net = dpg.add_combo(list(NETS), label="net", width=190,
                                   default_value=list(NETS)[1 if self.device == "cuda" else 0])
        self.w_threads = dpg.add_combo(["1", "2", "4", "8"], default_value="1", label="CPU threads", width=90,
                                       enabled=self.device == "cpu")
        with dpg.tooltip(self.w_threads):
            dpg.add_text("On a busy 2-core machine 1 thread is far faster than 2\n(2 threads wait on each other).")
        self.w_steps = dpg.add_input_int(default_value=2000, label="steps", width=120, min_value=1,
                                         min_clamped=True, step=100)
        dpg.add_spacer(height=4)
        dpg.add_text("Mappings")
        self.w_map = {k: dpg.add_checkbox(label=LABEL[k], default_value=True) for k in MAPPINGS}
        self.w_sigma = dpg.add_slider_float(label="Gaussian sigma", default_value=10.0, min_value=0.5,
                                            max_value=50.0, width=150, format="%.1f",
                                            callback=self._kernel_changed)
        self.w_pe_sigma = dpg.add_slider_float(label="PE max freq", default_value=10.0, min_value=1.0,
                                               max_value=128.0, width=150, format="%.0f",
                                               callback=self._kernel_changed)
        with dpg.tooltip(self.w_pe_sigma):
            dpg.add_text("log-linear PE: frequencies s^(j/m), j < m (the paper's sigma)")
        dpg.add_spacer(height=4)
        with dpg.group(horizontal=True):
            self.w_start = dpg.add_button(label="Start", width=90, callback=self._start)
            self.w_stop = dpg.add_button(label="Stop", width=90, callback=self._stop)
        self.w_status = dpg.add_text(f"idle ({self.device})", wrap=290)
        dpg.add_spacer(height=6)
        dpg.add_text("Sliders apply at the next Start; the\nkernel inspector follows them live.", color=(150, 150, 160))

    def _build_results(self) -> None:
        dpg = self.dpg
        with dpg.group(horizontal=True):
            with dpg.group():
                self.w_gt_image = dpg.add_image(self.tex_gt)
                self.w_gt_label = dpg.add_text("ground truth")
            self.w_label, self.w_image = {}, {}
            for k in MAPPINGS:
                with dpg.group():
                    self.w_image[k] = dpg.add_image(self.tex[k])
                    self.w_label[k] = dpg.add_text(f"{LABEL[k]}\n-")
        with dpg.plot(label="test PSNR (dB) vs step", height=210, width=-1):
            dpg.add_plot_legend()
            self.ax_x = dpg.add_plot_axis(dpg.mvXAxis, label="step")
            self.ax_y = dpg.add_plot_axis(dpg.mvYAxis, label="dB")
            self.psnr_series = {}
            for k in MAPPINGS:
                s = dpg.add_line_series([], [], label=LABEL[k], parent=self.ax_y)
                dpg.bind_item_theme(s, self.series_theme[k])
                self.psnr_series[k] = s

    def _build_pe_inspector(self) -> None:
        dpg = self.dpg
        with dpg.group(horizontal=True):
            self.w_dmodel = dpg.add_slider_int(label="d_model", default_value=128, min_value=2, max_value=512,
                                               width=160, callback=self._pe_changed)
            self.w_maxpos = dpg.add_slider_int(label="max position", default_value=100, min_value=2,
                                               max_value=1000, width=160, callback=self._pe_changed)
            self.w_offset = dpg.add_slider_int(label="offset k", default_value=5, min_value=1, max_value=99,
                                               width=120, callback=self._pe_changed)
        with dpg.group(horizontal=True):
            with dpg.group():
                dpg.add_text("PE(pos, dim): rows = position, columns = dimension (blue -1, red +1)")
                dpg.add_image(self.tex_heat)
            with dpg.plot(label="PE(p).PE(p+k) / (d/2): depends on k only", height=HEAT_H + 24, width=-1):
                self.ax_sim_x = dpg.add_plot_axis(dpg.mvXAxis, label="distance k")
                self.ax_sim_y = dpg.add_plot_axis(dpg.mvYAxis, label="similarity")
                self.sim_series = dpg.add_line_series([], [], label="similarity", parent=self.ax_sim_y)
        self.w_rot = dpg.add_text("", wrap=0)

    def _build_kernel_inspector(self) -> None:
        dpg = self.dpg
        with dpg.group(horizontal=True):
            self.w_kind = dpg.add_radio_button(["Gaussian RFF (sigma)", "NeRF PE (L bands)", "log-linear PE"],
                                               default_value="Gaussian RFF (sigma)", horizontal=True,
                                               callback=self._kernel_changed)
            self.w_bands = dpg.add_slider_int(label="L", default_value=6, min_value=1, max_value=12, width=120,
                                              callback=self._kernel_changed)
        with dpg.plot(label="induced kernel h(dx) / h(0) along x", height=220, width=-1):
            self.ax_k_x = dpg.add_plot_axis(dpg.mvXAxis, label="dx")
            self.ax_k_y = dpg.add_plot_axis(dpg.mvYAxis, label="h")
            self.kernel_series = dpg.add_line_series([], [], label="h(dx)", parent=self.ax_k_y)
            self.half_series = dpg.add_line_series([-0.5, 0.5], [0.5, 0.5], label="half max", parent=self.ax_k_y)
        self.w_fwhm = dpg.add_text("")

    # -- callbacks ------------------------------------------------------------------------------
    def _default_image(self) -> None:
        self._pick(DEFAULT_IMAGE)

    def _on_file(self, sender, app_data) -> None:
        path = (app_data or {}).get("file_path_name")
        if path:
            self._pick(path)

    def _pick(self, path: str) -> None:
        self.image_path = path
        self.dpg.set_value(self.w_path, path)
        try:
            self._show_ground_truth(path, int(self.dpg.get_value(self.w_size)))
        except ImageError as exc:
            self._status(str(exc), ERROR)

    def _kernel_changed(self, *_):
        self.kernel_dirty = True

    def _pe_changed(self, *_):
        self.pe_dirty = True

    def config(self) -> LabConfig:
        dpg = self.dpg
        net = NETS.get(dpg.get_value(self.w_net), NETS[list(NETS)[0]])
        steps = max(1, int(dpg.get_value(self.w_steps)))
        return LabConfig(size=int(dpg.get_value(self.w_size)), steps=steps, sigma=float(dpg.get_value(self.w_sigma)),
                         pe_sigma=float(dpg.get_value(self.w_pe_sigma)), device=self.device,
                         eval_every=max(1, steps // 200),
                         threads=int(dpg.get_value(self.w_threads)) if self.device == "cpu" else None, **net)

    def selected(self) -> list[str]:
        return [k for k in MAPPINGS if self.dpg.get_value(self.w_map[k])]

    def _start(self, *_):
        dpg = self.dpg
        kinds = self.selected()
        if not kinds:
            self._status("choose at least one mapping", ERROR)
            return
        cfg = self.config()
        path = dpg.get_value(self.w_path) or DEFAULT_IMAGE
        try:
            img = load_image(path, cfg.size)
        except ImageError as exc:
            self._status(str(exc), ERROR)
            return
        self.image_path = path
        self._show_ground_truth(path, cfg.size, img=img)
        blank = _rgba(np.full((DISP, DISP, 3), 0.12, np.float32))
        for k in MAPPINGS:
            dpg.set_value(self.tex[k], blank)
            dpg.set_value(self.w_label[k], f"{LABEL[k]}\n" + ("starting" if k in kinds else "-"))
            dpg.set_value(self.psnr_series[k], [[], []])
        # A preview costs a full-image forward pass; aim for ~one per 1% of the run.
        self.session.start(img, kinds, cfg, preview_every=max(1, cfg.steps // 100))
        self.seen_version = -1
        self._status(f"training {', '.join(kinds)} on {self.device}", OK)

    def _show_ground_truth(self, path, size, img=None, quiet=False) -> None:
        if img is None:
            try:
                img = load_image(path, size)
            except ImageError:
                if quiet:
                    return
                raise
        self.dpg.set_value(self.tex_gt, _rgba(_resample(img, DISP, DISP)))
        self.dpg.set_value(self.w_gt_label, f"ground truth {size}x{size}\n{os.path.basename(path)}")

    def _stop(self, *_):
        self.session.stop()
        self._status("stopped", WARN)

    def _status(self, text, colour=None) -> None:
        self.dpg.set_value(self.w_status, text)
        if colour is not None:
            self.dpg.configure_item(self.w_status, color=colour)

    def close(self) -> None:
        self.session.stop()

    # -- per frame ------------------------------------------------------------------------------
    def update(self) -> None:
        """Called every GUI frame: cheap unless something changed."""
        self._update_training()
        if self.pe_dirty:
            self.pe_dirty = False
            self._update_pe()
        if self.kernel_dirty:
            self.kernel_dirty = False
            self._update_kernel()

    def _update_training(self) -> None:
        dpg = self.dpg
        snap = self.session.snapshot()
        if snap["version"] == self.seen_version:
            return
        self.seen_version = snap["version"]
        steps = (snap.get("config") or {}).get("steps", 0)
        for k, r in snap["runs"].items():
            if r["pred"] is not None:
                dpg.set_value(self.tex[k], _rgba(_resample(r["pred"], DISP, DISP)))
            if r["test_psnr"] is not None:
                dpg.set_value(self.w_label[k], f"{LABEL[k]}\ntest {r['test_psnr']:.2f} dB\n"
                                               f"train {r['train_psnr']:.2f} dB\nstep {r['step']}/{steps}")
            if r["curve"]:
                dpg.set_value(self.psnr_series[k], [[float(c[0]) for c in r["curve"]],
                                                    [float(c[2]) for c in r["curve"]]])
        if snap["runs"]:
            dpg.fit_axis_data(self.ax_x)
            dpg.fit_axis_data(self.ax_y)
        if snap["error"]:
            self._status(f"training failed: {snap['error']}", ERROR)
        elif not snap["running"] and snap["runs"]:
            done = all(r["step"] >= steps for r in snap["runs"].values())
            if done:
                secs = ", ".join(f"{k} {r['seconds']:.0f}s" for k, r in snap["runs"].items())
                self._status(f"done ({secs})", OK)
        elif snap["running"]:
            step = min((r["step"] for r in snap["runs"].values()), default=0)
            self._status(f"training on {self.device}: step {step}/{steps}", OK)

    def _update_pe(self) -> None:
        dpg = self.dpg
        d = int(dpg.get_value(self.w_dmodel))
        d += d % 2  # the sinusoidal encoding pairs dimensions
        P = int(dpg.get_value(self.w_maxpos))
        k = min(int(dpg.get_value(self.w_offset)), P - 1)
        pe = ins.transformer_pe(P, d)
        heat = colormap(pe, -1.0, 1.0, "coolwarm")
        dpg.set_value(self.tex_heat, _rgba(_resample(heat, HEAT_H, HEAT_W)))
        sim = ins.pe_similarity_by_distance(d, P - 1) / (d / 2)
        dpg.set_value(self.sim_series, [list(range(P)), sim.tolist()])
        dpg.fit_axis_data(self.ax_sim_x)
        dpg.fit_axis_data(self.ax_sim_y)
        r = ins.rotation_check(P, d, (k,))[0]
        dpg.set_value(self.w_rot, (
            f"Rotation: PE(pos+{k}) = M_{k} PE(pos), M_{k} = block-diag 2x2 rotations by {k}*w_i, the same for "
            f"every pos.  Over {r['pairs']} positions (d_model={d}): max |PE(pos+k) - M_k PE(pos)| = "
            f"{r['max_err']:.2e};  max |M_k^T M_k - I| = {r['orth_err']:.2e};  det = {r['det']:.6f};  "
            f"largest entry off the 2x2 blocks = {r['off_block']:.1e}."))

    def kernel_spectrum(self):
        """(B, a, description) of the mapping the kernel inspector shows."""
        dpg = self.dpg
        kind = dpg.get_value(self.w_kind)
        from app.lab.lab2d import loglinear_fourier_features
        from models.encoding import gaussian_fourier_features

        if kind.startswith("Gaussian"):
            s = float(dpg.get_value(self.w_sigma))
            n = NETS.get(dpg.get_value(self.w_net), NETS[list(NETS)[0]])["n_features"]
            B, a = ins.mapping_spectrum(gaussian_fourier_features(2, n, s, 0))
            return B, a, f"Gaussian RFF sigma={s:.1f}, {n} features"
        if kind.startswith("NeRF"):
            L = int(dpg.get_value(self.w_bands))
            B, a = ins.nerf_pe_spectrum(1, L)
            return B, a, f"NeRF PE, L={L} (per axis)"
        s = float(dpg.get_value(self.w_pe_sigma))
        n = NETS.get(dpg.get_value(self.w_net), NETS[list(NETS)[0]])["n_features"]
        B, a = ins.mapping_spectrum(loglinear_fourier_features(2, n, s))
        return B[: B.shape[0] // 2, :1], a[: B.shape[0] // 2], f"log-linear PE, max freq {s:.0f} (per axis)"

    def _update_kernel(self) -> None:
        dpg = self.dpg
        B, a, what = self.kernel_spectrum()
        x, h = ins.kernel_slice(B, a, 0.5, 2001)
        fw = ins.kernel_fwhm(B, a)
        dpg.set_value(self.kernel_series, [x.tolist(), h.tolist()])
        dpg.fit_axis_data(self.ax_k_x)
        dpg.fit_axis_data(self.ax_k_y)
        fw_px = fw * 512 if math.isfinite(fw) else math.inf
        dpg.set_value(self.w_fwhm, f"{what}: width at half maximum {fw:.4f} of the image "
                                   f"(~{fw_px:.1f} px at 512). More sigma / more bands -> narrower kernel -> "
                                   f"finer detail, but worse interpolation between training pixels.")


def build_lab_tab(parent) -> LabTab:
    """Build the 2D lab inside ``parent`` (a dearpygui tab or window); returns an
    object whose ``update()`` the GUI calls every frame."""
    return LabTab(parent)
