"""renderer/cameras.py: the lens models' inverse against their forward model (float64),
pixel directions against the pinhole reference, downscaled cameras, and the training
sampler and whole-image renders using each image's own camera."""
import numpy as np
import pytest
import torch

from renderer.cameras import (Cameras, camera_grid_directions, distort, image_directions, pixel_directions,
                              project, undistort)
from renderer.rays import camera_directions, intrinsics

# Strong but realistic lenses: a phone's OPENCV fit and a fisheye.
OPENCV = [-0.28, 0.09, 0.0012, -0.0009, -0.012]  # k1 k2 p1 p2 k3
FISHEYE = [0.05, -0.01, 0.004, -0.001, 0.0]  # k1 k2 k3 k4


def _grid(extent, n=41):
    g = torch.linspace(-extent, extent, n, dtype=torch.float64)
    y, x = torch.meshgrid(g, g, indexing="ij")
    return x.reshape(-1), y.reshape(-1)


@pytest.mark.parametrize("kind,dist,extent", [("OPENCV", OPENCV, 0.75), ("OPENCV_FISHEYE", FISHEYE, 1.6),
                                              ("OPENCV", [0.1, 0.02, -0.002, 0.003, 0.0], 0.9)])
def test_undistort_inverts_distort_float64(kind, dist, extent):
    x, y = _grid(extent)  # normalised undistorted points out to ~37 (OPENCV) / 58 (fisheye) degrees
    d = torch.tensor(dist, dtype=torch.float64).expand(len(x), 5)
    xd, yd = distort(x, y, kind, d)
    xu, yu = undistort(xd, yd, kind, d)
    assert torch.allclose(xu, x, atol=1e-10) and torch.allclose(yu, y, atol=1e-10)
    # ... and the other way round: distorting the undistorted point gives the pixel back.
    xd2, yd2 = distort(xu, yu, kind, d)
    assert torch.allclose(xd2, xd, atol=1e-12) and torch.allclose(yd2, yd, atol=1e-12)


def test_distortion_models_against_written_out_formulas():
    x, y = torch.tensor([0.3, -0.2], dtype=torch.float64), torch.tensor([-0.1, 0.4], dtype=torch.float64)
    k1, k2, p1, p2, k3 = OPENCV
    xd, yd = distort(x, y, "OPENCV", torch.tensor(OPENCV, dtype=torch.float64).expand(2, 5))
    for i in range(2):
        a, b = float(x[i]), float(y[i])
        r2 = a * a + b * b
        rad = 1 + k1 * r2 + k2 * r2 ** 2 + k3 * r2 ** 3
        assert xd[i].item() == pytest.approx(a * rad + 2 * p1 * a * b + p2 * (r2 + 2 * a * a), abs=1e-15)
        assert yd[i].item() == pytest.approx(b * rad + p1 * (r2 + 2 * b * b) + 2 * p2 * a * b, abs=1e-15)
    xd, yd = distort(x, y, "OPENCV_FISHEYE", torch.tensor(FISHEYE, dtype=torch.float64).expand(2, 5))
    for i in range(2):
        a, b = float(x[i]), float(y[i])
        th = np.arctan(np.hypot(a, b))
        thd = th * (1 + FISHEYE[0] * th ** 2 + FISHEYE[1] * th ** 4 + FISHEYE[2] * th ** 6 + FISHEYE[3] * th ** 8)
        assert xd[i].item() == pytest.approx(a * thd / np.hypot(a, b), abs=1e-15)


def test_pinhole_directions_match_the_pinhole_reference():
    cams = Cameras.create(1, 12, 8, 9.5, 10.5, 5.7, 4.1)
    ref = camera_directions(8, 12, intrinsics(12, 8, 9.5, cx=5.7, cy=4.1, fy=10.5))
    torch.testing.assert_close(camera_grid_directions(cams), ref)


@pytest.mark.parametrize("kind,dist", [("OPENCV", OPENCV), ("OPENCV_FISHEYE", FISHEYE)])
def test_distorted_pixel_rays_project_back_onto_their_pixels(kind, dist):
    cams = Cameras.create(2, 40, 30, [30.0, 33.0], [31.0, 32.0], [19.0, 21.5], [14.2, 15.5], kind, dist)
    py, px = torch.meshgrid(torch.arange(30, dtype=torch.float64), torch.arange(40, dtype=torch.float64),
                            indexing="ij")
    for i in range(2):
        d = pixel_directions(cams, i, px.reshape(-1), py.reshape(-1))
        assert d.dtype == torch.float64 and torch.all(d[:, 2] == -1)
        uv = project(cams, i, (d * 2.5).numpy())  # any depth along the ray
        np.testing.assert_allclose(uv[:, 0], px.reshape(-1).numpy() + 0.5, atol=1e-8)
        np.testing.assert_allclose(uv[:, 1], py.reshape(-1).numpy() + 0.5, atol=1e-8)


