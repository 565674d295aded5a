"""models/nerf.py: the architecture facts of Mildenhall et al. 2020 (fig. 7) and the model protocol."""
import json

import pytest
import torch
from torch import nn

from models import build_model
from models.nerf import NeRFField, NeRFModel


@pytest.fixture(scope="module")
def paper_model():
    torch.manual_seed(0)
    return NeRFModel()  # defaults = the paper's network


def test_paper_trunk_layers(paper_model):
    f = paper_model.coarse
    assert isinstance(f, NeRFField)
    assert len(f.trunk) == 8
    assert all(isinstance(l, nn.Linear) and l.out_features == 256 for l in f.trunk)
    # gamma(x) with L=10 is 63 wide; the skip re-injects it into the 5th layer (index 4).
    assert f.trunk[0].in_features == 63
    assert f.trunk[4].in_features == 256 + 63
    assert [l.in_features for i, l in enumerate(f.trunk) if i not in (0, 4)] == [256] * 6
    assert f.sigma_head.in_features == 256 and f.sigma_head.out_features == 1


def test_paper_direction_branch(paper_model):
    f = paper_model.coarse
    assert f.pos_enc.out_dim == 63 and f.dir_enc.out_dim == 27
    # Feature (256) + gamma(d) (27) -> one 128-wide layer -> RGB.
    assert f.dir_layer.in_features == 256 + 27 and f.dir_layer.out_features == 128
    assert f.rgb_head.in_features == 128 and f.rgb_head.out_features == 3
    # gamma(d) feeds no other layer: only dir_layer has a fan-in that includes 27.
    fan_ins = [m.in_features for m in f.modules() if isinstance(m, nn.Linear)]
    assert sum(1 for k in fan_ins if k % 256 == 27) == 1


def test_skip_concatenates_encoded_input(paper_model):
    f = paper_model.coarse
    seen = {}
    h = f.trunk[4].register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0]))
    try:
        x = torch.rand(5, 3) * 2 - 1
        f.density(x)
    finally:
        h.remove()
    assert seen["x"].shape == (5, 256 + 63)
    torch.testing.assert_close(seen["x"][:, 256:], f.pos_enc(x))


def test_density_ignores_view_direction(paper_model):
    f = paper_model.coarse
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, generator=g) * 2 - 1
    d1 = nn.functional.normalize(torch.randn(64, 3, generator=g), dim=-1)
    d2 = nn.functional.normalize(torch.randn(64, 3, generator=g), dim=-1)
    with torch.no_grad():
        s1, c1 = f(x, d1)
        s2, c2 = f(x, d2)
    assert s1.shape == (64,) and c1.shape == (64, 3)
    assert torch.equal(s1, s2)  # exactly, not approximately
    assert not torch.allclose(c1, c2)
    assert torch.equal(f.density(x), s1)
    # And structurally: sigma has no gradient path to d.
    d = d1.clone().requires_grad_()
    s, c = f(x, d)
    assert torch.autograd.grad(s.sum(), d, allow_unused=True)[0] is None
    assert torch.autograd.grad(c.sum(), d)[0].abs().sum() > 0


def test_coarse_and_fine_are_separate(paper_model):
    m = paper_model
    assert m.fine_field is not None and m.fine_field is not m.coarse and m.fine is m.fine_field
    coarse_ptrs = {p.data_ptr() for p in m.coarse.parameters()}
    assert not coarse_ptrs & {p.data_ptr() for p in m.fine_field.parameters()}
    assert not torch.equal(m.coarse.trunk[0].weight, m.fine_field.trunk[0].weight)
    n_field = sum(p.numel() for p in m.coarse.parameters())
    assert sum(p.numel() for p in m.parameters()) == 2 * n_field
    # density() is the fine network's.
    x = torch.rand(4, 3)
    with torch.no_grad():
        assert torch.equal(m.density(x), m.fine_field.density(x))
    small = NeRFModel(fine=False, width=16, depth=2)
    assert small.fine_field is None and small.fine is small.coarse


def _tiny(**kw):
    torch.manual_seed(0)
    return NeRFModel(**{**dict(width=32, depth=3, dir_width=16, skips=[2], n_coarse=8, n_fine=16), **kw})


