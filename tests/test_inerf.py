"""iNeRF pose recovery: the SE(3) exponential against float64 references, keypoint
sampling, and recovery of a perturbed camera on the embedded scene with the
committed demo field (assets/demo_run)."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from app.tools.inerf import (InvertPose, hat, interest_mask, interest_points, perturb_pose, rotation_error_deg,
                       se3_exp, translation_error)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "assets", "demo_run")


def expm_reference(xi: np.ndarray) -> np.ndarray:
    """exp of the 4x4 twist matrix by scaling and squaring a 30-term Taylor series, float64."""
    a = np.zeros((4, 4))
    w, v = xi[:3], xi[3:]
    a[:3, :3] = [[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]]
    a[:3, 3] = v
    s = max(0, int(math.ceil(math.log2(max(np.abs(a).sum(1).max(), 1e-300)))) + 1)
    a = a / 2 ** s
    out, term = np.eye(4), np.eye(4)
    for k in range(1, 30):
        term = term @ a / k
        out = out + term
    for _ in range(s):
        out = out @ out
    return out


AXIS = np.array([0.3, -0.5, 0.81]) / np.linalg.norm([0.3, -0.5, 0.81])
ANGLES = [0.0, 1e-9, 1e-4, 0.05, 0.1999, 0.2001, 0.7, 2.0, 3.1]


@pytest.mark.parametrize("angle", ANGLES)
def test_se3_exp_matches_series_float64(angle):
    xi = np.concatenate([AXIS * angle, [0.4, -1.2, 0.25]])
    got = se3_exp(torch.tensor(xi, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(got, expm_reference(xi), atol=1e-12, rtol=0)


@pytest.mark.parametrize("angle", ANGLES)
def test_se3_exp_float32_accuracy(angle):
    xi = np.concatenate([AXIS * angle, [0.4, -1.2, 0.25]])
    got = se3_exp(torch.tensor(xi, dtype=torch.float32)).double().numpy()
    np.testing.assert_allclose(got, expm_reference(xi), atol=2e-6, rtol=0)


def test_known_rotation_and_pure_translation():
    r = se3_exp(torch.tensor([0, 0, math.pi / 2, 0, 0, 0], dtype=torch.float64)).numpy()
    np.testing.assert_allclose(r[:3, :3], [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-15)
    t = se3_exp(torch.tensor([0, 0, 0, 1.5, -2.0, 0.5], dtype=torch.float64)).numpy()
    np.testing.assert_allclose(t, [[1, 0, 0, 1.5], [0, 1, 0, -2.0], [0, 0, 1, 0.5], [0, 0, 0, 1]], atol=0)
    x = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    w = torch.tensor([-0.5, 0.25, 2.0], dtype=torch.float64)
    np.testing.assert_allclose((hat(w) @ x).numpy(), torch.linalg.cross(w, x).numpy())


def test_gradient_at_identity_is_the_generators():
    """d exp(xi^)/d xi at 0 are the se(3) generators: finite, exact, no 0/0."""
    jac = torch.autograd.functional.jacobian(se3_exp, torch.zeros(6, dtype=torch.float64))  # (4, 4, 6)
    for k in range(6):
        g = np.zeros((4, 4))
        if k < 3:
            e = np.eye(3)[k]
            g[:3, :3] = [[0, -e[2], e[1]], [e[2], 0, -e[0]], [-e[1], e[0], 0]]
        else:
            g[k - 3, 3] = 1.0
        np.testing.assert_allclose(jac[..., k].numpy(), g, atol=1e-15)


@pytest.mark.parametrize("angle", [1e-3, 0.2, 1.3])
def test_gradcheck(angle):
    xi = torch.tensor(np.concatenate([AXIS * angle, [0.3, 0.1, -0.2]]), dtype=torch.float64,
                      requires_grad=True)
    assert torch.autograd.gradcheck(se3_exp, (xi,))


def test_pose_errors_and_perturbation():
    a = np.eye(4)
    b = se3_exp(torch.tensor([0.0, math.radians(30), 0, 0, 0, 0], dtype=torch.float64)).numpy()
    b[:3, 3] = [3.0, 4.0, 0.0]
    assert rotation_error_deg(a, b) == pytest.approx(30.0, abs=1e-9)
    assert translation_error(a, b) == pytest.approx(5.0)
    gt = np.eye(4)
    gt[:3, 3] = [0, 0, 4.0]
    p = perturb_pose(gt, 10.0, 0.1, seed=3)
    assert rotation_error_deg(p, gt) == pytest.approx(10.0, abs=1e-3)
    r = p[:3, :3].astype(np.float64)
    np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-6)
    # The camera moved on the sphere by 10 degrees (chord 2*4*sin 5deg), then by 0.1.
    chord = 2 * 4.0 * math.sin(math.radians(5))
    assert chord - 0.1 - 1e-5 <= translation_error(p, gt) <= chord + 0.1 + 1e-5
    np.testing.assert_array_equal(perturb_pose(gt, 10.0, 0.1, seed=3), p)


def test_interest_points_find_the_corners_of_a_square():
    img = np.zeros((40, 40, 3), np.float32)
    img[10:30, 12:28] = 1.0
    pts = interest_points(img)
    corners = np.array([[10, 12], [10, 27], [29, 12], [29, 27]])
    for c in corners:
        assert np.abs(pts - c).max(1).min() <= 2, (c, pts)
    # Corners only: nothing detected in the flat interior or far along the edges.
    for p in pts:
        assert np.abs(corners - p).max(1).min() <= 3, p
    mask = interest_mask((40, 40), np.array([[0, 0], [20, 20]]), 2)
    ref = np.zeros((40, 40), bool)
    ref[0:3, 0:3] = True
    ref[18:23, 18:23] = True
    np.testing.assert_array_equal(mask, ref)


def test_flat_target_falls_back_to_random_sampling():
    from tests.conftest import make_trainer

    tr = make_trainer()
    inv = InvertPose(tr, np.ones((16, 16, 3), np.float32), tr.scene.split("train").c2w[0], batch=32)
    assert inv.sampling == "random" and len(inv.pool) == 256 and inv.notes
    rec = inv.step()
    assert rec["c2w"].shape == (4, 4) and np.isfinite(rec["loss"])
    # The field is not trained by pose recovery.
    assert all(p.grad is None for p in tr.model.parameters())


@pytest.mark.parametrize("target,init,kw,match", [
    (np.ones((16, 16)), np.eye(4), {}, "target must be an"),
    (np.full((16, 16, 3), np.nan), np.eye(4), {}, "NaN"),
    (np.ones((16, 16, 3)), np.eye(3), {}, "init_c2w must be"),
    (np.ones((16, 16, 3)), np.eye(4), {"sampling": "sift"}, "sampling must be"),
    (np.ones((16, 16, 3)), np.eye(4), {"lr": -1.0}, "lr > 0"),
])
def test_bad_inputs(target, init, kw, match):
    from tests.conftest import make_trainer

    with pytest.raises(ValueError, match=match):
        InvertPose(make_trainer(), target, init, **kw)


def test_bare_model_needs_intrinsics_and_bounds():
    from tests.conftest import make_trainer

    model = make_trainer().model
    with pytest.raises(ValueError, match="pass K"):
        InvertPose(model, np.ones((16, 16, 3)), np.eye(4))
    inv = InvertPose(model, np.ones((16, 16, 3)), np.eye(4), K=20.0, near=2.0, far=6.0, batch=8)
    assert np.isfinite(inv.step()["loss"])


@pytest.fixture(scope="module")
def demo():
    from app.engine.runs import load_run

    trainer, scene, _ = load_run(DEMO, "cpu")
    return trainer, scene


def test_recovers_a_perturbed_camera_on_the_embedded_scene(demo):
    trainer, scene = demo
    sp = scene.split("test")
    gt = sp.c2w[3]
    init = perturb_pose(gt, 10.0, 0.1, seed=0)
    assert rotation_error_deg(init, gt) == pytest.approx(10.0, abs=1e-3)
    inv = InvertPose(trainer, sp.images[3], init, lr=1e-2, batch=128, sampling="interest", seed=0)
    assert len(inv.keypoints) > 20
    hist = inv.run(100, gt_c2w=gt)
    errs = [(h["rot_err_deg"], h["trans_err"]) for h in hist]
    print("rotation / translation error every 10 steps:", [tuple(round(x, 3) for x in e) for e in errs[9::10]])
    assert errs[-1][0] < 2.0
    assert errs[-1][1] < 0.15 < translation_error(init, gt)
    assert hist[-1]["loss"] < hist[0]["loss"]


def test_cli_inerf(tmp_path):
    out = tmp_path / "pose.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "main.py", "inerf", DEMO, "--image", "assets/scene/test/r_3.png",
                           "--init-view", "test:3", "--perturb-deg", "10", "--perturb-trans", "0.1",
                           "--steps", "4", "--batch", "32", "--log-every", "2", "--device", "cpu",
                           "--out-pose", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(ln.split()[:1] == ["2"] for ln in lines) and any(ln.split()[:1] == ["4"] for ln in lines)
    final = [ln for ln in lines if ln.startswith("final: rotation error")]
    assert len(final) == 1 and "(from 10.000)" in final[0]
    import json
    pose = json.load(open(out))
    assert np.asarray(pose["c2w"]).shape == (4, 4) and pose["steps"] == 4
