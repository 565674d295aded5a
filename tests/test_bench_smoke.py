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
