"""Input encodings for coordinate networks.

Every encoding is an nn.Module mapping (..., D) -> (..., out_dim) with an
``out_dim`` attribute, so fields can be built without knowing which one is used.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class Identity(nn.Module):
    """No mapping: the plain MLP baseline that shows spectral bias."""

    def __init__(self, in_dim: int):
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class PositionalEncoding(nn.Module):
    """NeRF's gamma(p) = (p, sin(2^k pi p), cos(2^k pi p)) for k < L.

    (..., D) -> (..., D * (include_input + 2L)), laid out as
    [p, sin(2^0 pi p), cos(2^0 pi p), sin(2^1 pi p), ...] with each block D wide.
    ``use_pi=False`` drops the pi factor (the official NeRF code does, the paper
    does not); the paper's form is the default.
    """

    def __init__(self, in_dim: int, n_freqs: int, include_input: bool = True, use_pi: bool = True):
        super().__init__()
        if n_freqs < 0:
            raise ValueError(f"number of frequencies must be >= 0, got {n_freqs}")
        self.in_dim, self.n_freqs, self.include_input = in_dim, n_freqs, include_input
        scale = math.pi if use_pi else 1.0
        self.register_buffer("freqs", scale * 2.0 ** torch.arange(n_freqs, dtype=torch.float32),
                             persistent=False)
        self.out_dim = in_dim * (int(include_input) + 2 * n_freqs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [x] if self.include_input else []
        if self.n_freqs:
            xf = x[..., None, :] * self.freqs[:, None].to(x.dtype)  # (..., L, D)
            sc = torch.stack([torch.sin(xf), torch.cos(xf)], -2)  # (..., L, 2, D)
            parts.append(sc.flatten(-3))
        return torch.cat(parts, -1) if len(parts) > 1 else parts[0]


class FourierFeatures(nn.Module):
    """gamma(v) = [a_j cos(2 pi b_j.v), a_j sin(2 pi b_j.v)] (Tancik et al. 2020).

    B (M, D) is fixed (a buffer, saved in checkpoints, never trained).
    (..., D) -> (..., 2M).
    """

    def __init__(self, B: torch.Tensor, a: torch.Tensor | None = None):
        super().__init__()
        self.in_dim = B.shape[1]
        self.register_buffer("B", B.float())
        self.register_buffer("a", torch.ones(B.shape[0]) if a is None else a.float())
        self.out_dim = 2 * B.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In float32 even inside autocast: b_j.v reaches tens of radians for a large sigma,
        # where a bf16 product (8-bit mantissa) would be off by a sizeable fraction of a turn.
        with torch.autocast(x.device.type, enabled=False):
            dt = torch.promote_types(x.dtype, torch.float32)
            proj = 2.0 * math.pi * (x.to(dt) @ self.B.T.to(dt))
            a = self.a.to(dt)
            return torch.cat([a * torch.cos(proj), a * torch.sin(proj)], -1)


def gaussian_fourier_features(in_dim: int, n_features: int, sigma: float, seed: int = 0) -> FourierFeatures:
    """Random Fourier features with B ~ N(0, sigma^2), reproducible from ``seed``."""
    if sigma <= 0 or n_features <= 0:
        raise ValueError(f"need sigma > 0 and n_features > 0, got sigma={sigma}, n={n_features}")
    g = torch.Generator().manual_seed(seed)
    return FourierFeatures(torch.randn(n_features, in_dim, generator=g) * sigma)


def basic_fourier_features(in_dim: int) -> FourierFeatures:
    """The paper's 'basic' mapping: B = I, i.e. [cos(2 pi v), sin(2 pi v)]."""
    return FourierFeatures(torch.eye(in_dim))


def make_encoding(kind: str, in_dim: int, n_freqs: int = 10, sigma: float = 10.0,
                  n_features: int = 256, seed: int = 0) -> nn.Module:
    """Factory used by configs: kind in {'none', 'pe', 'basic', 'gaussian'}."""
    if kind == "none":
        return Identity(in_dim)
    if kind == "pe":
        return PositionalEncoding(in_dim, n_freqs)
    if kind == "basic":
        return basic_fourier_features(in_dim)
    if kind == "gaussian":
        return gaussian_fourier_features(in_dim, n_features, sigma, seed)
    raise ValueError(f"unknown encoding {kind!r}; choose none, pe, basic or gaussian")
