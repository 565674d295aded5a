"""bench/bench_gpu.py end to end on the CPU at toy sizes: the GPU benchmark is only run
on the device machine, so this keeps its plumbing (trainers, reference, JSON, table)
from breaking unnoticed. Speeds here mean nothing."""
import json

from bench import bench_gpu


def test_bench_gpu_runs_nerf_and_reference_and_writes_json(tmp_path, capsys):
    out = tmp_path / "b.json"
    rc = bench_gpu.main(["--models", "nerf,reference", "--budgets", "0.5", "--nerf-batch", "64",
                         "--ref-batch", "64", "--warmup-steps", "1", "--render-size", "8",
                         "--lowres-size", "4", "--eval-views", "1", "--render-repeats", "1",
                         "--downscale", "4", "--nerf-occ-warmup", "0", "--device", "cpu",
                         "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| nerf |" in printed and "| reference |" in printed and "nerf / reference rays/s" in printed
    rows = {r["model"]: r for r in json.loads(out.read_text())["rows"]}
    nerf, ref = rows["nerf"], rows["reference"]
    assert nerf["steps"] >= 1 and ref["steps"] >= 1
    # 64 rays x (64 coarse + 192 fine) asked for; the grid (on from step 0) may skip some.
    assert nerf["samples_per_step"] == 64 * 256
    assert 0 < nerf["evaluated_per_step"] <= nerf["samples_per_step"]
    assert 0.0 < nerf["psnr"]["0.5"] < 60.0


def test_gpu_check_compaction_section_runs_on_cpu(capsys):
    import re

    from bench import gpu_check
    gpu_check.compaction_anatomy("assets/scene", steps_warm=6, steps_timed=3, factors=(3,), device="cpu",
                                 options={"grid_res": 16, "log2_hashmap_size": 12, "max_res": 64,
                                          "n_levels": 4, "sample_budget": 2048, "grid_warmup": 2})
    printed = capsys.readouterr().out
    assert "compact False march_factor 3" in printed and "compact True march_factor 3" in printed
    for part in ("march into 6144 slots", "density-only pass", "pack the survivors",
                 "training forward + backward on 2048 slots"):
        assert part in printed
    marched, asked, alive, packed = map(int, re.search(
        r"marched (\d+) of (\d+) asked for; (\d+) alive; (\d+) packed", printed).groups())
    assert marched <= min(asked, 6144) and alive <= marched and packed <= min(alive, 2048)


def test_cpu_step_bench_runs_one_row(capsys):
    """bench/bench_cpu_step.py builds its trainer through the presets like the CLI does."""
    from bench import bench_cpu_step

    tr = bench_cpu_step._trainer(bf16=False, occupancy=True, batch=32)
    assert tr.config.lr == 3e-3 and tr.model.config["occupancy_res"] == 64
    assert not tr.step().get("skipped")


def test_bench_real_runs_nerfacto_variants_and_writes_json(tmp_path, capsys):
    """bench/bench_real.py end to end on the CPU: two variants (camera refinement on and
    off) on the embedded scene with a tiny field; every column present."""
    from bench import bench_real

    tiny = dict(n_levels=4, log2_hashmap_size=12, max_res=64, hidden=16, color_hidden=16, appearance_dim=4,
                proposal_levels=3, proposal_log2_hashmap_size=10, proposal_max_res=[16, 32], proposal_hidden=8,
                n_proposal=[8, 6], n_samples=4)
    out, pngs = tmp_path / "r.json", tmp_path / "png"
    rc = bench_real.main(["--scene", "toy=assets/scene", "--downscale", "4", "--budgets", "0.3",
                          "--variant", 'on={"refine_poses": true}', "--variant", "off={}",
                          "--options", json.dumps(tiny), "--batch", "32", "--eval-views", "1",
                          "--fit-steps", "2", "--warmup-steps", "1", "--render-size", "8",
                          "--render-repeats", "1", "--device", "cpu", "--json", str(out),
                          "--save-heldout", str(pngs), "--heldout-width", "40",
                          "--render-configs", '6,4,4;{"march_res": 8, "march_steps": 16}', "--fit-pose"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| toy | on |" in printed and "| toy | off |" in printed and "fitted on the left half" in printed
    assert "0.3s pose R" in printed
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    on, off = rows["on"], rows["off"]
    assert on["keys"]["refine_poses"] is True and "refine_poses" not in off["keys"]
    assert on["batch_rays"] == 32 and on["field_samples_per_step"] == 32 * 4
    assert on["proposal_samples_per_step"] == 32 * 14
    for r in (on, off):
        assert r["steps"] >= 1
        p = r["psnr"]["0.3"]
        assert all(0.0 < p[k] < 60.0 for k in ("mean", "mean_right", "fit_right", "pose_right"))
    assert off["pose_delta_deg_max"] == 0.0  # refinement off: the deltas never move
    sweep = off["render_sweep"]  # the proposal render with fewer samples, then the marched one
    assert [e["counts"] for e in sweep] == ["6,4,4", '{"march_res": 8, "march_steps": 16}']
    assert all(0.0 < e["psnr"] < 60.0 and e["frame_ms"] > 0 for e in sweep)
    assert sweep[0]["samples_per_ray"] == 6 + 4 + 4  # the proposal render's, all of them
    assert 0 < sweep[1]["samples_per_ray"] <= 16 + 1  # marched: at most every step, and the far end
    assert sorted(f.name for f in pngs.iterdir()) == ["toy_off_heldout.png", "toy_on_heldout.png"]
