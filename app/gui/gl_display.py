"""Display work for the GUI: upsample small renders into the viewport texture.

The worker renders at 1/8 .. full resolution; the GUI shows a fixed-size
RGBA float32 texture. This module composes one or two images (A/B compare)
side by side into that texture, each letterboxed to keep its aspect ratio,
with bilinear (or nearest) filtering:

* ``GLCompositor``: moderngl standalone context (EGL first, so it needs no
  display; else GLX). The GPU's texture filter does the upsampling into a
  float framebuffer which is read straight back into the texture buffer.
* ``NumpyCompositor``: the same maths on the CPU, used when no GL context can
  be made. Both follow the half-pixel convention (align_corners=False, edges
  clamped), so they agree to float rounding.

A GL context is current per thread, and dearpygui's own context lives on the
GUI thread, so the compositor runs on its own ``DisplayThread``.
"""
from __future__ import annotations

import threading

import numpy as np
from renderer.kernels import preload_before_gl

# At import, before any GL context: see preload_before_gl (Triton and llvmpipe's LLVM).
preload_before_gl()


def layout_rects(n: int, img_w: int, img_h: int, tex_w: int, tex_h: int,
                 gap: int = 8) -> list[tuple[int, int, int, int]]:
    """Rects (x, y, w, h), y down, in texture pixels for ``n`` equal images side by side.

    Each image gets a (tex_w - gap*(n-1)) / n wide column and is scaled to fit it
    with its aspect kept, centred in the column and vertically.
    """
    if n < 1:
        raise ValueError(f"need at least one image, got {n}")
    col_w = (tex_w - gap * (n - 1)) / n
    scale = min(col_w / img_w, tex_h / img_h)
    w, h = max(1, int(round(img_w * scale))), max(1, int(round(img_h * scale)))
    rects = []
    for i in range(n):
        x0 = i * (col_w + gap) + (col_w - w) / 2
        rects.append((int(round(x0)), int(round((tex_h - h) / 2)), w, h))
    return rects


def _src_coords(n_out: int, n_in: int):
    """Bilinear source indices and weights for one axis (half-pixel centres, clamped)."""
    s = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    s = np.clip(s, 0.0, n_in - 1)
    i0 = np.floor(s).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (s - i0).astype(np.float32)


def resize(img: np.ndarray, out_h: int, out_w: int, filter: str = "linear") -> np.ndarray:
    """(h, w, C) float32 -> (out_h, out_w, C) float32.

    'linear' matches GL_LINEAR with CLAMP_TO_EDGE; 'nearest' picks the source
    pixel whose area contains the output pixel centre (GL_NEAREST).
    """
    img = np.asarray(img, dtype=np.float32)
    h, w = img.shape[:2]
    if filter == "nearest":
        yi = np.minimum(((np.arange(out_h) + 0.5) * h / out_h).astype(np.int64), h - 1)
        xi = np.minimum(((np.arange(out_w) + 0.5) * w / out_w).astype(np.int64), w - 1)
        return img[yi][:, xi]
    if filter != "linear":
        raise ValueError(f"filter must be 'linear' or 'nearest', got {filter!r}")
    y0, y1, fy = _src_coords(out_h, h)
    x0, x1, fx = _src_coords(out_w, w)
    fy = fy[:, None, None]
    fx = fx[None, :, None]
    rows = img[y0] * (1 - fy) + img[y1] * fy  # (out_h, w, C)
    return rows[:, x0] * (1 - fx) + rows[:, x1] * fx


class NumpyCompositor:
    name = "numpy"

    def __init__(self, tex_w: int, tex_h: int, note: str = ""):
        self.tex_w, self.tex_h = tex_w, tex_h
        self.description = "numpy CPU upsampling" + (f" ({note})" if note else "")

    def compose(self, images, out: np.ndarray, filter: str = "linear", background=(0.1, 0.1, 0.1)) -> None:
        """Write images [(h, w, 3) float32, ...] side by side into out (tex_h, tex_w, 4)."""
        out[..., :3] = background
        out[..., 3] = 1.0
        h, w = images[0].shape[:2]
        for img, (x, y, rw, rh) in zip(images, layout_rects(len(images), w, h, self.tex_w, self.tex_h)):
            out[y:y + rh, x:x + rw, :3] = resize(img[..., :3], rh, rw, filter)


