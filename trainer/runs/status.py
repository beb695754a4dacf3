"""run_status.json: what a run is doing, rewritten atomically every step by the process training it.

States: queued (waiting for its device), running, done, stopped (state saved, resumable), failed.
The loss history is thinned to at most MAX_POINTS points (every 2nd, 4th ... step) so the file
stays small on long runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..atomic import write_text
from ..train.api import Callbacks

STATUS_FILE = "run_status.json"
STOP_FILE = "stop.request"
ALIVE_FILE = ".alive.lock"  # held by the process that trains the run (locks.py)
ACTIVE = ("queued", "running")
MAX_POINTS = 1000


def read_status(run_dir: Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def stop_requested(run_dir: Path) -> bool:
    return (Path(run_dir) / STOP_FILE).exists()


class RunStatus:
    """The status of one run and its writer; ``callbacks()`` feed it from train()."""

    def __init__(self, run_dir: Path, continued: bool = False, **fields):
        """A new run's status; with ``continued``, the one a launcher wrote, taken over by the run's process."""
        self.path = Path(run_dir) / STATUS_FILE
        fresh = {"id": Path(run_dir).name, "state": "queued", "queued_at": time.time(), "started_at": None,
                 "finished_at": None, "step": 0, "total": 0, "loss": None, "smoothed": None,
                 "seconds_per_step": None, "eta_seconds": None, "history": [], "history_stride": 1,
                 "samples": [], "lora": None, "error": None}
        self.data = {**((continued and read_status(run_dir)) or fresh), **fields}
        self._first_step: tuple[int, float] | None = None
        self.write()

    def write(self) -> None:
        self.data["updated_at"] = time.time()
        write_text(self.path, json.dumps(self.data, ensure_ascii=False))

    def update(self, **fields) -> None:
        self.data.update(fields)
        self.write()

    def start(self) -> None:
        self.update(state="running", started_at=time.time(), error=None)

    def finish(self, state: str, **fields) -> None:
        self.update(state=state, finished_at=time.time(), eta_seconds=None, **fields)

    def step(self, step: int, total: int, loss: float, smoothed: float) -> None:
        d = self.data
        now = time.time()
        if self._first_step is None:
            self._first_step = (step, now)  # the first step includes warm-up: time from there
        first, t0 = self._first_step
        per_step = (now - t0) / (step - first) if step > first else None
        d.update(step=step, total=total, loss=loss, smoothed=smoothed, seconds_per_step=per_step,
                 eta_seconds=per_step * (total - step) if per_step else None)
        if step % d["history_stride"] == 0:
            d["history"].append([step, round(loss, 6), round(smoothed, 6)])
            if len(d["history"]) > MAX_POINTS:
                d["history_stride"] *= 2
                d["history"] = [p for p in d["history"] if p[0] % d["history_stride"] == 0]
        self.write()

    def samples(self, files: dict) -> None:
        run_dir = self.path.parent
        self.update(samples=[str(Path(p).resolve().relative_to(run_dir.resolve())) for p in files.values()])

    def callbacks(self, inner: Callbacks | None = None, should_stop=None) -> Callbacks:
        """Callbacks that write this status, then call ``inner``'s; a stop is asked for by
        ``should_stop`` or by a stop.request file in the run folder."""
        inner = inner or Callbacks()
        run_dir = self.path.parent
        total = {"n": 0}

        def on_start(steps, dataset):
            total["n"] = steps
            self.update(total=steps)
            if inner.on_start:
                inner.on_start(steps, dataset)

        def on_loss(step, loss, smoothed):
            self.step(step, total["n"], loss, smoothed)
            if inner.on_loss:
                inner.on_loss(step, loss, smoothed)

        def on_samples(step, files):
            self.samples(files)
            if inner.on_samples:
                inner.on_samples(step, files)

        def stop() -> bool:
            return stop_requested(run_dir) or bool(should_stop and should_stop()) or \
                bool(inner.should_stop and inner.should_stop())

        return Callbacks(on_start=on_start, on_step=inner.on_step, on_samples=on_samples, on_loss=on_loss,
                         on_metrics=inner.on_metrics, should_stop=stop, log=inner.log)
