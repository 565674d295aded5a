"""Every bad input we could think of, end to end.

API: DataError / CheckpointError / ValueError naming the file. CLI: exit code 2,
exactly one 'error:' line naming the file or argument, no traceback, and no
output left behind (the --out directory or file is not created).

Images go through the real loader; 16-bit and odd PNGs are written by a small
PNG encoder in this file (every filter type), independent of the decoder in
loaders/png16.py and of Pillow.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import zlib

import numpy as np
import pytest
from pathlib import Path

from app.engine.checkpoint import CheckpointError
from loaders import DataError, load_scene
from loaders.images import read_image
from loaders.png16 import read_png
from tests.conftest import make_sphere_scene, write_png, write_transforms

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "assets", "demo_run")
TINY = ["--width", "16", "--n-coarse", "4", "--n-fine", "4", "--L-xyz", "4", "--L-dir", "2",
        "--batch", "64", "--eval-images", "0", "--device", "cpu"]


# --- an independent PNG writer --------------------------------------------------------------

def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def encode_png(arr: np.ndarray, depth: int, interlace: int = 0, filters=None) -> bytes:
    """PNG bytes of uint8/uint16 (H, W) or (H, W, C); row y uses filter filters[y]
    (default y % 5, so every filter type is exercised). Scalar Python loops: slow, obviously right."""
    arr = np.asarray(arr)
    h, w = arr.shape[:2]
    c = 1 if arr.ndim == 2 else arr.shape[2]
    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    bpp = c * depth // 8
    rows = arr.reshape(h, w * c).astype(">u2" if depth == 16 else "u1").view(np.uint8).reshape(h, w * bpp)
    out = bytearray()
    prev = [0] * (w * bpp)
    for y in range(h):
        ft = (y % 5) if filters is None else filters[y]
        cur = [int(v) for v in rows[y]]
        line = [ft]
        for i, x in enumerate(cur):
            a = cur[i - bpp] if i >= bpp else 0
            b = prev[i]
            cc = prev[i - bpp] if i >= bpp else 0
            pred = [0, a, b, (a + b) // 2, _paeth(a, b, cc)][ft]
            line.append((x - pred) % 256)
        out += bytes(line)
        prev = cur

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, interlace))
            + chunk(b"IDAT", zlib.compress(bytes(out))) + chunk(b"IEND", b""))


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    return lines[0]


def run_cli(capsys, *args) -> tuple[int, str]:
    """main.py in process: (exit code, the single error line or '')."""
    from app.cli import main

    capsys.readouterr()
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    err = capsys.readouterr().err
    return rc, (one_error_line(err) if rc == 2 else "")


# --- images ---------------------------------------------------------------------------------

@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("depth", [8, 16])
def test_png_decoder_every_filter_matches_the_source(tmp_path, channels, depth):
    rng = np.random.default_rng(channels * depth)
    shape = (7, 9) if channels == 1 else (7, 9, channels)
    arr = rng.integers(0, 2 ** depth, shape).astype(np.uint16 if depth == 16 else np.uint8)
    p = tmp_path / "a.png"
    p.write_bytes(encode_png(arr, depth))
    got = read_png(str(p))
    assert got.dtype == arr.dtype
    np.testing.assert_array_equal(got, arr)


def test_png_decoder_agrees_with_pillow_on_its_own_files(tmp_path):
    import imageio.v3 as iio

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:40, 0:50]
    img = np.stack([x * 5, y * 6, (x * y) % 256, rng.integers(0, 256, x.shape)], -1).astype(np.uint8)
    p = tmp_path / "pil.png"
    iio.imwrite(p, img, optimize=True)  # Pillow chooses the filters
    np.testing.assert_array_equal(read_png(str(p)), iio.imread(p))


@pytest.mark.parametrize("channels", [3, 4, 2, 1])
def test_16bit_images_load_with_full_precision(tmp_path, channels):
    """Values are v / 65535 exactly; Pillow alone would keep only the high byte."""
    rng = np.random.default_rng(channels)
    shape = (6, 5) if channels == 1 else (6, 5, channels)
    arr = rng.integers(0, 65536, shape).astype(np.uint16)
    arr.flat[0] = 65535
    arr.flat[1] = 1  # a low byte only: lost if decoded to 8 bits
    p = tmp_path / "x.png"
    p.write_bytes(encode_png(arr, 16))
    img = read_image(str(p))
    assert img.dtype == np.float32
    a = arr.astype(np.float32) / np.float32(65535.0)
    want = {1: lambda: np.repeat(a[..., None], 3, -1),
            2: lambda: np.concatenate([np.repeat(a[..., :1], 3, -1), a[..., 1:]], -1),
            3: lambda: a, 4: lambda: a}[channels]()
    np.testing.assert_array_equal(img, want)


def test_grey_alpha_png_is_expanded_to_rgba(tmp_path):
    """Decision: 2 channels = grey + alpha (PNG colour type 4) -> RGBA, like grey -> RGB."""
    la = np.array([[[10, 255], [200, 0]], [[0, 128], [255, 255]]], np.uint8)
    p = tmp_path / "la.png"
    p.write_bytes(encode_png(la, 8))
    img = read_image(str(p))
    assert img.shape == (2, 2, 4)
    np.testing.assert_array_equal(img[..., 0], img[..., 2])
    np.testing.assert_allclose(img[..., 0], la[..., 0] / 255.0, atol=1e-7)
    np.testing.assert_allclose(img[..., 3], la[..., 1] / 255.0, atol=1e-7)


def _bad_image(tmp_path, kind) -> str:
    import imageio.v3 as iio
    from PIL import Image

    p = tmp_path / {"tiff5": "x.tiff", "float": "x.tiff", "cmyk": "x.jpg"}.get(kind, "x.png")
    rgb16 = np.random.default_rng(0).integers(0, 65536, (8, 8, 3)).astype(np.uint16)
    if kind == "truncated8":
        write_png(p, np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.uint8))
        p.write_bytes(p.read_bytes()[:200])
    elif kind == "truncated16":
        p.write_bytes(encode_png(rgb16, 16)[:-40])
    elif kind == "crc16":
        b = bytearray(encode_png(rgb16, 16))
        b[60] ^= 0xFF  # inside IDAT
        p.write_bytes(bytes(b))
    elif kind == "interlaced16":
        p.write_bytes(encode_png(rgb16, 16, interlace=1))
    elif kind == "not_png":
        p.write_text("this is not an image\n")
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "tiff5":
        iio.imwrite(p, np.zeros((8, 8, 5), np.uint8))
    elif kind == "float":
        iio.imwrite(p, np.zeros((8, 8, 3), np.float32))
    elif kind == "cmyk":
        Image.fromarray(np.zeros((8, 8, 4), np.uint8), "CMYK").save(p)
    return str(p)


@pytest.mark.parametrize("kind,words", [
    ("truncated8", ["cannot decode"]),
    ("truncated16", ["cannot decode", "truncated"]),
    ("crc16", ["cannot decode", "CRC"]),
    ("interlaced16", ["interlaced"]),
    ("not_png", ["cannot decode"]),
    ("empty", ["cannot decode"]),
    ("tiff5", ["unsupported image shape", "5"]),
    ("float", ["unsupported pixel type float32"]),
    ("cmyk", ["CMYK"]),
])
def test_bad_images_are_data_errors_naming_the_file(tmp_path, kind, words):
    path = _bad_image(tmp_path, kind)
    with pytest.raises(DataError) as ei:
        read_image(path)
    assert ei.value.path == path and str(ei.value).startswith(path)
    for w in words:
        assert w in str(ei.value), str(ei.value)


# --- scenes, through `main.py train` --------------------------------------------------------

@pytest.fixture
def scene(scene_dir):
    """A valid 16 px Blender scene on disk (train 8 views, test 2): conftest's scene_dir."""
    return Path(scene_dir)


