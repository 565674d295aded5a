"""Every Triton kernel compiles for the H200 (sm_90), on a machine without a GPU.

The interpreter tests (test_plenoxel_kernels, test_hashgrid) check what the kernels
compute, but Triton's interpreter runs the Python as Python and accepts code that its
compiler refuses (a constexpr set again on each pass of a static_range loop did). Here
each launcher runs on CPU tensors with its kernels replaced by recorders; every recorded
launch is then compiled ahead of time with the argument types it was launched with
(the Triton wheel carries ptxas; no driver is needed)."""
import pytest
import torch

from tests.conftest import needs_triton
from tests.test_plenoxel_kernels import SETUP

TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.int32: "i32",
         torch.int64: "i64", torch.uint8: "u8", torch.int8: "i8", torch.bool: "i1"}


class Recorder:
    """Stands in for a @triton.jit kernel: kernel[grid](*args, **meta) records the call."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __getitem__(self, grid):
        return lambda *args, **meta: self.calls.append((args, meta))


def _record(monkeypatch, module, names):
    recs = {n: Recorder(getattr(module, n)) for n in names}
    for n, r in recs.items():
        monkeypatch.setattr(module, n, r)
    return recs


def _compile(rec: Recorder) -> list:
    """The recorded launches compiled for sm_90, one per set of constexpr values."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    assert rec.calls, f"{rec.fn.__name__} was never launched"
    fn = rec.fn
    seen, compiled = set(), []
    for args, meta in rec.calls:
        variant = tuple(sorted((k, v) for k, v in meta.items() if k in fn.arg_names))
        if variant in seen:  # one compile per set of constexpr values
            continue
        seen.add(variant)
        sig, consts, attrs = {}, {}, {}
        for i, (name, a) in enumerate(zip(fn.arg_names, args)):
            if isinstance(a, torch.Tensor):
                sig[name] = "*" + TYPES[a.dtype]
                # As Triton's launcher marks a pointer that is 16-byte aligned (torch's
                # allocations are): what lets the compiler vectorise loads.
                attrs[(i,)] = [["tt.divisibility", 16]]
            elif isinstance(a, bool):
                sig[name] = "i1"
            elif isinstance(a, int):
                sig[name] = "i32" if -2 ** 31 <= a < 2 ** 31 else "i64"
            else:
                sig[name] = "fp32"
        options = {k: v for k, v in meta.items() if k in ("num_warps", "num_stages", "maxnreg")}
        for p in fn.params:
            if p.is_constexpr:
                sig[p.name] = "constexpr"
                consts[(fn.arg_names.index(p.name),)] = meta[p.name]
        assert len(sig) == len(fn.arg_names), f"{fn.__name__}: {len(args)} positional arguments recorded"
        compiled.append(triton.compile(ASTSource(fn, sig, constexprs=consts, attrs=attrs),
                                       target=GPUTarget("cuda", 90, 32),
                                       options=options))
    return compiled


def _ptxas_report(kernel) -> tuple[int, int]:
    """(registers a thread, bytes of spill stores) of a compiled kernel, from ptxas -v on
    its PTX (the wheel's ptxas; what the driver would load)."""
    import re
    import subprocess
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as tmp:
        ptx = f"{tmp}/k.ptx"
        with open(ptx, "w") as f:
            f.write(kernel.asm["ptx"])
        log = subprocess.run([get_ptxas(90).path, "-v", "--gpu-name=sm_90a", ptx, "-o", f"{tmp}/k.o"],
                             capture_output=True, text=True, check=True).stderr
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores", log)
    return int(regs.group(1)), int(spills.group(1))


