"""Upsampling and layout for the GUI texture: numpy path against a float64 loop,
GL path against the numpy path."""
import math

import numpy as np
import pytest

from app.gui.gl_display import (DisplayThread, GLCompositor, GLUnavailable, NumpyCompositor, layout_rects,
                                 make_compositor, resize)


def assert_fill(region, value):
    np.testing.assert_allclose(region, np.broadcast_to(np.asarray(value, np.float32).reshape(-1), region.shape))


def bilinear_loop(img, out_h, out_w):
    """Reference: half-pixel-centre bilinear with clamped edges, one pixel at a time (float64)."""
    h, w, c = img.shape
    out = np.zeros((out_h, out_w, c))
    for oy in range(out_h):
        sy = min(max((oy + 0.5) * h / out_h - 0.5, 0.0), h - 1)
        y0 = int(math.floor(sy))
        y1 = min(y0 + 1, h - 1)
        fy = sy - y0
        for ox in range(out_w):
            sx = min(max((ox + 0.5) * w / out_w - 0.5, 0.0), w - 1)
            x0 = int(math.floor(sx))
            x1 = min(x0 + 1, w - 1)
            fx = sx - x0
            out[oy, ox] = ((1 - fy) * ((1 - fx) * img[y0, x0] + fx * img[y0, x1])
                           + fy * ((1 - fx) * img[y1, x0] + fx * img[y1, x1]))
    return out


def test_bilinear_hand_case():
    img = np.array([[[0.0], [1.0]]], dtype=np.float32)  # 1 x 2
    out = resize(img, 1, 4)
    np.testing.assert_allclose(out[0, :, 0], [0.0, 0.25, 0.75, 1.0])


@pytest.mark.parametrize("shape,out", [((5, 7, 3), (13, 9)), ((4, 4, 3), (16, 16)), ((16, 12, 3), (5, 7))])
def test_bilinear_matches_loop(shape, out):
    img = np.random.default_rng(0).random(shape).astype(np.float32)
    np.testing.assert_allclose(resize(img, *out), bilinear_loop(img.astype(np.float64), *out), atol=1e-5)


def test_nearest_hand_case():
    img = np.arange(3, dtype=np.float32).reshape(1, 3, 1)
    np.testing.assert_array_equal(resize(img, 1, 6, "nearest")[0, :, 0], [0, 0, 1, 1, 2, 2])
    with pytest.raises(ValueError):
        resize(img, 2, 2, "cubic")


def test_layout_rects():
    assert layout_rects(1, 100, 100, 720, 720) == [(0, 0, 720, 720)]
    assert layout_rects(1, 200, 100, 720, 720) == [(0, 180, 720, 360)]
    a, b = layout_rects(2, 100, 100, 728, 600, gap=8)
    assert a == (0, 120, 360, 360) and b == (368, 120, 360, 360)
    with pytest.raises(ValueError):
        layout_rects(0, 1, 1, 1, 1)


def test_numpy_compositor_places_images():
    comp = NumpyCompositor(40, 20)
    out = np.zeros((20, 40, 4), np.float32)
    red = np.zeros((2, 2, 3), np.float32)
    red[..., 0] = 1
    blue = np.zeros((2, 2, 3), np.float32)
    blue[..., 2] = 1
    comp.compose([red, blue], out, background=(0.5, 0.5, 0.5))
    (xa, ya, wa, ha), (xb, yb, wb, hb) = layout_rects(2, 2, 2, 40, 20)
    assert_fill(out[ya:ya + ha, xa:xa + wa], [[[1, 0, 0, 1]]])
    assert_fill(out[yb:yb + hb, xb:xb + wb], [[[0, 0, 1, 1]]])
    assert_fill(out[:, xa + wa:xb], [[[0.5, 0.5, 0.5, 1]]])


def _gl_or_skip(w, h):
    try:
        return GLCompositor(w, h)
    except GLUnavailable as exc:
        pytest.skip(f"no OpenGL context on this machine: {exc}")


