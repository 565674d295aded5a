"""The Plenoxels optimiser: svox2's RMSProp for voxel-grid parameters.

Three differences from ``torch.optim.RMSprop``, each svox2's (opt/opt.py and
csrc/optim_kernel.cu in sxyu/svox2), each switchable so the plain update can be checked
against torch's:

* sparse: only rows (voxels) with a non-zero gradient this step are updated, their
  running mean square included. A voxel no training ray reached keeps its state instead
  of decaying towards zero, and the step costs what the touched voxels cost, not what the
  whole grid costs (a 512^3 grid holds millions of rows, a batch touches a few hundred
  thousand).
* init_from_grad: a running mean square that is still exactly 0 starts at g^2 rather than
  (1 - beta) g^2, so a voxel's first update is lr * sign(g), not lr * sign(g) / sqrt(1 - beta)
  (4.5 lr at beta 0.95, a jump of 135 in raw density at svox2's density lr 30).
* a per-group schedule over the global step (the JAX NeRF / svox2 ``get_expon_lr_func``):
  log-linear decay from lr to lr * lr_final_ratio over decay_steps, times a "delay" factor
  that rises from delay_mult to 1 along a quarter sine over the first delay_steps.
  svox2 decays density and SH by different ratios, which one global schedule cannot do.
  The group's "step" is saved with the optimiser state, so a rebuilt optimiser (after
  upsampling) or a resumed run continues the schedule.

Gradients live in persistent buffers (``p.grad``): ``step`` zeroes the rows it updated,
so the buffers are all zero again afterwards and ``zero_grad`` has nothing to do. That
saves a full-grid memset per step (the grid kernels add into ``p.grad`` in place, as
svox2's fused backward does); after a skipped step (non-finite gradient) the trainer's
``zero_grad`` does clear them.
"""
from __future__ import annotations

import math

import torch

SCHEDULE_KEYS = ("lr_final_ratio", "decay_steps", "delay_steps", "delay_mult")


def schedule_factor(step: int, lr_final_ratio: float = 1.0, decay_steps: int = 0,
                    delay_steps: int = 0, delay_mult: float = 1.0) -> float:
    """Multiplier of a group's lr at ``step`` (1 at step 0 without delay)."""
    if delay_steps > 0:
        delay = delay_mult + (1.0 - delay_mult) * math.sin(0.5 * math.pi * min(max(step / delay_steps, 0.0), 1.0))
    else:
        delay = 1.0
    t = min(max(step / decay_steps, 0.0), 1.0) if decay_steps > 0 else 0.0
    return delay * lr_final_ratio ** t


class GridRMSprop(torch.optim.Optimizer):
    """RMSProp with svox2's sparse rows, first-gradient initialisation and schedules.

    Parameters are 2-D (rows, channels) grid tensors. Group keys besides "params" and
    "lr": beta (RMS decay, svox2's 0.95), eps, sparse, init_from_grad, step and the
    schedule keys (SCHEDULE_KEYS, see schedule_factor).
    """

    def __init__(self, params, lr: float = 1e-2, beta: float = 0.95, eps: float = 1e-8,
                 sparse: bool = True, init_from_grad: bool = True, step: int = 0, **schedule):
        unknown = set(schedule) - set(SCHEDULE_KEYS)
        if unknown:
            raise ValueError(f"unknown GridRMSprop option(s): {', '.join(sorted(unknown))}")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        defaults = dict(lr=lr, beta=beta, eps=eps, sparse=sparse, init_from_grad=init_from_grad,
                        step=int(step), lr_final_ratio=1.0, decay_steps=0, delay_steps=0, delay_mult=1.0)
        defaults.update(schedule)
        super().__init__(params, defaults)
        self._clean = False  # True while every gradient buffer is known to be zero

    def current_lr(self, group: dict) -> float:
        return float(group["lr"]) * schedule_factor(int(group["step"]), *(group[k] for k in SCHEDULE_KEYS))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr = self.current_lr(group)
            group["step"] = int(group["step"]) + 1
            beta, eps = group["beta"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g2 = p.grad.view(p.shape[0], -1)
                st = self.state[p]
                if "square_avg" not in st:
                    st["square_avg"] = torch.zeros_like(p)
                sq2 = st["square_avg"].view(p.shape[0], -1)
                data2 = p.view(p.shape[0], -1)
                if group["sparse"]:
                    # One read of the gradient, no (M, C) temporary (as ne(0).any(1) makes).
                    lo, hi = torch.aminmax(g2, dim=1)
                    rows = ((lo < 0) | (hi > 0)).nonzero().squeeze(1)
                    g, sq, d = g2.index_select(0, rows), sq2.index_select(0, rows), data2.index_select(0, rows)
                else:
                    g, sq, d = g2, sq2, data2
                new_sq = torch.lerp(g * g, sq, beta)  # beta * sq + (1 - beta) * g^2
                if group["init_from_grad"]:
                    new_sq = torch.where(sq == 0, g * g, new_sq)
                d = d - lr * g / (new_sq.sqrt() + eps)
                if group["sparse"]:
                    data2.index_copy_(0, rows, d)
                    sq2.index_copy_(0, rows, new_sq)
                    g2.index_fill_(0, rows, 0.0)
                else:
                    data2.copy_(d)
                    sq2.copy_(new_sq)
                    g2.zero_()
        self._clean = True
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradient buffers unless step() already left them zero. The buffers are
        kept (never set to None): the grid kernels accumulate into them in place."""
        if self._clean:
            self._clean = False  # a backward pass is about to write into them
            return
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.zero_()
        self._clean = True