@needs_triton
def test_hash_encoding_kernels_compile(monkeypatch):
    from models.hashgrid import HashEncoding
    from models.kernels import hash_encode as he

    recs = _record(monkeypatch, he, ("_hash_fwd", "_hash_bwd", "_hash_bwd_points"))
    enc = HashEncoding(4, 2, 12, 4, 64, seed=0)
    x = torch.rand(300, 3, requires_grad=True)
    out = he.hash_encode_triton(x, enc.table, enc.res_t, enc.off_t, enc.dense_t, enc.log2_hashmap_size)
    out.backward(torch.ones_like(out))  # both backward kernels: the table's and the points'
    for r in recs.values():
        _compile(r)


@needs_triton
def test_plenoxel_kernels_compile(monkeypatch):
    from models.kernels import plenoxel_render as pr
    from models.voxel_grid import pack_bits

    scope: dict = {}
    exec(SETUP, scope)
    grid, links, density, sh, cells, rays, basis, offset, bg = scope["make"]()
    recs = _record(monkeypatch, pr, ("_fwd_kernel", "_frame_kernel", "_bwd_kernel", "_weights_kernel"))
    packed = pr.pack_rays(rays, offset, 0.5)
    out = pr.render_forward(grid, packed, basis, bg, 0.5, 1e-4)
    pr.render_frame({**grid, "bits": pack_bits(cells)}, packed, basis, bg, 0.5, 1e-4)
    pr.render_backward(grid, packed, basis, out, torch.zeros(len(packed), 4), torch.zeros(len(density), 1),
                       torch.zeros_like(sh), 0.5, 1e-4)
    pr.max_weights(grid, packed, 0.5, 1e-4, torch.zeros(len(density)))
    for r in recs.values():
        _compile(r)


class CountingRecorder(Recorder):
    """A march kernel's recorder: its count launch (WRITE false) reports one sample per ray
    (argument 7, the counts), so that the launcher goes on to the write launch."""

    def __getitem__(self, grid):
        def launch(*args, **meta):
            self.calls.append((args, meta))
            if meta.get("WRITE") is False:
                args[7].fill_(1)
        return launch


@needs_triton
def test_march_kernels_compile(monkeypatch):
    from renderer import occupancy as oc
    from renderer.kernels import march as mk

    recs = {n: CountingRecorder(getattr(mk, n)) for n in ("_march_kernel", "_march_contracted_kernel")}
    for n, r in recs.items():
        monkeypatch.setattr(mk, n, r)
    o, d = torch.zeros(4, 3), torch.nn.functional.normalize(torch.ones(4, 3), dim=-1)
    s0, s1 = oc.march_interval(o, d, 1.0)
    occ = torch.ones(8 ** 3, dtype=torch.uint8)
    mk.march_rays_triton(o, d, s0, s1, occ, 1.0, 8, 0.01, 64, torch.full((4,), 0.5))
    for order in ("inf", 2):
        mk.march_contracted_triton(o, d, torch.full((4,), 0.05), torch.full((4,), 100.0), occ, 8, order, 64,
                                   torch.full((4,), 0.5))
    for r in recs.values():
        assert {c[1]["WRITE"] for c in r.calls} == {False, True}
        _compile(r)


@needs_triton
def test_nerfacto_render_kernels_compile_without_spills(monkeypatch):
    """The proposal kernel at its block shape, for both of a render's levels (256 and 96
    intervals a ray), and the histogram kernel compile; the proposal kernel keeps its
    numbers in registers. At two points a thread it spills and takes all 255 registers
    (docs/real_scenes.md, fifteenth session): this catches a block shape or a change to
    the kernel that brings that back."""
    from models import build_model
    from models.kernels import proposal_weights as pw
    from renderer import proposal as prop
    from renderer.kernels import histogram as hk

    recs = _record(monkeypatch, pw, ("_proposal_fwd",))
    recs.update(_record(monkeypatch, hk, ("_histogram_fwd",)))
    m = build_model("nerfacto")
    o, d = torch.zeros(4, 3), torch.nn.functional.normalize(torch.ones(4, 3), dim=-1)
    g0, g1 = torch.zeros(4, 1), torch.full((4, 1), 0.9)
    for net, n in zip(m.proposals, m.config["n_proposal"]):
        pw.proposal_weights_triton(net, o, d, prop.uniform_edges(4, n, None, "cpu"), g0, g1, "inf")
    hk.sample_histogram_triton(prop.uniform_edges(4, 256, None, "cpu"), torch.rand(4, 256), 96, None, 0.01, 1e-5)
    _compile(recs["_histogram_fwd"])
    kernels = _compile(recs["_proposal_fwd"])
    assert len(kernels) == 2  # one per level: 256 and 128 intervals a program row
    for k in kernels:
        regs, spilled = _ptxas_report(k)
        assert spilled == 0 and regs <= 128, (regs, spilled)