@pytest.mark.parametrize("filter", ["linear", "nearest"])
def test_gl_matches_numpy(filter):
    tw, th = 96, 64
    gl = _gl_or_skip(tw, th)
    try:
        rng = np.random.default_rng(1)
        imgs = [rng.random((9, 9, 3)).astype(np.float32), rng.random((9, 9, 3)).astype(np.float32)]
        out_gl = np.zeros((th, tw, 4), np.float32)
        out_np = np.zeros((th, tw, 4), np.float32)
        gl.compose(imgs, out_gl, filter)
        NumpyCompositor(tw, th).compose(imgs, out_np, filter)
        # Hardware texture filters may use 8-bit interpolation weights (llvmpipe is exact).
        np.testing.assert_allclose(out_gl, out_np, atol=1.5e-2)
        assert np.abs(out_gl - out_np).mean() < 2e-3
    finally:
        gl.release()


def test_make_compositor_falls_back():
    comp = make_compositor(8, 8, prefer_gl=False)
    assert isinstance(comp, NumpyCompositor) and "GL disabled" in comp.description


def test_display_thread_composes_into_its_buffer():
    d = DisplayThread(32, 16, prefer_gl=False)
    d.start()
    try:
        assert d.wait_ready(5)
        img = np.full((4, 4, 3), 0.25, np.float32)
        d.submit([img])
        for _ in range(500):
            if d.version:
                break
            import time
            time.sleep(0.01)
        assert d.version == 1
        view = d.buffer.reshape(16, 32, 4)
        x, y, w, h = layout_rects(1, 4, 4, 32, 16)[0]
        with d.lock:
            assert_fill(view[y:y + h, x:x + w], [[[0.25, 0.25, 0.25, 1.0]]])
    finally:
        d.stop()
    assert not d.is_alive()


def _wait_version(d, n):
    import time
    for _ in range(500):
        if d.version >= n:
            return
        time.sleep(0.01)


def test_display_thread_falls_back_to_numpy_when_gl_dies(monkeypatch):
    from app.gui import gl_display

    class LostContext:
        description = "moderngl (fake)"

        def compose(self, *a):
            raise GLUnavailable("GL failed: context lost")

    monkeypatch.setattr(gl_display, "make_compositor", lambda *a: LostContext())
    d = DisplayThread(32, 16)
    d.start()
    try:
        assert d.wait_ready(5)
        d.submit([np.full((4, 4, 3), 0.5, np.float32)])
        _wait_version(d, 1)
        assert d.version == 1 and d.description.startswith("numpy") and "context lost" in d.description
    finally:
        d.stop()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_display_thread_says_when_it_stops_on_an_error():
    """A compose that fails for another reason is a bug: not hidden, and the status line
    (which shows the description) says the display stopped."""
    d = DisplayThread(32, 16, prefer_gl=False)
    d.start()
    try:
        assert d.wait_ready(5)
        d.submit([])  # nothing to compose
        d.join(5)
        assert not d.is_alive() and d.description.startswith("stopped by an error (IndexError")
    finally:
        d.stop()


def test_triton_is_loaded_before_the_first_gl_context(tmp_path):
    """Triton loaded after Mesa's llvmpipe crashed the GUI (two LLVMs; a segfault under
    Xvfb). A stand-in triton package records when it is imported: every way into GL
    (the display check's probe context, the GL display module, the lab tab) must have
    imported it before any context is made."""
    import os
    import subprocess
    import sys
    import textwrap
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    stub = tmp_path / "stub"
    (stub / "triton").mkdir(parents=True)
    (stub / "triton" / "__init__.py").write_text("")
    (stub / "moderngl.py").write_text(textwrap.dedent("""
        import sys
        CALLS = []
        def create_standalone_context(*a, **k):
            CALLS.append("triton" in sys.modules)
            raise RuntimeError("stand-in moderngl: no context")
    """))
    code = textwrap.dedent("""
        import sys
        from app.commands.gui import gl_problem
        assert "triton" not in sys.modules
        assert gl_problem() is not None
        import moderngl
        assert moderngl.CALLS == [True], moderngl.CALLS
        for mod in ("app.gui.gl_display", "app.gui.lab_tab"):
            sys.modules.pop("triton")
            sys.modules.pop(mod, None)
            __import__(mod)
            assert "triton" in sys.modules, mod
        print("OK")
    """)
    env = dict(os.environ, PYTHONPATH=str(stub) + os.pathsep + root)
    r = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-2000:]
