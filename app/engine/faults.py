"""Fault injection for end-to-end tests of the trainer's recovery (hidden, for testing).

``NERFLAB_FAULT=oom@3,nan@5 python main.py train ...`` makes training step 3
raise a (simulated) CUDA out-of-memory error and step 5 produce a NaN loss,
each once, through ``Trainer.fault_hook``. The trainer must recover exactly as
it does from the real thing: halve the batch / skip the update, print a
warning line, carry on, and write its checkpoint. Unset, nothing is installed.

Kinds: ``oom`` (torch.cuda.OutOfMemoryError raised before the batch is
rendered), ``nan`` (the loss of that step is NaN), ``interrupt``
(KeyboardInterrupt, as Ctrl-C: the command saves its checkpoint and exits 130,
so resuming can be tested). Steps count completed optimisation steps, as
``Trainer.step_count`` does.
"""
from __future__ import annotations

import os

ENV = "NERFLAB_FAULT"
KINDS = ("oom", "nan", "interrupt")


def parse_faults(text: str) -> list[tuple[str, int]]:
    """'oom@3,nan@5' -> [('oom', 3), ('nan', 5)]; ValueError naming the bad item."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        kind, sep, step = item.partition("@")
        if not sep or kind not in KINDS or not step.isdigit():
            raise ValueError(f"{ENV}: bad item {item!r}; expected KIND@STEP with KIND in "
                             f"{', '.join(KINDS)}, e.g. oom@3,nan@5")
        out.append((kind, int(step)))
    return out


def make_hook(faults: list[tuple[str, int]]):
    """A Trainer.fault_hook firing each (kind, step) once, when trainer.step_count == step."""
    import torch

    pending = list(faults)

    def hook(trainer):
        due = [f for f in pending if f[1] == trainer.step_count]
        for f in due:
            pending.remove(f)
        kinds = {k for k, _ in due}
        if "interrupt" in kinds:
            raise KeyboardInterrupt(f"simulated by {ENV} at step {trainer.step_count}")
        if "oom" in kinds:
            # The step is retried at the same step_count: a NaN due now fires then.
            pending.extend(f for f in due if f[0] == "nan")
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (simulated by {ENV} at step "
                                              f"{trainer.step_count})")
        if "nan" in kinds:
            model = trainer.model
            original = model.loss_terms

            def nan_terms(out, target):
                # One call only: restore first so a raised error cannot leave it poisoned.
                del model.loss_terms
                terms = original(out, target)
                return {k: v * float("nan") for k, v in terms.items()}
            model.loss_terms = nan_terms  # instance attribute shadows the method for one step
    return hook


def install_from_env(trainer, environ=os.environ) -> list[tuple[str, int]]:
    """Install the hook described by $NERFLAB_FAULT on ``trainer``; returns the faults."""
    text = environ.get(ENV, "")
    if not text.strip():
        return []
    faults = parse_faults(text)
    trainer.fault_hook = make_hook(faults)
    return faults
