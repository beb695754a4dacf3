"""Base-model hashes for the LoRA metadata (kohya's ss_sd_model_hash / ss_new_sd_model_hash)."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt")


def weight_file(source) -> Path | None:
    """The file that identifies a model: the checkpoint itself, or a diffusers folder's UNet weights."""
    path = Path(source)
    if path.is_file():
        return path
    unet = path / "unet"
    files = sorted(p for p in unet.glob("*") if p.suffix in WEIGHT_SUFFIXES) if unet.is_dir() else []
    return files[0] if files else None


@lru_cache(maxsize=8)
def _hashes(path: str, size: int, mtime: float) -> tuple[str, str]:
    full = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            full.update(block)
        f.seek(0x100000)
        legacy = hashlib.sha256(f.read(0x10000)).hexdigest()[:8]  # A1111's old "model hash"
    return legacy, full.hexdigest()


def model_hashes(source) -> dict[str, str]:
    """{"ss_sd_model_hash": legacy 8-hex, "ss_new_sd_model_hash": sha256} of the base model, or {}."""
    path = weight_file(source) if source else None
    if path is None:
        return {}
    stat = path.stat()
    legacy, full = _hashes(str(path), stat.st_size, stat.st_mtime)
    return {"ss_sd_model_hash": legacy, "ss_new_sd_model_hash": full}
