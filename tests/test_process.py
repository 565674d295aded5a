"""`main.py process`: a capture rendered by the project's own generator with known cameras
goes through structure from motion and its poses come back; the frame and matcher
helpers; bad inputs are one clear error and leave nothing behind; Ctrl-C too."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from loaders import DataError
from loaders.frames import MIN_IMAGES, laplacian_variance, select_sharpest
from loaders.sfm import choose_matcher, pair_chunks, sequential_pairs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pycolmap = pytest.importorskip("pycolmap")


# -- pure helpers ----------------------------------------------------------------------------
def test_laplacian_variance_ranks_blur_below_sharp():
    rng = np.random.default_rng(0)
    sharp = rng.random((40, 50))
    blurred = sharp.copy()
    for _ in range(3):  # a 3x3 box blur, three times
        p = np.pad(blurred, 1, mode="edge")
        blurred = sum(p[i:i + 40, j:j + 50] for i in range(3) for j in range(3)) / 9
    assert laplacian_variance(blurred) < 0.05 * laplacian_variance(sharp)
    assert laplacian_variance(np.full((10, 10), 0.3)) == 0.0
    # Against the written-out 4-neighbour stencil.
    g = rng.random((5, 6))
    lap = [g[y, x - 1] + g[y, x + 1] + g[y - 1, x] + g[y + 1, x] - 4 * g[y, x]
           for y in range(1, 4) for x in range(1, 5)]
    assert laplacian_variance(g) == pytest.approx(np.var(lap))


def test_select_sharpest_takes_the_best_of_each_stretch():
    scores = [1, 5, 2, 9, 3, 3, 8, 1, 0, 4]
    assert select_sharpest(scores, 2) == [3, 6]  # best of frames 0..4 and of 5..9
    assert select_sharpest(scores, 5) == [1, 3, 4, 6, 9]
    assert select_sharpest(scores[:3], 5) == [0, 1, 2]


def test_matcher_choice_and_pairs():
    assert choose_matcher(40, video=False) == "exhaustive"
    assert choose_matcher(200, video=False) == "sequential"
    assert choose_matcher(40, video=True) == "sequential"
    assert choose_matcher(40, video=True, matcher="exhaustive") == "exhaustive"
    with pytest.raises(ValueError):
        choose_matcher(4, False, "vocab")
    assert sequential_pairs(5, 2, quadratic=False) == {(0, 1), (0, 2), (1, 2), (1, 3), (2, 3), (2, 4), (3, 4)}
    assert (0, 4) in sequential_pairs(6, 3)  # 2^2 further
    for n, m in ((23, "exhaustive"), (40, "sequential")):
        chunks = pair_chunks(n, m, 5, block=7)
        flat = [p for c in chunks for p in c]
        want = {(i, j) for i in range(n) for j in range(i + 1, n)} if m == "exhaustive" else sequential_pairs(n, 5)
        assert len(flat) == len(set(flat)) and set(flat) == want  # every pair once


# -- end to end ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def capture(tmp_path_factory, gl_ctx):
    """12 views of the generator's scene (on its noise backdrop) along a 120 degree arc,
    256 px, processed once for the tests below."""
    from assets.make_scene import write_capture

    root = tmp_path_factory.mktemp("capture")
    poses = write_capture(str(root / "photos"), n_views=12, res=256, arc_deg=120.0, ctx=gl_ctx)
    report = _process(root / "photos", root / "data")
    return root, poses, report


def _process(src, out, **opts):
    from loaders.process import ProcessOptions, process_capture

    return process_capture(str(src), str(out), ProcessOptions(**opts))


def test_capture_poses_come_back(capture):
    from assets.make_scene import focal_length
    from loaders.normalize import pose_errors

    root, truth, report = capture
    out = root / "data"
    assert report["registered"] == report["given"] == 12
    assert report["mean_reprojection_error_px"] < 1.0
    assert set(report["seconds"]) == {"frames", "features", "matching", "mapping", "bundle adjustment", "writing"}
    meta = json.load(open(out / "transforms.json"))
    assert meta["camera_model"] == "OPENCV" and (meta["w"], meta["h"]) == (256, 256)
    assert abs(meta["fl_x"] / focal_length(256) - 1) < 0.03 and abs(meta["cx"] - 128) < 1e-6
    est = np.array([f["transform_matrix"] for f in meta["frames"]])
    idx = [int(f["file_path"][-7:-4]) for f in meta["frames"]]
    e = pose_errors(est, truth[idx])
    assert np.median(e["rot_deg"]) < 1.0 and e["rot_deg"].max() < 2.0
    assert np.median(e["centre_rel"]) < 0.02 and e["centre_rel"].max() < 0.05
    for d in ("images", "images_2", "images_4"):
        assert len(os.listdir(out / d)) == 12
    from PIL import Image
    assert Image.open(out / "images_4" / "view_000.jpg").size == (64, 64)
    assert {"cameras.bin", "images.bin", "points3D.bin"} <= set(os.listdir(out / "sparse" / "0"))
    assert not [f for f in os.listdir(root) if f.startswith(".")]  # no build folder left


def test_processed_folder_loads_and_trains(capture):
    from loaders import load_scene
    from tests.conftest import make_trainer

    root, truth, _ = capture
    sc = load_scene(str(root / "data"), downscale=4)
    assert sc.kind == "capture" and not sc.ndc and sc.points is not None and len(sc.points) > 100
    assert sc.split("train").cameras.kind == "OPENCV"
    tr = make_trainer(sc, batch=64)
    for _ in range(2):
        assert not tr.step().get("skipped")
    res = tr.evaluate("test", max_images=1, ssim=False)
    assert np.isfinite(res["mean"]["psnr"])


@pytest.fixture(scope="module")
def capture_run(capture, tmp_path_factory):
    """A run trained for 3 steps by `main.py train` on the processed folder."""
    root, _, _ = capture
    run = tmp_path_factory.mktemp("run") / "r"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "main.py", "train", "--data", str(root / "data"), "--out", str(run),
                        "--steps", "3", "--batch", "64", "--downscale", "4", "--n-coarse", "8", "--n-fine", "0",
                        "--width", "32", "--eval-images", "1", "--device", "cpu"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "NDC off" in r.stdout
    return run


def test_train_records_the_scene_frame(capture_run):
    info = json.load(open(capture_run / "run.json"))
    assert info["kind"] == "capture" and info["ndc"] is False and len(info["normalization"]["matrix"]) == 4


def test_every_command_takes_the_processed_run(capture_run, tmp_path):
    """eval, render (a dataset view, and --pose in the capture's own frame), render-video,
    inerf (its pose written back in the capture's frame) on the processed capture."""
    import imageio.v3 as iio

    from app.cli import main
    from app.engine.runs import load_run

    run = str(capture_run)
    assert main(["eval", run, "--max-images", "1", "--device", "cpu"]) == 0
    assert main(["render", run, "--view", "test:0", "--out", str(tmp_path / "v.png"), "--device", "cpu"]) == 0
    trainer, scene, _ = load_run(run, "cpu")
    assert iio.imread(tmp_path / "v.png").shape == (64, 64, 3)
    world = scene.to_world_poses(scene.split("train").c2w[0])  # as in transforms.json
    meta = json.load(open(os.path.join(json.load(open(capture_run / "run.json"))["data"], "transforms.json")))
    assert any(np.allclose(world, f["transform_matrix"], atol=1e-4) for f in meta["frames"])
    assert main(["render", run, "--pose", json.dumps(world.tolist()), "--size", "16", "--out",
                 str(tmp_path / "p.png"), "--device", "cpu"]) == 0
    want = trainer.render(scene.split("train").c2w[0], 16, 16, keys=("rgb",))["rgb"].numpy()
    got = iio.imread(tmp_path / "p.png").astype(np.float32) / 255
    assert np.abs(got - want).max() <= 1 / 255 + 1e-6
    assert main(["render-video", run, "--frames", "2", "--size", "16", "--out", str(tmp_path / "o.gif"),
                 "--device", "cpu"]) == 0
    assert main(["inerf", run, "--steps", "2", "--batch", "16", "--device", "cpu", "--out-pose",
                 str(tmp_path / "pose.json")]) == 0
    pose = json.load(open(tmp_path / "pose.json"))
    np.testing.assert_allclose(pose["c2w"], scene.to_world_poses(np.asarray(pose["c2w_scene"])), atol=1e-5)


def test_mesh_leaves_in_the_capture_frame(capture_run, tmp_path):
    from app.engine.runs import load_run
    from app.tools.export import density_grid, export_mesh, extract_surface

    trainer, scene, _ = load_run(str(capture_run), "cpu")
    box = ((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0))
    grid = density_grid(trainer.model, 12, box)
    level = float(np.median(grid))
    verts, _, _ = extract_surface(grid, level, box)
    export_mesh(trainer, str(tmp_path / "m.ply"), res=12, threshold=level, bbox=box, colors=False, log=None)
    data = (tmp_path / "m.ply").read_bytes()
    head, body = data.split(b"end_header\n", 1)
    got = np.frombuffer(body[:len(verts) * 12], "<f4").reshape(-1, 3)
    np.testing.assert_allclose(got, scene.to_world_points(verts), rtol=1e-5, atol=1e-5)
    assert not np.allclose(got, verts, atol=1e-3)  # the capture's frame is not the scene's


# -- bad inputs: one clear error, nothing left behind -----------------------------------------
def _expect_error(tmp_path, src, *words):
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(DataError) as ei:
        _process(src, tmp_path / "out")
    msg = str(ei.value)
    for w in words:
        assert w.lower() in msg.lower(), msg
    assert sorted(os.listdir(tmp_path)) == before  # no output, no build folder
    return msg


def _photos(folder, n, size=(64, 48)):
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for k in range(n):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"p{k}.jpg")


def test_unreadable_video(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"this is not a video" * 100)
    _expect_error(tmp_path, tmp_path / "clip.mp4", "clip.mp4", "ffmpeg cannot read")


def test_too_few_images(tmp_path):
    _photos(tmp_path / "three", 3)
    _expect_error(tmp_path, tmp_path / "three", "three", "only 3 images", str(MIN_IMAGES))


def test_mixed_image_sizes(tmp_path):
    _photos(tmp_path / "mixed", 6)
    _photos(tmp_path / "other", 1, size=(50, 40))
    os.replace(tmp_path / "other" / "p0.jpg", tmp_path / "mixed" / "p9.jpg")
    os.rmdir(tmp_path / "other")
    _expect_error(tmp_path, tmp_path / "mixed", "p9.jpg", "50x40", "64x48")


def test_corrupt_jpeg(tmp_path):
    _photos(tmp_path / "bad", 6)
    p = tmp_path / "bad" / "p3.jpg"
    p.write_bytes(p.read_bytes()[:200])
    _expect_error(tmp_path, tmp_path / "bad", "p3.jpg", "cannot decode")


def test_folder_without_images(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no photos here")
    _expect_error(tmp_path, tmp_path / "empty", "empty", "no images")


def test_existing_output_is_never_overwritten(tmp_path):
    _photos(tmp_path / "ph", 6)
    (tmp_path / "out").mkdir()
    with pytest.raises(DataError, match="already exists"):
        _process(tmp_path / "ph", tmp_path / "out")


def test_unregistrable_photos_fail_with_advice(tmp_path):
    _photos(tmp_path / "noise", 6)  # independent noise: nothing matches
    _expect_error(tmp_path, tmp_path / "noise", "0 of 6", "try:", "overlap", "blurred")
    from loaders.process import advice
    assert "--matcher exhaustive" in advice(3, 40, video=True, matcher="sequential")


def test_ctrl_c_leaves_nothing(tmp_path, capture):
    """A KeyboardInterrupt inside a pycolmap stage (as Ctrl-C raises it on the main thread)
    cancels the call and removes the build folder."""
    from loaders.process import process_capture

    root, _, _ = capture
    calls = []

    def bar(desc, total, unit):
        class B:
            n = 0

            def update(self, k=1):
                self.n += k
                if desc.startswith("matching"):
                    raise KeyboardInterrupt

            def close(self):
                calls.append(desc)
        b = B()
        b.total = total
        return b
    with pytest.raises(KeyboardInterrupt):
        process_capture(str(root / "photos"), str(tmp_path / "out"), bar=bar)
    assert os.listdir(tmp_path) == [] and any(c.startswith("matching") for c in calls)


def test_cli_bad_input_exit_code(tmp_path):
    r = subprocess.run([sys.executable, "main.py", "process", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "nope: does not exist" in r.stderr and "Traceback" not in r.stderr


def test_cli_interrupted_by_a_signal_leaves_nothing(capture, tmp_path):
    """SIGINT (Ctrl-C) or SIGTERM while `main.py process` runs: exit 130, no output folder and
    no build folder left."""
    import signal
    import time

    root, _, _ = capture
    for sig in (signal.SIGINT, signal.SIGTERM):
        out = tmp_path / f"out{int(sig)}"
        p = subprocess.Popen([sys.executable, "main.py", "process", str(root / "photos"), "--out", str(out)],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t0 = time.time()
        while not [f for f in os.listdir(tmp_path) if f.startswith(f".out{int(sig)}.partial")]:
            assert p.poll() is None and time.time() - t0 < 120, "the build folder never appeared"
            time.sleep(0.05)
        time.sleep(0.5)  # inside a stage
        p.send_signal(sig)
        _, err = p.communicate(timeout=120)
        assert p.returncode == 130, err[-2000:]
        assert [f for f in os.listdir(tmp_path) if f.startswith((f"out{int(sig)}", f".out{int(sig)}"))] == []
