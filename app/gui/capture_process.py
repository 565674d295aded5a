"""Opening a path in the GUI: what it is (a posed dataset, a folder of photos, a video),
and for photos and videos the ``main.py process`` run that turns them into a dataset, as a
child process whose progress bars are read from its output.

A child process rather than a thread: structure from motion holds the GIL in long native
calls and would freeze the window, and a process can be cancelled at any moment. Cancel
sends SIGINT (the process command's Ctrl-C: it stops the running COLMAP call and removes
its hidden build folder), then kills it if it does not end, and removes any build folder
left behind, so a cancelled or failed run leaves nothing half-written: ``process`` builds
in ``.<out>.partial-*`` next to the output and renames it only when complete.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMAGE_EXT = (".png", ".jpg", ".jpeg")
VIDEO_EXT = (".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm")
CANCEL_GRACE_S = 5.0  # after SIGINT, this long before the process is killed
# tqdm's default format: "desc:  42%|####      | 21/50 [00:03<00:04, 6.1image/s]"
TQDM = re.compile(r"^(?P<desc>.*?):\s+(?P<pct>\d+)%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)")
TQDM_NO_TOTAL = re.compile(r"^(?P<desc>.*?):\s+(?P<n>\d+)\s*\w*\s*\[")


def classify(path: str) -> tuple[str, str]:
    """(kind, path to use): kind "scene" (a Blender / instant-ngp / nerfstudio
    transforms.json folder or file, an LLFF folder, a COLMAP model), "photos" (a folder of
    images; a capture folder whose photos are in images/) or "video". ValueError saying
    what was found otherwise."""
    from loaders.colmap import find_model

    path = os.path.abspath(os.path.expanduser(str(path).strip()))
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such file or folder")
    if os.path.isfile(path):
        low = path.lower()
        if low.endswith(".json"):
            return "scene", path
        if low.endswith(VIDEO_EXT):
            return "video", path
        if low.endswith(IMAGE_EXT):
            raise ValueError(f"{path}: a single image; open the folder of photos instead")
        raise ValueError(f"{path}: not a scene file (transforms.json) or a video ({', '.join(VIDEO_EXT)})")
    entries = os.listdir(path)
    if "poses_bounds.npy" in entries or any(e.startswith("transforms") and e.endswith(".json") for e in entries):
        return "scene", path
    if find_model(path) is not None:
        return "scene", path
    for folder in (path, os.path.join(path, "images")):
        if os.path.isdir(folder) and any(f.lower().endswith(IMAGE_EXT) for f in os.listdir(folder)):
            return "photos", folder
    raise ValueError(f"{path}: found no transforms*.json, poses_bounds.npy, COLMAP model (sparse/0), "
                     f"photos ({', '.join(IMAGE_EXT)}) or video to open")


def output_for(src: str, runs_dir: str | None = None) -> str:
    """Where the dataset made from ``src`` goes: ``<src>_dataset`` next to it (next to the
    capture folder for its images/) if that folder is writable, else runs/processed/<name>."""
    src = os.path.abspath(src).rstrip(os.sep)
    if os.path.basename(src) == "images":  # a capture folder's images/: the dataset goes next to the capture
        src = os.path.dirname(src)
    name = os.path.splitext(os.path.basename(src))[0] or "capture"
    parent = os.path.dirname(src)
    if os.access(parent, os.W_OK):
        return os.path.join(parent, f"{name}_dataset")
    return os.path.join(runs_dir or os.path.join(ROOT, "runs", "processed"), name)


def parse_progress(line: str):
    """(stage, done, total or None) from a tqdm progress line, or None for other output."""
    m = TQDM.match(line.strip())
    if m:
        return m["desc"].strip(), int(m["n"]), int(m["total"])
    m = TQDM_NO_TOTAL.match(line.strip())
    if m and m["desc"].strip():
        return m["desc"].strip(), int(m["n"]), None
    return None


def process_command(src: str, out: str) -> list[str]:
    return [sys.executable, os.path.join(ROOT, "main.py"), "process", src, "--out", out]


class ProcessJob:
    """One ``process`` run. GUI thread: start(), poll() for the state, cancel(). A reader
    thread splits the child's output (tqdm redraws with carriage returns) into progress
    and log lines.

    state: running, done, failed (error holds the last lines it printed), cancelled."""

    def __init__(self, src: str, out: str, command=None):
        self.src, self.out = os.path.abspath(src), os.path.abspath(out)
        self.command = command or process_command(self.src, self.out)
        self.state = "starting"
        self.stage: str | None = None
        self.done, self.total = 0, None
        self.log: list[str] = []
        self.error: str | None = None
        self.started = time.perf_counter()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._cancelled = False
        self._cancel_time = 0.0

    def start(self) -> "ProcessJob":
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._proc = subprocess.Popen(self.command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.state = "running"
        threading.Thread(target=self._read, name="process-output", daemon=True).start()
        return self

    def _read(self) -> None:
        buf = b""
        for chunk in iter(lambda: self._proc.stdout.read1(4096), b""):
            buf += chunk
            *lines, buf = re.split(rb"[\r\n]", buf)
            for raw in lines:
                self._line(raw.decode("utf-8", "replace"))
        if buf:
            self._line(buf.decode("utf-8", "replace"))

    def _line(self, line: str) -> None:
        if not line.strip():
            return
        p = parse_progress(line)
        with self._lock:
            if p is not None:
                self.stage, self.done, self.total = p
            else:
                self.log = (self.log + [line.rstrip()])[-40:]

    @property
    def cancelling(self) -> bool:
        return self._cancelled

    def progress(self) -> tuple[str | None, int, int | None]:
        with self._lock:
            return self.stage, self.done, self.total

    def poll(self) -> str:
        """The state now; on the way out of running, the error text or the clean-up."""
        if self.state != "running":
            return self.state
        rc = self._proc.poll()
        if rc is None:
            if self._cancelled and time.perf_counter() - self._cancel_time > CANCEL_GRACE_S:
                self._signal(signal.SIGKILL)
            return self.state
        time.sleep(0.05)  # the reader thread takes the last lines
        if self._cancelled:
            self._remove_partial()
            self.state = "cancelled"
        elif rc == 0 and os.path.isdir(self.out):
            self.state = "done"
        else:
            self._remove_partial()
            with self._lock:
                tail = [s for s in self.log if not s.startswith("Traceback")][-3:]
            self.error = " / ".join(tail) or f"process exited with status {rc}"
            self.state = "failed"
        return self.state

    def cancel(self) -> None:
        """Stop the run: SIGINT to its process group now, a kill after CANCEL_GRACE_S."""
        if self.state != "running" or self._cancelled:
            return
        self._cancelled = True
        self._cancel_time = time.perf_counter()
        self._signal(signal.SIGINT)

    def _signal(self, sig) -> None:
        """To the run's whole process group (it was started in its own session)."""
        try:
            os.killpg(self._proc.pid, sig)
        except ProcessLookupError:
            pass

    def _remove_partial(self) -> None:
        """Build folders a killed run could not remove itself."""
        parent, name = os.path.dirname(self.out), os.path.basename(self.out)
        for d in glob.glob(os.path.join(glob.escape(parent), f".{glob.escape(name)}.partial-*")):
            shutil.rmtree(d, ignore_errors=True)
