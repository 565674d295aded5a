"""The fused radiance-field MLP kernel (models/kernels/radiance_mlp.py) against a float64
evaluation of the same layers, and the render that uses it against the torch path,
through Triton's CPU interpreter."""
from __future__ import annotations

import textwrap

from tests.conftest import needs_triton, run_in_triton_interpreter


@needs_triton
def test_fused_radiance_mlp_matches_a_float64_evaluation_in_interpreter():
    code = textwrap.dedent("""
        import torch
        from models import build_model
        from models.kernels.radiance_mlp import radiance_mlp_triton, supports

        def reference(m, feats, ray_term, rnd):
            # The field's layers in float64; each product's inputs (the layer's input and
            # its weight) rounded by rnd first, as the kernel rounds them to its weights' type.
            dot = lambda x, w: rnd(x) @ rnd(w.double()).t()  # noqa: E731
            f = feats.double()
            l1, l2 = m.field.mlp[0], m.field.mlp[2]
            c1, c2, c3 = m.color_net[0], m.color_net[2], m.color_net[4]
            g = dot(torch.relu(dot(f, l1.weight) + l1.bias.double()), l2.weight) + l2.bias.double()
            geo = m.config["geo_features"]
            per_sample = ray_term.double().repeat_interleave(feats.shape[0] // ray_term.shape[0], 0)
            p = torch.relu(dot(g[:, 1:], c1.weight[:, :geo]) + per_sample)
            q = torch.relu(dot(p, c2.weight) + c2.bias.double())
            return torch.exp(g[:, 0]), torch.sigmoid(dot(q, c3.weight) + c3.bias.double())

        g = torch.Generator().manual_seed(0)
        # The defaults' widths (32 features, 64 hidden, 15 geometry features), and widths
        # that are no power of two and under 16 (padded by the kernel).
        for widths in (dict(n_levels=16, hidden=64, geo_features=15, color_hidden=64),
                       dict(n_levels=3, hidden=12, geo_features=5, color_hidden=24)):
            m = build_model("nerfacto", log2_hashmap_size=10, max_res=64, appearance_dim=4, **widths)
            with torch.no_grad():
                for p in list(m.field.mlp.parameters()) + list(m.color_net.parameters()):
                    p.normal_(0.0, 0.4, generator=g)
            n_rays, s = 5, 7
            feats = torch.randn(n_rays * s, m.field.encoding.out_dim, generator=g)
            ray_term = torch.randn(n_rays, m.config["color_hidden"], generator=g)
            assert supports(m.field.mlp, m.color_net)
            # The default float16 products against inputs rounded to float16, and float32
            # products (tf32 on the GPU) against unrounded ones; and each against the other
            # reference, which the rounding must move it away from.
            for dtype in (torch.float16, torch.float32):
                rnd = lambda v: v.to(dtype).double()  # noqa: E731
                kernel = lambda: radiance_mlp_triton(feats, ray_term, m.field.mlp, m.color_net,  # noqa: E731
                                                     m.config["geo_features"], weight_dtype=dtype)
                sigma, rgb = kernel()
                want_sigma, want_rgb = reference(m, feats, ray_term, rnd)
                assert sigma.shape == (n_rays * s,) and rgb.shape == (n_rays * s, 3)
                err_log = (sigma.double().log() - want_sigma.log()).abs().max()
                err_rgb = (rgb.double() - want_rgb).abs().max()
                assert err_log < 1e-4 and err_rgb < 1e-5, (widths, dtype, err_log, err_rgb)
                assert want_rgb.std() > 0.1 and want_sigma.log().std() > 0.3  # outputs that vary
                other = torch.float32 if dtype == torch.float16 else torch.float16
                _, other_rgb = reference(m, feats, ray_term, lambda v: v.to(other).double())
                assert (rgb.double() - other_rgb).abs().max() > 1e-4
                # Weights changed in place (a training step): the kernel's padded copies follow.
                with torch.no_grad():
                    m.color_net[4].bias.add_(0.7)
                    m.field.mlp[2].bias.add_(0.3)
                sigma, rgb = kernel()
                want_sigma, want_rgb = reference(m, feats, ray_term, rnd)
                assert (rgb.double() - want_rgb).abs().max() < 1e-5
                assert (sigma.double().log() - want_sigma.log()).abs().max() < 1e-4
        print("OK")
    """)
    run_in_triton_interpreter(code)


@needs_triton
def test_render_takes_the_fused_mlp_without_gradients_under_bf16_in_interpreter():
    code = textwrap.dedent("""
        import torch
        from models.nerfacto import fused_radiance
        from tests.conftest import tiny_nerfacto
        g = torch.Generator().manual_seed(1)
        m = tiny_nerfacto(2, g)
        x_n = torch.rand(6 * 4, 3, generator=g) * 1.6 - 0.8  # 6 rays x 4 samples
        ray_term = torch.randn(6, 16, generator=g)
        bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
        with torch.no_grad():
            assert fused_radiance(m, m._x01(x_n), ray_term) is None  # float32: the torch path
            with bf16():
                sigma, rgb = m._radiance_n(x_n, ray_term)
                s2, r2 = fused_radiance(m, m._x01(x_n), ray_term)
        assert torch.equal(sigma, s2) and torch.equal(rgb, r2)  # the field took the kernel
        with bf16():  # a gradient wanted: the torch path, in bf16
            assert fused_radiance(m, m._x01(x_n), ray_term) is None
            want_sigma, want_rgb = m._radiance_n(x_n, ray_term)
        assert not torch.equal(sigma, want_sigma.detach())
        assert (sigma.log() - want_sigma.detach().log()).abs().max() < 0.1
        assert (rgb - want_rgb.detach()).abs().max() < 0.03
        print("OK")
    """)
    run_in_triton_interpreter(code)