def _edit_json(path, fn):
    meta = json.loads(path.read_text())
    fn(meta)
    path.write_text(json.dumps(meta))


def _break_scene(root, tmp_path, case):
    """Damage a valid scene; returns (--data path, the file the error must name, a keyword)."""
    tj = root / "transforms_train.json"
    img = root / "train" / "003.png"
    if case == "truncated_png":
        img.write_bytes(img.read_bytes()[:60])
        return root, img, "cannot decode"
    if case == "two_channel_float_tiff":
        import imageio.v3 as iio
        t = root / "train" / "003.tiff"
        iio.imwrite(t, np.zeros((16, 16, 2), np.float32))
        _edit_json(tj, lambda m: m["frames"][3].update(file_path="train/003.tiff"))
        return root, t, "unsupported pixel type"
    if case == "five_channels":
        import imageio.v3 as iio
        t = root / "train" / "003.tiff"
        iio.imwrite(t, np.zeros((16, 16, 5), np.uint8))
        _edit_json(tj, lambda m: m["frames"][3].update(file_path="train/003.tiff"))
        return root, t, "unsupported image shape"
    if case == "missing_image":
        img.unlink()
        return root, img, "missing"
    if case == "image_size_differs":
        write_png(img, np.zeros((8, 8, 3), np.uint8))
        return root, img, "differs"
    if case == "no_frames_key":
        _edit_json(tj, lambda m: m.pop("frames"))
        return root, tj, "frames"
    if case == "zero_images":
        _edit_json(tj, lambda m: m.update(frames=[]))
        return root, tj, "no frames"
    if case == "no_matrix":
        _edit_json(tj, lambda m: m["frames"][2].pop("transform_matrix"))
        return root, tj, "transform_matrix"
    if case == "no_fov":
        _edit_json(tj, lambda m: m.pop("camera_angle_x"))
        return root, tj, "camera_angle_x"
    if case == "nan_matrix":
        def nan(m):
            m["frames"][1]["transform_matrix"][0][3] = float("nan")
        _edit_json(tj, nan)
        return root, tj, "NaN"
    if case == "scaled_matrix":
        def scale(m):
            m["frames"][1]["transform_matrix"][0][0] *= 2
        _edit_json(tj, scale)
        return root, tj, "not rigid"
    if case == "malformed_json":
        tj.write_text('{"frames": [')
        return root, tj, "malformed JSON"
    if case == "json_list":
        tj.write_text("[1, 2]")
        return root, tj, "JSON object"
    if case == "no_transforms":
        for p in root.glob("transforms_*.json"):
            p.unlink()
        return root, root, "no transforms"
    if case == "data_is_a_file":
        return img, img, "not a directory"
    if case == "data_missing":
        return tmp_path / "nowhere", tmp_path / "nowhere", "does not exist"
    raise AssertionError(case)


