"""One answer to "how is this model trained here?", for the CLI and the GUI alike.

The model's class holds its policy (models.field.TrainPolicy); this module turns the
user's knobs and explicit overrides into a TrainConfig. Nothing here names a model.
"""
from __future__ import annotations

from models import model_class
from models.field import TrainPolicy

from app.engine.trainer import TrainConfig, cpu_has_native_bf16


def model_options(kind: str, cuda: bool, knobs: dict | None = None, extra: dict | None = None) -> dict:
    """Constructor options for model ``kind`` from the user's knobs (models.field.KNOBS)
    and raw ``extra`` options (the CLI's --options JSON), which win."""
    opts = model_class(kind).options_for(cuda, **(knobs or {}))
    opts.update(extra or {})
    return opts


def policy_for(kind: str, cuda: bool, options: dict) -> TrainPolicy:
    return model_class(kind).policy(cuda, options)


def train_config(kind: str, options: dict, cuda: bool, *, interactive: bool = False, steps: int | None = None,
                 **overrides) -> TrainConfig:
    """TrainConfig for ``kind`` with ``options`` on CUDA or a CPU. Overrides that are None
    keep the policy's value. ``interactive``: the GUI's smaller CPU batch. ``steps``: the
    learning rate decays by the policy's ratio over this many steps (the GUI, which has no
    end, decays over 100k)."""
    pol = policy_for(kind, cuda, options)
    given = {k: v for k, v in overrides.items() if v is not None}
    lr = float(given.pop("lr", pol.lr))
    bf16 = given.pop("autocast", None)
    if bf16 is None:
        bf16 = pol.bf16_on(cuda, cpu_has_native_bf16())
    elif bf16 and (pol.bf16 == "never" or (pol.bf16 == "cuda" and not cuda)):
        # Asked for, but not where the model's policy has it: Plenoxels has no matmuls to
        # speed up; the hash model's bf16 is for its graphed CUDA step.
        bf16 = False
    batch = pol.batch_rays(cuda)
    if interactive and not cuda:
        batch = pol.gui_batch_rays_cpu
    # The trainer runs the graphed step on CUDA only (tests run it eagerly on a CPU).
    cuda_graph = bool(given.pop("cuda_graph", True)) and pol.cuda_graph
    cfg = dict(model=kind, model_options=dict(options), batch_rays=batch, lr=lr,
               lr_final=lr * pol.lr_final_ratio, lr_decay_steps=max(int(steps or 100_000), 1),
               autocast=bool(bf16), precrop_steps=pol.precrop_steps, cuda_graph=cuda_graph,
               compile=bool(given.pop("compile", False)) and cuda)
    cfg.update(given)
    return TrainConfig(**cfg)
