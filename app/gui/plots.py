"""The panel's plots: training loss / PSNR per step, and the weights along the ray under
the cursor (the probe)."""
from __future__ import annotations

import math
import time

MAX_POINTS = 4000  # per plot series; older points are thinned 2:1 beyond this
PLOT_EVERY_S = 0.25
KEYS = ("step", "loss", "psnr", "loss_b", "psnr_b")


class TrainingPlots:
    """Loss (log scale) and PSNR against step; a second series for B in compare mode.
    A new run id (a rebuild, a loaded snapshot) starts the plots afresh."""

    def __init__(self, dpg, theme):
        self.dpg, self.theme = dpg, theme
        self.run = None
        self.data = {k: [] for k in KEYS}
        self._last_draw = 0.0

    def build(self, width: int) -> None:
        dpg = self.dpg
        with dpg.group(horizontal=True):
            for tag, ylabel, scale in (("loss", "loss (log)", dpg.mvPlotScale_Log10),
                                       ("psnr", "PSNR dB", dpg.mvPlotScale_Linear)):
                with dpg.plot(label="", height=170, width=width // 2 - 4, tag=f"plot_{tag}", no_menus=True,
                              no_mouse_pos=True, no_box_select=True):
                    dpg.add_plot_legend(location=dpg.mvPlot_Location_SouthEast if tag == "psnr"
                                        else dpg.mvPlot_Location_NorthEast)
                    dpg.add_plot_axis(dpg.mvXAxis, label="step", tag=f"{tag}_x", auto_fit=True)
                    with dpg.plot_axis(dpg.mvYAxis, label=ylabel, tag=f"{tag}_y", auto_fit=True, scale=scale):
                        dpg.add_line_series([], [], label="train", tag=f"{tag}_a")
                        dpg.add_line_series([], [], label="B", tag=f"{tag}_b", show=False)
                dpg.bind_item_theme(f"plot_{tag}", self.theme.plot_theme)
                dpg.bind_item_theme(f"{tag}_a", self.theme.series_theme["a"])
                dpg.bind_item_theme(f"{tag}_b", self.theme.series_theme["b"])

    def resize(self, panel_w: int) -> None:
        for tag in ("plot_loss", "plot_psnr"):
            self.dpg.configure_item(tag, width=(panel_w - 40) // 2)

    def add(self, metrics: list[dict]) -> None:
        p = self.data
        for m in metrics:
            if m["run_id"] != self.run:
                self.run = m["run_id"]
                p = self.data = {k: [] for k in KEYS}
            p["step"].append(m["step"])
            p["loss"].append(m["loss"])
            p["psnr"].append(m["psnr"] if math.isfinite(m["psnr"]) else 60.0)  # a perfect batch: off the top
            p["loss_b"].append(m.get("loss_b", float("nan")))
            p["psnr_b"].append(m.get("psnr_b", float("nan")))
        if len(p["step"]) > MAX_POINTS:
            for k in KEYS:
                p[k] = p[k][::2]
        now = time.perf_counter()
        if metrics and now - self._last_draw >= PLOT_EVERY_S:
            self._last_draw = now
            self._draw()

    def _draw(self) -> None:
        dpg, p = self.dpg, self.data
        compare = bool(p["loss_b"]) and math.isfinite(p["loss_b"][-1])
        for k in ("loss", "psnr"):
            dpg.set_value(f"{k}_a", [p["step"], p[k]])
            dpg.configure_item(f"{k}_a", label="A" if compare else "train batch")
            dpg.configure_item(f"{k}_b", show=compare)
            if compare:
                dpg.set_value(f"{k}_b", [p["step"], p[f"{k}_b"]])


class WeightsPlot:
    """The probe: while on, the ray under the cursor is sent to the worker (at most 10 per
    second for a new position, once a second for the same one: training moves the weights)
    and its sample weights are plotted against depth."""

    def __init__(self, dpg, worker, theme, viewport):
        self.dpg, self.worker, self.theme, self.viewport = dpg, worker, theme, viewport
        self.on = False
        self.point = None  # (image index, u, v) of the last probe sent
        self._sent = (None, 0.0)
        self._seq = -1

    def build(self, width: int) -> None:
        dpg = self.dpg
        with dpg.plot(label="", height=150, width=width, tag="plot_w", no_menus=True, show=False,
                      no_box_select=True):
            dpg.add_plot_legend(location=dpg.mvPlot_Location_NorthEast)
            dpg.add_plot_axis(dpg.mvXAxis, label="depth t along the ray", tag="w_x")
            with dpg.plot_axis(dpg.mvYAxis, label="weight", tag="w_y"):
                dpg.add_stem_series([], [], label="coarse", tag="w_coarse")
                dpg.add_line_series([], [], label="fine", tag="w_fine")
        dpg.bind_item_theme("plot_w", self.theme.plot_theme)
        dpg.bind_item_theme("w_coarse", self.theme.series_theme["coarse"])
        dpg.bind_item_theme("w_fine", self.theme.series_theme["fine"])
        dpg.add_text("", tag="probe_line", color=(150, 156, 166), show=False)

    def resize(self, panel_w: int) -> None:
        self.dpg.configure_item("plot_w", width=panel_w - 32)

    def toggle(self, on: bool) -> None:
        self.on = bool(on)
        self.dpg.configure_item("plot_w", show=self.on)
        self.dpg.configure_item("probe_line", show=self.on)
        if not self.on:
            self.point = None

    def poll(self, pos, allowed: bool) -> None:
        if not self.on or not allowed or self.viewport.frame is None:
            return
        hit = self.viewport.pick(pos)
        if hit is None:
            return
        last, t = self._sent
        now = time.perf_counter()
        same = last is not None and abs(last[1] - hit[1]) < 1e-3 and abs(last[2] - hit[2]) < 1e-3
        if last is not None and (now - t < 0.1 or (same and now - t < 1.0)):
            return
        self._sent = (hit, now)
        self.point = hit
        self.worker.send("probe", index=hit[0], u=hit[1], v=hit[2])

    def update(self) -> None:
        dpg = self.dpg
        p = self.worker.probes
        if p.seq == self._seq:
            return
        self._seq = p.seq
        r = p.get()
        if r is None:
            return
        if "unavailable" in r:
            dpg.set_value("probe_line", r["unavailable"])
            return
        dpg.set_value("w_coarse", [r["t_coarse"].tolist(), r["w_coarse"].tolist()])
        top = float(r["w_coarse"].max(initial=0.0))
        if "t_fine" in r:
            dpg.set_value("w_fine", [r["t_fine"].tolist(), r["w_fine"].tolist()])
            top = max(top, float(r["w_fine"].max(initial=0.0)))
        else:  # a model with one pass (or another model now): no stale fine curve
            dpg.set_value("w_fine", [[], []])
        # Fixed ranges: the whole ray segment, and the tallest weight (auto-fit lags a frame).
        near, far = r["bounds"]
        dpg.set_axis_limits("w_x", float(near), float(far))
        dpg.set_axis_limits("w_y", 0.0, max(top * 1.15, 1e-3))
        which = "AB"[r["index"]] if self.viewport.compare_on else ""
        dpg.set_value("probe_line", f"{which} pixel ({r['u']:.2f}, {r['v']:.2f}): depth {r['depth']:.2f}, "
                                    f"opacity {r['acc']:.2f}; coarse {len(r['t_coarse'])} / fine "
                                    f"{len(r.get('t_fine', []))} samples")