CASES = ["truncated_png", "two_channel_float_tiff", "five_channels", "missing_image", "image_size_differs",
         "no_frames_key", "zero_images", "no_matrix", "no_fov", "nan_matrix", "scaled_matrix",
         "malformed_json", "json_list", "no_transforms", "data_is_a_file", "data_missing"]


@pytest.mark.parametrize("case", CASES)
def test_train_on_a_broken_scene(scene, tmp_path, capsys, case):
    data, culprit, word = _break_scene(scene, tmp_path, case)
    out = tmp_path / "out"
    rc, line = run_cli(capsys, "train", "--data", data, "--out", out, "--steps", 2, *TINY)
    assert rc == 2
    assert line.startswith("error: ") and str(culprit) in line and word in line, (line, culprit)
    assert not out.exists()


def test_broken_scene_api_error_names_the_file(scene, tmp_path):
    data, culprit, word = _break_scene(scene, tmp_path, "nan_matrix")
    with pytest.raises(DataError, match=word) as ei:
        load_scene(str(data))
    assert ei.value.path == str(culprit)


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root: permission bits do not stop reads")
def test_unreadable_scene_directory(scene, tmp_path, capsys):
    os.chmod(scene, 0)
    try:
        out = tmp_path / "out"
        rc, line = run_cli(capsys, "train", "--data", scene, "--out", out, "--steps", 2, *TINY)
        assert rc == 2 and str(scene) in line and "not readable" in line
        assert not out.exists()
    finally:
        os.chmod(scene, 0o755)


# --- absurd command-line values ------------------------------------------------------------

TRAIN_BAD = [
    (["--steps", "-5"], "--steps"),
    (["--steps", "0"], "--steps"),
    (["--L-xyz", "1000"], "--L-xyz"),
    (["--n-coarse", "0"], "--n-coarse"),
    (["--n-coarse", "1"], "--n-coarse"),
    (["--n-fine", "-1"], "--n-fine"),
    (["--batch", "0"], "--batch"),
    (["--batch", "1000000000"], "--batch"),
    (["--width", "1000000"], "--width"),
    (["--lr", "-1"], "--lr"),
    (["--lr", "nan"], "lr"),
    (["--downscale", "1000"], "downscale 1000"),
    (["--device", "banana"], "--device"),
    (["--device", "cuda:7"], "--device cuda:7"),
    (["--options", "not json"], "--options"),
    (["--options", "[1]"], "--options"),
    (["--options", '{"bogus": 1}'], "bogus"),
    (["--model", "nosuch"], "--model"),
]


