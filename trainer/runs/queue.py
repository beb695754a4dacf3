"""One run at a time per device: runs wait for the device's lock in the order they were queued.

A run that allows parallel runs skips the line. The lock is a file lock in the runs' root
(locks.py), so a run that dies frees its device at once."""

from __future__ import annotations

import time
from pathlib import Path

from .locks import FileLock
from .registry import describe


def device_key(device) -> str:
    """'cpu', 'cuda0', 'mps0' ...: the same string in the server and in a run's process (both see
    the same CUDA_VISIBLE_DEVICES)."""
    index = getattr(device, "index", None)
    if device.type == "cpu":
        return "cpu"
    if index is None and device.type == "cuda":
        import torch

        index = torch.cuda.current_device()
    return f"{device.type}{index or 0}"


def device_lock(root: Path, key: str) -> FileLock:
    return FileLock(Path(root) / f".device-{key}.lock")


def waiting_before(root: Path, run_id: str, key: str) -> list[str]:
    """Runs queued on the same device before ``run_id`` (oldest first), still alive."""
    mine = describe(Path(root) / run_id) or {}
    order = (float(mine.get("queued_at") or 0), run_id)
    ahead = []
    for folder in Path(root).iterdir():
        status = describe(folder) if folder.is_dir() and folder.name != run_id else None
        if (status and status["state"] == "queued" and status.get("device") == key
                and not status.get("parallel") and (float(status.get("queued_at") or 0), folder.name) < order):
            ahead.append(folder.name)
    return ahead


def wait_for_device(root: Path, run_id: str, key: str, should_stop, on_wait=None, poll: float = 1.0):
    """Block until this run has the device; returns its lock (release it when done), or None when
    a stop was asked for while waiting. ``on_wait(holder_text)`` is told what it waits for."""
    lock = device_lock(root, key)
    told = None
    while True:
        if should_stop():
            return None
        ahead = waiting_before(root, run_id, key)
        if not ahead and lock.acquire():
            return lock
        text = f"waiting for {key}: " + (f"queued after {', '.join(ahead)}" if ahead else "another run is training")
        if on_wait and text != told:
            on_wait(text)
            told = text
        time.sleep(poll)
