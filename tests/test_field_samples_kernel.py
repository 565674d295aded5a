"""The render's field-samples kernel (models/kernels/field_samples.py) against a float64
evaluation of its spec, and nerfacto's render through it against the torch path, both
through Triton's CPU interpreter."""
from __future__ import annotations

import textwrap

from tests.conftest import needs_triton, run_in_triton_interpreter


@needs_triton
def test_field_features_match_a_float64_evaluation_in_interpreter():
    code = textwrap.dedent("""
        import torch
        from models.hashgrid import HashEncoding, hash_encode_torch
        from models.kernels.field_samples import field_features_triton
        from models.kernels.hash_encode import dense_levels
        from renderer.contraction import contract, to_unit_cube

        g = torch.Generator().manual_seed(0)
        # Two dense levels, then hashed ones (a table of 2^10 entries a level).
        enc = HashEncoding(n_levels=5, n_features=2, log2_hashmap_size=10, base_res=4, max_res=64)
        assert dense_levels(enc) == 2 and not all(enc.dense)
        with torch.no_grad():
            enc.table.uniform_(-1.0, 1.0, generator=g)
        n_rays, s = 7, 9  # 63 points: the last block not filled
        o = torch.randn(n_rays, 3, generator=g) * 0.6
        d = torch.nn.functional.normalize(torch.randn(n_rays, 3, generator=g), dim=-1)
        # Sorted distances from 0.05 to far beyond the unit ball (contracted space).
        t = torch.cumsum(torch.rand(n_rays, s + 1, generator=g) ** 4 * 6.0, 1) + 0.05
        def reference(order):
            mid = 0.5 * (t[:, 1:] + t[:, :-1]).double()
            x = (o.double()[:, None] + d.double()[:, None] * mid[..., None]).reshape(-1, 3)
            assert (x.norm(dim=-1) > 2).any()  # far points, in contracted space
            return hash_encode_torch(to_unit_cube(contract(x, order)), enc.table.detach().double(), enc.resolutions,
                                     enc.offsets, enc.dense, enc.log2_hashmap_size)

        for order in ("inf", 2):  # the config's values
            want = reference(order)
            assert want.std() > 0.2  # features that vary
            for half in (True, False):  # the table's float16 copy, the table itself
                got = field_features_triton(enc, o, d, t, order, half)
                assert got.dtype == torch.float16 and got.shape == (n_rays * s, 10)
                err = (got.double() - want).abs().max()
                assert err < 2e-3, (order, half, err)  # float16 rounding of values up to ~1
        # The table changed in place (a training step): the float16 copy follows.
        with torch.no_grad():
            enc.table.mul_(-0.5)
        err = (field_features_triton(enc, o, d, t, "inf").double() - reference("inf")).abs().max()
        assert err < 2e-3, err
        print("OK")
    """)
    run_in_triton_interpreter(code)


@needs_triton
def test_render_takes_the_field_kernels_under_bf16_in_interpreter():
    code = textwrap.dedent("""
        import torch
        from models import nerfacto
        from renderer.crop import CropBox
        from tests.conftest import orbit_poses, tiny_nerfacto
        g = torch.Generator().manual_seed(1)
        m = tiny_nerfacto(3, g)
        m.eval()
        rays_o = torch.tensor(orbit_poses(4)[:, :3, 3], dtype=torch.float32).repeat(3, 1)
        rays_d = -rays_o + torch.randn(12, 3, generator=g) * 0.3
        calls = []
        real = nerfacto.fused_field
        def spy(*a):
            out = real(*a)
            calls.append(out is not None)
            return out
        nerfacto.fused_field = spy
        bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
        with torch.no_grad():
            want = m.render_rays(rays_o, rays_d, 2.0, 6.0, background=1.0)  # float32: the torch path
            with bf16():
                got = m.render_rays(rays_o, rays_d, 2.0, 6.0, background=1.0)
        assert calls == [False, True], calls
        assert (got["rgb"] - want["rgb"]).abs().max() < 0.02, (got["rgb"] - want["rgb"]).abs().max()
        assert (got["acc"] - want["acc"]).abs().max() < 0.02
        assert want["rgb"].std() > 0.02  # colours that differ between rays
        # A cropped render needs the points themselves: the torch path.
        m.crop = CropBox((-0.5, -0.5, -0.5), (0.5, 0.5, 0.5))
        with torch.no_grad(), bf16():
            m.render_rays(rays_o, rays_d, 2.0, 6.0, background=1.0)
        assert calls == [False, True]  # the kernels were not asked
        print("OK")
    """)
    run_in_triton_interpreter(code)
