"""Triton: nerfacto's radiance-field MLPs in one pass for renders (no gradients).

From the hash features of R rays x S samples to each sample's density and colour: the
geometry MLP (features -> hidden -> log-density and geometry features), then the colour
head (geometry features plus the ray's direction-and-appearance term -> hidden -> hidden
-> RGB). The torch path runs each layer as its own bf16 product and each activation as
its own pass, and every 64-wide intermediate of the 31 M points of an 800² frame goes
through memory (about 4 GB each): at the frame's size the products and their
elementwise passes cost more than the arithmetic. Here a block of points goes through
all five layers on the tensor cores (``tl.dot``) and only
the density and the colour are written.

The layers are those of the torch path; every width is padded with zeros to a power of
two of at least 16 (what ``tl.dot`` takes), which changes no output: a padded hidden
unit is relu(0) = 0 and feeds nothing. The products take float16 inputs (each layer's
input rounded to float16, as are the weights) and add up in float32: the same 10-bit
mantissa as tf32, finer than the bf16 of the torch path under autocast, and the tensor
cores run float16 at twice tf32's rate. The weights' type is what sets the inputs'
(``weight_dtype``; float32 gives tf32 products, which bench/bench_kernels.py compares).
A program takes 64 points on 2 warps. With fewer than 4 warps Triton multiplies with
the Ampere-style instructions (MMA v2) rather than Hopper's warp-group ones (wgmma),
and that is the point: with float16 inputs, Triton 3.6's wgmma code for this kernel
failed on the H200, with an illegal memory access or NaN, at 4 warps, and at 8 warps
once the features came in as float32; at 2 warps every case ran and matched, and was
the fastest as well (docs/real_scenes.md, eighteenth session). bf16 inputs failed on
the H200 too, and Triton's CPU interpreter, which the tests run the kernel in, gets
bf16 products wrong (Triton 3.9).
Reference: tests/test_radiance_mlp_kernel.py (a float64 evaluation of the same layers,
through Triton's interpreter).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from models.kernels import latest

POINTS_PER_PROGRAM = 64
NUM_WARPS = 2
WEIGHTS = torch.float16  # the products' input type


@triton.jit
def _layer(x, w_ptr, b_ptr, K: tl.constexpr, M: tl.constexpr):
    """x (B, K) times the padded weight (K, M) plus the bias (M,): (B, M) float32. The
    product takes its inputs in the weight's type (float32: tf32 on the tensor cores)."""
    k = tl.arange(0, K)
    j = tl.arange(0, M)
    w = tl.load(w_ptr + k[:, None] * M + j[None, :])
    return tl.dot(x.to(w.dtype), w) + tl.load(b_ptr + j)[None, :]


