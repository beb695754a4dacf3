"""Atomic file writes: write to a temp file in the target folder, then rename over the target.

A crash or a full disk never leaves a half-written LoRA, image or config behind.
"""

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(target: str | os.PathLike):
    """Yield a temp path beside ``target``; on success it is renamed to ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes 0600, and writers that re-create the file (safetensors) keep that: give the
        # file the usual mode once it is written
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(target, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_text(target, text: str) -> Path:
    return write_bytes(target, text.encode("utf-8"))


def save_image(target, image, **kwargs) -> Path:
    """Save a PIL image atomically; the format comes from the target's extension."""
    fmt = Path(target).suffix.lstrip(".").upper().replace("JPG", "JPEG") or "PNG"
    with atomic_path(target) as tmp:
        image.save(tmp, format=fmt, **kwargs)
    return Path(target)


def save_safetensors(target, tensors: dict, metadata: dict | None = None) -> Path:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    with atomic_path(target) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(target)