def test_render_rays_shapes_and_ranges():
    m = _tiny()
    r = 10
    rays_o = torch.tensor([0.0, 0.0, 4.0]).expand(r, 3)
    rays_d = nn.functional.normalize(torch.randn(r, 3, generator=torch.Generator().manual_seed(1)), dim=-1)
    for train in (False, True):
        out = m.render_rays(rays_o, rays_d, 2.0, 6.0, background=1.0, train=train)
        assert out["rgb"].shape == (r, 3) and out["depth"].shape == (r,) and out["acc"].shape == (r,)
        assert out["rgb_coarse"].shape == (r, 3)
        assert out["t_coarse"].shape == (r, 8) and out["weights_coarse"].shape == (r, 8)
        assert out["t_fine"].shape == (r, 24) and out["weights_fine"].shape == (r, 24)
        assert ((out["acc"] >= 0) & (out["acc"] <= 1 + 1e-6)).all()
        assert ((out["rgb"] >= 0) & (out["rgb"] <= 1 + 1e-6)).all()
    # Evaluation rendering is deterministic.
    with torch.no_grad():
        a = m.render_rays(rays_o, rays_d, 2.0, 6.0)
        b = m.render_rays(rays_o, rays_d, 2.0, 6.0)
    assert torch.equal(a["rgb"], b["rgb"])
    terms = m.loss_terms(out, torch.rand(r, 3))
    assert set(terms) == {"mse", "mse_coarse"} and all(v.dim() == 0 for v in terms.values())
    # Without fine samples the coarse result is the output.
    m0 = _tiny(n_fine=0)
    out0 = m0.render_rays(rays_o, rays_d, 2.0, 6.0)
    assert "t_fine" not in out0 and torch.equal(out0["rgb"], out0["rgb_coarse"])
    assert set(m0.loss_terms(out0, torch.rand(r, 3))) == {"mse"}


def test_set_samples_validates():
    m = _tiny()
    m.set_samples(n_coarse=4, n_fine=0)
    assert m.config["n_coarse"] == 4 and m.config["n_fine"] == 0
    out = m.render_rays(torch.zeros(3, 3), torch.tensor([[0.0, 0.0, -1.0]]).expand(3, 3), 2.0, 6.0)
    assert out["t_coarse"].shape == (3, 4) and "t_fine" not in out
    for kw in (dict(n_coarse=1), dict(n_fine=-1)):
        with pytest.raises(ValueError):
            m.set_samples(**kw)
    assert m.config["n_coarse"] == 4 and m.config["n_fine"] == 0


def test_config_roundtrip_and_validation():
    m = _tiny(pos_encoding="gaussian", n_features=8, sigma_scale=3.0)
    cfg = json.loads(json.dumps(m.config))  # JSON-serialisable
    m2 = build_model("nerf", **cfg)
    assert m2.config == m.config
    # Same architecture and the same fixed Fourier matrix (seeded).
    m2.load_state_dict(m.state_dict(), strict=True)
    torch.testing.assert_close(m2.coarse.pos_enc.B, m.coarse.pos_enc.B, rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown NeRFModel option"):
        NeRFModel(widht=3)
    with pytest.raises(ValueError):
        NeRFModel(n_coarse=1)
    with pytest.raises(ValueError):
        NeRFModel(L_xyz=30)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("nope")


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_untrained_paper_density_varies_and_is_not_dead(seed):
    # A paper-size field at init must give a raw density that varies across space with both
    # signs present in every network: if every raw value is negative, ReLU density and its
    # gradient are zero everywhere and the network can never learn (a dead field).
    torch.manual_seed(seed)
    m = NeRFModel()
    x = (torch.rand(4096, 3) * 2 - 1) * 1.5
    with torch.no_grad():
        for f in (m.coarse, m.fine_field):
            raw = f.sigma_head(f._trunk(x)).squeeze(-1)
            positive = (raw > 0).float().mean().item()
            assert positive > 0.05, positive
            assert raw.std().item() > 0.02  # not a constant dictated by the bias
            for layer in [*f.trunk, f.sigma_head, f.feature, f.dir_layer, f.rgb_head]:
                assert torch.count_nonzero(layer.bias) == 0
