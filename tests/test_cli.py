"""main.py train / eval / render end to end in subprocesses, and clean failures."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "main.py", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _error_lines(proc):
    return [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]


def _assert_clean_error(proc, *words):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = _error_lines(proc)
    assert len(lines) == 1, proc.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One tiny training run shared by the eval/render tests."""
    from tests.conftest import make_sphere_scene, write_png, write_transforms

    base = tmp_path_factory.mktemp("cli")
    data = base / "scene"
    sc = make_sphere_scene()
    for split in ("train", "test"):
        sp = sc.split(split)
        frames = []
        for k in range(len(sp)):
            write_png(data / split / f"{k:03d}.png", sp.images[k])
            frames.append((f"{split}/{k:03d}.png", sp.c2w[k]))
        write_transforms(data / f"transforms_{split}.json", frames)
    run = base / "run"
    proc = cli("train", "--data", data, "--out", run, "--steps", 5, "--width", 16, "--n-coarse", 4,
               "--n-fine", 4, "--batch", 64, "--eval-images", 1, "--log-every", 1, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    return data, run, proc


def test_help_lists_commands():
    proc = cli("--help")
    assert proc.returncode == 0
    for name in ("train", "eval", "render"):
        assert f"\n    {name} " in proc.stdout, proc.stdout


def test_train_writes_run_directory(trained_run):
    data, run, proc = trained_run
    assert {"run.json", "checkpoint.safetensors", "metrics.jsonl", "eval.json"} <= set(os.listdir(run))
    info = json.load(open(run / "run.json"))
    assert info["data"] == str(data) and info["downscale"] == 1 and info["white_bkgd"] is True
    assert info["config"]["model_options"]["width"] == 16
    assert info["config"]["model_options"]["n_coarse"] == 4 and info["config"]["batch_rays"] == 64
    recs = [json.loads(ln) for ln in open(run / "metrics.jsonl")]
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5]
    assert all(np.isfinite(r["loss"]) for r in recs)
    ev = json.load(open(run / "eval.json"))
    assert ev["split"] == "test" and len(ev["images"]) == 1 and ev["step"] == 5
    assert np.isfinite(ev["mean"]["psnr"]) and "ssim" in ev["mean"]
    assert "run written to" in proc.stdout


