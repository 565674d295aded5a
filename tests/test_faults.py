"""Faults end to end: `main.py train` with injected OOM / NaN (NERFLAB_FAULT) still
finishes, warns and writes its checkpoint; resume continues the step count and the
metrics log; a checkpoint of another model or config is refused clearly."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from app.engine.checkpoint import read_checkpoint
from app.engine.faults import make_hook, parse_faults

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--width", "16", "--n-coarse", "4", "--n-fine", "4", "--L-xyz", "4", "--L-dir", "2",
        "--eval-images", "0", "--log-every", "1", "--device", "cpu"]


def cli(*args, env_extra=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("NERFLAB_FAULT", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "main.py", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def steps_logged(run):
    with open(os.path.join(run, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(ln) for ln in f]


def test_parse_faults():
    assert parse_faults("oom@3, nan@5,") == [("oom", 3), ("nan", 5)]
    for bad in ("oom", "boom@1", "nan@x", "nan@-1", "oom@3;nan@5"):
        with pytest.raises(ValueError, match="NERFLAB_FAULT"):
            parse_faults(bad)


def test_hook_in_process_oom_then_nan_same_step():
    """Both faults at one step: the OOM fires, the retried step gets the NaN, then training goes on."""
    from tests.conftest import make_trainer

    tr = make_trainer(batch=256)
    tr.fault_hook = make_hook([("oom", 1), ("nan", 1)])
    recs = [tr.step() for _ in range(5)]
    assert [r.get("skipped", False) for r in recs] == [False, True, True, False, False]
    assert "out of memory with 256 rays; batch reduced to 128" in recs[1]["event"]
    assert "loss is nan" in recs[2]["event"]
    assert tr.step_count == 3 and tr.batch_rays == 128
    assert "loss_terms" not in vars(tr.model)  # the NaN patch removed itself
    assert all(np.isfinite(p.detach().numpy()).all() for p in tr.model.parameters())


def test_train_with_injected_oom_and_nan_finishes(scene_dir, tmp_path):
    run = tmp_path / "run"
    proc = cli("train", "--data", scene_dir, "--out", run, "--steps", 6, "--batch", 256, *TINY,
               env_extra={"NERFLAB_FAULT": "oom@2,nan@4"})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    warnings = [ln for ln in out.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 2, out
    assert "step 2: out of memory with 256 rays; batch reduced to 128" in warnings[0]
    assert "step 4: loss is nan, update skipped" in warnings[1]
    assert "Traceback" not in out
    meta, _ = read_checkpoint(str(run / "checkpoint.safetensors"))
    assert meta["step"] == 6 and meta["batch_rays"] == 128
    logged = steps_logged(run)
    assert [r["step"] for r in logged] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(r["loss"]) for r in logged)


def train(capsys, *args) -> tuple[int, str, str]:
    """main.py train in process (no interpreter start-up): (exit code, stdout, stderr)."""
    from app.cli import main

    capsys.readouterr()
    rc = main(["train", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_bad_fault_spec_is_a_clean_error(scene_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NERFLAB_FAULT", "boom@1")
    run = tmp_path / "run"
    rc, out, err = train(capsys, "--data", scene_dir, "--out", run, "--steps", 2, *TINY)
    assert rc == 2
    line = error_line(err)
    assert "NERFLAB_FAULT" in line and "boom@1" in line
    assert not run.exists()


def test_interrupt_then_resume_repeats_the_uninterrupted_run(scene_dir, tmp_path, capsys, monkeypatch):
    """Ctrl-C at step 3 (simulated), then --resume: the step count and the metrics log
    continue, and the losses are those of a run that was never interrupted."""
    monkeypatch.delenv("NERFLAB_FAULT", raising=False)
    ref, run = tmp_path / "ref", tmp_path / "run"
    common = ["--data", scene_dir, "--steps", 6, "--batch", 64, *TINY]
    assert train(capsys, "--out", ref, *common)[0] == 0
    monkeypatch.setenv("NERFLAB_FAULT", "interrupt@3")
    rc, out, err = train(capsys, "--out", run, *common)
    assert rc == 130 and "interrupted" in err
    meta, _ = read_checkpoint(str(run / "checkpoint.safetensors"))
    assert meta["step"] == 3  # saved on the way out
    assert [r["step"] for r in steps_logged(run)] == [1, 2, 3]
    monkeypatch.delenv("NERFLAB_FAULT")
    rc, out, err = train(capsys, "--out", run, "--resume", *common)
    assert rc == 0, err
    assert "resumed at step 3" in out
    assert read_checkpoint(str(run / "checkpoint.safetensors"))[0]["step"] == 6
    got, want = steps_logged(run), steps_logged(ref)
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([r["loss"] for r in got], [r["loss"] for r in want], rtol=1e-6)
    np.testing.assert_allclose([r["lr"] for r in got], [r["lr"] for r in want], rtol=1e-12)


@pytest.mark.parametrize("change,words", [
    (["--width", "32"], ["width=16", "here 32"]),
    (["--L-xyz", "6"], ["L_xyz=4", "here 6"]),
])
def test_resume_with_other_config_is_refused(scene_dir, tmp_path, capsys, monkeypatch, change, words):
    monkeypatch.delenv("NERFLAB_FAULT", raising=False)
    run = tmp_path / "run"
    assert train(capsys, "--data", scene_dir, "--out", run, "--steps", 2, "--batch", 64, *TINY)[0] == 0
    files = {n: open(run / n, "rb").read() for n in os.listdir(run)}
    args = TINY.copy()
    args[args.index(change[0]) + 1] = change[1]
    rc, out, err = train(capsys, "--data", scene_dir, "--out", run, "--steps", 4, "--batch", 64, "--resume", *args)
    assert rc == 2
    line = error_line(err)
    assert str(run / "checkpoint.safetensors") in line
    for w in words:
        assert w in line, line
    # The run directory is exactly as it was.
    assert {n: open(run / n, "rb").read() for n in os.listdir(run)} == files


def test_resume_from_a_checkpoint_of_another_model_is_refused(scene_dir, tmp_path, capsys, monkeypatch):
    """The checkpoint says it holds a 'hash' model (metadata rewritten, as another
    run's file would); resuming a NeRF run from it names both models."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    monkeypatch.delenv("NERFLAB_FAULT", raising=False)
    run = tmp_path / "run"
    assert train(capsys, "--data", scene_dir, "--out", run, "--steps", 2, "--batch", 64, *TINY)[0] == 0
    ckpt = str(run / "checkpoint.safetensors")
    with safe_open(ckpt, "pt") as f:
        meta = json.loads(f.metadata()["nerflab"])
    meta["model"] = "hash"
    save_file(load_file(ckpt), ckpt, metadata={"nerflab": json.dumps(meta)})
    before = open(ckpt, "rb").read()
    rc, out, err = train(capsys, "--data", scene_dir, "--out", run, "--steps", 4, "--batch", 64, "--resume", *TINY)
    assert rc == 2
    line = error_line(err)
    assert ckpt in line and "'hash'" in line and "'nerf'" in line
    assert open(ckpt, "rb").read() == before
