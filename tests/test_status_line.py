"""The status line's text fitting (pure; the Xvfb tests check it on screen)."""
from app.gui.status_line import ELLIPSIS, fit_text, summary


def test_fit_text_keeps_the_longest_prefix_that_fits():
    widths = {c: 5 + (ord(c) % 7) for c in "abcdefghijklmnopqrstuvwxyz .:/"}  # uneven glyphs
    measure = lambda s: sum(widths[c] for c in s)  # noqa: E731
    text = "worker: /tmp/some/long/path: not a readable checkpoint"
    assert fit_text(text, measure(text), measure) == text
    for room in (30, 61, 100, 200, measure(text) - 1):
        out = fit_text(text, room, measure)
        assert out.endswith(ELLIPSIS) and measure(out) <= room
        stem = out[:-len(ELLIPSIS)]
        assert text.startswith(stem)
        # One more character (trailing spaces are dropped before the ellipsis) would not fit.
        longer = text[:len(stem) + 1].rstrip()
        assert longer == stem or measure(longer + ELLIPSIS) > room
    assert fit_text(text, 1, measure) == ELLIPSIS  # nothing fits: the ellipsis alone


def test_summary_line():
    st = {"state": "training", "device": "cpu", "torch_threads": 1, "step": 12, "steps_per_s": 3.25}
    line = summary(st, 9.6, "moderngl EGL (llvmpipe) GPU upsampling")
    assert line == ("training | cpu (1 torch thread) | step 12 | 3.2 steps/s | GUI 10 fps | "
                    "display: moderngl EGL GPU bilinear")
    st.update(device="cuda:0 (NVIDIA H200)", torch_threads=15)
    assert summary(st, 60, "numpy CPU upsampling (GL disabled)").split(" | ")[1:2] == ["cuda:0 (NVIDIA H200)"]
