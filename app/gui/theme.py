"""The look of the app: sizes, colours, fonts and dearpygui themes."""
from __future__ import annotations

import os

TEX = 720  # the render texture is TEX x TEX; renders are letterboxed into it
PANEL_W = 500  # side panel width (pixels)
STATUS_H = 30
BG = (0.09, 0.10, 0.12)  # texture background, matches the window theme
ACCENT = (86, 156, 214)
COLOR_A = (96, 170, 255)
COLOR_B = (255, 150, 70)
ERROR = (255, 95, 95)
WARN = (240, 200, 90)
OK = (120, 220, 130)
MUTED = (150, 156, 166)
TEXT = (190, 194, 200)
FONT_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/TTF", "/usr/share/fonts/dejavu",
             "/Library/Fonts", "C:/Windows/Fonts")


def level_color(level: str, info=TEXT) -> tuple:
    """Colour of a note of this level (info / warn / error)."""
    return ERROR if level == "error" else WARN if level == "warn" else info


def find_font() -> str | None:
    for d in FONT_DIRS:
        for name in ("DejaVuSans.ttf", "dejavu-sans.ttf", "Arial.ttf", "arial.ttf"):
            p = os.path.join(d, name)
            if os.path.isfile(p):
                return p
    return None


class Theme:
    """Fonts (None: dearpygui's built-in one), the window theme, and plot / series themes
    to bind to items (series_theme keys: a, b, coarse, fine)."""

    def __init__(self, dpg):
        font = find_font()
        if font:
            with dpg.font_registry():
                self.font = dpg.add_font(font, 15)
                self.font_big = dpg.add_font(font, 19)
                self.font_small = dpg.add_font(font, 13)
            dpg.bind_font(self.font)
        else:
            self.font = self.font_big = self.font_small = None
        dpg.bind_theme(self._window_theme(dpg))
        with dpg.theme() as self.plot_theme:
            with dpg.theme_component(dpg.mvAll):
                dpg.add_theme_color(dpg.mvPlotCol_PlotBg, (20, 22, 27), category=dpg.mvThemeCat_Plots)
                dpg.add_theme_style(dpg.mvPlotStyleVar_PlotPadding, 6, 6, category=dpg.mvThemeCat_Plots)
        self.series_theme = {}
        for key, col in (("a", COLOR_A), ("b", COLOR_B), ("coarse", (150, 150, 160)), ("fine", COLOR_A)):
            with dpg.theme() as t:
                with dpg.theme_component(dpg.mvAll):
                    dpg.add_theme_color(dpg.mvPlotCol_Line, col, category=dpg.mvThemeCat_Plots)
                    dpg.add_theme_color(dpg.mvPlotCol_MarkerFill, col, category=dpg.mvThemeCat_Plots)
                    dpg.add_theme_color(dpg.mvPlotCol_MarkerOutline, col, category=dpg.mvThemeCat_Plots)
                    dpg.add_theme_style(dpg.mvPlotStyleVar_LineWeight, 2, category=dpg.mvThemeCat_Plots)
            self.series_theme[key] = t

    @staticmethod
    def _window_theme(dpg):
        with dpg.theme() as theme:
            with dpg.theme_component(dpg.mvAll):
                for col, value in ((dpg.mvThemeCol_WindowBg, (23, 26, 31)), (dpg.mvThemeCol_ChildBg, (28, 31, 37)),
                                   (dpg.mvThemeCol_FrameBg, (42, 46, 54)),
                                   (dpg.mvThemeCol_FrameBgHovered, (55, 61, 72)),
                                   (dpg.mvThemeCol_Button, (48, 84, 120)),
                                   (dpg.mvThemeCol_ButtonHovered, (62, 110, 156)),
                                   (dpg.mvThemeCol_ButtonActive, (75, 130, 185)),
                                   (dpg.mvThemeCol_Header, (40, 50, 64)),
                                   (dpg.mvThemeCol_HeaderHovered, (52, 66, 84)),
                                   (dpg.mvThemeCol_SliderGrab, ACCENT), (dpg.mvThemeCol_CheckMark, ACCENT),
                                   (dpg.mvThemeCol_Tab, (36, 42, 52)), (dpg.mvThemeCol_TabActive, (48, 84, 120)),
                                   (dpg.mvThemeCol_Border, (50, 55, 64))):
                    dpg.add_theme_color(col, value)
                dpg.add_theme_style(dpg.mvStyleVar_FrameRounding, 4)
                dpg.add_theme_style(dpg.mvStyleVar_ChildRounding, 6)
                dpg.add_theme_style(dpg.mvStyleVar_GrabRounding, 4)
                dpg.add_theme_style(dpg.mvStyleVar_WindowPadding, 10, 8)
                dpg.add_theme_style(dpg.mvStyleVar_ItemSpacing, 8, 6)
                dpg.add_theme_style(dpg.mvStyleVar_FramePadding, 6, 4)
            with dpg.theme_component(dpg.mvButton, enabled_state=False):
                dpg.add_theme_color(dpg.mvThemeCol_Button, (45, 48, 54))
                dpg.add_theme_color(dpg.mvThemeCol_ButtonHovered, (45, 48, 54))
                dpg.add_theme_color(dpg.mvThemeCol_Text, (120, 124, 130))
        return theme