@needs_triton
def test_radiance_mlp_kernel_compiles_without_spills(monkeypatch):
    """The fused radiance MLP at its block shape and the defaults' widths compiles with its
    (64, 64) tiles in registers (the fused field kernel that held 64-wide layers per point
    spilled: docs/real_scenes.md), and its float16 products, from float16 and float32
    features, to Ampere-style MMA (v2) only: Triton 3.6's Hopper wgmma code for it failed
    on the H200 (the kernel's module doc)."""
    import re

    from models import build_model
    from models.kernels import radiance_mlp as rm

    rec = _record(monkeypatch, rm, ("_radiance_fwd",))["_radiance_fwd"]
    m = build_model("nerfacto")
    for dtype in (torch.float16, torch.float32):
        rec.calls.clear()
        rm.radiance_mlp_triton(torch.zeros(8, m.field.encoding.out_dim, dtype=dtype),
                               torch.zeros(2, m.config["color_hidden"]), m.field.mlp, m.color_net,
                               m.config["geo_features"])
        (kernel,) = _compile(rec)
        regs, spilled = _ptxas_report(kernel)
        assert spilled == 0 and regs <= 200, (dtype, regs, spilled)
        assert set(re.findall(r"versionMajor = (\d)", kernel.asm["ttgir"])) == {"2"}, dtype
        assert "wgmma" not in kernel.asm["ptx"]


@needs_triton
def test_field_samples_and_composite_kernels_compile_without_spills(monkeypatch):
    """The render's field-samples kernel (16 levels, the defaults' dense and hashed ones)
    and the compositing kernel at a render's 48 samples a ray."""
    from models import build_model
    from models.kernels import field_samples as fs
    from renderer.kernels import composite as ck

    recs = _record(monkeypatch, fs, ("_field_samples_fwd",))
    recs.update(_record(monkeypatch, ck, ("_composite_fwd",)))
    m = build_model("nerfacto")
    t = torch.linspace(0.1, 5.0, 49).expand(4, 49).contiguous()
    fs.field_features_triton(m.field.encoding, torch.zeros(4, 3), torch.ones(4, 3), t, "inf")
    ck.composite_intervals_triton(torch.zeros(4, 48), torch.zeros(4, 48, 3), t)
    for name in ("_field_samples_fwd", "_composite_fwd"):
        (kernel,) = _compile(recs[name])
        regs, spilled = _ptxas_report(kernel)
        print(name, regs, spilled)
        assert spilled == 0 and regs <= 128, (name, regs, spilled)


def test_a_kernel_the_compiler_refuses_fails_here(monkeypatch):
    """The check above is not vacuous: a kernel that sets a constexpr again in a
    static_range loop (which the interpreter runs) does not compile."""
    triton = pytest.importorskip("triton")
    import triton.language as tl

    @triton.jit
    def bad(x_ptr, BLOCK: tl.constexpr):
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for c in tl.static_range(2):
            b: tl.constexpr = c & 1
            acc += b
        tl.store(x_ptr + tl.arange(0, BLOCK), acc)

    rec = Recorder(bad)
    rec[(1,)](torch.zeros(4), BLOCK=4)
    with pytest.raises(Exception, match="constexpr"):
        _compile(rec)
