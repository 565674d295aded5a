"""renderer/rays.py against hand-derived numbers and the NeRF paper's NDC formulas."""
import math

import numpy as np
import pytest
import torch

from renderer.rays import camera_directions, focal_from_fov, get_rays, intrinsics, ndc_rays, rays_from_dirs


def test_focal_from_fov_matches_nerf_synthetic():
    # The lego scene: 800 px wide, camera_angle_x 0.6911112070083618 -> focal 1111.111 px
    # (the value the NeRF code prints for this scene).
    assert focal_from_fov(800, 0.6911112070083618) == pytest.approx(1111.1110311937682, rel=1e-9)
    # 90 degrees: tan(45) = 1 so focal is half the width.
    assert focal_from_fov(64, math.pi / 2) == pytest.approx(32.0)


def test_intrinsics_layout():
    K = intrinsics(4, 3, 2.0)
    assert K.dtype == torch.float32
    assert K.tolist() == [[2.0, 0.0, 2.0], [0.0, 2.0, 1.5], [0.0, 0.0, 1.0]]
    K2 = intrinsics(4, 3, 2.0, cx=1.0, cy=0.5, fy=3.0)
    assert K2.tolist() == [[2.0, 0.0, 1.0], [0.0, 3.0, 0.5], [0.0, 0.0, 1.0]]


# W=4, H=3, f=2 -> cx=2, cy=1.5. Pixel (column i, row j) centre (i+.5, j+.5):
#   x = (i + .5 - 2) / 2, y = -(j + .5 - 1.5) / 2, z = -1
HAND_DIRS = {  # (j, i): camera-space direction
    (0, 0): (-0.75, 0.5, -1.0),
    (0, 3): (0.75, 0.5, -1.0),
    (1, 1): (-0.25, 0.0, -1.0),
    (2, 3): (0.75, -0.5, -1.0),
}


def test_camera_directions_hand_case():
    d = camera_directions(3, 4, intrinsics(4, 3, 2.0))
    assert d.shape == (3, 4, 3)
    for (j, i), want in HAND_DIRS.items():
        assert d[j, i].tolist() == pytest.approx(want, abs=1e-7), (j, i)


def test_get_rays_identity_pose():
    rays_o, rays_d = get_rays(3, 4, intrinsics(4, 3, 2.0), torch.eye(4))
    assert rays_o.shape == rays_d.shape == (3, 4, 3)
    assert torch.all(rays_o == 0)
    for (j, i), want in HAND_DIRS.items():
        assert rays_d[j, i].tolist() == pytest.approx(want, abs=1e-7)


def test_get_rays_rotated_translated_pose():
    # c2w: 90 degrees about +Z (camera x -> world y, camera y -> world -x), camera at (1, 2, 3).
    # world d = R d_cam = (-d_y, d_x, d_z).
    c2w = torch.tensor([[0.0, -1.0, 0.0, 1.0],
                        [1.0, 0.0, 0.0, 2.0],
                        [0.0, 0.0, 1.0, 3.0],
                        [0.0, 0.0, 0.0, 1.0]])
    rays_o, rays_d = get_rays(3, 4, intrinsics(4, 3, 2.0), c2w)
    assert torch.allclose(rays_o, torch.tensor([1.0, 2.0, 3.0]).expand(3, 4, 3))
    assert rays_d[0, 0].tolist() == pytest.approx((-0.5, -0.75, -1.0), abs=1e-7)
    assert rays_d[2, 3].tolist() == pytest.approx((0.5, 0.75, -1.0), abs=1e-7)
    assert rays_d[1, 1].tolist() == pytest.approx((0.0, -0.25, -1.0), abs=1e-7)

    # 90 degrees about +X: camera -Z (forward) -> world +Y, camera +Y (up) -> world +Z.
    # world d = (d_x, -d_z, d_y).
    rx = torch.tensor([[1.0, 0.0, 0.0, 0.0],
                       [0.0, 0.0, -1.0, -4.0],
                       [0.0, 1.0, 0.0, 0.5]])  # 3x4 is accepted too
    rays_o, rays_d = get_rays(3, 4, intrinsics(4, 3, 2.0), rx)
    assert rays_o[1, 2].tolist() == pytest.approx((0.0, -4.0, 0.5))
    assert rays_d[0, 0].tolist() == pytest.approx((-0.75, 1.0, 0.5), abs=1e-7)
    assert rays_d[2, 3].tolist() == pytest.approx((0.75, 1.0, -0.5), abs=1e-7)


