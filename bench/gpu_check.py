"""Kernel checks and a step profile on the GPU (one device call).

    python bench/gpu_check.py --data .data/lego            # equality + timings + profile
    python bench/gpu_check.py --small --no-profile         # CPU smoke (TRITON_INTERPRET=1)

1. Triton marching vs the torch reference on fresh random rays and grid: the
   fraction of identical samples (fp fusion is off, so expect all) and times.
2. Triton hash encoding forward/backward vs torch: max |diff| relative to the
   reference's max, and times (median of do_bench-style repeats).
3. torch.profiler over a few hash and NeRF training steps on a real scene after
   a warm-up: top ops by device time and the CPU time per step, to see where a
   step goes (kernels, launches, syncs).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402


def log(*a):
    print(*a, flush=True)


def section(name, fn, *args, **kwargs):
    """Run one check; a failure is printed and the next section still runs (one device call
    should report as much as it can)."""
    try:
        fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - report and go on to the next section
        import traceback
        traceback.print_exc()
        log(f"{name} failed: {exc!r}")


def timeit(fn, n=20):
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    ts = []
    for _ in range(n):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2] * 1e3


def check_march(dev, n_rays, res, steps):
    from renderer import occupancy as oc
    from renderer.kernels.march import march_rays_triton
    g = torch.Generator(device="cpu").manual_seed(int(time.time()) % 1000)
    o = torch.randn(n_rays, 3, generator=g)
    o = o / o.norm(dim=-1, keepdim=True) * 4
    d = torch.rand(n_rays, 3, generator=g) * 2.4 - 1.2 - o
    d = d / d.norm(dim=-1, keepdim=True)
    o, d = o.to(dev), d.to(dev)
    s0, s1 = oc.march_interval(o, d, 1.5)
    occ = (torch.rand(res ** 3, generator=g) < 0.2).to(torch.uint8).to(dev)
    j = torch.rand(n_rays, generator=g).to(dev)
    dt = oc.step_size(1.5, steps)
    a = oc.march_rays_torch(o, d, s0, s1, occ, 1.5, res, dt, steps, j)
    b = march_rays_triton(o, d, s0, s1, occ, 1.5, res, dt, steps, j)
    same_counts = (a["counts"] == b["counts"]).float().mean().item()
    n = min(a["s"].numel(), b["s"].numel())
    same_s = (a["s"][:n] == b["s"][:n]).float().mean().item() if n else 1.0
    log(f"march: {n_rays} rays, {a['s'].numel()} vs {b['s'].numel()} samples; rays with equal counts "
        f"{same_counts:.6f}; equal s {same_s:.6f}")
    ta = timeit(lambda: oc.march_rays_torch(o, d, s0, s1, occ, 1.5, res, dt, steps, j), 5)
    tb = timeit(lambda: march_rays_triton(o, d, s0, s1, occ, 1.5, res, dt, steps, j), 20)
    log(f"march time: torch {ta:.2f} ms, triton {tb:.2f} ms")
    from renderer.kernels.march import march_rays_triton_static
    cap = max(1, a["s"].numel() * 3 // 4)  # a cut inside the batch
    sa = oc.march_rays_torch(o, d, s0, s1, occ, 1.5, res, dt, steps, j, max_samples=cap)
    sb = march_rays_triton_static(o, d, s0, s1, occ, 1.5, res, dt, steps, j, cap)
    k = sa["s"].numel()
    same = (torch.equal(sa["s"], sb["s"][:k]) and torch.equal(sa["ray_ids"], sb["ray_ids"][:k])
            and bool((sb["ray_ids"][k:] == n_rays).all()) and torch.equal(sa["fits"], sb["fits"]))
    log(f"march static (capacity {cap}): {k} packed, identical to the dynamic march + padding: {same}")


def check_hash(dev, n, log2):
    from models.hashgrid import HashEncoding, hash_encode_torch
    from models.kernels.hash_encode import hash_encode_triton
    enc = HashEncoding(log2_hashmap_size=log2).to(dev)
    with torch.no_grad():
        enc.table.normal_()
    x = torch.rand(n, 3, device=dev)
    a = hash_encode_torch(x, enc.table, enc.resolutions, enc.offsets, enc.dense, log2)
    b = hash_encode_triton(x, enc.table, enc.res_t, enc.off_t, enc.dense_t, log2)
    w = torch.randn_like(a)
    ga, = torch.autograd.grad((a * w).sum(), enc.table)
    gb, = torch.autograd.grad((b * w).sum(), enc.table)
    log(f"hash fwd: rel max diff {((a - b).abs().max() / a.abs().max()).item():.2e}; "
        f"bwd rel max diff {((ga - gb).abs().max() / ga.abs().max()).item():.2e}; nan {bool(b.isnan().any())}")
    xt = x.clone()

    def fwd_t():
        return hash_encode_triton(xt, enc.table, enc.res_t, enc.off_t, enc.dense_t, log2)

    def fb_t():
        out = hash_encode_triton(xt, enc.table, enc.res_t, enc.off_t, enc.dense_t, log2)
        torch.autograd.grad(out, enc.table, w)

    def fb_ref():
        out = hash_encode_torch(xt, enc.table, enc.resolutions, enc.offsets, enc.dense, log2)
        torch.autograd.grad(out, enc.table, w)
    with torch.no_grad():
        tf = timeit(fwd_t)
    log(f"hash time ({n} pts): triton fwd {tf:.2f} ms, fwd+bwd {timeit(fb_t):.2f} ms; "
        f"torch fwd+bwd {timeit(fb_ref, 3):.2f} ms")


def profile(kind, data, steps_warm, steps_prof, autocast, batch):
    from torch.profiler import ProfilerActivity, profile as tprof
    from app.engine.trainer import TrainConfig, Trainer
    from loaders import load_scene
    scene = load_scene(data)
    torch.backends.cuda.matmul.allow_tf32 = True
    if kind == "hash":
        cfg = TrainConfig(model="hash", batch_rays=4096, lr=1e-2, lr_final=1e-3, lr_decay_steps=30000,
                          autocast=autocast)
    else:
        cfg = TrainConfig(model="nerf", model_options=dict(width=256, depth=8, n_coarse=64, n_fine=128,
                                                           occupancy_res=64),
                          batch_rays=batch, lr=5e-4, lr_final=5e-5, lr_decay_steps=100000, autocast=True)
    tr = Trainer(scene, cfg)
    t0 = time.perf_counter()
    for _ in range(steps_warm):
        tr.step()
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    log(f"{kind}: warm-up {steps_warm} steps in {dt:.1f} s ({steps_warm / dt:.1f} steps/s incl. compile)")
    t0 = time.perf_counter()
    for _ in range(50):
        tr.step()
    dt = time.perf_counter() - t0
    extra = f", last batch {tr.model._last_batch}" if kind == "hash" else ""
    log(f"{kind}: {50 / dt:.1f} steps/s (steady, batch {tr.batch_rays}{extra})")
    with tprof(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps_prof):
            tr.step()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / steps_prof * 1e3
    ka = prof.key_averages()
    # Kernels only: operator rows repeat their kernels' time (the old sum counted it twice).
    cuda_total = sum(e.self_device_time_total for e in ka if e.device_type.name == "CUDA") / steps_prof / 1e3
    log(f"{kind}: profiled {wall:.2f} ms/step wall; device busy {cuda_total:.2f} ms/step; "
        f"kernels/step {sum(e.count for e in ka if e.device_type.name == 'CUDA') / steps_prof:.0f}")
    log(ka.table(sort_by="self_cuda_time_total", row_limit=22, max_name_column_width=60))
    if kind == "hash":
        m = tr.model
        c2w = scene.split("test").c2w[0]
        for chunk in (65536, 1 << 20):
            ms = timeit(lambda chunk=chunk: tr.render(c2w, 800, 800, keys=("rgb",), chunk=chunk), 3)
            log(f"hash render 800x800 chunk {chunk}: {ms:.1f} ms; occupied {m.occupancy.float().mean():.3f}")
        with tprof(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            tr.render(c2w, 800, 800, keys=("rgb",), chunk=1 << 20)
            torch.cuda.synchronize()
        log(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=15, max_name_column_width=60))


def nerf_anatomy(data, seconds=40.0, window=100, dev="cuda", k_rate=40, batch=None, batches=(4096, 16384)):
    """The bench's NeRF (bench_gpu.make_trainer defaults) trained for `seconds`: per window of
    steps, steps/s and the fraction of samples each network evaluated (the rest the
    occupancy grid skipped); then variants timed from the same trained state."""
    import bench.bench_gpu as bg
    from loaders import load_scene
    scene = load_scene(data)
    bg.set_fast_math(True)
    args = bg.build_parser().parse_args(["--data", data] + (["--nerf-batch", str(batch)] if batch else []))
    tr = bg.make_trainer("nerf", scene, args, dev)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    m = tr.model
    for _ in range(20):
        tr.step()
    sync()
    t_all, n, acc = time.perf_counter(), 0, {"coarse": [0, 0], "fine": [0, 0]}
    t_w = time.perf_counter()
    while time.perf_counter() - t_all < seconds:
        tr.step()
        n += 1
        for k, (e, t) in m.last_evaluated.items():
            acc[k][0] += e
            acc[k][1] += t
        if n % window == 0:
            dt = time.perf_counter() - t_w
            log(f"nerf step {tr.step_count}: {window / dt:.1f} steps/s; evaluated coarse "
                f"{acc['coarse'][0] / max(acc['coarse'][1], 1):.3f}, "
                f"fine {acc['fine'][0] / max(acc['fine'][1], 1):.3f} "
                f"({(acc['coarse'][0] + acc['fine'][0]) / window / 1e6:.2f} M samples/step); occupied cells "
                f"{m.occupancy.float().mean().item():.3f}")
            acc = {"coarse": [0, 0], "fine": [0, 0]}
            t_w = time.perf_counter()

    def rate(label, k=k_rate):
        for _ in range(5):
            tr.step()
        sync()
        t0 = time.perf_counter()
        ev = 0
        for _ in range(k):
            tr.step()
            ev += sum(e for e, _ in m.last_evaluated.values())
        dt = (time.perf_counter() - t0) / k
        log(f"nerf variant {label}: {1 / dt:.1f} steps/s, {tr.batch_rays / dt:,.0f} rays/s, "
            f"{ev / k / 1e6:.2f} M evaluated samples/step, {ev / k / dt / 1e6:.1f} M samples/s")

    rate("base (eager bf16)")
    from torch.profiler import ProfilerActivity, profile as tprof
    if dev == "cuda":
        tr.step()
        with tprof(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                tr.step()
            sync()
        ka = prof.key_averages()
        busy = sum(e.self_device_time_total for e in ka if e.device_type.name == "CUDA") / 3 / 1e3
        log(f"nerf profile: kernels {busy:.2f} ms/step")
        log(ka.table(sort_by="self_cuda_time_total", row_limit=18, max_name_column_width=70))
    for bs in batches:
        tr.batch_rays = bs
        rate(f"batch {bs}")
    tr.batch_rays = args.nerf_batch
    # A finer grid: same threshold rule, 8x the cells.
    from renderer.occupancy import OccupancyGrid

    old = (m.config["occupancy_res"], m.estimator)
    m.config["occupancy_res"] = 128
    m.estimator = OccupancyGrid(128, old[1].bound, persistent=False).to(dev)
    for _ in range(4):
        m.update_grid(decay=1.0)
    log(f"grid 128: occupied {m.occupancy.float().mean().item():.3f}")
    rate("grid 128^3")
    m.config["occupancy_res"], m.estimator = old
    m.compile_fields()
    t0 = time.perf_counter()
    for _ in range(10):
        tr.step()
    log(f"compile warm-up 10 steps {time.perf_counter() - t0:.1f} s")
    rate("compiled")
    log(f"test PSNR (4 views) at step {tr.step_count}: {bg.evaluate(tr, 4):.2f}")


def compare_graph(data, steps_warm=300, steps_timed=300, autocast=False):
    """Eager vs CUDA-graph hash training step on the same scene and settings: steps/s over
    steps_timed steps after steps_warm, training PSNR, and a profile of graphed steps."""
    from torch.profiler import ProfilerActivity, profile as tprof
    from app.engine.trainer import TrainConfig, Trainer
    from loaders import load_scene
    scene = load_scene(data)
    torch.backends.cuda.matmul.allow_tf32 = True
    for graph in (False, True):
        cfg = TrainConfig(model="hash", batch_rays=4096, lr=1e-2, lr_final=1e-3, lr_decay_steps=30000,
                          autocast=autocast, cuda_graph=graph)
        tr = Trainer(scene, cfg)
        t0 = time.perf_counter()
        while tr.step_count < steps_warm:
            tr.step()
        torch.cuda.synchronize()
        warm = time.perf_counter() - t0
        psnr = []
        t0 = time.perf_counter()
        start = tr.step_count
        while tr.step_count < start + steps_timed:
            psnr.append(tr.step().get("psnr", float("nan")))
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        n = tr.step_count - start
        log(f"hash {'graph' if graph else 'eager'} (bf16 {autocast}): warm-up {steps_warm} steps {warm:.1f} s; "
            f"{n / dt:.1f} steps/s ({dt / n * 1e3:.2f} ms/step); last batch {tr.model._last_batch}; "
            f"mean train PSNR of the last 50 {sum(psnr[-50:]) / 50:.2f}; events {tr.events[-3:]}")
        if graph:
            with tprof(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(10):
                    tr.step()
                torch.cuda.synchronize()
            ka = prof.key_averages()
            busy = sum(e.self_device_time_total for e in ka if e.device_type.name == "CUDA") / 10 / 1e3
            log(f"hash graph: device busy {busy:.2f} ms/step")
            log(ka.table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=60))
        del tr
        torch.cuda.empty_cache()


def graph_recovery(data):
    """The graphed hash step's recovery rules on CUDA: a NaN table rolls back and recaptures,
    a sample-count change recaptures, and training goes on."""
    from app.engine.trainer import TrainConfig, Trainer
    from loaders import load_scene
    tr = Trainer(load_scene(data), TrainConfig(model="hash", batch_rays=4096, lr=1e-2, lr_final=1e-3,
                                               lr_decay_steps=30000, autocast=True, cuda_graph=True))
    while tr.step_count < 250:
        tr.step()
    first = tr._static
    with torch.no_grad():
        tr.model.encoding.table[:1000] = float("nan")
    m = tr.step()
    log(f"graph recovery: NaN table -> skipped {m.get('skipped')}, event {m.get('event')!r}; "
        f"graph dropped {tr._static is None}")
    for _ in range(50):
        m = tr.step()
    log(f"graph recovery: 50 steps later step {tr.step_count}, psnr {m.get('psnr', 0):.2f}, "
        f"recaptured {tr._static is not None and tr._static is not first}; params finite "
        f"{all(bool(torch.isfinite(p).all()) for p in tr.model.parameters())}")
    second = tr._static
    tr.model.set_samples(n_coarse=512)
    for _ in range(20):
        m = tr.step()
    log(f"graph recovery: n_coarse 1024 -> 512 recaptured {tr._static is not second}; psnr {m['psnr']:.2f}; "
        f"events {tr.events}")


def body_profile(tr, st, steps=10, rows=14):
    """Kernel times of the graphed step's body run eagerly (a graph hides its kernels from
    the profiler): where the GPU time of a step goes."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile
    with tprofile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            tr.optimizer.zero_grad(set_to_none=True)
            st._body()
        torch.cuda.synchronize()
    log(f"  kernels of {steps} eager step bodies, by GPU time:")
    log(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=rows, max_name_column_width=70))


