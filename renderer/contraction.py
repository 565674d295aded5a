"""Scene contraction of mip-NeRF 360 (Barron et al. 2022, eq. 10): all of space in a box.

    contract(x) = x                          if ||x|| <= 1
                  (2 - 1 / ||x||) x / ||x||  otherwise

Points within the unit norm are kept as they are; everything beyond is squeezed into
the shell 1 < ||y|| < 2, with distance r mapped to 2 - 1/r, so that equal steps in
disparity (1 / r) take equal room. Far background then gets a bounded share of a
field's resolution while the foreground keeps all of it.

The norm is L-infinity by default (``order="inf"``), as in nerfstudio's nerfacto,
because the field that reads the contracted points is a hash grid over a cube: the
L-infinity contraction fills the cube [-2, 2]^3 exactly, so every cell of every level
is reachable, while the L2 one fills the ball of radius 2, pi / 6 = 52 % of that cube,
and leaves the dense levels' corners unused. The inner region is then the unit cube,
which is also the box a field normalises its training cameras into. The price: the
L-infinity map is continuous but its derivative jumps across the planes where two
coordinates tie in magnitude, which a trilinear hash grid does not mind. ``order=2``
gives the paper's L2 version (smooth away from the unit sphere).
"""
from __future__ import annotations

import torch

ORDERS = ("inf", 2)


def _norm(x: torch.Tensor, order) -> torch.Tensor:
    if order == "inf":
        return x.abs().amax(-1)
    if order == 2:
        return x.norm(dim=-1)
    raise ValueError(f"contraction order must be one of {ORDERS}, got {order!r}")


def contract(x: torch.Tensor, order="inf") -> torch.Tensor:
    """Points (..., 3) -> contracted points (..., 3) with norm < 2 (see module doc)."""
    n = _norm(x, order)[..., None]
    # Evaluated on a safe norm everywhere, so the branch torch.where drops never puts a
    # NaN (1 / 0) into the gradient of points near the origin.
    safe = n.clamp(min=1.0)
    return torch.where(n <= 1.0, x, (2.0 - 1.0 / safe) * (x / safe))


def uncontract(y: torch.Tensor, order="inf") -> torch.Tensor:
    """The inverse of ``contract`` on norms < 2: contracted points (..., 3) -> points."""
    m = _norm(y, order)[..., None]
    safe = m.clamp(min=1.0, max=2.0 - 1e-12)
    r = 1.0 / (2.0 - safe)  # the original norm
    return torch.where(m <= 1.0, y, y * (r / safe))


def to_unit_cube(y: torch.Tensor) -> torch.Tensor:
    """Contracted points in [-2, 2]^3 -> [0, 1]^3, the hash encoding's domain."""
    return (y + 2.0) * 0.25