def test_even_image_centre_is_between_pixels():
    # 4x4, f=3: the principal point (2, 2) lies on a pixel corner, so the four middle
    # pixels look at (+-0.5/f, +-0.5/f) and no ray is exactly on the optical axis.
    f = 3.0
    d = camera_directions(4, 4, intrinsics(4, 4, f))
    h = 0.5 / f
    assert d[1, 1].tolist() == pytest.approx((-h, h, -1.0))
    assert d[1, 2].tolist() == pytest.approx((h, h, -1.0))
    assert d[2, 1].tolist() == pytest.approx((-h, -h, -1.0))
    assert d[2, 2].tolist() == pytest.approx((h, -h, -1.0))
    assert d.mean((0, 1)).tolist() == pytest.approx((0.0, 0.0, -1.0), abs=1e-7)
    # Odd image: the centre pixel is exactly on the axis.
    d5 = camera_directions(5, 5, intrinsics(5, 5, f))
    assert d5[2, 2].tolist() == [0.0, 0.0, -1.0]


def test_rays_from_dirs_arbitrary_batch_shape():
    g = torch.Generator().manual_seed(0)
    dirs = torch.randn(2, 5, 3, generator=g)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, :3], c2w[:3, 3] = q, torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    o, d = rays_from_dirs(dirs, c2w)
    want = np.einsum("ij,abj->abi", q.numpy(), dirs.numpy().astype(np.float64))
    assert d.shape == (2, 5, 3) and o.shape == (2, 5, 3)
    np.testing.assert_allclose(d.numpy(), want, atol=1e-6)
    np.testing.assert_allclose(o.numpy(), np.broadcast_to([0.1, -0.2, 0.3], (2, 5, 3)), atol=1e-7)


def _project_ndc(p, W, H, f, near):
    """NeRF paper (appendix C) projection of camera-space points p (..., 3), float64."""
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    return np.stack([-f / (W / 2) * x / z, -f / (H / 2) * y / z, 1 + 2 * near / z], -1)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_ndc_rays_match_paper_projection(dtype, tol):
    W, H, f, near = 40, 30, 35.0, 1.0
    rng = np.random.default_rng(0)
    n = 50
    o = rng.uniform(-0.3, 0.3, (n, 3))
    d = np.stack([rng.uniform(-0.4, 0.4, n), rng.uniform(-0.3, 0.3, n), -np.ones(n)], -1)
    o_ndc, d_ndc = ndc_rays(H, W, f, near, torch.tensor(o, dtype=dtype), torch.tensor(d, dtype=dtype))
    o_ndc, d_ndc = o_ndc.double().numpy(), d_ndc.double().numpy()

    # Paper: the ray is first moved to the near plane, o_n = o + t_n d with o_n,z = -near.
    t_n = -(near + o[:, 2]) / d[:, 2]
    o_n = o + t_n[:, None] * d
    np.testing.assert_allclose(o_ndc, _project_ndc(o_n, W, H, f, near), atol=tol)
    assert np.allclose(o_ndc[:, 2], -1.0, atol=tol)
    # Every point o_n + s d projects onto o' + t' d' with t' = 1 - o_n,z / (o_n,z + s d_z) (eq. 15).
    for s in (0.0, 0.5, 3.0, 40.0):
        p = o_n + s * d
        t_prime = 1.0 - o_n[:, 2] / (o_n[:, 2] + s * d[:, 2])
        np.testing.assert_allclose(o_ndc + t_prime[:, None] * d_ndc, _project_ndc(p, W, H, f, near),
                                   atol=tol * 10, rtol=tol)
    # t' -> 1 is the point at infinity, which NDC puts on the z = 1 plane.
    assert np.allclose((o_ndc + d_ndc)[:, 2], 1.0, atol=tol)
