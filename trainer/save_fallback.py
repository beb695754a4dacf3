"""A save that fails (full disk, drive gone, no permission) must not throw the training away.

The file (or state folder) is written to the system temp folder instead, in a folder named after
the run, and the caller tells the user both places. Writes are atomic (atomic.py), so the failed
target is left as it was.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable

from safetensors import SafetensorError

from .errors import TrainerError
from .names import safe_name

# what a failed write raises: the OS's error, or safetensors' own ("I/O error: No space left ...")
WRITE_ERRORS = (OSError, SafetensorError)


def fallback_folder(run_name: str) -> Path:
    return Path(tempfile.gettempdir()) / f"lora_trainer-{safe_name(run_name)}"


def existing_parent(path) -> Path:
    """``path`` or its nearest existing parent: the drive a new file there would land on."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_space(path) -> str:
    """Free space of the drive ``path`` is on, for messages."""
    try:
        return f"{shutil.disk_usage(existing_parent(path)).free / 1e6:.1f} MB free there"
    except OSError:
        return "free space unknown"


def reason(err: BaseException, path) -> str:
    text = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    return f"{text}; {free_space(path)}"


def save_with_fallback(write: Callable[[Path], Path], target, run_name: str, what: str) -> tuple[Path, str]:
    """``write(path)`` writes a file or folder at ``path``. Try ``target``; when that fails, write
    into the fallback folder instead. Returns (the path written, "" or a sentence naming both).
    Raises TrainerError when the fallback fails too."""
    target = Path(target)
    try:
        return write(target), ""
    except WRITE_ERRORS as err:
        first = reason(err, target)
    fallback = fallback_folder(run_name) / target.name
    try:
        written = write(fallback)
    except WRITE_ERRORS as err:
        raise TrainerError(f"Could not write the {what} {target} ({first}), nor {fallback} "
                           f"({reason(err, fallback)}): nothing of it was saved. Free some disk space or set "
                           "output_dir to another drive.") from None
    return written, f"Could not write the {what} {target} ({first}); it was written to {written} instead."
