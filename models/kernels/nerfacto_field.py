"""Triton: nerfacto's radiance field at render points in one pass, without gradients.

Per point: the contraction into the hash grid's cube, the hash encoding (two features a
level), the geometry MLP (one hidden layer) to the log-density and the geometry
features, then the colour head on those features plus its ray's precomputed part
(NerfactoField._ray_term: the direction's SH encoding and the appearance code through
the head's first layer) to the colour. The torch path writes every intermediate of a
render's ~30 M points to memory (the features, three hidden layers, a concatenation); here
they stay in registers and only the density and the colour are written.

The hash levels' features go into the first layer as rank-one updates (each level's two
features are separate vectors); the later layers are tensor-core products of the
(BLOCK, width) tiles. Layers narrower than 16 are padded to 16 with zeros (tl.dot's
smallest size). Reference: the torch path (tests/test_field_kernel.py, through Triton's
interpreter).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from models.kernels.hash_encode import _cell, _corner

BLOCK = 64


@triton.jit
def _field_fwd(x_ptr, term_ptr, table_ptr, res_ptr, off_ptr, dense_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr,
               wg_ptr, wc2_ptr, bc2_ptr, wc3_ptr, bc3_ptr, sigma_ptr, rgb_ptr, N, S, mask_t,
               L: tl.constexpr, H: tl.constexpr, G: tl.constexpr, C: tl.constexpr, INF: tl.constexpr,
               BLOCK: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = rows < N
    px = tl.load(x_ptr + rows * 3, mask=m, other=0.0)
    py = tl.load(x_ptr + rows * 3 + 1, mask=m, other=0.0)
    pz = tl.load(x_ptr + rows * 3 + 2, mask=m, other=0.0)
    if INF:  # renderer.contraction.contract, then to_unit_cube
        nrm = tl.maximum(tl.maximum(tl.abs(px), tl.abs(py)), tl.abs(pz))
    else:
        nrm = tl.sqrt(px * px + py * py + pz * pz)
    safe = tl.maximum(nrm, 1.0)
    s = tl.where(nrm <= 1.0, 1.0, (2.0 - 1.0 / safe) / safe)
    x = (px * s + 2.0) * 0.25
    y = (py * s + 2.0) * 0.25
    z = (pz * s + 2.0) * 0.25
    jh = tl.arange(0, H)
    h1 = tl.zeros((BLOCK, H), dtype=tl.float32) + tl.load(b1_ptr + jh)[None, :]
    for lvl in tl.static_range(L):
        res = tl.load(res_ptr + lvl)
        off = tl.load(off_ptr + lvl).to(tl.int64)
        dense = tl.load(dense_ptr + lvl)
        ix, iy, iz, fx, fy, fz = _cell(x, y, z, res)
        f0 = tl.zeros((BLOCK,), dtype=tl.float32)
        f1 = tl.zeros((BLOCK,), dtype=tl.float32)
        for c in tl.static_range(8):
            idx, wt = _corner(ix, iy, iz, fx, fy, fz, res + 1, dense, mask_t, c)
            g = (off + idx.to(tl.int64)) * 2
            f0 += wt * tl.load(table_ptr + g, mask=m, other=0.0).to(tl.float32)
            f1 += wt * tl.load(table_ptr + g + 1, mask=m, other=0.0).to(tl.float32)
        # w1 is the first layer's weight transposed, (2 L, H): row 2 l + f reads feature f of level l.
        h1 += f0[:, None] * tl.load(w1_ptr + (2 * lvl) * H + jh)[None, :]
        h1 += f1[:, None] * tl.load(w1_ptr + (2 * lvl + 1) * H + jh)[None, :]
    h1 = tl.maximum(h1, 0.0)
    jg = tl.arange(0, G)
    h = tl.dot(h1, tl.load(w2_ptr + jh[:, None] * G + jg[None, :])) + tl.load(b2_ptr + jg)[None, :]
    log_sigma = tl.sum(tl.where(jg[None, :] == 0, h, 0.0), 1)
    tl.store(sigma_ptr + rows, tl.exp(log_sigma), mask=m)
    # The colour head: wg (G, C) has a zero row 0, so the log-density column adds nothing.
    jc = tl.arange(0, C)
    ray = rows // S
    pre = tl.dot(h, tl.load(wg_ptr + jg[:, None] * C + jc[None, :]))
    pre += tl.load(term_ptr + ray[:, None] * C + jc[None, :], mask=m[:, None], other=0.0)
    a = tl.maximum(pre, 0.0)
    a = tl.dot(a, tl.load(wc2_ptr + jc[:, None] * C + jc[None, :])) + tl.load(bc2_ptr + jc)[None, :]
    a = tl.maximum(a, 0.0)
    j16 = tl.arange(0, 16)
    out = tl.dot(a, tl.load(wc3_ptr + jc[:, None] * 16 + j16[None, :])) + tl.load(bc3_ptr + j16)[None, :]
    rgb = 1.0 / (1.0 + tl.exp(-out))
    tl.store(rgb_ptr + rows[:, None] * 3 + j16[None, :], rgb, mask=m[:, None] & (j16[None, :] < 3))


def _pow2(v: int) -> bool:
    return v >= 16 and v & (v - 1) == 0


def supports(field, color_net) -> bool:
    """Whether the kernel can evaluate this geometry net (models.nerfacto.HashDensity) and
    colour head: two features a level, power-of-two widths of at least 16, the head's
    three layers."""
    enc, mlp = field.encoding, field.mlp
    return (enc.table.shape[1] == 2 and len(mlp) == 3 and _pow2(mlp[0].out_features)
            and _pow2(mlp[2].out_features) and len(color_net) == 5 and _pow2(color_net[0].out_features)
            and color_net[4].out_features == 3)


def field_triton(field, color_net, x_n: torch.Tensor, ray_term: torch.Tensor, contraction) -> tuple:
    """(sigma (N,), rgb (N, 3)) float32 at normalised points x_n (N, 3), which are the
    samples of ray_term's R rays, ray by ray: NerfactoField._radiance_n without gradients."""
    enc, lin1, lin2 = field.encoding, field.mlp[0], field.mlp[2]
    c1, c2, c3 = color_net[0], color_net[2], color_net[4]
    n, g, ch = x_n.shape[0], lin2.out_features, c1.out_features
    dev = x_n.device
    sigma = torch.empty(n, device=dev, dtype=torch.float32)
    rgb = torch.empty(n, 3, device=dev, dtype=torch.float32)
    if n == 0:
        return sigma, rgb
    f32 = lambda t: t.detach().float().contiguous()  # noqa: E731
    wg = torch.zeros(g, ch, device=dev)
    wg[1:] = c1.weight.detach()[:, :g - 1].float().t()
    wc3 = torch.zeros(ch, 16, device=dev)
    wc3[:, :3] = c3.weight.detach().float().t()
    bc3 = torch.zeros(16, device=dev)
    bc3[:3] = c3.bias.detach().float()
    _field_fwd[(triton.cdiv(n, BLOCK),)](
        f32(x_n), f32(ray_term), enc.table.detach().contiguous(), enc.res_t, enc.off_t, enc.dense_t,
        f32(lin1.weight.t()), f32(lin1.bias), f32(lin2.weight.t()), f32(lin2.bias), wg,
        f32(c2.weight.t()), f32(c2.bias), wc3, bc3, sigma, rgb, n, n // ray_term.shape[0],
        (1 << enc.log2_hashmap_size) - 1, L=len(enc.resolutions), H=lin1.out_features, G=g, C=ch,
        INF=contraction == "inf", BLOCK=BLOCK, num_warps=4)
    return sigma, rgb
