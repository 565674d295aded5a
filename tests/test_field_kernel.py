"""The fused radiance-field kernel (models/kernels/nerfacto_field.py) against the torch
path of NerfactoField._radiance_n, through Triton's CPU interpreter."""
from __future__ import annotations

import textwrap

from tests.conftest import needs_triton, run_in_triton_interpreter


@needs_triton
def test_fused_field_matches_the_torch_path_in_interpreter():
    code = textwrap.dedent("""
        import numpy as np
        import torch
        from models import build_model
        from models.nerfacto import fused_field
        from tests.conftest import orbit_poses
        g = torch.Generator().manual_seed(0)
        base = dict(n_levels=3, log2_hashmap_size=10, max_res=40, hidden=16, geo_features=15, color_hidden=16,
                    appearance_dim=3, proposal_levels=2, proposal_log2_hashmap_size=10, proposal_max_res=[8, 16],
                    proposal_hidden=8, n_proposal=[8, 4], n_samples=4)
        for order in ("inf", 2):
            m = build_model("nerfacto", contraction=order, **base)
            m.bind_scene(orbit_poses(4).astype(np.float32), 2.0, 6.0, False)
            with torch.no_grad():  # nets far from their initialisation
                m.field.encoding.table.normal_(0.0, 1.0, generator=g)
                for p in list(m.field.mlp.parameters()) + list(m.color_net.parameters()):
                    p.normal_(0.0, 0.4, generator=g)
            n_rays, s = 5, 7
            x = torch.randn(n_rays * s, 3, generator=g) * 1.5  # inside and beyond the unit cube
            dirs = torch.randn(n_rays, 3, generator=g)
            emb = torch.randn(n_rays, 3, generator=g)
            with torch.enable_grad():  # a gradient possible: the torch path
                term = m._ray_term(dirs, emb)
                sigma, rgb = (v.detach() for v in m._radiance_n(x, term))
            term = term.detach()
            got = fused_field(m.field, m.color_net, x, term, order)
            assert got is not None
            assert rgb.std() > 0.05 and sigma.max() / sigma.min() > 3
            assert (got[0] / sigma - 1).abs().max() < 1e-4, (got[0], sigma)
            assert (got[1] - rgb).abs().max() < 1e-5, (got[1] - rgb).abs().max()
            with torch.no_grad():  # without a gradient the field takes the fused path
                fs, fr = m._radiance_n(x, term)
            assert torch.equal(fs, got[0]) and torch.equal(fr, got[1])
        # A head the kernel does not cover (a width below 16): None.
        odd = build_model("nerfacto", **{**base, "color_hidden": 8})
        assert fused_field(odd.field, odd.color_net, x, torch.zeros(n_rays, 8), "inf") is None
        print("OK")
    """)
    run_in_triton_interpreter(code)
