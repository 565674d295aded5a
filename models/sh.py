"""Real spherical harmonics up to degree 2, in the PlenOctrees / Plenoxels layout.

Basis index k = l*l + l + m (l = degree, m = -l..l). The constants and signs are
those of PlenOctrees (Yu et al. 2021) and svox2, so coefficients are laid out and
signed the same way as in those codebases:

    k=0: C0                      = 1/2 sqrt(1/pi)
    k=1: -C1 y      k=2: C1 z      k=3: -C1 x          C1 = sqrt(3/(4 pi))
    k=4: C2[0] xy   k=5: C2[1] yz  k=6: C2[2] (2z^2 - x^2 - y^2)
    k=7: C2[3] xz   k=8: C2[4] (x^2 - y^2)

The signs are those of sqrt(2) Re / Im of the complex Y_l^|m| with the
Condon-Shortley phase; the tests check the basis against scipy's complex
harmonics and against its orthonormality on the sphere.
"""
from __future__ import annotations

import torch

C0 = 0.28209479177387814
C1 = 0.4886025119029199
C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
      0.5462742152960396)

MAX_DEGREE = 2


def num_coeffs(degree: int) -> int:
    """Basis functions per colour channel: (degree + 1)^2."""
    if not 0 <= degree <= MAX_DEGREE:
        raise ValueError(f"SH degree must be in 0..{MAX_DEGREE}, got {degree}")
    return (degree + 1) ** 2


def sh_basis(dirs: torch.Tensor, degree: int) -> torch.Tensor:
    """Basis values (..., (degree+1)^2) at unit directions dirs (..., 3).

    Directions are not renormalised here: callers pass unit vectors (a non-unit
    vector would silently scale the degree-1 and -2 terms).
    """
    k = num_coeffs(degree)
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, C0)]
    if degree >= 1:
        out += [-C1 * y, C1 * z, -C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [C2[0] * x * y, C2[1] * y * z, C2[2] * (2.0 * zz - xx - yy), C2[3] * x * z,
                C2[4] * (xx - yy)]
    basis = torch.stack(out, -1)
    assert basis.shape[-1] == k
    return basis


def eval_sh(coeffs: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """sum_k coeffs[..., c, k] Y_k(dirs) -> (..., C).

    coeffs (..., C, K) with K = (degree+1)^2 in {1, 4, 9}; dirs (..., 3) unit vectors.
    """
    k = coeffs.shape[-1]
    degree = {1: 0, 4: 1, 9: 2}.get(k)
    if degree is None:
        raise ValueError(f"last dimension of coeffs must be 1, 4 or 9 (degree 0..2), got {k}")
    basis = sh_basis(dirs, degree)  # (..., K)
    return (coeffs * basis.unsqueeze(-2)).sum(-1)
