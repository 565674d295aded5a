"""Real spherical harmonics up to degree 3: the one implementation every field uses.

Basis index k = l*l + l + m (l = degree, m = -l..l). The constants and signs are
those of PlenOctrees (Yu et al. 2021), svox2 and instant-ngp, so coefficients are laid
out and signed the same way as in those codebases:

    k=0: C0                      = 1/2 sqrt(1/pi)
    k=1: -C1 y      k=2: C1 z      k=3: -C1 x          C1 = sqrt(3/(4 pi))
    k=4: C2[0] xy   k=5: C2[1] yz  k=6: C2[2] (3z^2 - 1)
    k=7: C2[3] xz   k=8: C2[4] (x^2 - y^2)
    k=9..15: the seven degree-3 functions (instant-ngp's direction encoding)

The signs are those of sqrt(2) Re / Im of the complex Y_l^|m| with the
Condon-Shortley phase; the tests check the basis against scipy's complex
harmonics and against its orthonormality on the sphere.

Every function is a polynomial of degree <= 3 in (x, y, z); written over the 64
products m_a m_b m_c of m = (1, x, y, z), the basis is two elementwise products and
one matmul (sh_basis_matrix), not ~40 small kernels.
"""
from __future__ import annotations

import torch

C0 = 0.28209479177387814
C1 = 0.4886025119029199
C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
      0.5462742152960396)
_C3 = (0.59004358992664352, 2.8906114426405538, 0.45704579946446572, 0.3731763325901154,
       1.4453057213202769)

MAX_DEGREE = 3

# Each basis function as a list of (coefficient, (exponent of x, y, z)). Degree-2 and -3
# zonal terms use x^2 + y^2 + z^2 = 1, so inputs must be unit vectors.
_POLYS = [
    [(C0, (0, 0, 0))],
    [(-C1, (0, 1, 0))],
    [(C1, (0, 0, 1))],
    [(-C1, (1, 0, 0))],
    [(C2[0], (1, 1, 0))],
    [(C2[1], (0, 1, 1))],
    [(3 * C2[2], (0, 0, 2)), (-C2[2], (0, 0, 0))],
    [(C2[3], (1, 0, 1))],
    [(C2[4], (2, 0, 0)), (-C2[4], (0, 2, 0))],
    [(-3 * _C3[0], (2, 1, 0)), (_C3[0], (0, 3, 0))],
    [(_C3[1], (1, 1, 1))],
    [(_C3[2], (0, 1, 0)), (-5 * _C3[2], (0, 1, 2))],
    [(5 * _C3[3], (0, 0, 3)), (-3 * _C3[3], (0, 0, 1))],
    [(_C3[2], (1, 0, 0)), (-5 * _C3[2], (1, 0, 2))],
    [(_C3[4], (2, 0, 1)), (-_C3[4], (0, 2, 1))],
    [(-_C3[0], (3, 0, 0)), (3 * _C3[0], (1, 2, 0))],
]


def num_coeffs(degree: int) -> int:
    """Basis functions per colour channel: (degree + 1)^2."""
    if not 0 <= degree <= MAX_DEGREE:
        raise ValueError(f"SH degree must be in 0..{MAX_DEGREE}, got {degree}")
    return (degree + 1) ** 2


def sh_basis_matrix(degree: int = MAX_DEGREE) -> torch.Tensor:
    """(64, (degree+1)^2) float64 C with basis(d) = cubic_monomials(d) @ C."""
    k = num_coeffs(degree)
    C = torch.zeros(64, k, dtype=torch.float64)
    for j, terms in enumerate(_POLYS[:k]):
        for coef, (ex, ey, ez) in terms:
            # Factor index 0 is the constant 1; 1, 2, 3 are x, y, z. A monomial x^a y^b z^c
            # (a + b + c <= 3) is the product of its factors padded with 1s to three.
            f = [1] * ex + [2] * ey + [3] * ez
            f = f + [0] * (3 - len(f))
            C[(f[0] * 4 + f[1]) * 4 + f[2], j] += coef
    return C


def cubic_monomials(dirs: torch.Tensor) -> torch.Tensor:
    """(..., 64): all products m_a m_b m_c of m = (1, x, y, z)."""
    m = torch.cat([torch.ones_like(dirs[..., :1]), dirs], -1)
    return (m[..., :, None, None] * m[..., None, :, None] * m[..., None, None, :]).flatten(-3)


def sh_encode(dirs: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """Basis values (..., K) at unit directions (..., 3) for a matrix C from sh_basis_matrix
    (kept on the model's device). A float32 product on purpose: autocast or TF32 would
    round the basis."""
    with torch.autocast(dirs.device.type, enabled=False):
        dt = torch.promote_types(dirs.dtype, torch.float32)
        return cubic_monomials(dirs.to(dt)) @ C.to(dt)


def sh_basis(dirs: torch.Tensor, degree: int) -> torch.Tensor:
    """Basis values (..., (degree+1)^2) at unit directions dirs (..., 3).

    Directions are not renormalised here: callers pass unit vectors (a non-unit
    vector would silently scale the terms).
    """
    return sh_encode(dirs, sh_basis_matrix(degree).to(dirs.device))


def eval_sh(coeffs: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """sum_k coeffs[..., c, k] Y_k(dirs) -> (..., C).

    coeffs (..., C, K) with K = (degree+1)^2 in {1, 4, 9, 16}; dirs (..., 3) unit vectors.
    """
    k = coeffs.shape[-1]
    degree = {1: 0, 4: 1, 9: 2, 16: 3}.get(k)
    if degree is None:
        raise ValueError(f"last dimension of coeffs must be 1, 4, 9 or 16 (degree 0..3), got {k}")
    basis = sh_basis(dirs, degree)  # (..., K)
    return (coeffs * basis.unsqueeze(-2)).sum(-1)
