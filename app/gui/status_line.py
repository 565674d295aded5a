"""The status line at the bottom of the window: worker state, device, step rate, GUI frame
rate, display path, and the newest note (or the worker's error), cut to the window's width
with the full text in a tooltip."""
from __future__ import annotations

from app.gui.theme import ACCENT, ERROR, OK, STATUS_H, WARN, level_color

MARGIN = 22  # pixels kept free at the right: the window's padding and a little air
ELLIPSIS = "..."
STATE_COLOR = {"training": OK, "paused": WARN, "error": ERROR, "crashed": ERROR, "inerf": ACCENT}


def fit_text(text: str, width: float, measure) -> str:
    """The longest prefix of ``text`` (with ELLIPSIS if cut) that ``measure`` says is at
    most ``width`` pixels wide; measure(s) -> pixels."""
    if measure(text) <= width:
        return text
    lo, hi = 0, len(text)  # text[:lo] + ELLIPSIS fits (lo = 0 is accepted even if it does not)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if measure(text[:mid].rstrip() + ELLIPSIS) <= width:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo].rstrip() + ELLIPSIS


def summary(st: dict, fps: float, display: str) -> str:
    """The fixed part of the line: state | device | step | steps/s | GUI fps | display."""
    threads = st.get("torch_threads")
    device = st["device"] + (f" ({threads} torch thread{'s' if threads != 1 else ''})"
                             if threads and st["device"].startswith("cpu") else "")
    shown = "display: " + display.split(" (")[0] + (" GPU bilinear" if display.startswith("moderngl") else "")
    return " | ".join((st["state"], device, f"step {st['step']}", f"{st['steps_per_s']:.1f} steps/s",
                       f"GUI {fps:.0f} fps", shown))


class StatusLine:
    def __init__(self, dpg):
        self.dpg = dpg
        self.note = ("info", "starting: loading torch and the scene...")

    def build(self) -> None:
        dpg = self.dpg
        with dpg.child_window(tag="statusbar", height=STATUS_H, border=False, no_scrollbar=True):
            with dpg.group(horizontal=True):
                dpg.add_text("●", tag="st_dot", color=WARN)
                dpg.add_text("starting", tag="st_summary")
                dpg.add_text("|", tag="st_sep", color=(80, 86, 96))
                dpg.add_text("", tag="st_note")
            with dpg.tooltip("statusbar"):
                dpg.add_text("", tag="st_tip", wrap=600)

    def set_note(self, level: str, text: str) -> None:
        self.note = (level, text)

    def update(self, st: dict, fps: float, display: str) -> None:
        dpg = self.dpg
        level, text = ("error", st["error"]) if st.get("error") else self.note
        line = summary(st, fps, display)
        dpg.set_value("st_tip", f"{line}\n{display}\n\n{text}")
        dpg.configure_item("st_dot", color=ERROR if st.get("error") else STATE_COLOR.get(st["state"], WARN))
        dpg.configure_item("st_note", color=level_color(level, info=(170, 176, 186)))
        measure = self._measure
        if measure("|") is None:
            return  # fonts are measured from the first drawn frame on
        # Everything right of the dot gets what the window has; the summary first, the note the rest.
        x0 = dpg.get_item_rect_min("st_dot")[0] + dpg.get_item_rect_size("st_dot")[0]
        spacing = dpg.get_item_rect_min("st_summary")[0] - x0
        room = dpg.get_viewport_client_width() - MARGIN - x0 - spacing
        shown = fit_text(line, room, measure)
        dpg.set_value("st_summary", shown)
        room -= measure(shown) + 2 * spacing + measure("|")
        dpg.set_value("st_note", fit_text(text, room, measure) if room > measure(ELLIPSIS) else "")

    def _measure(self, s: str):
        size = self.dpg.get_text_size(s)
        return None if size is None else size[0]
