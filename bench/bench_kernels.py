"""nerfacto's render kernels against their torch paths, at the sizes of a frame.

    python bench/bench_kernels.py                       # CUDA: times and errors, a table
    python bench/bench_kernels.py --rays 1024 --device cpu   # with TRITON_INTERPRET=1: errors only

For each proposal level of the default field (256 and 96 intervals per ray) and for the
histogram resampling between them: the largest difference between the kernel and the
torch path, and the time of each (mean of --repeats calls after a warm-up, synchronised),
for every block shape in --shapes (points a program holds x warps) of the proposal kernel;
and the radiance field's MLPs at --samples per ray (models/kernels/radiance_mlp.py against
the torch layers under bf16 autocast, from the same hash features) for each block shape
in --mlp-shapes. Then the radiance field's hash features at the samples of one camera's
rays (models/kernels/field_samples.py, with the float32 table and with a float16 copy,
against the torch path's points then the per-level hash kernel) and the compositing
kernel against its torch path.
The nets have random weights scaled so that densities vary along each ray, which is what
the kernels' work depends on (not what the weights mean). --rays is one render chunk
(bench_real's default, 2^17).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402


def timed(fn, repeats: int, cuda: bool) -> float:
    """Mean milliseconds of fn() over ``repeats`` calls after one warm-up call."""
    fn()
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats * 1e3


def with_kernels(mode: str, fn):
    """fn() with NERFLAB_KERNELS=mode ("torch" or "triton")."""
    old = os.environ.get("NERFLAB_KERNELS")
    os.environ["NERFLAB_KERNELS"] = mode
    try:
        return fn()
    finally:
        if old is None:
            os.environ.pop("NERFLAB_KERNELS", None)
        else:
            os.environ["NERFLAB_KERNELS"] = old


@torch.no_grad()
def level_rows(m, i: int, rays, args, dev: str) -> list[tuple]:
    """Table rows of proposal level i (each block shape) and, after level 0, of the
    histogram resampling to level 1's count."""
    from models.kernels.proposal_weights import block_shape, proposal_weights_triton
    from renderer import proposal as prop

    o, d, t0, t1 = rays
    cuda, net, k = dev == "cuda", m.proposals[i], m.config["n_proposal"][i]
    u = prop.uniform_edges(o.shape[0], k, None, dev)

    def torch_path(bf16: bool):  # as a render runs it: no gradient, bf16 under autocast on CUDA
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=bf16):
            return with_kernels("torch", lambda: m._proposal_weights(net, o, d, u, t0, t1, False))

    want = torch_path(False)  # the float32 reference
    t_torch = timed(lambda: torch_path(cuda), args.repeats, cuda)
    g0, g1 = prop.lindisp(t0), prop.lindisp(t1)
    rows = []
    for shape in args.shapes.split(","):
        pts, warps = block_shape(k) if shape == "auto" else (int(v) for v in shape.lower().split("x"))
        run = partial(proposal_weights_triton, net, o, d, u, g0, g1, "inf", pts, warps)
        rows.append((f"proposal level {i} ({k} per ray)", f"{pts} x {warps}",
                     float((run() - want).abs().max()), t_torch, timed(run, args.repeats, cuda)))
        print("  ", *rows[-1], file=sys.stderr, flush=True)  # a row as it comes: compiles are slow
    if i == 0:
        nxt = m.config["n_proposal"][1]
        hist = partial(prop.sample_histogram, u, want, nxt, None)
        err = float((with_kernels("triton", hist) - with_kernels("torch", hist)).abs().max())
        rows.append((f"histogram {k} -> {nxt}", "-", err,
                     timed(partial(with_kernels, "torch", hist), args.repeats, cuda),
                     timed(partial(with_kernels, "triton", hist), args.repeats, cuda)))
    return rows


@torch.no_grad()
def mlp_rows(m, n_rays: int, args, dev: str) -> list[tuple]:
    """Table rows of the radiance MLPs on n_rays x --samples points, one per block shape
    and product input type (float16, the default, and tf32);
    the error is the largest colour difference from the float32 torch layers."""
    from models.kernels.radiance_mlp import radiance_mlp_triton

    cuda, g = dev == "cuda", torch.Generator(device=dev).manual_seed(1)
    with torch.no_grad():
        for q in list(m.field.mlp.parameters()) + list(m.color_net.parameters()):
            q.normal_(0.0, 0.3, generator=g)
    feats = torch.randn(n_rays * args.samples, m.field.encoding.out_dim, device=dev, generator=g)
    ray_term = torch.randn(n_rays, m.config["color_hidden"], device=dev, generator=g)

    def torch_path(bf16: bool):
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=bf16):
            return m._radiance_head(m.field.mlp(feats), ray_term)[1]

    want = torch_path(False)
    t_torch = timed(lambda: torch_path(cuda), args.repeats, cuda)
    rows = []
    for shape in args.mlp_shapes.split(","):
        pts, warps = (int(v) for v in shape.lower().split("x"))
        for dtype in (torch.float16, torch.float32):  # the products' inputs: float16, or tf32
            if dtype == torch.float16 and warps >= 4:
                continue  # refused by the kernel (its module doc)
            run = partial(radiance_mlp_triton, feats, ray_term, m.field.mlp, m.color_net, m.config["geo_features"],
                          pts, warps, dtype)
            name = "float16" if dtype == torch.float16 else "tf32"
            rows.append((f"radiance MLPs ({args.samples} per ray), {name} products", f"{pts} x {warps}",
                         float((run()[1] - want).abs().max()), t_torch, timed(run, args.repeats, cuda)))
            print("  ", *rows[-1], file=sys.stderr, flush=True)
    return rows