@pytest.mark.parametrize("args,word", TRAIN_BAD)
def test_absurd_train_values(scene, tmp_path, capsys, monkeypatch, args, word):
    import torch

    import app.engine.trainer

    if args[:2] == ["--device", "cuda:7"] and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    if args[0] in ("--batch", "--width"):
        # Must be refused before anything is allocated: without the bound, a CPU run of
        # this test took ~20 GB and the kernel's OOM killer ended it.
        def no_trainer(*a, **k):
            raise AssertionError("a Trainer was built for an absurd size")
        monkeypatch.setattr(app.engine.trainer, "Trainer", no_trainer)
    out = tmp_path / "out"
    base = ["train", "--data", scene, "--out", out, "--steps", 2, *TINY]
    for k in range(0, len(args), 2):  # override TINY's value where it sets the same flag
        if args[k] in base:
            del base[base.index(args[k]):base.index(args[k]) + 2]
    rc, line = run_cli(capsys, *base, *args)
    assert rc == 2 and word in line, line
    assert not out.exists()


def test_out_that_is_a_file(scene, tmp_path, capsys):
    out = tmp_path / "file"
    out.write_text("keep me")
    rc, line = run_cli(capsys, "train", "--data", scene, "--out", out, "--steps", 2, *TINY)
    assert rc == 2 and str(out) in line and out.read_text() == "keep me"


@pytest.mark.parametrize("argv,word", [
    (["render", DEMO, "--size", "100000"], "--size"),
    (["render", DEMO, "--size", "0"], "--size"),
    (["render", DEMO, "--view", "test:999"], "--view"),
    (["render", DEMO, "--view", "nosplit:0"], "nosplit"),
    (["render", DEMO, "--pose", "[1, 2, 3]"], "--pose"),
    (["render", DEMO, "--orbit", "a,b"], "--orbit"),
    (["render", DEMO, "--device", "cuda:99"], "--device"),
    (["eval", DEMO, "--max-images", "0"], "--max-images"),
    (["inerf", DEMO, "--steps", "-1"], "--steps"),
    (["inerf", DEMO, "--perturb-deg", "500"], "--perturb-deg"),
    (["inerf", DEMO, "--batch", "0"], "--batch"),
    (["inerf", DEMO, "--init-view", "test:999"], "--init-view"),
    (["inerf", DEMO, "--image", "/no/such.png"], "/no/such.png"),
    (["render-video", DEMO, "--frames", "0"], "--frames"),
    (["export-mesh", DEMO, "--res", "100000"], "--res"),
])
def test_absurd_values_of_other_commands(tmp_path, capsys, argv, word):
    if argv[0] in ("render", "render-video", "export-mesh"):
        ext = {"render": "png", "render-video": "mp4", "export-mesh": "ply"}[argv[0]]
        argv = argv + ["--out", str(tmp_path / f"out.{ext}")]
    if argv[0] == "inerf":
        argv = argv + ["--out-pose", str(tmp_path / "pose.json")]
    rc, line = run_cli(capsys, *argv)
    assert rc == 2 and word in line, line
    assert os.listdir(tmp_path) == []


def test_render_into_a_missing_folder(tmp_path, capsys):
    out = tmp_path / "no" / "such" / "view.png"
    rc, line = run_cli(capsys, "render", DEMO, "--out", out, "--size", 8, "--device", "cpu")
    assert rc == 2 and str(out) in line and not (tmp_path / "no").exists()


# --- run directories and checkpoints ------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A valid run directory (2 steps of a tiny NeRF) to damage copies of."""
    from app.cli import main

    base = tmp_path_factory.mktemp("bad_input_run")
    sc = make_sphere_scene()
    data = base / "scene"
    for split in ("train", "test"):
        sp = sc.split(split)
        frames = []
        for k in range(len(sp)):
            write_png(data / split / f"{k:03d}.png", sp.images[k])
            frames.append((f"{split}/{k:03d}.png", sp.c2w[k]))
        write_transforms(data / f"transforms_{split}.json", frames)
    run = base / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--steps", "2", *TINY]) == 0
    return run