def test_eval_and_render(trained_run, tmp_path):
    _, run, _ = trained_run
    proc = cli("eval", run, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    ev = json.load(open(run / "eval.json"))
    assert len(ev["images"]) == 2 and ev["step"] == 5  # both test views this time
    assert "mean (2 views)" in proc.stdout

    import imageio.v3 as iio
    x, d = tmp_path / "x.png", tmp_path / "d.png"
    proc = cli("render", run, "--orbit", "0,30,4", "--out", x, "--depth-out", d, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert iio.imread(x).shape == (16, 16, 3) and iio.imread(d).shape == (16, 16, 3)


def test_missing_data_dir(tmp_path):
    out = tmp_path / "run"
    missing = tmp_path / "no_such_scene"
    proc = cli("train", "--data", missing, "--out", out, "--steps", 5)
    _assert_clean_error(proc, str(missing), "does not exist")
    assert not out.exists()


def test_negative_steps_rejected_by_argparse(tmp_path):
    out = tmp_path / "run"
    proc = cli("train", "--out", out, "--steps", -3)
    assert proc.returncode == 2 and "--steps" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_bad_pose(trained_run, tmp_path):
    _, run, _ = trained_run
    out = tmp_path / "never.png"
    proc = cli("render", run, "--pose", "[1, 2]", "--out", out, "--device", "cpu")
    _assert_clean_error(proc, "--pose", "12 or 16")
    assert not out.exists()


@pytest.mark.parametrize("pose,words", [("not json", ["--pose", "JSON"]),
                                        (json.dumps((2 * np.eye(4)).tolist()), ["--pose", "not rigid"]),
                                        (json.dumps(np.eye(4)[:3].ravel().tolist()[:11] + [float("nan")]),
                                         ["--pose", "NaN"])])
def test_bad_pose_variants_in_process(trained_run, tmp_path, capsys, pose, words):
    # Same entry point as main.py, without paying a torch import per case.
    from app.cli import main

    _, run, _ = trained_run
    out = tmp_path / "never.png"
    assert main(["render", str(run), "--pose", pose, "--out", str(out), "--device", "cpu"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and all(w in err[0] for w in words), err
    assert not out.exists()


def test_eval_of_missing_run(tmp_path):
    missing = tmp_path / "nope"
    proc = cli("eval", missing)
    _assert_clean_error(proc, str(missing), "run directory does not exist")
    assert not missing.exists()


def test_resume_without_checkpoint_leaves_nothing(trained_run, tmp_path, capsys):
    from app.cli import main

    data, _, _ = trained_run
    out = tmp_path / "fresh"
    assert main(["train", "--data", str(data), "--out", str(out), "--resume", "--steps", "2",
                 "--device", "cpu"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and str(out) in err[0] and "resume" in err[0], err
    assert not out.exists()


def test_existing_run_is_not_overwritten(trained_run, capsys):
    from app.cli import main

    data, run, _ = trained_run
    before = open(run / "checkpoint.safetensors", "rb").read()
    assert main(["train", "--data", str(data), "--out", str(run), "--steps", "2", "--device", "cpu"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert open(run / "checkpoint.safetensors", "rb").read() == before


@pytest.mark.parametrize("preset,lr", [("cpu", 3e-3), ("paper", 5e-4)])
def test_default_learning_rate_follows_the_preset(scene_dir, tmp_path, preset, lr):
    from app.cli import main

    out = tmp_path / preset
    assert main(["train", "--data", scene_dir, "--out", str(out), "--steps", "1", "--device", "cpu",
                 "--preset", preset, "--width", "8", "--n-coarse", "4", "--n-fine", "0", "--batch", "16",
                 "--eval-images", "0"]) == 0
    cfg = json.load(open(out / "run.json"))["config"]
    assert cfg["lr"] == lr and cfg["lr_final"] == pytest.approx(lr / 10)
    # An explicit --lr still wins.
    out2 = tmp_path / (preset + "_lr")
    assert main(["train", "--data", scene_dir, "--out", str(out2), "--steps", "1", "--device", "cpu",
                 "--preset", preset, "--width", "8", "--n-coarse", "4", "--n-fine", "0", "--batch", "16",
                 "--eval-images", "0", "--lr", "1e-3"]) == 0
    assert json.load(open(out2 / "run.json"))["config"]["lr"] == 1e-3


def test_bf16_defaults_follow_each_models_policy(scene_dir, tmp_path, monkeypatch):
    from app.cli import main
    from app.engine import presets

    for native in (False, True):
        monkeypatch.setattr(presets, "cpu_has_native_bf16", lambda native=native: native)
        got = {(k, cuda): presets.train_config(k, {}, cuda).autocast
               for k in ("nerf", "hash", "plenoxels") for cuda in (False, True)}
        # The MLP models on CUDA; the NeRF also on CPUs with native bf16; Plenoxels never.
        assert got == {("nerf", True): True, ("hash", True): True, ("plenoxels", True): False,
                       ("nerf", False): native, ("hash", False): False, ("plenoxels", False): False}
    monkeypatch.setattr(presets, "cpu_has_native_bf16", lambda: False)
    base = ["train", "--data", scene_dir, "--steps", "1", "--device", "cpu", "--width", "8",
            "--n-coarse", "4", "--n-fine", "0", "--batch", "16", "--eval-images", "0"]
    for flag, want in ((None, False), ("--bf16", True), ("--no-bf16", False)):
        out = tmp_path / str(flag)
        assert main(base + ["--out", str(out)] + ([flag] if flag else [])) == 0
        assert json.load(open(out / "run.json"))["config"]["autocast"] is want


def test_help_loads_no_torch():
    """`main.py --help` and each command's --help build the parser without importing torch
    (or the GUI stack): the commands load what they need only when run."""
    from app.cli import COMMANDS

    probe = ("import runpy, sys\n"
             "sys.argv = ['main.py'] + sys.argv[1:]\n"
             "try:\n    runpy.run_path('main.py', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "heavy = [m for m in ('torch', 'dearpygui', 'moderngl', 'pycolmap') if m in sys.modules]\n"
             "print('HEAVY', heavy)\n")
    for argv in [["--help"]] + [[name, "--help"] for name in COMMANDS]:
        out = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True,
                             cwd=ROOT, timeout=120)
        assert "HEAVY []" in out.stdout, (argv, out.stdout[-300:], out.stderr[-500:])
