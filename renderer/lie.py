"""Rigid camera motions: the exponential maps of so(3) and se(3).

Shared by pose recovery (app/tools/inerf.py: one se(3) twist for one camera) and by
fields that refine their training cameras (a batch of SO(3) x R^3 deltas, one per image).
Everything is differentiable at the identity, where both optimisations start. Nothing
here is a matrix product: W^2 = w w^T - |w|^2 I and the rotations are applied as sums
of products, so an autocast region around a caller (bf16 training steps) cannot round a
camera's rotation to 8 bits, which on a photo is pixels of misaligned rays.
"""
from __future__ import annotations

import torch

# |omega| below this uses the Taylor series of the coefficients: the closed
# forms are 0/0 at omega = 0, which is exactly where optimisation starts, and
# in float32 (1 - cos t) and (t - sin t) lose most digits to cancellation for
# small t. At 0.2 the series (to t^8) is exact to ~1e-14 and the closed forms
# above it keep ~1e-6 relative accuracy in float32.
_SMALL = 0.2


def hat(w: torch.Tensor) -> torch.Tensor:
    """Skew matrix (..., 3, 3) of w (..., 3): hat(w) @ x == cross(w, x)."""
    x, y, z = w.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([torch.stack([o, -z, y], -1), torch.stack([z, o, -x], -1),
                        torch.stack([-y, x, o], -1)], -2)


def _coefficients(theta2: torch.Tensor):
    """A = sin t / t, B = (1 - cos t) / t^2, C = (t - sin t) / t^3 as functions of t^2.

    Both branches are evaluated on safe inputs so that torch.where never
    propagates a NaN gradient from the branch it does not select.
    """
    small = theta2 < _SMALL ** 2
    t2s = torch.where(small, torch.ones_like(theta2), theta2)  # safe for the closed forms
    t = torch.sqrt(t2s)
    a_big, b_big, c_big = torch.sin(t) / t, (1 - torch.cos(t)) / t2s, (t - torch.sin(t)) / (t2s * t)
    t2 = torch.where(small, theta2, torch.zeros_like(theta2))  # series only near 0
    a_ser = 1 - t2 / 6 * (1 - t2 / 20 * (1 - t2 / 42 * (1 - t2 / 72)))
    b_ser = 0.5 * (1 - t2 / 12 * (1 - t2 / 30 * (1 - t2 / 56 * (1 - t2 / 90))))
    c_ser = (1 - t2 / 20 * (1 - t2 / 42 * (1 - t2 / 72 * (1 - t2 / 110)))) / 6
    return (torch.where(small, a_ser, a_big), torch.where(small, b_ser, b_big),
            torch.where(small, c_ser, c_big))


def se3_exp(xi: torch.Tensor) -> torch.Tensor:
    """exp of the twist xi (6,) = (omega, v) -> rigid transform (4, 4).

    R = I + A W + B W^2 (Rodrigues), t = V v with V = I + B W + C W^2, W = hat(omega).
    Differentiable everywhere, including xi = 0.
    """
    if xi.shape != (6,):
        raise ValueError(f"xi must have shape (6,), got {tuple(xi.shape)}")
    w, v = xi[:3], xi[3:]
    W = hat(w)
    theta2 = (w * w).sum()
    W2 = _hat_squared(w, theta2)
    a, b, c = _coefficients(theta2)
    eye = torch.eye(3, dtype=xi.dtype, device=xi.device)
    R = eye + a * W + b * W2
    t = apply_rotation(eye + b * W + c * W2, v)
    bottom = torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=xi.dtype, device=xi.device)
    return torch.cat([torch.cat([R, t[:, None]], 1), bottom], 0)


def so3_exp(w: torch.Tensor) -> torch.Tensor:
    """Rotations (..., 3, 3) from axis-angle vectors w (..., 3): R = I + A W + B W^2.
    Batched (one rotation per row); differentiable at w = 0."""
    W = hat(w)
    theta2 = (w * w).sum(-1)
    a, b, _ = _coefficients(theta2)
    eye = torch.eye(3, dtype=w.dtype, device=w.device)
    return eye + a[..., None, None] * W + b[..., None, None] * _hat_squared(w, theta2)


def _hat_squared(w: torch.Tensor, theta2: torch.Tensor) -> torch.Tensor:
    """hat(w) @ hat(w) = w w^T - |w|^2 I (..., 3, 3), without a matrix product."""
    eye = torch.eye(3, dtype=w.dtype, device=w.device)
    return w[..., :, None] * w[..., None, :] - theta2[..., None, None] * eye


def apply_rotation(R: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """R @ x for matrices (..., 3, 3) and vectors (..., 3), as a sum of products in the
    inputs' precision (a matmul under autocast would run in bf16)."""
    return (R * x[..., None, :]).sum(-1)
