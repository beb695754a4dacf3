"""One run's time on its device, the same for a background process and a graph's own run:
its alive lock, its place in the device's queue, its status from queued to the end."""

from __future__ import annotations

import contextlib
from pathlib import Path

from ..errors import TrainerError
from .locks import FileLock
from .queue import wait_for_device
from .status import ALIVE_FILE, STOP_FILE, RunStatus, stop_requested


@contextlib.contextmanager
def run_session(run_dir: Path, device: str, parallel: bool = False, should_stop=None, continued: bool = False,
                on_wait=print, **fields):
    """Yield the run's RunStatus once it has ``device`` (or at once with ``parallel``); yield None
    when a stop came while it waited. An exception marks the run failed, or stopped when a stop
    was asked for; the caller marks a run that returns done or stopped (RunStatus.finish)."""
    run_dir = Path(run_dir)
    alive = FileLock(run_dir / ALIVE_FILE)
    if not alive.acquire():
        raise TrainerError(f"Run '{run_dir.name}' is already training (see the Training panel): stop it there, or "
                           "change output_name.")
    if not continued:  # a stop asked of an earlier run of this name is not for this one
        (run_dir / STOP_FILE).unlink(missing_ok=True)
    stop = lambda: stop_requested(run_dir) or bool(should_stop and should_stop())  # noqa: E731
    lock = None
    try:
        status = RunStatus(run_dir, continued, **fields, device=device, parallel=parallel)
        if not parallel:
            def waiting(text):
                status.update(waiting=text)
                on_wait(text)

            lock = wait_for_device(run_dir.parent, run_dir.name, device, stop, waiting)
            if lock is None:
                status.finish("stopped", waiting=None)
                yield None
                return
        status.update(waiting=None)
        status.start()
        try:
            yield status
        except BaseException as err:
            message = str(err) if isinstance(err, TrainerError) else f"{type(err).__name__}: {err}"
            stopped = stop()
            status.finish("stopped" if stopped else "failed", error=None if stopped else message)
            raise
    finally:
        if lock is not None:
            lock.release()
        alive.release()
