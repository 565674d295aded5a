"""The vanilla path's speed options: the NeRF model's opt-in occupancy grid
(models/nerf.py occupancy_res) and the trainer's single-sync gradient check."""
import math

import pytest
import torch

from app.engine.trainer import all_finite
from models.nerf import NeRFModel, _query
from renderer import occupancy as oc
from renderer.compositing import composite
from tests.conftest import TINY_NERF, make_trainer


def test_all_finite_one_check_for_many_tensors():
    a, b = torch.randn(5), torch.randn(3, 4)
    assert all_finite([a, b]) and all_finite([])
    for bad in (float("nan"), float("inf"), -float("inf")):
        c = b.clone()
        c[1, 2] = bad
        assert not all_finite([a, c])
    assert all_finite([torch.full((3,), 3e38)])  # huge but finite is not flagged


class BallField:
    """Stands in for NeRFField: density 8 inside a ball, colour from position."""

    def __call__(self, x, d, noise=0.0):
        r = (x - torch.tensor([0.3, 0.0, 0.2])).norm(dim=-1)
        sigma = torch.where(r < 0.7, torch.full_like(r, 8.0), torch.zeros_like(r))
        return sigma, torch.sigmoid(torch.stack([x[:, 0], x[:, 1] + d[:, 2], x[:, 2]], -1))


def test_query_with_occupancy_skips_only_empty_space():
    g = torch.Generator().manual_seed(0)
    o = torch.randn(30, 3, generator=g)
    o = o / o.norm(dim=-1, keepdim=True) * 4
    d = torch.rand(30, 3, generator=g) * 1.6 - 0.8 - o
    t = torch.linspace(2.0, 6.0, 96).expand(30, 96) * (4.0 / d.norm(dim=-1, keepdim=True))
    d = d / d.norm(dim=-1, keepdim=True)
    field = BallField()
    res, bound = 16, 1.5
    centres = (oc.cell_coords(torch.arange(res ** 3), res).float() + 0.5) * (2 * bound / res) - bound
    near = (centres - torch.tensor([0.3, 0.0, 0.2])).norm(dim=-1) < 0.7 + math.sqrt(3) * bound / res
    grid = oc.OccupancyGrid(res, bound)
    grid.occupancy.copy_(near.to(torch.uint8))
    s_a, c_a, n_a = _query(field, o, d, t, 0.0)
    s_b, c_b, n_b = _query(field, o, d, t, 0.0, grid)
    assert n_a == t.numel() and 0 < n_b < n_a
    ra = composite(s_a, c_a, t, d, 1.0)
    rb = composite(s_b, c_b, t, d, 1.0)
    assert ra["acc"].max() > 0.9 and ra["acc"].min() < 0.01
    assert torch.allclose(ra["rgb"], rb["rgb"], atol=1e-6)
    # With everything occupied the query is the plain one.
    s_c, c_c, n_c = _query(field, o, d, t, 0.0, oc.OccupancyGrid(res, 10.0))
    assert torch.equal(s_c, s_a) and torch.equal(c_c, c_a) and n_c == n_a


def test_occupancy_option_defaults_off_and_validates():
    assert NeRFModel().config["occupancy_res"] is None
    assert not hasattr(NeRFModel(), "estimator")
    with pytest.raises(ValueError, match="occupancy_res"):
        NeRFModel(occupancy_res=4)
    with pytest.raises(ValueError, match="occupancy_warmup"):
        NeRFModel(occupancy_res=16, occupancy_warmup=-1)
    m = NeRFModel(**TINY_NERF, occupancy_res=16)
    assert "density_grid" not in m.state_dict()  # checkpoints keep the old layout


def test_nerf_with_occupancy_trains_and_prunes():
    assert make_trainer(occupancy_res=16).model.config["occupancy_warmup"] == 32
    tr = make_trainer(occupancy_res=16, occupancy_warmup=20)
    losses = [tr.step()["loss"] for _ in range(60)]
    m = tr.model
    assert m._occ_active
    assert 0.0 < m.occupancy.float().mean() < 0.95  # empty space around the sphere is pruned
    centre = oc.cell_index(torch.zeros(1, 3), 1.5, 16)
    assert m.occupancy[centre].item() == 1  # the sphere itself is kept
    assert sum(losses[-5:]) < sum(losses[:5])
    out = tr.render(tr.scene.split("test").c2w[0], 8, 8)
    assert torch.isfinite(out["rgb"]).all()
