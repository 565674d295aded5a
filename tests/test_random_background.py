"""Random training backgrounds: the loader keeps alpha, the trainer re-composites exactly."""
import numpy as np
import pytest
import torch

from app.engine.trainer import TrainConfig, Trainer
from loaders import load_scene
from tests.conftest import TINY_NERF, make_sphere_scene, write_png, write_transforms


def _pose(k):
    a = 2 * np.pi * k / 6
    c2w = np.eye(4)
    c2w[:3, 3] = [4 * np.sin(a), 0.0, 4 * np.cos(a)]
    c2w[:3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
    return c2w


def _rgba_scene(root, n=6, size=8, opaque_file=None, test_split=True):
    """RGBA views with random colour and coverage; returns the raw uint8 arrays by split."""
    rng = np.random.default_rng(0)
    raw = {}
    for split in (("train", "test") if test_split else ("train",)):
        frames, arrs = [], []
        for k in range(n):
            px = rng.integers(0, 256, (size, size, 4), dtype=np.uint8)
            px[0, 0, 3], px[0, 1, 3] = 0, 255  # fully empty and fully covered pixels too
            if split == "train" and k == opaque_file:
                px = px[..., :3]
            write_png(root / split / f"{k}.png", px)
            frames.append((f"{split}/{k}.png", _pose(k)))
            arrs.append(px)
        write_transforms(root / f"transforms_{split}.json", frames)
        raw[split] = arrs
    return raw


def _box(x, f):
    h, w = x.shape[0] // f, x.shape[1] // f
    return x.reshape(h, f, w, f, -1).mean((1, 3))


@pytest.mark.parametrize("white", [True, False])
def test_loader_alpha_swaps_background_exactly_after_downscale(tmp_path, white):
    raw = _rgba_scene(tmp_path)
    sc = load_scene(str(tmp_path), downscale=2, white_bkgd=white)
    tr = sc.split("train")
    assert tr.alpha is not None and tr.alpha.shape == tr.images.shape[:3] and tr.alpha.dtype == np.float16
    new_bg = np.array([0.2, 0.7, 0.4])
    for k, px in enumerate(raw["train"]):
        x = px.astype(np.float64) / 255.0
        a = x[..., 3:]
        expect = _box(x[..., :3] * a + (1 - a) * new_bg, 2)  # float64 reference composite
        got = tr.images[k] + (1 - tr.alpha[k].astype(np.float64))[..., None] * (new_bg - sc.background)
        np.testing.assert_allclose(got, expect, atol=2e-3)  # float16 alpha: ~1e-3
        np.testing.assert_allclose(tr.alpha[k], _box(a, 2)[..., 0], atol=1e-3)


def test_loader_alpha_absent_for_rgb_and_one_for_opaque_files(tmp_path, scene_dir):
    assert load_scene(scene_dir).split("train").alpha is None  # RGB files: no alpha
    _rgba_scene(tmp_path, opaque_file=2)
    tr = load_scene(str(tmp_path)).split("train")
    assert np.all(tr.alpha[2] == 1) and not np.all(tr.alpha[1] == 1)


def test_holdout_split_keeps_alpha_aligned(tmp_path):
    raw = _rgba_scene(tmp_path, n=9, test_split=False)
    sc = load_scene(str(tmp_path))  # no test split: every 8th view is held out
    te, tr = sc.split("test"), sc.split("train")
    assert len(te) + len(tr) == 9 and te.alpha.shape[0] == len(te) and tr.alpha.shape[0] == len(tr)
    # Views 0 and 8 are held out; training view 0 is file 1.
    np.testing.assert_allclose(te.alpha[1], raw["train"][8][..., 3] / 255.0, atol=1e-3)
    np.testing.assert_allclose(tr.alpha[0], raw["train"][1][..., 3] / 255.0, atol=1e-3)


def _trainer(scene, random_bg):
    cfg = TrainConfig(model="nerf", model_options=dict(TINY_NERF), batch_rays=64, lr=5e-3, seed=0,
                      device="cpu", random_background=random_bg)
    return Trainer(scene, cfg)


def test_trainer_renders_on_the_random_colours_its_targets_use(tmp_path, monkeypatch):
    _rgba_scene(tmp_path)
    tr = _trainer(load_scene(str(tmp_path)), True)
    seen = {}
    real = tr.model.render_rays

    def spy(*a, background=None, **k):
        seen["bg"] = background
        return real(*a, background=background, **k)

    monkeypatch.setattr(tr.model, "render_rays", spy)
    monkeypatch.setattr(tr.model, "loss_terms", lambda out, target: seen.update(target=target) or
                        {"mse": torch.nn.functional.mse_loss(out["rgb"], target)})
    batch = tr.sample_batch(64)
    assert batch.target.shape == (64, 4)
    state = tr.rng.get_state()
    m = tr.step()
    assert not m.get("skipped")
    bg, target = seen["bg"], seen["target"]
    assert torch.is_tensor(bg) and bg.shape == (64, 3) and bg.std() > 0.1  # per-ray colours
    # Same draw again: the target is the stored pixel re-composited on exactly those colours.
    tr.rng.set_state(state)
    t4 = tr.sample_batch(64).target
    bg2 = torch.rand(64, 3, generator=tr.rng)
    torch.testing.assert_close(bg2, bg)
    torch.testing.assert_close(target, t4[:, :3] + (1 - t4[:, 3:]) * (bg - tr.background))
    covered = t4[:, 3] > 0.999
    torch.testing.assert_close(target[covered], t4[covered, :3])  # opaque pixels keep their colour


def test_without_alpha_or_flag_the_scene_background_is_used(tmp_path):
    for scene, flag in ((make_sphere_scene(), True), (None, False)):
        if scene is None:
            _rgba_scene(tmp_path)
            scene = load_scene(str(tmp_path))
        tr = _trainer(scene, flag)
        assert tr.rays.alpha is None
        assert tr.sample_batch(8).target.shape == (8, 3)
        target, bg = tr._swap_background(tr.sample_batch(8).target)
        assert bg == tr.background and target.shape == (8, 3)
