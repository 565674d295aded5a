"""Optional Triton kernels for the renderer. Every kernel has a pure-torch
reference next to its caller; the torch path is what runs on CPU and what the
tests compare the kernels with (on CPU through TRITON_INTERPRET=1)."""
from __future__ import annotations

import importlib.util
import os
import sys

_STATE = {"checked": False, "ok": False, "disabled": None}


def available() -> bool:
    """True when Triton imports and no kernel has failed in this process."""
    if _STATE["disabled"]:
        return False
    if not _STATE["checked"]:
        _STATE["checked"] = True
        try:
            import triton  # noqa: F401
            import triton.language  # noqa: F401
            _STATE["ok"] = True
        except Exception:  # noqa: BLE001 - any import failure means: use torch
            _STATE["ok"] = False
    return _STATE["ok"]


def disable(reason: str) -> None:
    """A kernel failed to compile or launch: fall back to torch for the rest of the run."""
    if not _STATE["disabled"]:
        print(f"warning: Triton kernels disabled, using torch fallbacks ({reason})", file=sys.stderr)
    _STATE["disabled"] = reason


def runs_for(t) -> bool:
    """Whether the kernels run for tensor t: on CUDA unless NERFLAB_KERNELS=torch;
    NERFLAB_KERNELS=triton forces them (on CPU tensors too, which only works under
    TRITON_INTERPRET=1: how the tests run them)."""
    mode = os.environ.get("NERFLAB_KERNELS", "auto")
    if mode == "torch" or (mode != "triton" and t.device.type != "cuda"):
        return False
    return available()


def run_or_none(name: str, like, run):
    """run()'s result (a kernel's) where the kernels run for tensors like ``like``
    (``runs_for``); else None, and the caller takes its torch path. A kernel
    that fails disables the kernels for the rest of the run rather than stop it, unless
    NERFLAB_KERNELS=triton asks to see the error."""
    if not runs_for(like):
        return None
    try:
        return run()
    except Exception as exc:  # noqa: BLE001 - a kernel that fails must not stop a run
        if os.environ.get("NERFLAB_KERNELS") == "triton":
            raise
        disable(f"{name}: {exc!r}"[:300])
        return None


def preload_before_gl() -> None:
    """Import Triton now, when installed, before any OpenGL context exists.

    Why: Triton ships its own LLVM and so does Mesa's software rasteriser (llvmpipe, what
    Xvfb and GPU-less desktops use). With Triton loaded after llvmpipe the GUI crashed
    with a segfault (seen under Xvfb, torch 2.13 + triton 3.9): the first Adam optimiser
    imports torch._dynamo, which probes for Triton by importing it. Loaded first, the two
    coexist. CUDA builds of torch install Triton, so this is the usual case on a GPU box.
    """
    if "triton" in sys.modules or importlib.util.find_spec("triton") is None:
        return
    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken Triton only means torch fallbacks later
        pass
