"""The field interface: what the engine, the GUI and the tools may ask of a model.

A field is an ``nn.Module`` subclass of :class:`Field`. The engine (app/engine) reaches a
model only through the members below; nothing is looked up with ``hasattr``. Optional
abilities have a default here (no hook, no CUDA-graph step, every parameter in one Adam
group), so a new field overrides only what it has.

Per-model policy (learning rate, precision, warm-up, batch size, whether a CUDA graph can
replay its step, what the GUI shows) lives on the class as :meth:`Field.policy` and
:meth:`Field.options_for`, so the CLI and the GUI build the same run from the same answer.

Hooks ask, they don't reach in: :meth:`Field.step_hook` gets a read-only
:class:`StepContext` and returns :class:`StepRequests` that the trainer carries out.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import torch
from torch import nn


@dataclass(frozen=True)
class TrainPolicy:
    """How a model likes to be trained; every field has a default the CLI flags override.

    bf16: "never"; "cuda" (bf16 autocast on CUDA only); "native" (on CUDA and on CPUs that
    have native bf16 matmuls, avx512_bf16 / AMX, where it pays; elsewhere it is emulated).
    """

    lr: float = 1e-2
    lr_final_ratio: float = 0.1
    batch_rays_cpu: int = 1024
    batch_rays_cuda: int = 4096
    gui_batch_rays_cpu: int = 512  # the GUI keeps CPU steps short so the view stays live
    bf16: str = "never"
    precrop_steps: int = 0
    cuda_graph: bool = False  # the model has render_rays_static (app/engine/graph_step.py)
    ema_decay: float = 0.0
    # Said to the user when the model is trained on a CPU where it is not meant to be.
    cpu_note: str | None = None
    # Which model the GUI and the CLI pick when none is named: highest wins.
    default_rank_cpu: int = 0
    default_rank_cuda: int = 0
    # The same for real captures (photos with no known background: models.default_model
    # says which scenes are), on either device; 0 everywhere leaves the ranks above to decide.
    default_rank_capture: int = 0

    def batch_rays(self, cuda: bool) -> int:
        return self.batch_rays_cuda if cuda else self.batch_rays_cpu

    def bf16_on(self, cuda: bool, cpu_native_bf16: bool) -> bool:
        if self.bf16 == "cuda":
            return cuda
        if self.bf16 == "native":
            return cuda or cpu_native_bf16
        return False


@dataclass
class StepContext:
    """What a step hook may read. ``training_rays(n)`` draws n random training rays
    (rays_o, rays_d) from the trainer's own sampler; ``owns(p)`` says whether the optimiser
    currently holds parameter tensor p (a grid replaced behind its back needs a rebuild)."""

    near: float | torch.Tensor
    far: float | torch.Tensor
    batch_rays: int
    autocast: bool
    training_rays: Callable[[int], tuple[torch.Tensor, torch.Tensor]]
    owns: Callable[[torch.Tensor], bool]


@dataclass
class StepRequests:
    """What a step hook asks the trainer to do after a step."""

    batch_rays: int | None = None  # use this many rays per step from now on
    rebuild_optimizer: bool = False  # the parameter tensors changed shape
    events: list[str] = field(default_factory=list)  # messages for the log / the GUI

    def merge(self, other: "StepRequests | None") -> "StepRequests":
        if other is None:
            return self
        return StepRequests(other.batch_rays if other.batch_rays is not None else self.batch_rays,
                            self.rebuild_optimizer or other.rebuild_optimizer, self.events + other.events)


# Knobs the user sets (GUI widgets, CLI flags). A model's options_for reads the ones it
# has and ignores the rest, so neither front end needs to know which model has which.
KNOBS = ("preset", "pos_encoding", "L_xyz", "L_dir", "sigma_scale", "n_coarse", "n_fine", "width",
         "occupancy", "ndc", "arch")


class Field(nn.Module):
    """Base class of every radiance field. Subclasses set ``DEFAULTS`` and implement
    ``render_rays``, ``loss_terms`` and ``density``; the rest has defaults."""

    #: Every option the constructor accepts, with its default. ``config`` holds the merged
    #: dict; it is saved with checkpoints and must rebuild the same model.
    DEFAULTS: ClassVar[dict] = {}
    #: Options a past version had, each with why it went: a checkpoint that saved one still
    #: loads (the option is dropped with a warning).
    RETIRED: ClassVar[dict[str, str]] = {}
    #: Options the model changes while training (a grid's resolution); a checkpoint restores
    #: them from the weights, so they may differ from the run's options.
    STATE_OPTIONS: ClassVar[tuple[str, ...]] = ()
    #: What the GUI shows for this model in its model list.
    LABEL: ClassVar[str] = ""
    #: Which GUI knobs apply (the others are greyed out): any of "pe", "L", "samples".
    GUI_KNOBS: ClassVar[tuple[str, ...]] = ("samples",)
    #: The field has per-image parameters: its ``render_rays(..., train=True)`` takes
    #: ``image=`` (R,) int64, the training image each ray comes from. The trainer passes it
    #: only to fields that set this (app/engine/batches.py render_batch).
    TAKES_IMAGE: ClassVar[bool] = False

    config: dict
    #: A renderer.crop.CropBox, or None: renders (train=False) see no density outside it.
    #: A plain attribute, not a buffer: the app sets it, checkpoints keep it in their
    #: metadata, and a model's weights never depend on it.
    crop = None

    # -- policy ---------------------------------------------------------------------------
    @classmethod
    def policy(cls, cuda: bool, options: dict) -> TrainPolicy:
        """Training defaults for this model with these options on this kind of device."""
        return TrainPolicy()

    @classmethod
    def options_for(cls, cuda: bool, **knobs) -> dict:
        """Constructor options from the user's knobs (see KNOBS; None means "not set").
        The default takes only ``arch`` (options restored from a snapshot): sample counts
        mean different things to different models, so they reach a built model through
        set_samples, and the NeRF knobs are the NeRF's."""
        return dict(knobs.get("arch") or {})

    @classmethod
    def describe(cls, options: dict) -> str:
        """A short label for a built model (the GUI's compare legend)."""
        return cls.LABEL or cls.__name__

    # -- rendering ------------------------------------------------------------------------
    def render_rays(self, rays_o: torch.Tensor, rays_d: torch.Tensor, near, far,
                    background=None, train: bool = False) -> dict:
        """Volume-render rays (R, 3) -> dict with at least rgb (R, 3), depth (R,), acc (R,).
        near/far: floats or (R,) tensors; background: a float, (3,) or (R, 3) colour, or
        None for none. ``train`` turns on jitter and whatever the loss needs."""
        raise NotImplementedError

    def render_chunk(self, cuda: bool) -> int:
        """Rays per render_rays call when whole views are rendered (app/engine/views.py): it
        bounds a render's memory. A field whose renderer holds little per ray may ask for
        more (fewer, fuller launches)."""
        return 65536 if cuda else 4096

    def loss_terms(self, out: dict, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Scalar losses from render_rays(train=True)'s output; their sum is minimised.
        "mse" is reported as PSNR; a model whose photometric loss is not the MSE also
        returns a detached "metric_mse", which is reported and not minimised."""
        raise NotImplementedError

    def density(self, x: torch.Tensor) -> torch.Tensor:
        """sigma (N,) at world positions x (N, 3): meshes, occupancy grids, probes."""
        raise NotImplementedError

    def crop_density(self, x: torch.Tensor, sigma: torch.Tensor, train: bool) -> torch.Tensor:
        """sigma at samples x (..., 3) with those outside the crop box zeroed. Every
        render_rays passes its sample densities through this; training is never cropped
        (the box only limits what is shown and exported)."""
        if train or self.crop is None:
            return sigma
        return self.crop.mask_density(x, sigma)

    def radiance(self, x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigma (N,), rgb (N, 3)) at positions x seen from unit directions d: vertex colours."""
        raise NotImplementedError

    # -- the training cameras ---------------------------------------------------------------
    def bind_scene(self, c2w, near: float, far: float, ndc: bool, kind: str = "object") -> None:
        """The training cameras, c2w (N, 4, 4) numpy float32, and the scene's bounds, told
        before the optimiser is built: a field sizes its per-image parameters (one row per
        training image, in this order) and places its frame here. A trainer calls it on
        every construction, also before restoring a checkpoint, so the same cameras must
        leave an already bound field as it is. kind: the loader's Scene.kind ("object":
        exact bounds; "capture": bounds estimated from sparse points). The default needs
        nothing."""

    def refine_rays(self, rays_o: torch.Tensor, rays_d: torch.Tensor,
                    image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training rays (R, 3) of training images ``image`` (R,) moved by the field's
        learned corrections to those cameras (pose refinement), differentiably. Rendering
        and evaluation use the cameras as given. The default: the rays unchanged."""
        return rays_o, rays_d

    def appearance_code(self) -> torch.Tensor | None:
        """For a view the field was not trained on: a fresh copy of the appearance code that
        renders use (a field with per-image appearance renders with the training images'
        mean), which evaluation may fit on part of that view and pass back as
        ``render_rays(..., appearance=code)``. None (the default): no per-image appearance,
        and render_rays takes no such argument."""
        return None

    def appearance_prior(self, code: torch.Tensor) -> torch.Tensor:
        """The training's penalty on one image's code, to add to the photometric MSE when a
        code is fitted to part of a view (a 0-dim tensor): the fit then keeps to codes
        like those the field was trained with. The default: none."""
        return code.new_zeros(())

    # -- training -------------------------------------------------------------------------
    def param_groups(self, lr: float) -> list[dict]:
        """Optimiser groups; each may carry its own lr (scaled with the schedule) and eps."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr}]

    def make_optimizer(self, groups: list[dict], step: int, cuda: bool) -> torch.optim.Optimizer:
        """The optimiser over ``groups`` (from param_groups, each with "initial_lr"), built at
        step ``step`` (0, or later after a rebuild: a schedule that spans rebuilds continues
        from there). The default is Adam; a field whose paper uses another optimiser (the
        Plenoxels grid's RMSProp) returns that instead.

        eps 1e-7 is the NeRF paper's; far smaller values (instant-ngp's 1e-15, which the hash
        model sets in its own groups) turn Adam into sign descent for a wide MLP's tiny early
        gradients and can kill its ReLU density (seen on the H100)."""
        return torch.optim.Adam(groups, betas=(0.9, 0.999), eps=1e-7, **({"fused": True} if cuda else {}))

    def step_hook(self, step: int, ctx: StepContext) -> StepRequests | None:
        """Called after each applied step with the new step count; returns requests or None."""
        return None

    def note_batch(self, rays: int, samples: int) -> None:
        """The trainer reports the rays and samples of the last training batch (a model that
        steers its batch size to a sample budget uses it in step_hook)."""

    def set_samples(self, n_coarse: int | None = None, n_fine: int | None = None) -> None:
        """Change sample counts without a rebuild (they only change the integrator)."""
        apply_sample_counts(self.config, n_coarse, n_fine)

    def compile_fields(self) -> None:
        """torch.compile what pays (CUDA); the default compiles nothing."""

    def render_rays_static(self, rays_o, rays_d, near: float, far: float, background,
                           active: torch.Tensor, capacity: int, image: torch.Tensor | None = None) -> dict:
        """Fixed-shape training render for the CUDA-graph step (policy().cuda_graph): the
        training render with no host sync, returning rgb (R, 3), valid (R,) float (the rays
        that count in the loss), marched and kept (0-dim: samples asked for and evaluated)
        beside the field's loss inputs. image (R,) is passed to TAKES_IMAGE fields."""
        raise NotImplementedError(f"{type(self).__name__} has no fixed-shape step")

    def static_shape(self, batch_rays: int) -> tuple[int, int]:
        """(sample capacity, ray buffer size) of the fixed-shape step; the step steers its
        active rays so that the samples marched fill the capacity."""
        raise NotImplementedError(f"{type(self).__name__} has no fixed-shape step")

    def graph_key(self) -> object:
        """Which kind of step the next training step is, for a field whose steps differ in
        the kernels they run (nerfacto trains its proposal nets only on some steps): the
        CUDA-graph step captures one graph per key. None: every step is the same."""
        return None


def apply_sample_counts(config: dict, n_coarse: int | None, n_fine: int | None) -> None:
    """Validate and store sample counts in a model config."""
    if n_coarse is not None:
        if n_coarse < 2:
            raise ValueError(f"n_coarse must be >= 2, got {n_coarse}")
        config["n_coarse"] = int(n_coarse)
    if n_fine is not None:
        if n_fine < 0:
            raise ValueError(f"n_fine must be >= 0, got {n_fine}")
        config["n_fine"] = int(n_fine)


def check_options(cls: type, config: dict) -> dict:
    """DEFAULTS merged with config; an unknown option is a ValueError naming it, a retired
    one (cls.RETIRED) is dropped with a warning that says why."""
    for name in sorted(set(config) & set(cls.RETIRED)):
        warnings.warn(f"{cls.__name__} option {name!r} is no longer used: {cls.RETIRED[name]}", stacklevel=3)
    config = {k: v for k, v in config.items() if k not in cls.RETIRED}
    unknown = set(config) - set(cls.DEFAULTS)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} option(s): {', '.join(sorted(unknown))}")
    return {**cls.DEFAULTS, **config}
