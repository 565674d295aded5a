"""The crop box: its geometry, and that every registered field's render honours it."""
from __future__ import annotations

import json
import os

import pytest
import torch

from models import available, model_class
from models.field import Field
from renderer.crop import CropBox
from tests.conftest import look_at

# Small sizes by option name (not by model), so a newly registered field is covered too.
SMALL = dict(width=32, depth=2, dir_width=16, skips=[], n_coarse=32, n_fine=16, resolution=16,
             n_levels=4, log2_hashmap_size=12, base_res=4, max_res=32, hidden=16, geo_features=7,
             color_hidden=16, grid_res=16)


def test_box_contains_its_faces_and_nothing_outside():
    b = CropBox((-1, 0, 2), (1, 0.5, 3))
    x = torch.tensor([[0, 0.25, 2.5], [-1, 0, 2], [1, 0.5, 3], [1.001, 0.25, 2.5], [0, -1e-6, 2.5]])
    assert b.contains(x).tolist() == [True, True, True, False, False]
    assert b.contains_np(x.numpy()).tolist() == [True, True, True, False, False]
    sigma = torch.arange(5.0)
    assert b.mask_density(x, sigma).tolist() == [0.0, 1.0, 2.0, 0.0, 0.0]


@pytest.mark.parametrize("lo,hi", [((0, 0, 0), (1, 1, 0)), ((0, 0, 0), (1, 1, float("nan"))),
                                   ((0, 0), (1, 1)), (("a", 0, 0), (1, 1, 1))])
def test_bad_boxes_are_refused(lo, hi):
    with pytest.raises(ValueError, match="crop box"):
        CropBox(lo, hi)


def test_json_and_text_round_trip():
    b = CropBox((-0.1, 0.2, -0.3), (0.4, 0.5, 0.6))
    assert CropBox.from_json(b.to_json()) == b
    assert CropBox.parse("-0.1,0.2,-0.3,0.4,0.5,0.6") == b
    for bad in ("1,2,3", "a,b,c,d,e,f"):
        with pytest.raises(ValueError, match="6 comma-separated"):
            CropBox.parse(bad)
    with pytest.raises(ValueError, match="min"):
        CropBox.from_json([0, 1])


def test_intersect_and_corners():
    b = CropBox((-1, -1, -1), (1, 1, 1))
    assert b.intersect((0, -5, -5), (5, 0.5, 5)) == CropBox((0, -1, -1), (1, 0.5, 1))
    assert b.intersect((2, 2, 2), (3, 3, 3)) is None
    c = b.corners()
    assert c.shape == (8, 3) and set(map(tuple, c)) == {(x, y, z) for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)}


def test_training_is_never_cropped():
    f = Field()
    f.crop = CropBox((5, 5, 5), (6, 6, 6))
    x, s = torch.zeros(4, 3), torch.ones(4)
    assert f.crop_density(x, s, train=True).tolist() == [1.0] * 4
    assert f.crop_density(x, s, train=False).tolist() == [0.0] * 4


def _small_model(name):
    cls = model_class(name)
    torch.manual_seed(0)
    return cls(**{k: v for k, v in SMALL.items() if k in cls.DEFAULTS}).eval()


def _rays(n=12):
    """A 12x12 pinhole view of the origin from (3, 0.5, 0.8)."""
    c2w = torch.tensor(look_at((3.0, 0.5, 0.8)), dtype=torch.float32)
    j, i = torch.meshgrid(torch.linspace(-0.4, 0.4, n), torch.linspace(-0.4, 0.4, n), indexing="ij")
    d_cam = torch.stack([i, j, -torch.ones_like(i)], -1).reshape(-1, 3)
    return c2w[:3, 3].expand(n * n, 3).contiguous(), d_cam @ c2w[:3, :3].T


@pytest.mark.parametrize("name", available())
def test_every_registered_field_renders_nothing_outside_the_box(name):
    m = _small_model(name)
    o, d = _rays()
    with torch.no_grad():
        full = m.render_rays(o, d, 0.5, 6.0, background=1.0, train=False)
        assert full["acc"].max() > 0.05, "the test needs a field with some density"
        m.crop = CropBox((10, 10, 10), (11, 11, 11))  # nowhere near the rays
        none = m.render_rays(o, d, 0.5, 6.0, background=1.0, train=False)
        m.crop = CropBox((-50, -50, -50), (50, 50, 50))  # holds every sample
        every = m.render_rays(o, d, 0.5, 6.0, background=1.0, train=False)
        m.crop = CropBox((-50, -50, -50), (0.0, 50, 50))  # the half x <= 0
        half = m.render_rays(o, d, 0.5, 6.0, background=1.0, train=False)
    assert none["acc"].abs().max() == 0 and torch.allclose(none["rgb"], torch.ones_like(none["rgb"]))
    for k in ("rgb", "acc", "depth"):
        assert torch.equal(every[k], full[k]), k
    # The camera sits at x = 3, so the half box hides the near part of every ray.
    assert (half["acc"] < full["acc"] - 1e-4).any()
    # All the weight lies in the box, which is convex: so does the expected termination point.
    hit = half["acc"] > 1e-3
    assert hit.any()
    # depth is sum(w t): the expected termination point is at depth / acc.
    p = o[hit] + (half["depth"][hit] / half["acc"][hit])[:, None] * d[hit]
    assert p[:, 0].max() <= 1e-4, p[:, 0].max()


