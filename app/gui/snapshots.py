"""Save and load the GUI's field: a checkpoint file, or a run directory (its checkpoint plus
the metrics.jsonl history for the plots)."""
from __future__ import annotations

import json
import os

from app.gui.channels import Outbox
from app.gui.settings import field_label, snapshot_settings
from app.gui.training import make_trainer


def read_history(path: str, run_id: int, last_step: int) -> list[dict]:
    """Metric records of a run's metrics.jsonl up to ``last_step``, tagged with ``run_id``.
    A line that does not parse is skipped: the torn last line of a run still being written."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                r = json.loads(line)
                rec = {"run_id": run_id, "step": int(r["step"]), "loss": float(r["loss"]),
                       "psnr": float(r["psnr"]), "lr": float(r.get("lr", 0.0)), "time": 0.0}
            except (ValueError, KeyError, TypeError):
                continue
            if rec["step"] <= last_step:
                out.append(rec)
    return out


class Snapshots:
    def __init__(self, out: Outbox, fields, settings, render):
        self.out, self.fields, self.settings, self.render = out, fields, settings, render

    def save(self, path: str) -> None:
        from app.engine.checkpoint import save_checkpoint

        t = self.fields.trainers[0]
        save_checkpoint(path, t)
        self.out.note("info", f"snapshot saved: {path} (step {t.step_count})")

    def load(self, path: str) -> None:
        """A snapshot of another architecture rebuilds the model to the snapshot's settings;
        compare mode ends. Nothing changes if the file cannot be read."""
        from app.engine.checkpoint import CheckpointError, load_into, read_checkpoint
        from app.engine.runs import CKPT
        from app.engine.trainer import TrainConfig

        ckpt, history = path, None
        if os.path.isdir(path):
            ckpt, history = os.path.join(path, CKPT), os.path.join(path, "metrics.jsonl")
        meta, _ = read_checkpoint(ckpt)  # fails early, naming the file, before anything changes
        cfg = meta.get("config")
        if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), str):
            raise CheckpointError(ckpt, "checkpoint metadata has no training config naming its model")
        s = snapshot_settings(self.settings.values, cfg)
        # The snapshot's own config (learning-rate schedule included: resuming a converged
        # field at a fresh, 10x larger learning rate would undo it), on this device, at the
        # GUI's batch size (a GPU run's batch would make each CPU step take seconds).
        try:
            batch = int(s["batch_rays"] or self.fields.trainers[0].config.batch_rays)
            config = TrainConfig(**{**cfg, "device": str(self.settings.device), "batch_rays": batch})
        except TypeError as exc:
            raise CheckpointError(ckpt, f"checkpoint config does not match this version: {exc}") from None
        old = self.fields.trainers[0]
        opts, mine = cfg.get("model_options", {}), dict(old.model.config)
        rebuilt = cfg["model"] != old.config.model or any(
            opts.get(k) != mine.get(k) for k in set(opts) | set(mine) if k not in ("n_coarse", "n_fine"))
        t = make_trainer(self.settings.scene, config)
        load_into(ckpt, t)
        t.batch_rays = batch
        self.fields.adopt([t], [field_label(s, "A")])
        self.settings.replace(s)
        n_hist = 0
        if history and os.path.isfile(history):
            for rec in read_history(history, self.fields.run_id, t.step_count):
                self.out.metrics.put(rec)
                n_hist += 1
        self.out.note("info", f"snapshot loaded: {ckpt} (step {t.step_count})"
                              + ("; model rebuilt to the snapshot's settings" if rebuilt else "")
                              + (f"; {n_hist} logged steps of history" if n_hist else ""))
        self.render.restart()
