"""The GUI's training settings and what a change to them costs.

Settings are a flat dict of the widgets' values (model, PE, L, sample counts, render
scale, batch, A/B compare). A change is one of: a new network (model, encoding, L,
compare), applied in place (sample counts, batch size), or a new render (render scale).
Models are asked, never named: models.model_class(name) for GUI_KNOBS and the policy,
app.engine.presets for the options and the TrainConfig (the CLI builds runs the same way).
"""
from __future__ import annotations

import models

from app.gui.channels import Outbox

REBUILD_KEYS = ("model", "pe", "L_xyz", "L_dir")  # changing these needs a new network
SAMPLE_KEYS = ("n_coarse", "n_fine")  # applied in place with model.set_samples
COMPARE_KEYS = ("compare", "compare_b", "L_xyz_b")
# Model options that the GUI's PE / L / sample widgets set (models with "pe" in GUI_KNOBS).
PE_KNOB_OPTIONS = ("pos_encoding", "L_xyz", "L_dir", "n_coarse", "n_fine")
# GUI knob (Field.GUI_KNOBS) -> the settings it sets, read from a model's options.
KNOB_SETTINGS = {
    "pe": lambda o: {"pe": o["pos_encoding"] != "none"},
    "L": lambda o: {"L_xyz": o["L_xyz"], "L_dir": o["L_dir"]},
    "samples": lambda o: {"n_coarse": o["n_coarse"], "n_fine": o["n_fine"]},
}


def knob_defaults(cuda: bool) -> dict:
    """Starting values of the PE / L / sample widgets: for each GUI knob, the defaults of
    the first registered model that has it (registry order is the GUI's list order)."""
    out: dict = {}
    for name in models.available():
        cls = models.model_class(name)
        options = {**cls.DEFAULTS, **cls.options_for(cuda)}
        for knob in cls.GUI_KNOBS:
            for k, v in KNOB_SETTINGS[knob](options).items():
                out.setdefault(k, v)
    return out


def default_settings(cuda: bool, scene=None) -> dict:
    """GUI defaults: the registry's default model for this device, at its policy's
    batch size (None: each model its own), bf16 where it pays, and knob_defaults(cuda)."""
    from app.engine.trainer import cpu_has_native_bf16

    return dict(model=models.default_model(cuda, scene), preset=None, bf16=cuda or cpu_has_native_bf16(),
                # NeRF occupancy grid over [-1.5, 1.5]^3 (the cube the hash model also assumes):
                # samples in empty cells are skipped from step 32 on (NeRFModel occupancy_warmup).
                occupancy=True, res_scale=1.0,
                # None: the model's own (TrainPolicy.gui_batch_rays_cpu / batch_rays_cuda), so a
                # model switch takes that model's batch; a number set by the user wins.
                batch_rays=None,
                compare=False, compare_b="pe_off", L_xyz_b=4, **knob_defaults(cuda))


def knobs(s: dict, variant: str = "A", ndc: bool = False) -> dict:
    """The user's knobs (models.field.KNOBS) from settings ``s``; variant 'B' is the compare
    partner (PE off, or L_xyz_b). s["arch"] maps a model name to options restored from a
    snapshot of that model. A knob missing from ``s`` is passed as None ("not set")."""
    pe, L = s.get("pe"), s.get("L_xyz")
    if variant == "B":
        if s["compare_b"] == "pe_off":
            pe = False
        else:
            pe, L = True, s["L_xyz_b"]
    as_int = lambda v: None if v is None else int(v)  # noqa: E731
    return dict(preset=s.get("preset"), arch=(s.get("arch") or {}).get(s["model"]),
                pos_encoding=None if pe is None else "pe" if pe else "none",
                L_xyz=as_int(L), L_dir=as_int(s.get("L_dir")), n_coarse=as_int(s.get("n_coarse")),
                n_fine=as_int(s.get("n_fine")), occupancy=bool(s.get("occupancy")), ndc=ndc)


def model_options(s: dict, variant: str = "A", cuda: bool = False, ndc: bool = False) -> dict:
    """build_model options for settings ``s`` (see knobs)."""
    from app.engine.presets import model_options as build

    return build(s["model"], cuda, knobs(s, variant, ndc))


def field_label(s: dict, variant: str = "A") -> str:
    return models.model_class(s["model"]).describe(model_options(s, variant))


def change_message(old: dict, new: dict, keys: list[str]) -> str:
    """The note for a change that builds new fields."""
    what = ", ".join(f"{k} {old[k]} -> {new[k]}" for k in keys if k not in COMPARE_KEYS)
    if any(k in keys for k in COMPARE_KEYS):
        if new["compare"]:
            return (f"compare mode: A = {field_label(new, 'A')}, B = {field_label(new, 'B')}; both "
                    f"fields restart from step 0 and train on the same ray batches")
        return (f"rebuilt model ({what}); " if what else "") + "compare mode off: single field restarts from step 0"
    return f"rebuilt model ({what}): new network, training restarts at step 0"