@triton.jit
def _radiance_fwd(feat_ptr, ray_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, wg_ptr, zg_ptr, wc2_ptr, bc2_ptr,
                  wc3_ptr, bc3_ptr, sigma_ptr, rgb_ptr, N, S, n_in,
                  IN: tl.constexpr, H: tl.constexpr, G: tl.constexpr, CH: tl.constexpr, OUT: tl.constexpr,
                  BLOCK: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = rows < N
    ci = tl.arange(0, IN)
    x = tl.load(feat_ptr + rows[:, None] * n_in + ci[None, :], mask=m[:, None] & (ci[None, :] < n_in),
                other=0.0).to(tl.float32)
    h = tl.maximum(_layer(x, w1_ptr, b1_ptr, IN, H), 0.0)
    g = _layer(h, w2_ptr, b2_ptr, H, G)  # column 0 the log-density, then the geometry features
    cg = tl.arange(0, G)
    tl.store(sigma_ptr + rows, tl.exp(tl.sum(tl.where(cg[None, :] == 0, g, 0.0), axis=1)), mask=m)
    # The colour head's first layer: its geometry part (row 0 of the padded weight is zero,
    # so the log-density does not enter), plus the ray's term, which holds the layer's bias.
    cc = tl.arange(0, CH)
    ray = tl.load(ray_ptr + (rows // S)[:, None] * CH + cc[None, :], mask=m[:, None], other=0.0)
    p = tl.maximum(_layer(g, wg_ptr, zg_ptr, G, CH) + ray.to(tl.float32), 0.0)
    q = tl.maximum(_layer(p, wc2_ptr, bc2_ptr, CH, CH), 0.0)
    o = _layer(q, wc3_ptr, bc3_ptr, CH, OUT)
    co = tl.arange(0, OUT)
    tl.store(rgb_ptr + rows[:, None] * 3 + co[None, :], tl.sigmoid(o), mask=m[:, None] & (co[None, :] < 3))


def _width(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _padded(w: torch.Tensor, rows: int, cols: int, dtype, first_row: int = 0) -> torch.Tensor:
    """w (r, c) into a zero (rows, cols) tensor, from row ``first_row`` on."""
    out = torch.zeros(rows, cols, dtype=dtype, device=w.device)
    out[first_row:first_row + w.shape[0], :w.shape[1]] = w.detach()
    return out


def supports(field_mlp, color_net) -> bool:
    """Whether the kernel evaluates these layers: the geometry MLP Linear-ReLU-Linear and
    the colour head Linear-ReLU-Linear-ReLU-Linear to three outputs."""
    lin = torch.nn.Linear
    relu = torch.nn.ReLU
    return (len(field_mlp) == 3 and isinstance(field_mlp[0], lin) and isinstance(field_mlp[1], relu)
            and isinstance(field_mlp[2], lin) and len(color_net) == 5
            and all(isinstance(color_net[i], lin) for i in (0, 2, 4))
            and all(isinstance(color_net[i], relu) for i in (1, 3)) and color_net[4].out_features == 3)


_CACHE: dict = {}  # the padded weights of the last nets seen (models.kernels.latest)


def _weights(field_mlp, color_net, geo_features: int, n_in: int, weight_dtype
             ) -> tuple[list[torch.Tensor], dict]:
    """``_padded_weights``, made again only when a parameter or the layout changed."""
    params = list(field_mlp.parameters()) + list(color_net.parameters())
    return latest(_CACHE, params, (geo_features, n_in, weight_dtype),
                  lambda: _padded_weights(field_mlp, color_net, geo_features, n_in, weight_dtype))


def _padded_weights(field_mlp, color_net, geo_features: int, n_in: int, weight_dtype
                    ) -> tuple[list[torch.Tensor], dict]:
    """The kernel's weight arguments (each layer's weight transposed and zero-padded, in
    ``weight_dtype``; its bias padded, float32; row 0 of the colour head's geometry weight is
    zero: the log-density does not enter it) and its padded widths."""
    l1, l2 = field_mlp[0], field_mlp[2]
    c1, c2, c3 = color_net[0], color_net[2], color_net[4]
    w = dict(IN=_width(n_in), H=_width(l1.out_features), G=_width(l2.out_features), CH=_width(c2.in_features),
             OUT=16)
    f32 = torch.float32
    bias = lambda b, m: _padded(b.reshape(1, -1), 1, m, f32).reshape(-1)  # noqa: E731
    wt = weight_dtype
    args = [_padded(l1.weight.t(), w["IN"], w["H"], wt), bias(l1.bias, w["H"]),
            _padded(l2.weight.t(), w["H"], w["G"], wt), bias(l2.bias, w["G"]),
            _padded(c1.weight[:, :geo_features].t(), w["G"], w["CH"], wt, first_row=1),
            torch.zeros(w["CH"], dtype=f32, device=c1.weight.device),  # its bias is in the ray term
            _padded(c2.weight.t(), w["CH"], w["CH"], wt), bias(c2.bias, w["CH"]),
            _padded(c3.weight.t(), w["CH"], w["OUT"], wt), bias(c3.bias, w["OUT"])]
    return args, w


def radiance_mlp_triton(feats: torch.Tensor, ray_term: torch.Tensor, field_mlp, color_net, geo_features: int,
                        points_per_program: int = POINTS_PER_PROGRAM, num_warps: int = NUM_WARPS,
                        weight_dtype=WEIGHTS):
    """(sigma (N,), rgb (N, 3)) float32 of N = R S samples, ray by ray, from their hash
    features ``feats`` (N, n_in; float32, or float16 from models/kernels/field_samples.py)
    and their rays' ``ray_term`` (R, color_hidden): the colour head's first layer applied
    to the ray's direction and appearance code, with its bias
    (models.nerfacto.NerfactoField._ray_term). ``field_mlp`` maps the features to the
    log-density and ``geo_features`` geometry features; ``color_net`` maps those features
    (its first layer's leading columns) plus the ray term to RGB."""
    n, n_in = feats.shape
    n_rays = ray_term.shape[0]
    sigma = torch.empty(n, device=feats.device, dtype=torch.float32)
    rgb = torch.empty(n, 3, device=feats.device, dtype=torch.float32)
    if n == 0:
        return sigma, rgb
    if n % n_rays:
        raise ValueError(f"{n} samples are not a whole number of samples for {n_rays} rays")
    if weight_dtype != torch.float32 and num_warps >= 4:  # wgmma: the module doc, Triton 3.6 failed there
        raise ValueError(f"{weight_dtype} products need fewer than 4 warps, got {num_warps}")
    with torch.no_grad(), torch.autocast(feats.device.type, enabled=False):  # the weights as given
        args, w = _weights(field_mlp, color_net, geo_features, n_in, weight_dtype)
        _radiance_fwd[(triton.cdiv(n, points_per_program),)](
            feats.contiguous(), ray_term.float().contiguous() if ray_term.shape[1] == w["CH"]
            else _padded(ray_term, n_rays, w["CH"], torch.float32), *args, sigma, rgb,
            n, n // n_rays, n_in, **w, BLOCK=points_per_program, num_warps=num_warps)
    return sigma, rgb
