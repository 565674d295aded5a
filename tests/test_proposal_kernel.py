"""The fused proposal kernel (models/kernels/proposal_weights.py) against the torch path
of NerfactoField._proposal_weights, through Triton's CPU interpreter."""
from __future__ import annotations

import textwrap

from tests.conftest import needs_triton, run_in_triton_interpreter


@needs_triton
def test_fused_proposal_weights_match_the_torch_path_in_interpreter():
    code = textwrap.dedent("""
        import numpy as np
        import torch
        from models import build_model
        from models.nerfacto import fused_proposal_weights
        from renderer import proposal as prop
        from tests.conftest import orbit_poses
        g = torch.Generator().manual_seed(0)
        base = dict(n_levels=2, log2_hashmap_size=10, max_res=32, hidden=8, color_hidden=8, appearance_dim=2,
                    proposal_levels=3, proposal_log2_hashmap_size=10, proposal_max_res=[24, 48],
                    proposal_hidden=8, n_proposal=[12, 5], n_samples=4)
        for order in ("inf", 2):
            m = build_model("nerfacto", contraction=order, **base)
            m.bind_scene(orbit_poses(4).astype(np.float32), 2.0, 6.0, False)
            o = torch.randn(7, 3, generator=g) * 0.8
            o[0] = torch.tensor([3.0, -0.5, 0.2])  # from outside the unit cube
            d = torch.nn.functional.normalize(torch.randn(7, 3, generator=g), dim=-1)
            t0 = torch.rand(7, 1, generator=g) * 0.1
            t1 = torch.full((7, 1), 1000.0)
            for i, net in enumerate(m.proposals):
                with torch.no_grad():  # a net far from its initialisation: densities that vary
                    net.encoding.table.normal_(0.0, 1.0, generator=g)
                    for p in net.mlp.parameters():
                        p.normal_(0.0, 0.7, generator=g)
                n = m.config["n_proposal"][i]
                u = prop.uniform_edges(7, n, torch.rand(7, 1, generator=g))
                with torch.enable_grad():  # a gradient asked for: the torch path
                    want = m._proposal_weights(net, o, d, u, t0, t1, True).detach()
                got = fused_proposal_weights(net, o, d, u, t0, t1, order)
                assert got is not None and got.shape == (7, n)
                assert want.max() > 0.1 and (want.sum(-1) > 0.3).any(), want
                assert (got - want).abs().max() < 2e-5, ((got - want).abs().max(), order, i)
                # Without a gradient the field itself takes the fused path.
                with torch.no_grad():
                    assert torch.equal(m._proposal_weights(net, o, d, u, t0, t1, False), got)
        # A net the kernel does not cover (a hidden width that is no power of two): None.
        odd = build_model("nerfacto", **{**base, "proposal_hidden": 6})
        u = prop.uniform_edges(2, 5, None)
        assert fused_proposal_weights(odd.proposals[0], o[:2], d[:2], u, t0[:2], t1[:2], "inf") is None
        print("OK")
    """)
    run_in_triton_interpreter(code)