def _damage_run(run, case):
    """Damage a run directory copy; returns the path the error must name."""
    ck = run / "checkpoint.safetensors"
    rj = run / "run.json"
    if case == "truncated_checkpoint":
        ck.write_bytes(ck.read_bytes()[: ck.stat().st_size // 2])
        return ck, "not a readable safetensors checkpoint"
    if case == "empty_checkpoint":
        ck.write_bytes(b"")
        return ck, "not a readable safetensors checkpoint"
    if case == "garbage_checkpoint":
        ck.write_bytes(os.urandom(4096))
        return ck, "not a readable safetensors checkpoint"
    if case == "missing_checkpoint":
        ck.unlink()
        return ck, "does not exist"
    if case == "checkpoint_is_a_directory":
        ck.unlink()
        ck.mkdir()
        return ck, "does not exist"
    if case in ("foreign_safetensors", "nan_weights", "wrong_shape_weights"):
        import torch
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file
        tensors = load_file(str(ck))
        with safe_open(str(ck), "pt") as f:
            meta = f.metadata()
        if case == "foreign_safetensors":
            meta = {}
            word = "no NeRF Lab metadata"
        elif case == "nan_weights":
            k = next(k for k in tensors if k.startswith("model.") and tensors[k].is_floating_point())
            tensors[k] = tensors[k].clone()
            tensors[k].view(-1)[0] = float("nan")
            word = "NaN"
        else:
            k = next(k for k in tensors if k.startswith("model.") and tensors[k].ndim == 2)
            tensors[k] = torch.zeros(3, 3)
            word = "weights do not fit"
        save_file(tensors, str(ck), metadata=meta)
        return ck, word
    if case == "missing_run_json":
        rj.unlink()
        return rj, "missing"
    if case == "malformed_run_json":
        rj.write_text("{oops")
        return rj, "malformed JSON"
    if case == "run_json_data_not_a_path":
        rj.write_text(json.dumps({"data": 5}))
        return rj, "'data'"
    if case == "run_json_data_missing_dir":
        rj.write_text(json.dumps({"data": "/no/such/scene"}))
        return "/no/such/scene", "does not exist"
    raise AssertionError(case)


RUN_CASES = ["truncated_checkpoint", "empty_checkpoint", "garbage_checkpoint", "missing_checkpoint",
             "checkpoint_is_a_directory", "foreign_safetensors", "nan_weights", "wrong_shape_weights",
             "missing_run_json", "malformed_run_json", "run_json_data_not_a_path", "run_json_data_missing_dir"]


@pytest.mark.parametrize("case", RUN_CASES)
def test_render_from_a_damaged_run(tiny_run, tmp_path, capsys, case):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    culprit, word = _damage_run(run, case)
    out = tmp_path / "view.png"
    rc, line = run_cli(capsys, "render", run, "--out", out, "--device", "cpu")
    assert rc == 2 and str(culprit) in line and word in line, (line, culprit)
    assert not out.exists()


@pytest.mark.parametrize("case", ["truncated_checkpoint", "nan_weights", "wrong_shape_weights"])
def test_damaged_checkpoint_api_error(tiny_run, tmp_path, case):
    from app.engine.runs import load_run

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    culprit, word = _damage_run(run, case)
    with pytest.raises(CheckpointError, match=word) as ei:
        load_run(str(run), "cpu")
    assert ei.value.path == str(culprit)


@pytest.mark.parametrize("what", ["missing", "file"])
def test_run_directory_that_is_not_one(tmp_path, capsys, what):
    p = tmp_path / "x"
    if what == "file":
        p.write_text("")
    rc, line = run_cli(capsys, "eval", p, "--device", "cpu")
    assert rc == 2 and str(p) in line
    assert ("not a directory" if what == "file" else "does not exist") in line


def test_relative_data_path_resolves_against_the_run(tiny_run, tmp_path):
    """run.json may name its scene relative to itself (as assets/demo_run does)."""
    from app.engine.runs import read_run

    run = tmp_path / "moved" / "run"
    shutil.copytree(tiny_run, run)
    shutil.copytree(tiny_run.parent / "scene", tmp_path / "moved" / "scene")
    info = json.loads((run / "run.json").read_text())
    info["data"] = "../scene"
    (run / "run.json").write_text(json.dumps(info))
    assert read_run(str(run))["data"] == str(tmp_path / "moved" / "scene")
    from app.engine.runs import load_run
    trainer, scene, _ = load_run(str(run), "cpu")
    assert trainer.step_count == 2 and len(scene.split("train")) == 8
