"""A whole hash-grid training step replayed as one CUDA graph.

Why: profiled on the H100 the eager hash step launched 256 kernels and spent
about half its wall time on the CPU side of those launches (docs/bench_gpu.md).
A CUDA graph replays the same kernels with one launch. Capturing needs fixed
shapes and no host synchronisation inside the step, so the step here differs
from ``Trainer.step`` in three ways, all of them instant-ngp's own choices:

- A fixed ray buffer of ``max_rays`` rays of which the first ``n_active`` are
  marched; ``n_active`` is a device scalar that the step itself steers so that
  the marched samples match the sample budget (instant-ngp's rays-per-batch rule).
- A fixed sample buffer of ``capacity`` slots (the budget, 2^18 by default);
  rays that do not fit whole are dropped for that step, the rest is padding.
- A step with a non-finite gradient is skipped inside the graph: the fused Adam
  kernel takes a ``found_inf`` flag (the mechanism GradScaler uses) and leaves
  parameters, moments and step count untouched. The host reads the flag with the
  loss in the step's single sync and applies the trainer's usual recovery rules.

The field states the shapes (``Field.static_shape``); a field whose steps are of
several kinds (``Field.graph_key``: nerfacto trains its proposal nets on some steps
only) gets one graph per kind, each replayed on the steps of its kind.

``StaticStep.run`` without CUDA runs the same computation eagerly: the tests use
that to check it against the eager step on a CPU.
"""
from __future__ import annotations

import torch

from app.engine.batches import render_batch_static
from app.engine.trainer import group_lr, loss_and_mse

STATS = ("loss", "mse", "found_inf", "rays", "marched", "kept", "n_active")


def supports_graph(trainer) -> bool:
    """True when the trainer's model and scene allow the static step."""
    near, far = trainer.scene.near, trainer.scene.far
    return trainer.policy.cuda_graph and isinstance(near, (int, float)) and isinstance(far, (int, float))


