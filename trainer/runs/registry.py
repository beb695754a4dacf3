"""The runs under one root folder (output/lora_trainer/): list them, read one, ask one to stop.

A run is a sub-folder with a run_status.json. A run that says queued/running but whose process no
longer holds its alive lock died without saying so (killed, out of host memory, power loss): it
is shown as failed, with the last lines of its log."""

from __future__ import annotations

import time
from pathlib import Path

from ..atomic import write_text
from ..errors import TrainerError
from ..names import safe_name
from .locks import is_held
from .status import ACTIVE, ALIVE_FILE, STOP_FILE, read_status

BOOT_GRACE = 60.0  # seconds a launched process has to take its alive lock
LOG_LINES = 30


def run_folder(root: Path, run_id: str) -> Path:
    """The folder of run ``run_id``; refused unless it is a plain name of an existing run in ``root``."""
    root = Path(root)
    if not isinstance(run_id, str) or not run_id or safe_name(run_id, default="") != run_id:
        raise TrainerError(f"'{run_id}' is not a run id: run ids are the output_name of a LoRA Train run.")
    folder = root / run_id
    if folder.parent.resolve() != root.resolve() or read_status(folder) is None:
        raise TrainerError(f"No run '{run_id}' in {root}.")
    return folder


def is_alive(folder: Path, status: dict) -> bool:
    """The run's process is there: it holds the alive lock, or it was launched moments ago and has
    not taken it yet."""
    if is_held(folder / ALIVE_FILE):
        return True
    return (status.get("state") == "queued" and not status.get("worker_pid")
            and time.time() - float(status.get("launched_at") or 0) < BOOT_GRACE)


def log_tail(folder: Path, status: dict, lines: int = LOG_LINES) -> str:
    log = status.get("log")
    if not log:
        return ""
    try:
        text = (Path(folder) / Path(log).name).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def describe(folder: Path) -> dict | None:
    """The run's status as its folder says, with a dead process shown as failed."""
    status = read_status(folder)
    if status is None:
        return None
    status["id"] = folder.name
    status["resumable"] = (folder / f"{folder.name}-state" / "progress.json").is_file()
    if status.get("state") in ACTIVE and not is_alive(folder, status):
        tail = log_tail(folder, status)
        status.update(state="failed", error=status.get("error") or "The training process ended without "
                      "finishing (killed or crashed). Last lines of its log:\n" + tail, died=True)
    status["stop_requested"] = (folder / STOP_FILE).exists() and status["state"] in ACTIVE
    return status


def list_runs(root: Path) -> list[dict]:
    """Every run under ``root``, newest first."""
    root = Path(root)
    runs = [describe(d) for d in root.iterdir() if d.is_dir()] if root.is_dir() else []
    runs = [r for r in runs if r is not None]
    return sorted(runs, key=lambda r: -float(r.get("updated_at") or 0))


def get_run(root: Path, run_id: str) -> dict:
    return describe(run_folder(root, run_id))


def request_stop(root: Path, run_id: str) -> dict:
    """Ask a queued or running run to stop; it saves its state at the end of the current step."""
    folder = run_folder(root, run_id)
    status = describe(folder)
    if status["state"] not in ACTIVE:
        raise TrainerError(f"Run '{run_id}' is {status['state']}: there is nothing to stop.")
    write_text(folder / STOP_FILE, str(time.time()))
    status["stop_requested"] = True
    return status
