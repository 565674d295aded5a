"""Optional Triton kernels for models (availability is shared with renderer.kernels)."""