class StaticStep:
    """Fixed-shape training step for a trainer whose model's policy allows it (its
    ``render_rays_static``).

    Construction switches the trainer's optimiser to tensor learning rates and a
    ``found_inf`` flag (both read by the fused Adam kernel on every step); ``release``
    switches it back. ``run`` performs one step (the first graphed call also the warm-up steps) and
    returns the STATS as floats plus "steps", the number of steps taken; ``launch`` and
    ``collect`` are its two halves, so that a caller can queue the next step before it
    waits for this one.
    """

    WARMUP = 3  # eager steps on a side stream before capture (PyTorch's recipe)

    def __init__(self, trainer, capacity: int | None = None, max_rays: int | None = None):
        self.trainer = trainer
        model = trainer.model
        self.device = trainer.device
        cap, rays = model.static_shape(trainer.batch_rays)
        self.capacity = int(capacity or cap)
        self.max_rays = int(max_rays or rays)
        self.use_graph = self.device.type == "cuda"
        opt = trainer.optimizer
        # The fused Adam kernel (CUDA; on a CPU when a test builds one) skips a step itself
        # when found_inf is set; otherwise the eager path checks the flag on the host.
        self.fused = all(g.get("fused") for g in opt.param_groups)
        dev = self.device
        start = min(max(trainer.batch_rays, 64), self.max_rays)
        self.n_active = torch.tensor(float(start), device=dev)
        self.ray_index = torch.arange(self.max_rays, device=dev, dtype=torch.float32)
        # 0-dim: the fused kernel subtracts it from each 0-dim Adam step count.
        self.found_inf = torch.zeros((), device=dev)
        if self.use_graph and not self.fused:
            raise RuntimeError("the CUDA-graph step needs the fused Adam optimiser")
        if self.fused:
            for g in opt.param_groups:
                g["lr"] = torch.tensor(float(g["lr"]), device=dev)
                g["capturable"] = self.use_graph
            opt.found_inf = self.found_inf
        self.stats = None
        self.graph = None  # the graph replayed last
        self.graphs = {}  # Field.graph_key() -> (graph, its STATS tensor)
        self.steps_run = 0
        self._ring = None  # two host copies of the STATS: a step is read while the next runs
        self._events = None
        self.signature = self.current_signature()

    def current_signature(self) -> tuple:
        """What the captured kernels bake in: the model's options (sample counts, step size,
        grid size, budget) and the precision. A change (the GUI's sample slider) makes the
        trainer capture a new graph."""
        tr = self.trainer
        return (tuple(sorted((k, repr(v)) for k, v in tr.model.config.items())), bool(tr.config.autocast),
                tr.config.random_background)

    def release(self) -> None:
        """Give the optimiser back its float learning rates; forget the graph."""
        opt = self.trainer.optimizer
        for g in opt.param_groups:
            if torch.is_tensor(g["lr"]):
                g["lr"] = float(g["lr"].item())
                g["capturable"] = False
        if getattr(opt, "found_inf", None) is self.found_inf:
            del opt.found_inf
        self.graph = None
        self.graphs = {}
        self.stats = None

    def set_lr(self, factor: float, step: int) -> None:
        """Each group's lr at ``step`` (trainer.group_lr: the schedule ``factor``, or the
        group's own decay), written into the tensors in place."""
        for g in self.trainer.optimizer.param_groups:
            lr = group_lr(g, step, factor)
            if torch.is_tensor(g["lr"]):
                g["lr"].fill_(lr)
            else:
                g["lr"] = lr

    # -- the step -------------------------------------------------------------------------
    def _body(self) -> torch.Tensor:
        """One step, fixed shapes, no host sync. Returns the STATS (7,) on the device."""
        tr = self.trainer
        model = tr.model
        gen = None if self.use_graph else tr.rng  # graphs replay the default generator's stream
        batch = tr.sample_batch(self.max_rays, generator=gen)
        target, background = tr._swap_background(batch.target, generator=gen)
        active = self.ray_index < self.n_active
        # Autocast's weight cache must be off while capturing (PyTorch's CUDA-graph notes).
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=tr.config.autocast,
                            cache_enabled=False):
            out = render_batch_static(model, batch, tr.scene.near, tr.scene.far, background,
                                      active, self.capacity)
        terms = model.loss_terms({k: v.float() for k, v in out.items()}, target)
        loss, mse = loss_and_mse(terms)
        loss.backward()
        grads = [p.grad for g in tr.optimizer.param_groups for p in g["params"] if p.grad is not None]
        # 0 * g is 0 for finite g, NaN otherwise: one reduction flags any bad gradient.
        total = torch.stack(torch._foreach_norm(torch._foreach_mul(grads, 0.0))).sum()
        self.found_inf.copy_((~torch.isfinite(total + loss.detach())).float())
        if self.fused:
            tr.optimizer.step()  # the fused kernel skips the update when found_inf is set
        elif not bool(self.found_inf.item()):
            tr.optimizer.step()
        # instant-ngp's batch rule: scale the rays by budget / marched, at most x2 per step.
        marched = out["marched"].float()
        ratio = (self.capacity / marched.clamp(min=1.0)).clamp(0.5, 2.0)
        rays = out["valid"].sum()
        stats = torch.stack([loss.detach().float(), mse.detach().float(),
                             self.found_inf, rays, marched, out["kept"].float(),
                             self.n_active.clone()])
        self.n_active.copy_((self.n_active * ratio).round().clamp(64.0, float(self.max_rays)))
        return stats

    def _capture(self) -> tuple:
        """Capture the step as a graph (after the warm-up steps); returns (graph, STATS)."""
        opt = self.trainer.optimizer
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP):
                opt.zero_grad(set_to_none=True)
                self._body()
        torch.cuda.current_stream().wait_stream(side)
        # Gradients allocated during capture live in the graph's pool and are overwritten,
        # not accumulated, on every replay.
        opt.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the GUI's other threads may use CUDA while the worker captures.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            stats = self._body()
        return graph, stats

    def launch(self) -> dict:
        """Queue one training step without waiting for it. Returns its token for ``collect``:
        "steps", the number of steps taken (the first graphed call also runs the warm-up
        steps). Two launched steps may be waiting to be collected at a time."""
        steps = 1
        if not self.use_graph:
            self.trainer.optimizer.zero_grad(set_to_none=True)
            self.stats = self._body()
        else:
            key = self.trainer.model.graph_key()
            if key not in self.graphs:
                # Capture does not run the kernels; the warm-up steps before it do, and are
                # real training steps, so this call reports them in "steps".
                self.graphs[key] = self._capture()
                steps += self.WARMUP
            self.graph, self.stats = self.graphs[key]
            self.graph.replay()
        slot = self.steps_run % 2  # the next replay overwrites self.stats: keep a copy
        if self._ring is None:
            pinned = self.use_graph and torch.cuda.is_available()
            self._ring = [torch.zeros(len(STATS), pin_memory=pinned) for _ in range(2)]
            self._events = [torch.cuda.Event() if self.use_graph else None for _ in range(2)]
        self._ring[slot].copy_(self.stats, non_blocking=True)
        if self._events[slot] is not None:
            self._events[slot].record()
        self.steps_run += steps
        return {"steps": steps, "slot": slot}

    def collect(self, token: dict) -> dict:
        """The STATS of the step ``launch`` returned token for, as Python floats plus "steps";
        waits for that step only (its one device sync)."""
        slot = token["slot"]
        if self._events[slot] is not None:
            self._events[slot].synchronize()
        return {**dict(zip(STATS, self._ring[slot].tolist())), "steps": token["steps"]}

    def run(self) -> dict:
        """One training step; returns the STATS as Python floats (one device sync)."""
        return self.collect(self.launch())