def test_downscaled_camera_sees_the_block_centre():
    cams = Cameras.create(1, 40, 30, 30.0, 31.0, 19.0, 14.2, "OPENCV", OPENCV)
    small = cams.scaled(2)
    assert (int(small.width[0]), int(small.height[0])) == (20, 15)
    i, j = torch.tensor([0.0, 7.0, 19.0]), torch.tensor([0.0, 3.0, 14.0])
    # Small pixel (i, j) averages full pixels 2i, 2i+1: its centre is the full-res point 2i + 1.
    torch.testing.assert_close(pixel_directions(small, 0, i, j), image_directions(cams, 0, 2 * i + 1, 2 * j + 1))


def test_cameras_subset_and_device_copy():
    cams = Cameras.create(3, 8, 6, [1.0, 2.0, 3.0], kind="OPENCV", dist=[0.1, 0, 0, 0, 0])
    one = cams[1]
    assert len(one) == 1 and one.fx[0] == 2.0 and one.dist.shape == (1, 5) and one.kind == "OPENCV"
    t = cams.to("cpu")
    assert torch.is_tensor(t.fx) and t.fx.dtype == torch.float32 and t.width.dtype == torch.int64
    with pytest.raises(ValueError, match="not supported"):
        Cameras.create(1, 8, 6, 1.0, kind="EQUIRECTANGULAR")


def _split_with_two_cameras():
    from loaders.scene import Split
    from tests.conftest import orbit_poses

    imgs = np.random.default_rng(0).random((2, 6, 10, 3)).astype(np.float32)
    cams = Cameras.create(2, 10, 6, [8.0, 12.0], [8.5, 11.0], [4.0, 6.5], [3.0, 2.5], "OPENCV",
                          [[0.2, 0.05, 0.01, -0.01, 0.0], [-0.1, 0.0, 0.0, 0.0, 0.0]])
    return Split(imgs, orbit_poses(2).astype(np.float32), 8.0, ["a", "b"], None, cams)


def test_training_rays_use_each_images_camera():
    from app.engine.batches import RaySampler

    sp = _split_with_two_cameras()
    rs = RaySampler.from_split(sp, torch.device("cpu"), ndc=False, keep_alpha=False)
    g = torch.Generator().manual_seed(3)
    b = rs.sample(64, g)
    g = torch.Generator().manual_seed(3)
    img = torch.randint(0, 2, (64,), generator=g)
    py = torch.randint(0, 6, (64,), generator=g)
    px = torch.randint(0, 10, (64,), generator=g)
    for k in range(64):
        i = int(img[k])
        d = image_directions(sp.cameras, i, torch.tensor([px[k] + 0.5], dtype=torch.float64),
                             torch.tensor([py[k] + 0.5], dtype=torch.float64))[0]
        want = torch.as_tensor(sp.c2w[i, :3, :3], dtype=torch.float64) @ d
        torch.testing.assert_close(b.rays_d[k].double(), want, atol=1e-5, rtol=1e-5)
        assert torch.equal(b.target[k], torch.from_numpy(sp.images[i, int(py[k]), int(px[k])]))


def test_whole_image_render_uses_the_views_camera():
    """render_image through a distorted camera traces the same rays as the sampler's."""
    from renderer.render import render_image

    sp = _split_with_two_cameras()

    class Probe(torch.nn.Module):  # returns each ray's direction as its colour
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def render_rays(self, o, d, near, far, background=None, train=False):
            return {"rgb": d, "depth": d[:, 0], "acc": d[:, 1]}

    out = render_image(Probe(), torch.from_numpy(sp.c2w[1]), sp.cameras[1], 2.0, 6.0)
    py, px = torch.meshgrid(torch.arange(6), torch.arange(10), indexing="ij")
    d = pixel_directions(sp.cameras, 1, px.reshape(-1), py.reshape(-1)) @ torch.from_numpy(sp.c2w[1, :3, :3]).T
    torch.testing.assert_close(out["rgb"].reshape(-1, 3), d)
