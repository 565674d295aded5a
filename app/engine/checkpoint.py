"""Checkpoints: one safetensors file, written atomically, loaded without unpickling.

Layout: tensors ``model.<name>`` (the model's state_dict), ``optim.<i>.<key>``
(Adam state per parameter index), ``ema.<i>`` (the trainer's weight average per
parameter index, when it keeps one) and ``rng.*`` (generator states, so a resume
continues the same random stream); metadata ``nerflab`` is a JSON string with the
format version, the training config, the model kind and options, the step, the
optimiser's param_groups (hyper-parameters only) and the crop box (or null).
"""
from __future__ import annotations

import json
import os

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from app.engine.files import CheckpointError, atomic_write  # noqa: F401 - re-exported

FORMAT = "nerflab-checkpoint"
VERSION = 1


def _portable_group(g: dict) -> dict:
    """A param group as JSON that any device can load: the CUDA-graph step (app/engine/graph_step.py)
    keeps lr in a device tensor and marks groups capturable, neither of which a CPU resume takes."""
    out = {k: (float(v) if torch.is_tensor(v) else v) for k, v in g.items()}
    out["capturable"] = False
    return out


def save_checkpoint(path: str, trainer) -> None:
    """Model, optimiser state, config and step of a Trainer."""
    trainer.finish_pending()  # a graphed step still in flight belongs to the saved state
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in trainer.model.state_dict().items()}
    osd = trainer.optimizer.state_dict()
    for idx, st in osd["state"].items():
        for key, val in st.items():
            t = val if torch.is_tensor(val) else torch.tensor(val)
            tensors[f"optim.{idx}.{key}"] = t.detach().contiguous().cpu()
    for i, e in enumerate(trainer.ema or []):
        tensors[f"ema.{i}"] = e.detach().contiguous().cpu()
    # A resume repeats the uninterrupted run only if the ray and sample RNGs resume too.
    tensors["rng.trainer"] = trainer.rng.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    if trainer.device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(trainer.device)
    meta = {"format": FORMAT, "version": VERSION, "model": trainer.config.model,
            "config": trainer.config_dict(), "step": trainer.step_count,
            "batch_rays": trainer.batch_rays,
            "param_groups": [_portable_group(g) for g in osd["param_groups"]],
            "crop": trainer.model.crop.to_json() if trainer.model.crop is not None else None}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"nerflab": json.dumps(meta)}))


def read_checkpoint(path: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors) with every failure reported as a CheckpointError naming the file."""
    if not os.path.isfile(path):
        raise CheckpointError(path, "checkpoint file does not exist")
    try:
        tensors = load_file(path)
        from safetensors import safe_open
        with safe_open(path, "pt") as f:
            raw = (f.metadata() or {}).get("nerflab")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(path, f"not a readable safetensors checkpoint ({exc})") from None
    if raw is None:
        raise CheckpointError(path, "safetensors file has no NeRF Lab metadata")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        raise CheckpointError(path, "checkpoint metadata is not valid JSON") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CheckpointError(path, f"unsupported checkpoint format {meta.get('format')!r} "
                                    f"version {meta.get('version')!r}")
    return meta, tensors


def _model_state(tensors):
    return {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}


def _restore_rng(tensors, trainer) -> None:
    """RNG states, when saved (older checkpoints lack them) and from the same device
    type (a CUDA generator's state does not fit a CPU one: that resume is just not exact)."""
    try:
        if "rng.trainer" in tensors:
            trainer.rng.set_state(tensors["rng.trainer"])
        if "rng.torch" in tensors:
            torch.set_rng_state(tensors["rng.torch"])
        if "rng.cuda" in tensors and trainer.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"], trainer.device)
    except (RuntimeError, ValueError, TypeError):
        pass


def _restore_ema(tensors, trainer) -> None:
    """The weight average, when saved and it fits; otherwise the trainer starts a new one
    (older checkpoints, or a run that averaged nothing)."""
    params = trainer._ema_params()
    saved = [tensors.get(f"ema.{i}") for i in range(len(params))]
    if (params and all(e is not None for e in saved) and trainer._fits_params(saved)
            and all(bool(torch.isfinite(e).all()) for e in saved)):
        trainer.ema = [e.to(device=p.device, dtype=p.dtype) for e, p in zip(saved, params)]
    else:
        trainer.ema = None


def _crop_of(path: str, meta: dict):
    """The crop box a checkpoint was saved with (None: none, or a checkpoint older than crops)."""
    from renderer.crop import CropBox

    if meta.get("crop") is None:
        return None
    try:
        return CropBox.from_json(meta["crop"])
    except ValueError as exc:
        raise CheckpointError(path, f"bad crop box in the metadata: {exc}") from None


def load_into(path: str, trainer, optimizer: bool = True) -> dict:
    """Restore a checkpoint into an existing Trainer; refuses another model or config."""
    meta, tensors = read_checkpoint(path)
    crop = _crop_of(path, meta)  # checked before anything in the trainer changes
    if meta["model"] != trainer.config.model:
        raise CheckpointError(path, f"checkpoint is for model '{meta['model']}', "
                                    f"this run uses '{trainer.config.model}'")
    saved_opts = meta["config"]["model_options"]
    mine = trainer.model.config
    # STATE_OPTIONS: config keys a model updates while training (a grid's current
    # resolution) and restores from the weights themselves.
    free = ("n_coarse", "n_fine") + tuple(trainer.model.STATE_OPTIONS)
    # An option newer than the checkpoint is read as its default, so adding an
    # option to a model never orphans older checkpoints.
    defaults = trainer.model.DEFAULTS
    saved_opts = {**{k: v for k, v in defaults.items() if k not in saved_opts}, **saved_opts}
    diff = sorted(k for k in set(saved_opts) | set(mine)
                  if k not in free and saved_opts.get(k) != mine.get(k))
    if diff:
        raise CheckpointError(path, "checkpoint model options differ from this run's: " + ", ".join(
            f"{k}={saved_opts.get(k)!r} (here {mine.get(k)!r})" for k in diff))
    state = _model_state(tensors)
    bad = sorted(k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all())
    if bad:  # a field with NaN weights renders garbage everywhere: refuse it, naming the tensors
        raise CheckpointError(path, "weights contain NaN or infinity: " + ", ".join(bad[:3])
                              + (", ..." if len(bad) > 3 else ""))
    try:
        trainer.model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(path, f"weights do not fit the model: {str(exc).splitlines()[0]}") from None
    if optimizer:
        trainer.rebuild_optimizer()
        osd = {"state": {}, "param_groups": meta["param_groups"]}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, idx, key = k.split(".", 2)
                osd["state"].setdefault(int(idx), {})[key] = v.to(trainer.device)
        try:
            trainer.optimizer.load_state_dict(osd)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(path, f"optimizer state does not fit: {exc}") from None
        _restore_rng(tensors, trainer)
    _restore_ema(tensors, trainer)
    trainer.model.crop = crop
    trainer.step_count = int(meta["step"])
    trainer.batch_rays = int(meta.get("batch_rays", trainer.batch_rays))
    return meta


def trainer_from_checkpoint(path: str, scene, device: str = "auto"):
    """Build a Trainer whose config comes from the checkpoint, then restore it."""
    from app.engine.trainer import TrainConfig, Trainer

    meta, _ = read_checkpoint(path)
    cfg = dict(meta["config"])
    cfg["device"] = device
    try:
        config = TrainConfig(**cfg)
    except TypeError as exc:
        raise CheckpointError(path, f"checkpoint config does not match this version: {exc}") from None
    trainer = Trainer(scene, config)
    load_into(path, trainer)
    return trainer
