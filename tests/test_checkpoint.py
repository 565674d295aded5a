"""app/engine/checkpoint.py: exact round trip, exact resume, clear refusals, atomic writes."""
import os

import pytest
import torch

import app.engine.checkpoint as ckpt_mod
from app.engine.checkpoint import CheckpointError, atomic_write, load_into, save_checkpoint, trainer_from_checkpoint
from tests.conftest import make_sphere_scene, make_trainer


@pytest.fixture(scope="module")
def scene():
    return make_sphere_scene()


def _opt_state(tr):
    return tr.optimizer.state_dict()["state"]


def test_roundtrip_and_exact_resume(tmp_path, scene):
    a = make_trainer(scene, batch=128)
    for _ in range(5):
        a.step()
    a.batch_rays = 96  # as if an OOM had halved it
    path = str(tmp_path / "run" / "checkpoint.safetensors")
    save_checkpoint(path, a)
    assert os.listdir(tmp_path / "run") == ["checkpoint.safetensors"]

    # The uninterrupted run goes on first: the model's stratified/importance samples
    # draw from torch's global RNG, which a resume (like a new process) restores.
    state_a = {k: v.clone() for k, v in a.model.state_dict().items()}
    opt_a = {i: {k: v.clone() for k, v in st.items()} for i, st in _opt_state(a).items()}
    lr_a = [g["lr"] for g in a.optimizer.param_groups]
    next_a = [a.step() for _ in range(2)]
    params_a = [p.detach().clone() for p in a.model.parameters()]

    b = trainer_from_checkpoint(path, scene, device="cpu")
    assert b.step_count == 5 and b.batch_rays == 96
    assert b.model.config == a.model.config
    sb = b.model.state_dict()
    assert state_a.keys() == sb.keys()
    for k in state_a:
        assert torch.equal(state_a[k], sb[k]), k
    ob = _opt_state(b)
    assert opt_a.keys() == ob.keys() and len(opt_a) == len(list(a.model.parameters()))
    for i in opt_a:
        assert opt_a[i].keys() == ob[i].keys()
        for key in opt_a[i]:
            assert torch.equal(opt_a[i][key], torch.as_tensor(ob[i][key])), (i, key)
    assert lr_a == [g["lr"] for g in b.optimizer.param_groups]

    # The resumed trainer's next steps are the uninterrupted trainer's, bit for bit.
    next_b = [b.step() for _ in range(2)]
    assert [m["loss"] for m in next_a] == [m["loss"] for m in next_b]
    assert [m["step"] for m in next_b] == [6, 7]
    for pa, pb in zip(params_a, b.model.parameters()):
        assert torch.equal(pa, pb)


def test_load_into_refuses_other_model_options(tmp_path, scene):
    a = make_trainer(scene)
    a.step()
    path = str(tmp_path / "a.safetensors")
    save_checkpoint(path, a)
    other = make_trainer(scene, width=16)
    before = {k: v.clone() for k, v in other.model.state_dict().items()}
    with pytest.raises(CheckpointError) as ei:
        load_into(path, other)
    msg = str(ei.value)
    assert "a.safetensors" in msg and "width=32" in msg and "16" in msg
    assert other.step_count == 0
    for k, v in other.model.state_dict().items():
        assert torch.equal(v, before[k])
    # Sample counts are integrator settings, not architecture: they may differ.
    same_arch = make_trainer(scene, n_coarse=4, n_fine=0)
    load_into(path, same_arch)
    assert same_arch.step_count == 1


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "no-metadata", "missing"])
def test_corrupt_checkpoint(tmp_path, scene, damage):
    a = make_trainer(scene)
    path = str(tmp_path / "ck.safetensors")
    save_checkpoint(path, a)
    data = open(path, "rb").read()
    if damage == "truncate":
        open(path, "wb").write(data[: len(data) // 2])
    elif damage == "garbage":
        open(path, "wb").write(os.urandom(4096))
    elif damage == "empty":
        open(path, "wb").close()
    elif damage == "no-metadata":
        from safetensors.torch import save_file
        save_file({"x": torch.zeros(3)}, path)
    else:
        os.remove(path)
    with pytest.raises(CheckpointError) as ei:
        trainer_from_checkpoint(path, scene, device="cpu")
    assert "ck.safetensors" in str(ei.value)
    with pytest.raises(CheckpointError):
        load_into(path, make_trainer(scene))


def test_atomic_write_failure_keeps_old_file(tmp_path, scene, monkeypatch):
    d = tmp_path / "run"
    path = str(d / "checkpoint.safetensors")
    a = make_trainer(scene)
    a.step()
    save_checkpoint(path, a)
    good = open(path, "rb").read()

    def failing_save(tensors, tmp, metadata=None):
        with open(tmp, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ckpt_mod, "save_file", failing_save)
    a.step()
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, a)
    assert os.listdir(d) == ["checkpoint.safetensors"]  # no temp file left
    assert open(path, "rb").read() == good
    monkeypatch.undo()
    assert trainer_from_checkpoint(path, scene, device="cpu").step_count == 1

    # The generic helper: a KeyboardInterrupt mid-write also cleans up.
    def interrupted(tmp):
        open(tmp, "w").write("half")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, interrupted)
    assert os.listdir(d) == ["checkpoint.safetensors"] and open(path, "rb").read() == good
    # A successful overwrite replaces the file and leaves nothing else.
    atomic_write(str(d / "note.txt"), lambda tmp: open(tmp, "w").write("ok"))
    assert sorted(os.listdir(d)) == ["checkpoint.safetensors", "note.txt"]


def test_atomic_write_gives_umask_permissions(tmp_path):
    import os
    from app.engine.checkpoint import atomic_write
    p = tmp_path / "f.bin"
    atomic_write(str(p), lambda tmp: open(tmp, "wb").write(b"x"))
    umask = os.umask(0)
    os.umask(umask)
    assert (os.stat(p).st_mode & 0o777) == (0o666 & ~umask)


def test_checkpoint_without_a_newer_option_still_loads(tmp_path):
    """Options added to a model after a checkpoint was written read as their defaults
    (here: density_activation, default 'relu', removed from a copy of the demo checkpoint)."""
    import json
    import os
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    from app.engine.checkpoint import load_into
    from app.engine.runs import load_run

    demo = os.path.join(os.path.dirname(__file__), "..", "assets", "demo_run")
    trainer, _, _ = load_run(demo, "cpu")
    src = os.path.join(demo, "checkpoint.safetensors")
    with safe_open(src, "pt") as f:
        meta = json.loads(f.metadata()["nerflab"])
    assert meta["config"]["model_options"].pop("density_activation") == "relu"
    old = tmp_path / "old.safetensors"
    save_file(load_file(src), str(old), metadata={"nerflab": json.dumps(meta)})
    load_into(str(old), trainer)
    assert trainer.step_count == meta["step"]
