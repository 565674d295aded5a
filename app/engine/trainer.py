"""The steppable trainer: one ``step()`` call is one batch of random rays.

The GUI worker, the CLI and the benchmarks all drive this same object, so its
recovery rules (NaN, out of memory) hold everywhere.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch

from loaders.scene import Scene
from models import build_model, default_model
from models.field import StepContext, StepRequests, TrainPolicy
from app.engine.averaging import WeightAverage
from app.engine.batches import RayBatch, RaySampler, render_batch, swap_background


@dataclass
class TrainConfig:
    """Everything that defines a run. Saved as JSON next to checkpoints."""

    model: str | None = None  # a registered field; None: the registry's default for the device
    model_options: dict = field(default_factory=dict)
    batch_rays: int = 1024
    lr: float = 5e-4
    lr_final: float = 5e-5
    lr_decay_steps: int = 200_000
    seed: int = 0
    device: str = "auto"
    autocast: bool = False  # bf16 autocast (CUDA, or a CPU with native bf16: avx512_bf16 / AMX)
    # Centre-crop warm-up (the official NeRF code's precrop for Blender scenes): with a
    # white background a wide ReLU-density MLP can settle in its first steps on "no
    # density anywhere", after which no gradient revives it. Sampling only the central
    # precrop_frac of each image for the first precrop_steps puts the object in every
    # batch. The paper preset uses 500 steps (app/commands/train.py); 0 turns it off.
    precrop_steps: int = 0
    precrop_frac: float = 0.5
    # torch.compile the fields' networks (CUDA only: on a CPU it needs a C++ toolchain). It
    # fuses the elementwise work between the NeRF's matmuls (more steps/s, less memory, after
    # some seconds of compilation: docs/bench_gpu.md); fields where it does not pay compile
    # nothing (Field.compile_fields).
    compile: bool = False
    # A random colour behind every training pixel of a scene with alpha (instant-ngp's and
    # nerfstudio's default for the synthetic scenes): a constant background lets the field
    # explain empty space with background-coloured density ("floaters"); with a random one
    # only transparency explains it. Evaluation still uses the scene's background.
    random_background: bool = False
    # Replay the whole training step as one CUDA graph (app/engine/graph_step.py) for models that
    # offer a static-shape step (the hash model). CUDA only; ignored elsewhere. The step
    # then uses a fixed 2^18-slot sample buffer and steers its own ray count.
    cuda_graph: bool = False
    # Render and evaluate with an exponential moving average of the weights (instant-ngp's
    # "Ema" optimiser wrapper, decay 0.95 in its NeRF config): at a large learning rate the
    # last Adam step leaves the weights noisy, and the average over ~1 / (1 - decay) steps
    # is what the user sees. 0 turns it off; None takes the model's EMA_DECAY (0.95 for the
    # hash model, 0 for the others). Training itself always uses the raw weights.
    ema_decay: float | None = None

    def validate(self) -> None:
        if self.batch_rays < 1:
            raise ValueError(f"batch_rays must be >= 1, got {self.batch_rays}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.lr_decay_steps < 1:
            raise ValueError(f"lr_decay_steps must be >= 1, got {self.lr_decay_steps}")
        if self.precrop_steps < 0:
            raise ValueError(f"precrop_steps must be >= 0, got {self.precrop_steps}")
        if not (0.0 < self.precrop_frac <= 1.0):
            raise ValueError(f"precrop_frac must be in (0, 1], got {self.precrop_frac}")
        if self.ema_decay is not None and not (0.0 <= self.ema_decay < 1.0):
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """True on x86 CPUs whose flags list avx512_bf16 or amx_bf16: there bf16 autocast
    roughly halves a NeRF step (measured on this project's 2-core EPYC); elsewhere bf16
    is emulated and slower, so callers keep fp32."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def psnr_from_mse(mse: float) -> float:
    return float("inf") if mse <= 0 else -10.0 * math.log10(mse)


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """True when no tensor holds NaN or infinity, with one device sync for the whole list
    (a per-tensor check stalls the GPU once per parameter tensor, every step).
    0 * x is 0 for finite x and NaN otherwise, so the summed norms are finite iff all are."""
    if not tensors:
        return True
    # Usually one read of the gradients: their norms are finite when every value is. Only
    # a non-finite sum (NaN or inf somewhere, or finite values whose squares overflow) pays
    # for the exact test, which copies them.
    if bool(torch.isfinite(torch.stack(torch._foreach_norm(tensors)).sum()).item()):
        return True
    zeros = torch._foreach_mul(tensors, 0.0)
    return bool(torch.isfinite(torch.stack(torch._foreach_norm(zeros)).sum()).item())


def group_lr(group: dict, step: int, factor: float) -> float:
    """The learning rate of an optimiser group at ``step``: its initial lr times the
    trainer's schedule ``factor``, and for a group that carries its own ``decay`` (ratio,
    steps) also times ratio^(step / steps), held at ratio after that many steps
    (nerfacto's camera deltas: a large lr early, for the coarse correction, then a small
    one, so that noisy per-image gradients do not keep the cameras jittering)."""
    lr = group["initial_lr"] * factor
    own = group.get("decay")
    if own is not None:
        ratio, steps = own
        lr *= ratio ** min(step / max(steps, 1), 1.0)
    return lr


def loss_and_mse(terms: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """A model's loss terms -> (the loss to minimise: their sum, the MSE that PSNR reports).
    A model whose loss is not the MSE (a Huber loss) also returns "metric_mse", detached,
    which is reported and not minimised."""
    metric = terms.get("metric_mse")
    loss = sum(v for k, v in terms.items() if k != "metric_mse")
    return loss, (metric if metric is not None else terms["mse"])


def is_oom(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, and the CPU allocator's RuntimeError/MemoryError."""
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    msg = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg
                                              or "defaultcpuallocator" in msg)


class Trainer:
    """Owns scene tensors on the device, the model, the optimiser and the step count."""

    MIN_BATCH = 64
    SNAPSHOT_EVERY = 200
    ROLLBACK_AFTER = 3  # consecutive non-finite steps before restoring the snapshot

    def __init__(self, scene: Scene, config: TrainConfig | None = None, model=None):
        self.config = config or TrainConfig()
        self.config.validate()
        self.scene = scene
        self.device = pick_device(self.config.device)
        if self.config.model is None:
            self.config.model = default_model(self.device.type == "cuda", scene)
        torch.manual_seed(self.config.seed)
        self.rng = torch.Generator(device=self.device).manual_seed(self.config.seed)
        tr = scene.split("train")
        self.height, self.width, self.focal = tr.height, tr.width, tr.focal
        self.rays = RaySampler.from_split(tr, self.device, scene.ndc, keep_alpha=self.config.random_background)
        self.model = model if model is not None else build_model(self.config.model,
                                                                  **self.config.model_options)
        # Per-image parameters and a field's frame follow the training cameras (Field.bind_scene).
        self.model.bind_scene(tr.c2w, scene.near, scene.far, scene.ndc, kind=getattr(scene, "kind", "object"))
        self.model.to(self.device)
        if self.config.compile and self.device.type == "cuda":
            self.model.compile_fields()
        self.step_count = 0
        self.optimizer = self._make_optimizer()
        self.batch_rays = self.config.batch_rays
        self.events: list[str] = []  # human-readable recoveries, drained by the GUI
        self.fault_hook = None  # tests inject faults (e.g. a simulated OOM) here
        self.last_metrics: dict = {}
        self._consecutive_bad = 0
        self._good_state = None  # (step, model state, optimizer state) to roll back to
        self._static = None  # app.engine.graph_step.StaticStep while the graphed step is in use
        self._static_failed = False
        self.static_on_cpu = False  # tests: run the static step eagerly on a CPU
        # Keep one graphed step in flight between step() calls (see _static_step); off by
        # default so that step() returns with the step it took finished and counted.
        self.pipeline = False
        self._inflight: dict | None = None  # StaticStep.launch token of the step in flight
        self.average = WeightAverage(self._ema_params)

    # -- construction -----------------------------------------------------------------
    def _make_optimizer(self) -> torch.optim.Optimizer:
        groups = self.model.param_groups(self.config.lr)
        for g in groups:
            g.setdefault("initial_lr", g["lr"])
        # The model picks its optimiser (Adam unless its paper uses another).
        return self.model.make_optimizer(groups, step=self.step_count,
                                         cuda=self.device.type == "cuda")

    def rebuild_optimizer(self) -> None:
        """Called by models whose parameter tensors change shape (grid upsampling)."""
        self._drop_static()
        self.optimizer = self._make_optimizer()
        self.average.values = None  # the average restarts from the new tensors

    # -- weight averaging -------------------------------------------------------------
    @property
    def policy(self) -> TrainPolicy:
        """The model's training policy for its options on this device."""
        return type(self.model).policy(self.device.type == "cuda", self.model.config)

    @property
    def ema_decay(self) -> float:
        d = self.config.ema_decay
        return float(self.policy.ema_decay) if d is None else float(d)

    def _ema_params(self) -> list[torch.Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    @property
    def ema(self) -> list[torch.Tensor] | None:
        """The averaged copies of the parameters, when on (checkpoints save them)."""
        return self.average.values

    @ema.setter
    def ema(self, values) -> None:
        self.average.values = values

    def _fits_params(self, tensors) -> bool:
        return self.average.fits(tensors)

    def _ema_update(self) -> None:
        self.average.update(self.ema_decay)

    def apply_average(self) -> None:
        """Replace the weights by their average for good: for a run loaded to be used
        (render, evaluate, export, iNeRF), not trained on."""
        self.average.apply()

    def averaged(self):
        """Within the block the model holds the averaged weights (when the decay is > 0)."""
        return self.average.swapped_in()

    def _drop_static(self, finish: bool = True) -> None:
        """Forget the graphed step (it holds the optimiser's state tensors); the next step
        captures a new one. finish: count a step still in flight first (False after a
        failure or a rollback: its outcome is discarded, its update is in the weights or
        replaced by the restored state)."""
        if finish:
            self.finish_pending()
        self._inflight = None
        if self._static is not None:
            self._static.release()
            self._static = None

    def _use_static(self) -> bool:
        if not self.config.cuda_graph or self._static_failed or self.fault_hook is not None:
            return False
        if self.device.type != "cuda" and not self.static_on_cpu:
            return False
        from app.engine.graph_step import supports_graph
        return self.step_count >= self.config.precrop_steps and supports_graph(self)

    @property
    def background(self) -> float:
        return self.scene.background

    def lr_at(self, step: int) -> float:
        """Exponential decay from lr to lr_final over lr_decay_steps (then onward)."""
        c = self.config
        return c.lr * (c.lr_final / c.lr) ** (step / c.lr_decay_steps)

    # -- data ---------------------------------------------------------------------------
    def sample_batch(self, n: int, generator: torch.Generator | None | str = "trainer") -> RayBatch:
        """n random training rays (app.engine.batches.RayBatch): rays_o, rays_d (n, 3), the
        image index (n,), target (n, 3) rgb on the scene's background, or (n, 4) rgb + alpha
        with random_background on a scene with alpha (``step`` then picks the colours).
        ``generator``: the trainer's own by default; None for torch's default one (the only
        one a CUDA graph replays)."""
        g = self.rng if generator == "trainer" else generator
        crop = self.config.precrop_frac if self.step_count < self.config.precrop_steps else 1.0
        return self.rays.sample(n, g, crop)

    def _swap_background(self, target: torch.Tensor, generator: torch.Generator | None | str = "trainer"):
        return swap_background(target, self.background, self.rng if generator == "trainer" else generator)

    # -- training -----------------------------------------------------------------------
    def step(self) -> dict:
        """One optimisation step. Never raises for NaN or OOM: it recovers and
        records an event instead; other exceptions propagate."""
        t0 = time.perf_counter()
        lr = self.lr_at(self.step_count)
        if self._use_static():
            res = self._static_step(t0, lr)
            if res is not None:
                return res
        elif self._static is not None:
            # An eager step between graphed ones (a fed batch, a fault hook): give the
            # optimiser back its float learning rates and found_inf-free state first.
            self._drop_static()
        for g in self.optimizer.param_groups:
            g["lr"] = group_lr(g, self.step_count, lr / self.config.lr)
        try:
            if self.fault_hook is not None:
                self.fault_hook(self)
            batch = self.sample_batch(self.batch_rays)
            target, background = self._swap_background(batch.target)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.autocast):
                out = render_batch(self.model, batch, self.scene.near, self.scene.far, background)
            terms = self.model.loss_terms({k: v.float() for k, v in out.items()}, target)
            loss, mse_t = loss_and_mse(terms)
            if not torch.isfinite(loss):
                return self._skip(f"step {self.step_count}: loss is {loss.item()}, update skipped")
            if not loss.requires_grad:
                # Every ray missed the occupied cells: nothing to learn from this batch.
                return self._skip(f"step {self.step_count}: no sample reached the field, update skipped")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grads_ok = all_finite([p.grad for g in self.optimizer.param_groups for p in g["params"]
                                   if p.grad is not None])
            if not grads_ok:
                self.optimizer.zero_grad(set_to_none=True)
                return self._skip(f"step {self.step_count}: non-finite gradient, update skipped")
            self.optimizer.step()
        except Exception as exc:  # noqa: BLE001 - only OOM is handled, the rest re-raised
            if not is_oom(exc):
                raise
            self.optimizer.zero_grad(set_to_none=True)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            old = self.batch_rays
            self.batch_rays = max(self.MIN_BATCH, old // 2)
            self.events.append(f"step {self.step_count}: out of memory with {old} rays; "
                               f"batch reduced to {self.batch_rays}")
            return {"step": self.step_count, "skipped": True, "event": self.events[-1]}
        self._consecutive_bad = 0
        self.step_count += 1
        self._ema_update()
        if self.step_count % self.SNAPSHOT_EVERY == 0 or self._good_state is None:
            self._snapshot()
        self._run_hook(self.step_count)
        mse = mse_t.item()
        self.last_metrics = {"step": self.step_count, "loss": loss.item(), "mse": mse,
                             "psnr": psnr_from_mse(mse), "lr": lr, "batch_rays": self.batch_rays,
                             "time": time.perf_counter() - t0}
        return self.last_metrics

    def hook_context(self) -> StepContext:
        """What the model's step hook may read. Its training rays come from the base
        sampler: a subclass may feed fixed batches (the GUI's compare mode), and a pruner
        shown only those few rays would prune what the others see."""
        owned = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        return StepContext(near=self.scene.near, far=self.scene.far, batch_rays=self.batch_rays,
                           autocast=self.config.autocast,
                           training_rays=lambda n: Trainer.sample_batch(self, n).rays,
                           owns=lambda p: id(p) in owned)

    def _run_hook(self, step: int) -> None:
        """Call the model's step hook and carry out what it asks."""
        # Grid refreshes run the field too: same precision as the step (on a CPU with native
        # bf16 a 64^3 refresh in fp32 would cost as much as a dozen bf16 steps).
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.autocast):
            req = self.model.step_hook(step, self.hook_context())
        self.apply_requests(req)

    def apply_requests(self, req: StepRequests | None) -> None:
        if req is None:
            return
        if req.batch_rays is not None:
            self.batch_rays = int(req.batch_rays)
        if req.rebuild_optimizer:
            self.rebuild_optimizer()
        self.events.extend(req.events)

    def _static_step(self, t0: float, lr: float) -> dict | None:
        """One step through app.engine.graph_step.StaticStep. Returns None when the graphed step
        cannot run here (then it is off for the rest of the run and the caller falls back to
        the eager step); recovery rules are the eager step's.

        With ``pipeline`` on, one graphed step stays in flight between calls: a call queues
        the next step, then waits for and reports the one before it, so the host's share of
        a step (about 0.4 ms on an H200, a tenth of the step) and the graph launch overlap
        the GPU's work instead of leaving it idle. ``finish_pending`` reports the last one."""
        from app.engine.graph_step import StaticStep
        if self._static is not None and self._static.signature != self._static.current_signature():
            self._drop_static()  # counts the step in flight, captured with the old options
            if self._static_failed:  # that step's sync failed: the caller takes the eager step
                return None
        upcoming = self.step_count + self.steps_in_flight
        new = []
        # With the pipeline empty, two steps: the second stays in flight.
        for _ in range(2 if self.pipeline and self._inflight is None else 1):
            try:
                if self._static is None:
                    self._static = StaticStep(self)
                self._static.set_lr(lr / self.config.lr, upcoming)
                tok = self._static.launch()
            except Exception as exc:  # noqa: BLE001 - capture problems must not stop training
                return self._static_unavailable(exc)
            tok["lr"], tok["t0"] = lr, t0
            new.append(tok)
            # Queued behind the step while the GPU runs it, before any sync. Neither needs the
            # step's outcome: a skipped step (found_inf, rare) left the weights as they were,
            # so the average moved towards unchanged weights; a grid refresh one step early
            # is harmless.
            upcoming += tok["steps"]
            self._ema_update()
            self._run_hook(upcoming)
        if self.pipeline:
            done = self._inflight if self._inflight is not None else new.pop(0)
            self._inflight = new[-1]
        else:
            done = new[0]
        return self._account_static(done)

    @property
    def steps_in_flight(self) -> int:
        """Graphed steps queued on the GPU and not yet counted in step_count (pipeline on)."""
        return self._inflight["steps"] if self._inflight is not None else 0

    def finish_pending(self) -> dict | None:
        """Wait for the graphed step still in flight (pipeline on), count it and return its
        metrics; None when there is none. Callers that report step_count or save call it."""
        if self._inflight is None or self._static is None:
            self._inflight = None
            return None
        tok, self._inflight = self._inflight, None
        return self._account_static(tok)

    def _account_static(self, tok: dict) -> dict | None:
        """Wait for the launched step tok and apply its outcome: count it, or the eager
        step's recovery rules when its loss or gradient was not finite."""
        try:
            st = self._static.collect(tok)
        except Exception as exc:  # noqa: BLE001 - an asynchronous CUDA error surfaces here
            return self._static_unavailable(exc)
        if st["found_inf"]:
            msg = f"step {self.step_count}: loss {st['loss']:.4g}, non-finite loss or gradient, update skipped"
            return self._skip(msg)
        n = tok["steps"]
        self._consecutive_bad = 0
        before = self.step_count
        self.step_count += n
        if self.step_count // self.SNAPSHOT_EVERY != before // self.SNAPSHOT_EVERY or self._good_state is None:
            self._snapshot()
        self.model.note_batch(int(st["rays"]), int(st["kept"]))  # what the bench reports
        # The graph steers its own ray count; batch_rays reports it (the hook's choice only
        # matters to an eager step).
        self.batch_rays = int(st["n_active"])
        self.last_metrics = {"step": self.step_count, "loss": st["loss"], "mse": st["mse"],
                             "psnr": psnr_from_mse(st["mse"]), "lr": tok["lr"], "batch_rays": self.batch_rays,
                             "time": time.perf_counter() - tok["t0"]}
        return self.last_metrics

    def _static_unavailable(self, exc: Exception) -> None:
        """Turn the graphed step off for this run after it failed with exc (re-raised when it
        is not a CUDA or capture failure); the caller then takes the eager step."""
        self._drop_static(finish=False)
        if not (isinstance(exc, RuntimeError) or is_oom(exc)):
            # Not a CUDA/capture failure: the GUI worker's stop and preemption signals
            # (raised by its forward hooks while a step is traced), or a bug. The graph is
            # rebuilt on the next step; the caller sees the exception as from an eager step.
            raise exc
        self._static_failed = True
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        what = "out of memory" if is_oom(exc) else f"{type(exc).__name__}: {exc}"[:200]
        self.events.append(f"step {self.step_count}: CUDA-graph step unavailable ({what}); "
                           "continuing with the eager step")
        return None

    def _snapshot(self) -> None:
        """Keep an in-memory copy of the last healthy state (cheap next to a step every
        SNAPSHOT_EVERY steps) so a diverged model can be rolled back instead of stalling."""
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            return
        clone = lambda sd: {k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in sd.items()}
        opt = self.optimizer.state_dict()
        opt_copy = {"state": {i: clone(st) for i, st in opt["state"].items()},
                    "param_groups": [dict(g) for g in opt["param_groups"]]}
        self._good_state = (self.step_count, clone(self.model.state_dict()), opt_copy)

    def _skip(self, msg: str) -> dict:
        self._consecutive_bad += 1
        self.events.append(msg)
        params_bad = not all(torch.isfinite(p).all() for p in self.model.parameters())
        if (params_bad or self._consecutive_bad >= self.ROLLBACK_AFTER) and self._good_state is not None:
            self._inflight = None  # a step queued on the diverged state: its outcome is moot
            step, model_sd, opt_sd = self._good_state
            try:
                self.model.load_state_dict(model_sd)
                self.optimizer.load_state_dict(opt_sd)
            except (RuntimeError, ValueError):
                # Shapes changed since the snapshot (grid upsampling): keep the weights,
                # reset the optimiser moments, which is where divergence usually lives.
                self.rebuild_optimizer()
            self._drop_static(finish=False)  # its kernels point at the replaced optimiser state
            self.ema = None  # averaged over the diverging steps too: restart from the snapshot
            self.step_count = step
            self._consecutive_bad = 0
            msg2 = f"rolled back to the last healthy state at step {step}"
            self.events.append(msg2)
            msg = f"{msg}; {msg2}"
        return {"step": self.step_count, "skipped": True, "event": msg}

    def train(self, steps: int, callback=None) -> None:
        for _ in range(steps):
            m = self.step()
            if callback is not None:
                callback(m)

    # -- rendering and evaluation (app/engine/views.py) -----------------------------------
    def render(self, c2w, height: int | None = None, width: int | None = None, focal: float | None = None,
               keys=("rgb", "depth", "acc"), chunk: int | None = None, camera=None) -> dict:
        """Render a view: through ``camera`` (a dataset view's own Cameras) or a pinhole
        with the training focal (rescaled to height x width)."""
        from app.engine.views import render_view
        return render_view(self, c2w, height, width, focal, keys, chunk, camera)

    def evaluate(self, split: str = "test", max_images: int | None = None, ssim: bool = True,
                 progress=None) -> dict:
        """PSNR (and SSIM) per image and mean on a split, each view rendered through its own
        camera (with the averaged weights, if any)."""
        from app.engine.views import evaluate_split
        return evaluate_split(self, split, max_images, ssim, progress)

    def config_dict(self) -> dict:
        d = asdict(self.config)
        d["model_options"] = dict(self.model.config)
        return d
