"""The field(s) the GUI trains: one, or A and B side by side on the same ray batches."""
from __future__ import annotations

import time

from app.gui.abort import AbortHook, Preempted
from app.gui.channels import Outbox


def _fed_trainer_class():
    from app.engine.trainer import Trainer

    class FedTrainer(Trainer):
        """Trainer.step with a batch supplied from outside: two fields see the same rays.
        OOM recovery halves batch_rays; slicing the fed batch keeps that working."""

        feed = None

        def sample_batch(self, n, generator="trainer"):
            if self.feed is not None:
                return self.feed.head(n)
            return super().sample_batch(n, generator=generator)

        def _use_static(self):
            # A captured step samples its own rays: it cannot take a fed batch.
            return self.feed is None and super()._use_static()

    return FedTrainer


def make_trainer(scene, config):
    return _fed_trainer_class()(scene, config)


class Fields:
    """Owns the trainers, the run id the plots key on, and the training step.

    One step trains every field on one batch; the metrics go to the outbox as one dict per
    step (A's loss and PSNR, and B's as loss_b / psnr_b), the trainers' recovery events
    (OOM, NaN rollbacks) as warnings.
    """

    def __init__(self, out: Outbox, abort: AbortHook):
        self.out, self.abort = out, abort
        self.trainers: list = []
        self.labels: list[str] = []
        self.run_id = 0
        self.step_s = 0.05  # running mean of a step's duration: renders get as much time
        self.preempted_steps = 0
        self.crop = None  # the crop box (renderer.crop.CropBox) every field renders with
        self._events_seen: list[int] = []
        self._rate_t, self._rate_n = time.perf_counter(), 0

    def build(self, scene, configs, labels: list[str]) -> None:
        """Fresh trainers, rendering with the crop box in force; if one cannot be built the
        old ones stay."""
        from app.engine.runs import set_crop

        trainers = [make_trainer(scene, c) for c in configs]
        for t in trainers:
            set_crop(t, self.crop)
        self.adopt(trainers, labels)

    def set_crop(self, box) -> None:
        """Every field renders (and exports) only inside ``box`` (None: everywhere);
        ValueError, changing nothing, where a box cannot apply (an NDC scene)."""
        from app.engine.runs import set_crop

        for t in self.trainers:  # they share one scene: the first refuses, or none does
            set_crop(t, box)
        self.crop = box
        self.out.set_status(crop=box)  # asked for by the GUI: run_id stays

    def adopt(self, trainers: list, labels: list[str]) -> None:
        """Trainers built here or elsewhere (a loaded snapshot, whose crop box comes with it)."""
        self.trainers, self.labels = trainers, labels
        self.crop = trainers[0].model.crop
        self._events_seen = [len(t.events) for t in trainers]
        self.run_id += 1
        self._rate_t, self._rate_n = time.perf_counter(), 0
        self.out.set_status(run_id=self.run_id, crop=self.crop,
                            step=trainers[0].step_count, steps_per_s=0.0, labels=labels,
                            model_config=dict(trainers[0].model.config))

    def set_samples(self, n_coarse: int, n_fine: int) -> None:
        for t in self.trainers:
            t.model.set_samples(n_coarse=n_coarse, n_fine=n_fine)

    def set_batch(self, n: int) -> None:
        for t in self.trainers:
            t.batch_rays = int(n)

    def step(self) -> None:
        t0 = time.perf_counter()
        ts = self.trainers
        if len(ts) > 1:
            batch = ts[0].sample_batch(ts[0].batch_rays)
            for t in ts:
                t.feed = batch
        # A waiting gesture may cut a single-field step short (two fields must stay in step).
        try:
            with self.abort.preemptible(len(ts) == 1):
                ms = [t.step() for t in ts]
        except Preempted:
            self.preempted_steps += 1
            return
        finally:
            for t in ts:
                t.feed = None
        self.step_s = 0.8 * self.step_s + 0.2 * (time.perf_counter() - t0)
        self._forward_events()
        if ms[0].get("skipped"):
            return
        self._count_rate()
        m = ms[0]
        rec = {"run_id": self.run_id, "step": m["step"], "loss": m["loss"], "psnr": m["psnr"],
               "lr": m["lr"], "time": m["time"]}
        if len(ms) > 1 and not ms[1].get("skipped"):
            rec.update(loss_b=ms[1]["loss"], psnr_b=ms[1]["psnr"])
        self.out.metrics.put(rec)
        self.out.set_status(step=ts[0].step_count, last_metrics=rec)

    def _forward_events(self) -> None:
        ts = self.trainers
        for i, t in enumerate(ts):
            for ev in t.events[self._events_seen[i]:]:
                self.out.note("warn", (f"[{'AB'[i]}] " if len(ts) > 1 else "") + ev)
            self._events_seen[i] = len(t.events)

    def _count_rate(self) -> None:
        self._rate_n += 1
        now = time.perf_counter()
        if now - self._rate_t > 1.0:
            self.out.set_status(steps_per_s=self._rate_n / (now - self._rate_t))
            self._rate_t, self._rate_n = now, 0
