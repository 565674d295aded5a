"""Run directories: what `train` writes and every other command reads.

RUN_DIR/run.json          data path, downscale, background, NDC, the world -> scene
                          normalisation (how to reload the scene exactly as trained)
                          optionally "crop": {"min": [x,y,z], "max": [x,y,z]} or null, which
                          overrides the checkpoint's crop box (see set_run_crop)
RUN_DIR/checkpoint.safetensors
RUN_DIR/metrics.jsonl     one JSON object per logged step
RUN_DIR/eval.json         written by `eval`
"""
from __future__ import annotations

import json
import os

from app.engine.files import CheckpointError, atomic_write
from assets import SCENE_DIR

DEFAULT_SCENE = SCENE_DIR
CKPT = "checkpoint.safetensors"


def write_json(path: str, obj) -> None:
    def w(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2)
    atomic_write(path, w)


def read_run(run_dir: str) -> dict:
    p = os.path.join(run_dir, "run.json")
    if not os.path.isdir(run_dir):
        raise CheckpointError(run_dir, "is not a directory (a run directory is expected)"
                              if os.path.exists(run_dir) else "run directory does not exist")
    try:
        with open(p, encoding="utf-8") as f:
            info = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(p, "missing (not a run directory written by `main.py train`)") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(p, f"malformed JSON ({exc.msg})") from None
    if not isinstance(info, dict) or "data" not in info:
        raise CheckpointError(p, "no 'data' entry")
    if not isinstance(info["data"], str) or not info["data"]:
        raise CheckpointError(p, "'data' must be the scene directory's path")
    if "crop" in info:
        from renderer.crop import CropBox
        try:
            info["crop"] = CropBox.from_json(info["crop"]) if info["crop"] is not None else None
        except ValueError as exc:
            raise CheckpointError(p, f"'crop': {exc}") from None
    if not os.path.isabs(info["data"]):
        # A run shipped inside the repo (assets/demo_run) names its scene relative to itself.
        info["data"] = os.path.normpath(os.path.join(run_dir, info["data"]))
    return info


def scene_record(scene, args_like) -> dict:
    """What run.json keeps to reload ``scene`` as it was trained: besides the loader's
    options, the NDC choice and the normalisation (recomputing them from the files would
    move the field if frames were added or dropped since)."""
    return {"ndc": bool(scene.ndc), "skip_missing": bool(getattr(args_like, "skip_missing", False)),
            "kind": scene.kind, "normalization": scene.normalization.to_json()}


def scene_options(info: dict, path: str) -> dict:
    """load_scene keyword arguments from a run.json record (older runs: the defaults)."""
    from loaders.normalize import Similarity

    opts = {"downscale": int(info.get("downscale", 1)), "white_bkgd": bool(info.get("white_bkgd", True))}
    if "ndc" in info:
        opts["ndc"] = bool(info["ndc"])
    opts["skip_missing"] = bool(info.get("skip_missing", False))
    if info.get("normalization") is not None:
        try:
            opts["normalization"] = Similarity.from_json(info["normalization"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(path, f"'normalization' is not a similarity transform ({exc})") from None
    return opts


def load_run(run_dir: str, device: str = "auto", data: str | None = None):
    """(trainer, scene, info) restored from a run directory, with the averaged weights
    (TrainConfig.ema_decay) in place of the raw ones."""
    from app.engine.checkpoint import trainer_from_checkpoint
    from loaders import load_scene

    info = read_run(run_dir)
    scene = load_scene(data or info["data"], **scene_options(info, os.path.join(run_dir, "run.json")))
    trainer = trainer_from_checkpoint(os.path.join(run_dir, CKPT), scene, device)
    trainer.apply_average()  # loaded to be used: what training showed is what is used
    if "crop" in info:
        try:
            set_crop(trainer, info["crop"])
        except ValueError as exc:
            raise CheckpointError(os.path.join(run_dir, "run.json"), f"'crop': {exc}") from None
    return trainer, scene, info


def set_crop(trainer, crop) -> None:
    """Make renders and exports of this trainer's field see only the inside of ``crop``
    (a renderer.crop.CropBox; None for the whole field). ValueError for a forward-facing
    scene, whose field coordinates are NDC: a box there is not a box in the world."""
    if crop is not None and getattr(trainer.scene, "ndc", False):
        raise ValueError("a crop box needs a 360-degree scene; this one is forward-facing (NDC)")
    trainer.model.crop = crop


def set_run_crop(run_dir: str, crop) -> None:
    """Save ``crop`` (a CropBox, or None for none) in RUN_DIR/run.json, atomically; every
    command that loads the run then uses it."""
    read_run(run_dir)  # a valid run directory, or a CheckpointError naming the problem
    with open(os.path.join(run_dir, "run.json"), encoding="utf-8") as f:
        raw = json.load(f)  # as written (read_run makes 'data' absolute)
    raw["crop"] = crop.to_json() if crop is not None else None
    write_json(os.path.join(run_dir, "run.json"), raw)
