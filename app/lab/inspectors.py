"""Inspectors for positional encodings (compute only, numpy float64).

PE inspector (Vaswani et al. 2017): PE(pos, 2i) = sin(pos w_i), PE(pos, 2i+1) =
cos(pos w_i), w_i = base^(-2i/d). Because each (sin, cos) pair is a point on a
circle turning at rate w_i, PE(pos + k) = M_k PE(pos) with M_k block-diagonal
2x2 rotations by k w_i: independent of pos, orthogonal. And PE(p).PE(q) =
sum_i cos(w_i (p - q)) depends on the distance only.

Kernel inspector (Tancik et al. 2020): any mapping of the form gamma(v) =
[a_j cos(2 pi b_j.v), a_j sin(2 pi b_j.v)] has gamma(v1).gamma(v2) =
sum_j a_j^2 cos(2 pi b_j.(v1 - v2)) = h(v1 - v2): a stationary kernel whose
width the frequencies b_j set. NeRF's PE (sin/cos of 2^k pi p) is such a mapping
with b = 2^(k-1) e_d, apart from its optional raw-input part.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch

from models.encoding import FourierFeatures, Identity, PositionalEncoding


# ----------------------------------------------------------------------------- transformer PE

def _check_pe_args(max_pos: int, d_model: int, base: float) -> None:
    if d_model < 2 or d_model % 2:
        raise ValueError(f"d_model must be an even number >= 2, got {d_model}")
    if max_pos < 1:
        raise ValueError(f"max position must be >= 1, got {max_pos}")
    if not base > 1:
        raise ValueError(f"base must be > 1, got {base}")


def pe_frequencies(d_model: int, base: float = 10000.0) -> np.ndarray:
    """(d_model/2,) angular rates w_i = base^(-2i/d_model) (radians per position)."""
    return base ** (-np.arange(0, d_model, 2, dtype=np.float64) / d_model)


def transformer_pe(max_pos: int, d_model: int, base: float = 10000.0) -> np.ndarray:
    """(max_pos, d_model) float64 sinusoidal encoding, even columns sin, odd cos."""
    _check_pe_args(max_pos, d_model, base)
    ang = np.arange(max_pos, dtype=np.float64)[:, None] * pe_frequencies(d_model, base)[None, :]
    pe = np.empty((max_pos, d_model))
    pe[:, 0::2] = np.sin(ang)
    pe[:, 1::2] = np.cos(ang)
    return pe


def pe_similarity(pe: np.ndarray, ref: int = 0) -> np.ndarray:
    """(P,) dot products PE(ref) . PE(p) for every position p of pe (P, d)."""
    return pe @ pe[ref]


def pe_similarity_by_distance(d_model: int, max_dist: int, base: float = 10000.0) -> np.ndarray:
    """(max_dist + 1,) the closed form sum_i cos(w_i k) = PE(p).PE(p+k) for any p."""
    k = np.arange(max_dist + 1, dtype=np.float64)
    return np.cos(k[:, None] * pe_frequencies(d_model, base)[None, :]).sum(1)


def rotation_matrix(k: float, d_model: int, base: float = 10000.0) -> np.ndarray:
    """(d_model, d_model) M_k with PE(pos + k) = M_k PE(pos): block i is
    [[cos k w_i, sin k w_i], [-sin k w_i, cos k w_i]] acting on (sin, cos)."""
    _check_pe_args(1, d_model, base)
    th = k * pe_frequencies(d_model, base)
    c, s = np.cos(th), np.sin(th)
    m = np.zeros((d_model, d_model))
    idx = np.arange(0, d_model, 2)
    m[idx, idx], m[idx, idx + 1] = c, s
    m[idx + 1, idx], m[idx + 1, idx + 1] = -s, c
    return m


def rotation_check(max_pos: int, d_model: int, offsets=(1, 5, 10), base: float = 10000.0) -> list[dict]:
    """For each offset k: M_k applied to every PE(pos), pos + k < max_pos, against
    PE(pos + k). Keys: k, pairs, max_err (max |PE(pos+k) - M_k PE(pos)|),
    orth_err (max |M_k^T M_k - I|), det, off_block (max |entry| outside the 2x2
    diagonal blocks), pos_independent_err (max over pos of the least-squares 2x2
    block fitted from that single pos pair vs M_k; shows one matrix fits all pos)."""
    pe = transformer_pe(max_pos, d_model, base)
    out = []
    for k in offsets:
        k = int(k)
        if not 0 < k < max_pos:
            raise ValueError(f"offset {k} must be in 1..{max_pos - 1} for max position {max_pos}")
        m = rotation_matrix(k, d_model, base)
        pred = pe[:-k] @ m.T  # row pos: M_k PE(pos)
        err = float(np.abs(pred - pe[k:]).max())
        orth = float(np.abs(m.T @ m - np.eye(d_model)).max())
        blocks = np.kron(np.eye(d_model // 2), np.ones((2, 2))).astype(bool)
        off = float(np.abs(m[~blocks]).max()) if d_model > 2 else 0.0
        # A 2x2 rotation is fixed by where it sends one unit vector: recover the
        # angle of each block from each pos separately and compare with k w_i.
        s0, c0 = pe[:-k, 0::2], pe[:-k, 1::2]
        s1, c1 = pe[k:, 0::2], pe[k:, 1::2]
        ang = np.arctan2(s1 * c0 - c1 * s0, c1 * c0 + s1 * s0)  # (pairs, d/2) angle turned
        want = np.angle(np.exp(1j * k * pe_frequencies(d_model, base)))  # wrapped to (-pi, pi]
        dif = np.abs(np.angle(np.exp(1j * (ang - want[None, :]))))
        out.append(dict(k=k, pairs=max_pos - k, max_err=err, orth_err=orth, det=float(np.linalg.det(m)),
                        off_block=off, pos_independent_err=float(dif.max())))
    return out


def format_rotation_check(rows: list[dict]) -> str:
    lines = [f"{'k':>4} {'pairs':>6} {'max|PE(p+k)-M_k PE(p)|':>24} {'max|M_k^T M_k - I|':>20} "
             f"{'det M_k':>8} {'off-block':>10} {'max angle err':>14}"]
    for r in rows:
        lines.append(f"{r['k']:>4} {r['pairs']:>6} {r['max_err']:>24.3e} {r['orth_err']:>20.3e} "
                     f"{r['det']:>8.5f} {r['off_block']:>10.1e} {r['pos_independent_err']:>14.3e}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- mapping kernels

def nerf_pe_spectrum(in_dim: int, n_freqs: int, use_pi: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """NeRF's sin/cos(2^k pi p) written as 2 pi b.p: b = 2^k / 2 e_d (2^k / (2 pi)
    without the pi). Returns B (n_freqs * in_dim, in_dim), a = ones."""
    scale = 0.5 if use_pi else 1.0 / (2 * math.pi)
    rows = [2.0 ** k * scale * np.eye(in_dim)[d] for k in range(n_freqs) for d in range(in_dim)]
    return np.array(rows, np.float64).reshape(-1, in_dim), np.ones(len(rows))


def mapping_spectrum(enc) -> tuple[np.ndarray, np.ndarray]:
    """Encoding module -> (B (M, D), a (M,)) float64 of its Fourier form.

    PositionalEncoding's raw-input part (include_input) is not a Fourier feature
    and its dot product p1.p2 is not stationary: it is left out here.
    """
    if isinstance(enc, FourierFeatures):
        return enc.B.detach().double().cpu().numpy(), enc.a.detach().double().cpu().numpy()
    if isinstance(enc, PositionalEncoding):
        # From the module's own (float32) rates rather than nerf_pe_spectrum, so the
        # kernel matches what the module computes to float64 round-off.
        f = enc.freqs.detach().double().cpu().numpy() / (2 * math.pi)  # (L,)
        B = (f[:, None, None] * np.eye(enc.in_dim)[None]).reshape(-1, enc.in_dim)
        return B, np.ones(B.shape[0])
    if isinstance(enc, Identity):
        raise ValueError("the identity mapping has no stationary kernel (v1.v2 depends on v1 and v2)")
    raise TypeError(f"no Fourier form known for {type(enc).__name__}")


def induced_kernel(B: np.ndarray, a: np.ndarray, dv: np.ndarray, normalise: bool = True) -> np.ndarray:
    """h(dv) = sum_j a_j^2 cos(2 pi b_j.dv) for dv (..., D) -> (...,); divided by
    h(0) = sum_j a_j^2 when normalise (so h(0) = 1)."""
    B = np.asarray(B, np.float64)
    a2 = np.asarray(a, np.float64) ** 2
    dv = np.asarray(dv, np.float64)
    h = np.cos(2 * math.pi * (dv @ B.T)) @ a2
    return h / a2.sum() if normalise else h


def kernel_slice(B: np.ndarray, a: np.ndarray, half_width: float = 0.5, n: int = 1001,
                 axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(x (n,), h (n,)): the normalised kernel along one axis for dv in [-hw, hw]."""
    x = np.linspace(-half_width, half_width, n)
    dv = np.zeros((n, B.shape[1]))
    dv[:, axis] = x
    return x, induced_kernel(B, a, dv)


