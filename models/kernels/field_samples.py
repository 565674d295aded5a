"""Triton: the radiance field's hash features at a render's samples, from the rays, in one pass.

A render places S samples on each of R rays as intervals between distances t (R, S + 1)
and needs the hash encoding of each interval's midpoint after mip-NeRF 360's
contraction. The torch path makes the midpoints, the points, the contraction and the
cube mapping as separate passes over the R S points (each writes 12 bytes a point),
then the hash kernel (models/kernels/hash_encode.py) reads the points once per level
and writes each level's two float32 features 128 bytes apart, one level at a time.
Here a block of points is computed once from its rays and goes through every level
(models.kernels.hash_encode._level_features, the level's layout known when compiling),
and each point's features are written as one row of float16 (the torch path's first
layer runs in bf16 under autocast: float16 keeps three more bits of every feature, and
hash features are far inside its range). The table is read from a float16 copy: an
entry's two features are then one 4-byte load, and the 16 levels' tables at the
defaults fit in the L2 cache of a large GPU (docs/real_scenes.md, seventeenth session).
Reference: the torch path, NerfactoField._x01 and HashEncoding at the midpoints
(tests/test_field_samples_kernel.py, through Triton's interpreter).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from models.kernels import latest
from models.kernels.hash_encode import _level_features, dense_levels
from models.kernels.proposal_weights import _contracted01

POINTS_PER_PROGRAM = 128
NUM_WARPS = 4


@triton.jit
def _field_samples_fwd(o_ptr, d_ptr, t_ptr, table_ptr, res_ptr, off_ptr, out_ptr, N, S, mask_t,
                       L: tl.constexpr, DENSE: tl.constexpr, INF: tl.constexpr, BLOCK: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = rows < N
    ray = rows // S
    tp = t_ptr + ray * (S + 1) + (rows - ray * S)
    mid = 0.5 * (tl.load(tp, mask=m, other=0.0) + tl.load(tp + 1, mask=m, other=0.0))
    px = tl.load(o_ptr + ray * 3, mask=m, other=0.0) + tl.load(d_ptr + ray * 3, mask=m, other=0.0) * mid
    py = tl.load(o_ptr + ray * 3 + 1, mask=m, other=0.0) + tl.load(d_ptr + ray * 3 + 1, mask=m, other=0.0) * mid
    pz = tl.load(o_ptr + ray * 3 + 2, mask=m, other=0.0) + tl.load(d_ptr + ray * 3 + 2, mask=m, other=0.0) * mid
    x, y, z = _contracted01(px, py, pz, INF)
    for lvl in tl.static_range(L):
        f0, f1 = _level_features(table_ptr, x, y, z, tl.load(res_ptr + lvl), tl.load(off_ptr + lvl), mask_t, m,
                                 lvl < DENSE)
        dst = out_ptr + rows[:, None] * (2 * L) + 2 * lvl + tl.arange(0, 2)[None, :]
        tl.store(dst, tl.join(f0, f1).to(tl.float16), mask=m[:, None])


def supports(encoding) -> bool:
    """Whether the kernel evaluates this HashEncoding: two features per level."""
    return encoding.table.shape[1] == 2


_HALF: dict = {}  # the float16 copy of the last table seen (models.kernels.latest)


def half_table(table: torch.Tensor) -> torch.Tensor:
    """A float16 copy of ``table``, made again only when the table changed."""
    return latest(_HALF, (table,), (), lambda: table.detach().half().contiguous())


def field_features_triton(encoding, o: torch.Tensor, dirs: torch.Tensor, t: torch.Tensor, contraction: str,
                          half: bool = True) -> torch.Tensor:
    """(R S, 2 L) float16: ``encoding``'s features at the midpoints of the intervals
    between the distances t (R, S + 1) along the rays o + t dirs (R, 3; the field's
    normalised frame), contracted (``contraction``: "inf", else the L2 norm) into the unit cube;
    ray by ray. ``half``: read the table's float16 copy (else the float32 table itself;
    bench/bench_kernels.py compares them)."""
    n_rays, s = t.shape[0], t.shape[1] - 1
    n_levels = len(encoding.resolutions)
    out = torch.empty(n_rays * s, 2 * n_levels, device=t.device, dtype=torch.float16)
    if out.shape[0] == 0:
        return out
    f32 = lambda v: v.detach().float().contiguous()  # noqa: E731
    tab = half_table(encoding.table) if half else encoding.table.detach().contiguous()
    _field_samples_fwd[(triton.cdiv(out.shape[0], POINTS_PER_PROGRAM),)](
        f32(o), f32(dirs), f32(t), tab, encoding.res_t, encoding.off_t, out, out.shape[0], s,
        (1 << encoding.log2_hashmap_size) - 1, L=n_levels, DENSE=dense_levels(encoding), INF=contraction == "inf",
        BLOCK=POINTS_PER_PROGRAM, num_warps=NUM_WARPS)
    return out
