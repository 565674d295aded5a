"""The Scene section: Open... a scene folder or file (file dialogs, or a typed path), and for
photos or a video the ``process`` run that makes a dataset of them, its stage and progress
bar, and Cancel. When a run finishes, its dataset is loaded and trained on; errors are
notes, and the app keeps running whatever happens."""
from __future__ import annotations

import os
import time

from app.gui.capture_process import ProcessJob, classify, output_for
from app.gui.theme import MUTED

VIDEO_FILTER = ".mp4,.mov,.m4v,.avi,.mkv,.webm"


def free_name(path: str) -> str:
    """``path`` or ``path_2``, ``path_3``, ... whichever does not exist yet."""
    if not os.path.exists(path):
        return path
    k = 2
    while os.path.exists(f"{path}_{k}"):
        k += 1
    return f"{path}_{k}"


class OpenPanel:
    def __init__(self, dpg, worker, note):
        self.dpg, self.worker, self.note = dpg, worker, note
        self.job: ProcessJob | None = None
        self.opened = 0  # scenes asked for (for the status)

    def build(self) -> None:
        dpg = self.dpg
        with dpg.collapsing_header(label="Scene", default_open=True):
            dpg.add_text("", tag="scene_line", color=MUTED, wrap=440)
            with dpg.group(horizontal=True):
                dpg.add_input_text(tag="open_path", width=300, on_enter=True,
                                   hint="scene folder, transforms.json, photos folder or video",
                                   callback=lambda s, a: self.open(a))
                dpg.add_button(label="Open", tag="open_go", callback=lambda: self.open(dpg.get_value("open_path")))
            with dpg.group(horizontal=True):
                dpg.add_button(label="Open folder...", tag="open_folder", callback=lambda: dpg.show_item("dlg_folder"))
                dpg.add_button(label="Open file...", tag="open_file", callback=lambda: dpg.show_item("dlg_file"))
            with dpg.tooltip("open_folder"):
                dpg.add_text("a Blender / instant-ngp / nerfstudio folder (transforms.json), an LLFF folder\n"
                             "(poses_bounds.npy), a COLMAP model (sparse/0), or a folder of photos")
            with dpg.group(tag="process_group", show=False):
                dpg.add_text("", tag="process_stage")
                with dpg.group(horizontal=True):
                    dpg.add_progress_bar(tag="process_bar", width=330, default_value=0.0)
                    dpg.add_button(label="Cancel", tag="process_cancel", callback=lambda: self.cancel())

    def build_dialogs(self) -> None:
        """The file dialogs (top-level windows, hidden until a button shows them)."""
        dpg = self.dpg
        chosen = lambda s, a: self._chosen(a)  # noqa: E731
        dpg.add_file_dialog(directory_selector=True, show=False, tag="dlg_folder", width=720, height=440,
                            callback=chosen, label="Open a scene or a folder of photos")
        with dpg.file_dialog(show=False, tag="dlg_file", width=720, height=440, callback=chosen,
                             label="Open transforms.json or a video"):
            dpg.add_file_extension(".*")
            dpg.add_file_extension(".json", color=(120, 220, 130, 255))
            dpg.add_file_extension(VIDEO_FILTER, color=(240, 200, 90, 255))

    def _chosen(self, app_data: dict) -> None:
        path = (app_data or {}).get("file_path_name")
        if path:
            self.dpg.set_value("open_path", path)
            self.open(path)

    # -- opening ----------------------------------------------------------------------------------
    def open(self, path: str) -> None:
        """A posed dataset loads in the worker; photos or a video are processed first."""
        if not str(path).strip():
            return
        try:
            kind, path = classify(path)
        except ValueError as exc:
            self.note("error", f"open: {exc}")
            return
        if kind == "scene":
            self.load(path)
            return
        if self.job is not None and self.job.state == "running":
            self.note("warn", f"open {path}: a capture is being processed; cancel it first")
            return
        out = output_for(path)
        if os.path.isfile(os.path.join(out, "transforms.json")):
            self.note("info", f"{path} was processed before: opening {out} (delete that folder to process again)")
            self.load(out)
            return
        out = free_name(out)
        self.start_process(path, out)

    def load(self, path: str) -> None:
        self.opened += 1
        self.note("info", f"opening {path}")
        self.worker.send("load_scene", path=path)

    def start_process(self, src: str, out: str, command=None) -> None:
        try:
            self.job = ProcessJob(src, out, command).start()
        except OSError as exc:
            self.note("error", f"process {src}: could not start ({exc})")
            return
        self.note("info", f"processing {src} into {out} (structure from motion; this takes a while)")
        self.dpg.configure_item("process_group", show=True)

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.dpg.set_value("process_stage", "cancelling...")

    def close(self) -> None:
        """The app is closing: a run in progress is cancelled (and waited for briefly)."""
        if self.job is not None and self.job.state == "running":
            self.job.cancel()
            for _ in range(60):
                if self.job.poll() != "running":
                    break
                time.sleep(0.05)

    # -- per status tick ------------------------------------------------------------------------
    def update(self, st: dict) -> None:
        dpg = self.dpg
        dpg.set_value("scene_line", f"scene: {st.get('scene') or '(none)'}")
        job = self.job
        if job is None:
            return
        state = job.poll()
        stage, done, total = job.progress()
        if state == "running":
            if stage is not None and not job.cancelling:
                dpg.set_value("process_stage", f"{stage}: {done}" + (f" / {total}" if total else ""))
                dpg.set_value("process_bar", done / total if total else 0.0)
            return
        dpg.configure_item("process_group", show=False)
        self.job = None
        if state == "done":
            self.note("info", f"processed {job.src} into {job.out} in {time.perf_counter() - job.started:.0f} s")
            self.load(job.out)
        elif state == "cancelled":
            self.note("info", f"processing {job.src} cancelled; nothing was written")
        else:
            self.note("error", f"processing {job.src} failed: {job.error}")

    def status(self) -> dict | None:
        """For the --stats lines."""
        job = self.job
        if job is None:
            return None
        stage, done, total = job.progress()
        dpg = self.dpg
        return {"state": job.state, "stage": stage, "done": done, "total": total, "out": job.out,
                "shown": dpg.is_item_shown("process_group"), "text": dpg.get_value("process_stage"),
                "bar": dpg.get_value("process_bar")}