_VS = """
#version 330
in vec2 in_pos;
out vec2 uv;
void main() {
    uv = in_pos;
    gl_Position = vec4(in_pos * 2.0 - 1.0, 0.0, 1.0);
}
"""
_FS = """
#version 330
uniform sampler2D image;
in vec2 uv;
out vec4 color;
void main() {
    color = vec4(texture(image, uv).rgb, 1.0);
}
"""


class GLUnavailable(RuntimeError):
    """No usable OpenGL here: no context, too old a version, or the context failed."""


class GLCompositor:
    """Upsampling by the GPU's texture filter into an RGBA32F framebuffer.

    Layout trick: the framebuffer's GL row 0 (bottom) is used as texture row 0
    (top), and image row 0 is uploaded as GL texture row 0, so a plain readback
    is already in the top-row-first order dearpygui expects: no flip, no copy.
    """

    name = "moderngl"

    def __init__(self, tex_w: int, tex_h: int, backend: str | None = None):
        import moderngl

        self.tex_w, self.tex_h = tex_w, tex_h
        errors = []
        self.ctx = None
        for b in ([backend] if backend else ["egl", None]):
            try:
                self.ctx = (moderngl.create_standalone_context(backend=b) if b
                            else moderngl.create_standalone_context())
                self.backend = b or "glx"
                break
            except Exception as exc:  # glcontext raises plain Exception: "no such backend here", try the next
                errors.append(f"{b or 'default'}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        if self.ctx is None:
            raise GLUnavailable("no OpenGL context: " + "; ".join(errors))
        if self.ctx.version_code < 330:
            raise GLUnavailable(f"OpenGL {self.ctx.version_code} < 3.3")
        ctx = self.ctx
        self.prog = ctx.program(vertex_shader=_VS, fragment_shader=_FS)
        quad = np.array([0, 0, 1, 0, 0, 1, 1, 1], dtype="f4")
        self.vbo = ctx.buffer(quad.tobytes())
        self.vao = ctx.vertex_array(self.prog, [(self.vbo, "2f", "in_pos")])
        self.target = ctx.texture((tex_w, tex_h), 4, dtype="f4")
        self.fbo = ctx.framebuffer(color_attachments=[self.target])
        self._tex = None
        renderer = ctx.info.get("GL_RENDERER", "?")
        self.description = f"moderngl {self.backend.upper()} ({renderer}) GPU upsampling"

    def _texture(self, h: int, w: int):
        if self._tex is None or self._tex.size != (w, h):
            if self._tex is not None:
                self._tex.release()
            self._tex = self.ctx.texture((w, h), 3, dtype="f4")
            self._tex.repeat_x = self._tex.repeat_y = False  # CLAMP_TO_EDGE like the numpy path
        return self._tex

    def compose(self, images, out: np.ndarray, filter: str = "linear", background=(0.1, 0.1, 0.1)) -> None:
        import moderngl

        try:
            self._compose(images, out, filter, background)
        except moderngl.Error as exc:  # the context was lost (a GPU reset, a driver failure)
            raise GLUnavailable(f"GL failed: {exc}") from exc

    def _compose(self, images, out, filter, background) -> None:
        import moderngl

        self.fbo.use()
        self.fbo.viewport = (0, 0, self.tex_w, self.tex_h)
        self.fbo.clear(*background, 1.0)
        h, w = images[0].shape[:2]
        mode = moderngl.LINEAR if filter == "linear" else moderngl.NEAREST
        for img, (x, y, rw, rh) in zip(images, layout_rects(len(images), w, h, self.tex_w, self.tex_h)):
            tex = self._texture(*img.shape[:2])
            tex.write(np.ascontiguousarray(img[..., :3], dtype=np.float32))
            tex.filter = (mode, mode)
            tex.use(0)
            self.fbo.viewport = (x, y, rw, rh)
            self.vao.render(moderngl.TRIANGLE_STRIP)
        self.fbo.read_into(out, viewport=(0, 0, self.tex_w, self.tex_h), components=4, dtype="f4")

    def release(self) -> None:
        self.ctx.release()


def make_compositor(tex_w: int, tex_h: int, prefer_gl: bool = True):
    """GLCompositor if a context can be made, else NumpyCompositor saying why."""
    if prefer_gl:
        try:
            return GLCompositor(tex_w, tex_h)
        except GLUnavailable as exc:  # the status line shows the description, and why
            return NumpyCompositor(tex_w, tex_h, note=f"GL unavailable: {exc}")
    return NumpyCompositor(tex_w, tex_h, note="GL disabled")


def draw_overlays(out: np.ndarray, images, overlays, tex_w: int, tex_h: int) -> None:
    """Each image's overlay (layer, camera, depth, acc) drawn over its rect of ``out``."""
    from app.gui.overlay import draw_layer

    h, w = images[0].shape[:2]
    for ov, rect in zip(overlays, layout_rects(len(images), w, h, tex_w, tex_h)):
        if ov is not None:
            layer, cam, depth, acc = ov
            draw_layer(out, rect, layer, cam, depth, acc)


class DisplayThread(threading.Thread):
    """Owns the compositor (and its GL context) and the one texture buffer.

    ``buffer`` is the single contiguous float32 RGBA array (tex_h * tex_w * 4)
    handed to dearpygui; it is written only under ``lock``, and the GUI thread
    uploads it under the same lock when ``version`` has advanced.
    """

    def __init__(self, tex_w: int, tex_h: int, prefer_gl: bool = True, background=(0.1, 0.1, 0.1)):
        super().__init__(name="display", daemon=True)
        self.tex_w, self.tex_h = tex_w, tex_h
        self.buffer = np.zeros(tex_w * tex_h * 4, dtype=np.float32)
        self.buffer[3::4] = 1.0
        self.lock = threading.Lock()
        self.version = 0
        self.background = background
        self.prefer_gl = prefer_gl
        self.description = "starting"
        self._cv = threading.Condition()
        self._job = None
        self._stopping = False
        self._ready = threading.Event()

    def submit(self, images, filter: str = "linear", overlays=None) -> None:
        """Queue a composition; a newer submit replaces one not yet started. overlays: per
        image None or (layer, camera, depth, acc), drawn over it (app.gui.overlay.draw_layer)."""
        with self._cv:
            self._job = ([np.asarray(i, dtype=np.float32) for i in images], filter, overlays)
            self._cv.notify()

    def wait_ready(self, timeout: float = 5.0) -> bool:
        return self._ready.wait(timeout)

    def stop(self, timeout: float = 1.0) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self.is_alive():
            self.join(timeout)

    def run(self) -> None:
        comp = None
        try:
            comp = make_compositor(self.tex_w, self.tex_h, self.prefer_gl)
            self.description = comp.description
            self._ready.set()
            self._serve(comp)
        except BaseException as exc:
            # A bug: the view would freeze without a word; the status line shows this instead.
            self.description = f"stopped by an error ({type(exc).__name__}: {exc})"
            raise
        finally:
            self._ready.set()
            if isinstance(comp, GLCompositor):
                comp.release()

    def _serve(self, comp) -> None:
        view = self.buffer.reshape(self.tex_h, self.tex_w, 4)
        while True:
            with self._cv:
                while self._job is None and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    return
                images, filt, overlays = self._job
                self._job = None
            with self.lock:
                try:
                    comp.compose(images, view, filt, self.background)
                except GLUnavailable as exc:  # GL died: the CPU path from now on (run() releases GL)
                    comp = NumpyCompositor(self.tex_w, self.tex_h, note=str(exc))
                    self.description = comp.description
                    comp.compose(images, view, filt, self.background)
                if overlays:
                    draw_overlays(view, images, overlays, self.tex_w, self.tex_h)
                self.version += 1
