"""The iNeRF demo in the GUI: recover a test view's camera pose from a perturbed start by
gradient descent through the trained field, showing target | estimate as it goes."""
from __future__ import annotations

import importlib

import numpy as np

from app.gui.channels import Outbox
from app.gui.render_schedule import RenderJob, fov_for

PERTURB_DEG = 10.0
SHOW_EVERY = 5  # steps between renders of the estimate


class InerfDemo:
    def __init__(self, out: Outbox, fields, render):
        self.out, self.fields, self.render = out, fields, render
        self.state: dict | None = None

    @property
    def active(self) -> bool:
        return self.state is not None

    def cancel(self) -> None:
        self.state = None

    def start(self, view: int, steps: int) -> None:
        inerf = importlib.import_module("app.tools.inerf")  # (the sys.modules entry: tests substitute it)
        scene = self.render.scene
        sp = scene.split("test") if "test" in scene.splits else scene.split("train")
        view = view % len(sp)
        truth = sp.c2w[view].astype(np.float64)
        shift = 0.2 * scene.scene_radius / 4.0
        init = inerf.perturb_pose(truth, PERTURB_DEG, shift, seed=view)
        inv = inerf.InvertPose(self.fields.trainers[0], sp.images[view], init.astype(np.float32),
                               camera=sp.cameras[view])
        self.state = {"inv": inv, "rot_err": inerf.rotation_error_deg, "truth": truth, "target": sp.images[view],
                      "i": 0, "steps": int(steps), "c2w": init, "view": view}
        self.out.note("info", f"iNeRF: recovering the pose of test view {view} from a start perturbed by "
                              f"{PERTURB_DEG:g} deg and {shift:.2f} units; training paused")
        self._show()

    def step(self) -> bool:
        """One pose update; True once the demo has run its steps."""
        st = self.state
        with self.fields.trainers[0].averaged():  # the field as the view shows it
            res = st["inv"].step()
        st["i"] += 1
        c2w = np.asarray(res["c2w"], dtype=np.float64)
        st["c2w"] = c2w
        rot = res.get("rot_err_deg")
        if rot is None:
            rot = st["rot_err"](c2w, st["truth"])
        st["last"] = {"step": st["i"], "loss": float(res.get("loss", float("nan"))), "rot_err_deg": float(rot),
                      "trans_err": float(np.linalg.norm(c2w[:3, 3] - st["truth"][:3, 3]))}
        self.out.set_status(inerf=dict(st["last"]))
        if st["i"] % SHOW_EVERY == 0:
            self._show()
        return st["i"] >= st["steps"]

    def finish(self, how: str) -> None:
        st = self.state
        last = st.get("last") or {}
        self._show()
        self.state = None
        self.out.note("info", f"iNeRF {how} after {st['i']} steps: rotation error "
                              f"{last.get('rot_err_deg', float('nan')):.2f} deg, position error "
                              f"{last.get('trans_err', float('nan')):.3f}")

    def _show(self) -> None:
        """Render the current estimate (second-lowest level) next to the target image."""
        st = self.state
        sizes = self.render.sizes()
        lvl = min(1, len(sizes) - 1)
        h, w = sizes[lvl]
        tr = self.render.scene.split("train")
        t = self.fields.trainers[0]
        out = t.render(st["c2w"].astype(np.float32), h, w, t.focal * w / tr.width, keys=("rgb", "depth", "acc"))
        target = st["target"]
        tgt = {"rgb": target, "depth": np.zeros(target.shape[:2], np.float32),
               "acc": np.ones(target.shape[:2], np.float32)}
        est = {k: v.numpy() for k, v in out.items()}
        job = RenderJob(st["c2w"], fov_for(tr.width, t.focal), -1, sizes, lvl, lvl)
        self.render.publish(job, [tgt, est], kind="inerf", labels=["target image", "render from estimate"],
                            info=dict(st.get("last") or {}))