def kernel_fwhm(B: np.ndarray, a: np.ndarray, axis: int = 0, max_dist: float = 1.0, n: int = 20001) -> float:
    """Full width at half maximum of the normalised kernel along ``axis``: twice the
    first distance at which h falls to 0.5 (linear interpolation between samples
    spaced max_dist / (n - 1)). inf if it never does within max_dist."""
    x = np.linspace(0.0, max_dist, n)
    dv = np.zeros((n, B.shape[1]))
    dv[:, axis] = x
    h = induced_kernel(B, a, dv)
    below = np.nonzero(h <= 0.5)[0]
    if below.size == 0:
        return math.inf
    i = int(below[0])
    x0, x1, h0, h1 = x[i - 1], x[i], h[i - 1], h[i]
    return float(2 * (x0 + (h0 - 0.5) / (h0 - h1) * (x1 - x0)))


def empirical_kernel(enc, v1: np.ndarray, v2: np.ndarray) -> np.ndarray:
    """gamma(v1).gamma(v2) / gamma(0).gamma(0) computed through the module itself
    in float64, over its Fourier part. v1, v2 (N, D) -> (N,)."""
    x1 = torch.as_tensor(np.asarray(v1), dtype=torch.float64)
    x2 = torch.as_tensor(np.asarray(v2), dtype=torch.float64)
    z = torch.zeros(1, x1.shape[1], dtype=torch.float64)
    with torch.no_grad():
        enc = copy.deepcopy(enc).double()  # float64 so the check is not limited by float32
        g1, g2, g0 = enc(x1), enc(x2), enc(z)
    if isinstance(enc, PositionalEncoding) and enc.include_input:
        g1, g2, g0 = g1[:, enc.in_dim:], g2[:, enc.in_dim:], g0[:, enc.in_dim:]
    return ((g1 * g2).sum(-1) / (g0 * g0).sum(-1)).numpy()
