"""renderer.compositing.composite_intervals (nerfacto's compositing of samples on
intervals): its torch path and its Triton kernel against a float64 loop along each ray,
the kernel through Triton's CPU interpreter."""
from __future__ import annotations

import math
import textwrap

import torch

from renderer.compositing import composite_intervals
from tests.conftest import gen, needs_triton, run_in_triton_interpreter


def loop_reference(sigma, rgb, t) -> torch.Tensor:
    """(R, 5) float64: colour, opacity, weighted midpoint; front to back along each ray,
    w = T (1 - exp(-sigma delta)), then T *= exp(-sigma delta)."""
    out = []
    for r in range(sigma.shape[0]):
        trans, col, acc, dsum = 1.0, [0.0, 0.0, 0.0], 0.0, 0.0
        for i in range(sigma.shape[1]):
            delta = float(t[r, i + 1]) - float(t[r, i])
            alpha = 1.0 - math.exp(-float(sigma[r, i]) * delta)
            w = trans * alpha
            col = [col[c] + w * float(rgb[r, i, c]) for c in range(3)]
            acc += w
            dsum += w * 0.5 * (float(t[r, i]) + float(t[r, i + 1]))
            trans *= 1.0 - alpha
        out.append(col + [acc, dsum])
    return torch.tensor(out, dtype=torch.float64)


def samples(n_rays: int, s: int, g: torch.Generator):
    """Densities (an empty ray, a ray with one opaque sample), colours, sorted distances."""
    sigma = torch.rand(n_rays, s, generator=g) * 4.0
    sigma[0] = 0.0
    sigma[1, s // 2] = 500.0
    rgb = torch.rand(n_rays, s, 3, generator=g)
    t = torch.cumsum(torch.rand(n_rays, s + 1, generator=g) * 0.3, 1) + 0.05
    return sigma, rgb, t


def test_composite_intervals_torch_path_matches_a_float64_loop():
    sigma, rgb, t = samples(6, 7, gen(0))
    want = loop_reference(sigma, rgb, t)
    out = composite_intervals(sigma.double(), rgb.double(), t.double(), weights=True)
    got = torch.cat([out["rgb"], out["acc"][:, None], out["depth_sum"][:, None]], 1)
    assert (got - want).abs().max() < 1e-10
    assert torch.allclose(out["weights"].sum(-1), out["acc"])
    assert float(want[0, 3]) == 0.0 and float(want[1, 3]) > 0.99  # the empty and the opaque ray


@needs_triton
def test_composite_kernel_matches_a_float64_loop_in_interpreter():
    code = textwrap.dedent("""
        import torch
        from renderer.compositing import composite_intervals
        from renderer.kernels.composite import composite_intervals_triton
        from tests.test_composite_intervals import loop_reference, samples
        g = torch.Generator().manual_seed(1)
        for n_rays, s in ((70, 48), (9, 5)):  # a tile of rays not filled; samples not a power of two
            sigma, rgb, t = samples(n_rays, s, g)
            got = composite_intervals_triton(sigma, rgb, t)
            want = loop_reference(sigma, rgb, t)
            assert got.shape == (n_rays, 5)
            assert (got.double() - want).abs().max() < 1e-5, (got.double() - want).abs().max()
            # Renders (no gradient, no weights asked for) take the kernel.
            with torch.no_grad():
                out = composite_intervals(sigma, rgb, t)
            assert torch.equal(out["rgb"], got[:, :3]) and torch.equal(out["depth_sum"], got[:, 4])
        print("OK")
    """)
    run_in_triton_interpreter(code)