@torch.no_grad()
def field_rows(m, n_rays: int, args, dev: str) -> list[tuple]:
    """Rows of the field's hash features at --samples per ray of a pinhole camera's rays
    (neighbouring pixels' samples are near each other, as in a frame: the table reads'
    locality depends on it) and of the compositing of those samples."""
    from models.kernels.field_samples import field_features_triton
    from renderer import proposal as prop
    from renderer.compositing import composite_intervals

    cuda, enc, g = dev == "cuda", m.field.encoding, torch.Generator(device=dev).manual_seed(2)
    enc.table.normal_(0.0, 1.0, generator=g)
    side = int(n_rays ** 0.5)
    ij = torch.stack(torch.meshgrid(torch.arange(side, device=dev), torch.arange(side, device=dev),
                                    indexing="ij"), -1).reshape(-1, 2).float()
    d = torch.nn.functional.normalize(torch.cat([(ij - side / 2) / side, -torch.ones_like(ij[:, :1])], 1), dim=-1)
    o = torch.tensor([[0.1, 0.2, 0.9]], device=dev).expand(side * side, 3).contiguous()
    t0, t1 = torch.full((side * side, 1), 0.05, device=dev), torch.full((side * side, 1), 1000.0, device=dev)
    t = prop.spacing_to_distance(prop.uniform_edges(side * side, args.samples, None, dev), t0, t1)

    def torch_path():
        mid = 0.5 * (t[:, 1:] + t[:, :-1])
        return enc(m._x01((o[:, None, :] + d[:, None, :] * mid[..., None]).reshape(-1, 3)))

    want = with_kernels("triton", torch_path)  # the hash kernel, float32
    t_torch = timed(lambda: with_kernels("triton", torch_path), args.repeats, cuda)
    rows = []
    for name, half in (("float32 table", False), ("float16 table", True)):
        run = partial(field_features_triton, enc, o, d, t, "inf", half)
        rows.append((f"field hash features ({args.samples} per ray), {name}", "128 x 4",
                     float((run().float() - want).abs().max()), t_torch, timed(run, args.repeats, cuda)))
        print("  ", *rows[-1], file=sys.stderr, flush=True)
    sigma = torch.rand(side * side, args.samples, device=dev, generator=g) * 3.0
    rgb = torch.rand(side * side, args.samples, 3, device=dev, generator=g)
    comp = partial(composite_intervals, sigma, rgb, t)
    err = float((with_kernels("triton", comp)["rgb"] - with_kernels("torch", comp)["rgb"]).abs().max())
    rows.append((f"compositing ({args.samples} per ray)", "512 x 4", err,
                 timed(partial(with_kernels, "torch", comp), args.repeats, cuda),
                 timed(partial(with_kernels, "triton", comp), args.repeats, cuda)))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rays", type=int, default=1 << 17)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--shapes", default="auto,256x8,512x16",
                   help="proposal kernel block shapes, POINTSxWARPS or auto (the kernel's choice), comma-separated")
    p.add_argument("--samples", type=int, default=48, help="radiance-field samples per ray")
    p.add_argument("--mlp-shapes", default="64x2,128x8",
                   help="radiance MLP kernel block shapes, POINTSxWARPS, comma-separated")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)

    from models import build_model
    from tests.conftest import orbit_poses

    dev = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = dev == "cuda"
    if not cuda and os.environ.get("TRITON_INTERPRET") != "1":
        print("bench_kernels: no CUDA device; on a CPU run it with TRITON_INTERPRET=1 (errors only, slow)")
        return 0
    torch.manual_seed(0)
    m = build_model("nerfacto").to(dev)
    m.bind_scene(orbit_poses(4).astype(np.float32), 2.0, 6.0, False)
    g = torch.Generator(device=dev).manual_seed(0)
    n = args.rays
    o = torch.randn(n, 3, device=dev, generator=g) * 0.5
    d = torch.nn.functional.normalize(torch.randn(n, 3, device=dev, generator=g), dim=-1)
    t0, t1 = torch.full((n, 1), 0.05, device=dev), torch.full((n, 1), 1000.0, device=dev)
    rows = []
    for i, net in enumerate(m.proposals):
        with torch.no_grad():
            net.encoding.table.normal_(0.0, 1.0, generator=g)
            for q in net.mlp.parameters():
                q.normal_(0.0, 0.5, generator=g)
        rows += level_rows(m, i, (o, d, t0, t1), args, dev)
    rows += mlp_rows(m, n, args, dev)
    rows += field_rows(m, n, args, dev)
    print(f"\nnerfacto render kernels, {n} rays, {torch.cuda.get_device_name() if cuda else 'Triton interpreter'}:")
    print("| stage | block (points x warps) | max abs error | torch ms | kernel ms |")
    print("|---|---|---:|---:|---:|")
    for name, shape, err, a, b in rows:
        print(f"| {name} | {shape} | {err:.1e} | {a:.2f} | {b:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