def test_checkpoints_keep_the_crop_box(tmp_path):
    from app.engine.checkpoint import CheckpointError, load_into, save_checkpoint, trainer_from_checkpoint
    from tests.conftest import make_sphere_scene, make_trainer

    scene = make_sphere_scene(n_views=2)
    a = make_trainer(scene, batch=64)
    box = CropBox((-0.5, -0.25, -1.0), (0.75, 1.0, 0.125))
    a.model.crop = box
    path = str(tmp_path / "c.safetensors")
    save_checkpoint(path, a)
    assert trainer_from_checkpoint(path, scene, "cpu").model.crop == box
    a.model.crop = None  # a snapshot without a box clears the one in use
    save_checkpoint(path, a)
    b = make_trainer(scene, batch=64)
    b.model.crop = box
    load_into(path, b)
    assert b.model.crop is None
    # A damaged box is refused before the trainer changes.
    import json
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        meta = json.loads(f.metadata()["nerflab"])
    meta["crop"] = {"min": [0, 0, 0], "max": [1, -1, 1]}
    save_file(load_file(path), path, metadata={"nerflab": json.dumps(meta)})
    step = b.step_count
    with pytest.raises(CheckpointError, match="crop box"):
        load_into(path, b)
    assert b.step_count == step


@pytest.fixture
def run_copy(tmp_path):
    import shutil

    from tests.test_video import DEMO
    dst = tmp_path / "run"
    shutil.copytree(DEMO, dst)
    with open(dst / "run.json", encoding="utf-8") as f:
        info = json.load(f)
    info["data"] = os.path.normpath(os.path.join(DEMO, info["data"]))
    with open(dst / "run.json", "w", encoding="utf-8") as f:
        json.dump(info, f)
    return str(dst)


def test_run_directories_keep_the_crop_box(run_copy):
    from app.engine.checkpoint import CheckpointError
    from app.engine.runs import load_run, read_run, set_run_crop

    box = CropBox((-1, -1, -0.5), (1, 1, 1))
    set_run_crop(run_copy, box)
    assert read_run(run_copy)["crop"] == box
    assert load_run(run_copy, "cpu")[0].model.crop == box
    set_run_crop(run_copy, None)
    assert load_run(run_copy, "cpu")[0].model.crop is None
    with open(os.path.join(run_copy, "run.json"), encoding="utf-8") as f:
        info = json.load(f)
    info["crop"] = {"min": [0, 0, 0]}
    with open(os.path.join(run_copy, "run.json"), "w", encoding="utf-8") as f:
        json.dump(info, f)
    with pytest.raises(CheckpointError, match="run.json: 'crop'"):
        read_run(run_copy)


def test_forward_facing_scenes_refuse_a_box():
    from types import SimpleNamespace

    from app.engine.runs import set_crop
    t = SimpleNamespace(scene=SimpleNamespace(ndc=True), model=SimpleNamespace(crop=None))
    with pytest.raises(ValueError, match="forward-facing"):
        set_crop(t, CropBox((0, 0, 0), (1, 1, 1)))
    set_crop(t, None)
    assert t.model.crop is None


def test_evaluation_scores_the_whole_field():
    from tests.conftest import make_sphere_scene, make_trainer

    scene = make_sphere_scene(n_views=2)
    t = make_trainer(scene, batch=64)
    for _ in range(3):
        t.step()
    whole = t.evaluate("train", ssim=False)["mean"]["psnr"]
    t.model.crop = CropBox((5, 5, 5), (6, 6, 6))
    assert t.evaluate("train", ssim=False)["mean"]["psnr"] == whole
    assert t.model.crop is not None  # and the box is back afterwards


def test_cli_crop_verb_shows_and_sets_the_box(run_copy, capsys):
    from app.cli import main
    from app.engine.runs import read_run

    assert main(["crop", run_copy]) == 0 and "none (checkpoint)" in capsys.readouterr().out
    assert main(["crop", run_copy, "--set=-1,-1,-0.5,1,1,1.25"]) == 0
    assert read_run(run_copy)["crop"] == CropBox((-1, -1, -0.5), (1, 1, 1.25))
    capsys.readouterr()
    assert main(["crop", run_copy]) == 0 and "-1,-1,-0.5,1,1,1.25 (run.json)" in capsys.readouterr().out
    assert main(["crop", run_copy, "--set", "1,2"]) == 2 and "--set" in capsys.readouterr().err
    assert main(["crop", run_copy, "--clear"]) == 0 and read_run(run_copy)["crop"] is None