def snapshot_settings(s: dict, cfg: dict) -> dict:
    """Settings after loading a checkpoint whose TrainConfig dict is ``cfg``: its model,
    compare off (B would not match A). For a model with the PE knob, the options the
    widgets show come back to the widgets; the rest of its options become s["arch"], so
    Reset and rebuilds keep the snapshot's network."""
    opts = cfg.get("model_options", {})
    cls = models.model_class(cfg["model"])
    s = dict(s, model=cfg["model"], compare=False)
    taken = PE_KNOB_OPTIONS if "pe" in cls.GUI_KNOBS else ()
    s["arch"] = {**(s.get("arch") or {}), cfg["model"]: {k: v for k, v in opts.items() if k not in taken}}
    if taken:
        built = {**cls.DEFAULTS, **opts}
        for knob in cls.GUI_KNOBS:
            s.update(KNOB_SETTINGS[knob](built))
    return s


class Settings:
    """The settings in force and how to apply a change to the fields.

    ``values`` change only once the change has taken effect: a refused combination (a
    model that will not build) leaves the running fields and the old values, and the GUI's
    widgets are re-synced to them. ``on_new_view()`` is called when what is on screen is
    out of date (new fields, other sample counts or render scale).
    """

    def __init__(self, out: Outbox, fields, on_new_view, seed: int = 0):
        self.out, self.fields, self.on_new_view, self.seed = out, fields, on_new_view, seed
        self.values: dict = {}
        self.scene = None
        self.device = None

    def bind(self, scene, device) -> None:
        self.scene, self.device = scene, device

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def start(self, override: dict) -> None:
        """Defaults for this device under ``override``; an unregistered model is replaced
        by the default one, with a warning."""
        defaults = default_settings(self.cuda, self.scene)  # a real capture gets its field
        self.values = {**defaults, **override}
        if self.values["model"] not in models.available():
            self.out.note("warn", f"model '{self.values['model']}' is not registered; using {defaults['model']}")
            self.values["model"] = defaults["model"]

    def config(self, variant: str, values: dict | None = None):
        """The TrainConfig of field ``variant`` (A, or B of a comparison)."""
        from app.engine.presets import train_config

        s = self.values if values is None else values
        opts = model_options(s, variant, self.cuda, ndc=self.scene.ndc)
        return train_config(s["model"], opts, self.cuda, interactive=True, lr=s.get("lr"),
                            batch_rays=s.get("batch_rays"), autocast=bool(s.get("bf16", False)),
                            seed=self.seed, device=str(self.device))

    def build(self, reason: str, values: dict | None = None) -> None:
        """Fresh fields from ``values`` (default: the ones in force), which then are in force.
        ``reason`` is noted unless it is "start"."""
        s = dict(self.values if values is None else values)
        variants = ["A", "B"] if s["compare"] else ["A"]
        self.fields.build(self.scene, [self.config(v, s) for v in variants], [field_label(s, v) for v in variants])
        self.values = s
        model = self.fields.trainers[0].model
        n_params = sum(p.numel() for p in model.parameters())
        self.out.set_status(model_desc=f"{s['model']} {n_params / 1e6:.2f} M params",
                            gui_knobs=list(type(model).GUI_KNOBS))
        self.out.publish_settings(s)
        if reason != "start":
            self.out.note("info", reason)
        note = self.fields.trainers[0].policy.cpu_note
        if note and not self.cuda:
            self.out.note("warn", note)
        self.on_new_view()

    def apply(self, changes: dict) -> None:
        s = self.values
        new = {**s, **{k: v for k, v in changes.items() if k in s}}
        if new.get("compare") and "pe" not in models.model_class(new["model"]).GUI_KNOBS:
            new["compare"] = False  # A/B is PE on vs off: nothing to compare for this model
            if changes.get("compare"):
                self.out.publish_settings(s)  # refused: the checkbox goes back
        changes = {k: v for k, v in new.items() if s[k] != v}
        if not changes:
            return
        rebuild = [k for k in REBUILD_KEYS + COMPARE_KEYS if k in changes]
        if "batch_rays" in changes and new["compare"]:
            rebuild.append("batch_rays")  # two fields on one batch: restart both together
        samples = any(k in changes for k in SAMPLE_KEYS)
        try:
            if rebuild:
                self.build(change_message(s, new, rebuild), new)
                return
            if samples:
                self.fields.set_samples(new["n_coarse"], new["n_fine"])  # may refuse: values unchanged
                self.out.note("info", f"samples per ray: coarse {new['n_coarse']}, fine {new['n_fine']} "
                                      f"(applied at once, no rebuild)")
            if "batch_rays" in changes:
                self.fields.set_batch(new["batch_rays"])
            self.values = new
        finally:
            self.out.publish_settings(self.values)  # the new values, or the old ones if refused
        if samples or "res_scale" in changes:
            self.on_new_view()

    def replace(self, values: dict) -> None:
        """Settings that came with fields built elsewhere (a loaded snapshot)."""
        self.values = dict(values)
        self.out.publish_settings(self.values)