def compaction_anatomy(data, steps_warm=600, steps_timed=300, factors=(2, 3, 4), device="cuda",
                       options=None):
    """Where the compacting hash step's time goes: graphed bf16 steps/s and rays per step
    with compaction off and at each march_factor, then, from the trained state of the
    default, the step's parts timed one by one (march into factor x budget slots, the
    density-only pass, packing, the training forward + backward on the budget)."""
    from app.engine.trainer import TrainConfig, Trainer
    from loaders import load_scene
    from renderer import occupancy as oc
    scene = load_scene(data)
    torch.backends.cuda.matmul.allow_tf32 = True
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    kept_trainer = None
    from models.hashgrid import HashGridModel
    default_factor = HashGridModel.DEFAULTS["march_factor"]
    for compact, factor in [(False, default_factor)] + [(True, f) for f in factors]:
        opts = {**(options or {}), "compact": compact, "march_factor": factor}
        cfg = TrainConfig(model="hash", model_options=opts, batch_rays=4096, lr=1e-2, lr_final=1e-3,
                          lr_decay_steps=30000, autocast=device == "cuda", cuda_graph=True, device=device)
        tr = Trainer(scene, cfg)
        tr.static_on_cpu = device != "cuda"
        while tr.step_count < steps_warm:
            tr.step()
        for pipeline in (False, True):  # Trainer.pipeline: one graphed step kept in flight
            tr.pipeline = pipeline
            sync()
            t0 = time.perf_counter()
            start = tr.step_count
            while tr.step_count < start + steps_timed:
                tr.step()
            tr.finish_pending()
            sync()
            dt = time.perf_counter() - t0
            n = tr.step_count - start
            rays, kept = tr.model._last_batch
            log(f"compact {compact} march_factor {factor} pipeline {pipeline}: {n / dt:.1f} steps/s "
                f"({dt / n * 1e3:.2f} ms/step), last step {rays} rays, {kept} samples trained; "
                f"events {tr.events[-2:]}")
        tr.pipeline = False
        st = tr._static
        if device == "cuda" and st is not None and st.graph is not None:
            # The graph alone: what the step costs the GPU, without the host's share of Trainer.step
            # (EMA, grid refresh, snapshot, the stats read-back).
            replay_ms = timeit(st.graph.replay, 100)
            log(f"  graph replay alone: {replay_ms:.2f} ms; the rest of a pipelined Trainer.step: "
                f"{dt / n * 1e3 - replay_ms:.2f} ms")
            body_profile(tr, st)
        if compact and factor == tr.model.DEFAULTS["march_factor"]:
            kept_trainer = tr
        else:
            del tr
        if device == "cuda":
            torch.cuda.empty_cache()
    if kept_trainer is None:
        return
    tr, m = kept_trainer, kept_trainer.model
    c = m.config
    cap = c["sample_budget"]
    st = tr._static
    n_rays = st.max_rays if st is not None else cap // 4
    active = torch.arange(n_rays, device=tr.device) < (st.n_active if st is not None else n_rays)
    batch = tr.sample_batch(n_rays)
    rays_o, rays_d, target = batch.rays_o, batch.rays_d, batch.target
    bg = float(tr.background)
    with torch.autocast(tr.device.type, dtype=torch.bfloat16, enabled=tr.config.autocast):
        o, d, _, s0, s1 = m._setup_rays(rays_o, rays_d, float(tr.scene.near), float(tr.scene.far))
        s1 = torch.where(active, s1, s0)
        jit = torch.rand(n_rays, device=tr.device)
        big = cap * c["march_factor"]
        march = lambda: oc.march_rays_static(o, d, s0, s1, m.occupancy, c["bound"], c["grid_res"], m.dt,
                                             c["n_coarse"], jit, big)
        pk = march()
        o_pad = torch.cat([o, torch.zeros_like(o[:1])])
        d_pad = torch.cat([d, d[:1]])
        alive_fn = lambda: m._alive_samples(o_pad, d_pad, pk["ray_ids"], pk["s"], n_rays + 1)
        alive = alive_fn()
        pack = lambda: oc.compact_static(alive, pk["ray_ids"], pk["s"], n_rays, cap)
        cp = pack()

        def train_pass():
            from models.hashgrid import sh_encode
            sh = sh_encode(d_pad, m.sh_C)
            sigma, rgb = m._field_packed(o_pad, d_pad, sh, cp["ray_ids"], cp["s"])
            out = oc.composite_packed(sigma, rgb, cp["s"], m.dt, cp["ray_ids"], n_rays + 1)
            loss = ((out["rgb"][:n_rays] + (1 - out["acc"][:n_rays, None]) * bg - target[:, :3]) ** 2).mean()
            loss.backward()

        parts = [("march into %d slots" % big, march), ("density-only pass over them", alive_fn),
                 ("pack the survivors", pack), ("training forward + backward on %d slots" % cap, train_pass)]
        for name, fn in parts:
            log(f"  {name}: {timeit(fn, 10):.2f} ms")
    tr.optimizer.zero_grad(set_to_none=True)
    log(f"  marched {int(pk['kept'])} of {int(pk['marched'])} asked for; "
        f"{int((alive & (pk['ray_ids'] < n_rays)).sum())} alive; {int(cp['kept'])} packed")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=os.path.join(ROOT, "assets", "scene"))
    p.add_argument("--small", action="store_true")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--nerf-batch", type=int, default=8192)
    p.add_argument("--only", default="march,hash,profile-hash,profile-nerf,graph,graph-recovery,compaction",
                   help="comma-separated sections to run")
    a = p.parse_args()
    only = set(a.only.split(","))
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if a.small:
        check_march(dev, 64, 16, 128)
        check_hash(dev, 500, 12)
    else:
        if "march" in only:
            check_march(dev, 16384, 128, 1024)
        if "hash" in only:
            check_hash(dev, 1 << 18, 19)
    if "nerf-anatomy" in only and dev == "cuda":
        section("nerf anatomy", nerf_anatomy, a.data)
    if "graph" in only and dev == "cuda":
        for ac in (False, True):
            section("graph comparison", compare_graph, a.data, autocast=ac)
    if "compaction" in only and dev == "cuda":
        section("compaction anatomy", compaction_anatomy, a.data)
    if "graph-recovery" in only and dev == "cuda":
        section("graph recovery check", graph_recovery, a.data)
    if not a.no_profile:
        for kind, warm, n, ac in (("hash", 300, 10, False), ("nerf", 300, 5, True)):
            if f"profile-{kind}" in only:
                section(f"{kind} profile", profile, kind, a.data, warm, n, ac, a.nerf_batch)


if __name__ == "__main__":
    main()
