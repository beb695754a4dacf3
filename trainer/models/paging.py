"""Paging a frozen module's weights out of RAM into a file, mapped back in on use.

Training on the CPU with cached latents and text-encoder outputs never runs the VAE or the text
encoders again, yet their weights (1.6 GB for SDXL's two CLIPs, 0.3 GB for the fp32 VAE) would
stay resident for the whole run. ``page_out(module, folder)`` writes the module's tensors to one
file and points every parameter and buffer at a private, copy-on-write memory map of it: the
same module objects, dtypes, shapes and values, but the pages only come into memory when the
module runs (sampling, validation, the ComfyUI nodes after training) and count for nothing
until then. ``drop_pages`` maps the file afresh after such a use, so the pages leave again.
``forget`` deletes the file (the mapping stays valid on POSIX; elsewhere the file goes when the
module does). No reload from the model's own files is needed, so this works the same for
diffusers folders, single-file checkpoints, fp32 VAEs made from bf16 files and patched modules.
"""

from __future__ import annotations

import os
import tempfile
import weakref
from pathlib import Path

import torch

ALIGN = 64  # every tensor starts on a 64-byte boundary of the file
# module -> (its page file, the names / shapes / dtypes written there)
_PAGED: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[Path, tuple]]" = weakref.WeakKeyDictionary()


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer under its name (shared tensors once, under their first name)."""
    named = dict(module.named_parameters())
    named.update({name: buf for name, buf in module.named_buffers() if buf is not None})
    return named


def _signature(tensors: dict[str, torch.Tensor]) -> tuple:
    return tuple((name, tuple(t.shape), t.dtype, t.device.type) for name, t in tensors.items())


def _layout(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, int], int]:
    offsets, position = {}, 0
    for name, tensor in tensors.items():
        offsets[name] = position
        size = tensor.numel() * tensor.element_size()
        position += -(-size // ALIGN) * ALIGN
    return offsets, position


def _write(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Raw bytes of each tensor at its offset, written one tensor at a time (no full copy)."""
    offsets, total = _layout(tensors)
    with open(path, "wb") as f:
        for name, tensor in tensors.items():
            f.seek(offsets[name])
            data = tensor.detach().contiguous().reshape(-1)
            if data.numel():
                f.write(data.view(torch.uint8).numpy().data)
        f.truncate(max(total, 1))


def _map(module: torch.nn.Module, path: Path) -> None:
    """Point the module's tensors at views of a private (copy-on-write) map of ``path``."""
    tensors = _tensors(module)
    offsets, total = _layout(tensors)
    storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=max(total, 1))
    file_bytes = torch.empty(0, dtype=torch.uint8).set_(storage)
    with torch.no_grad():
        for name, tensor in tensors.items():
            start = offsets[name]
            size = tensor.numel() * tensor.element_size()
            tensor.data = file_bytes[start:start + size].view(tensor.dtype).view(tensor.shape)


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:  # already gone, or still mapped on a system that forbids deleting it
        pass


def page_out(module: torch.nn.Module, folder) -> Path:
    """Move ``module``'s (CPU) weights into a file in ``folder``, mapped back lazily; returns the file."""
    forget(module)  # paged before: write what it holds now
    tensors = _tensors(module)
    if any(t.device.type != "cpu" for t in tensors.values()):
        raise ValueError("page_out works on CPU modules only")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".paged-{type(module).__name__}-", suffix=".bin", dir=folder)
    os.close(fd)
    path = Path(name)
    try:
        _write(tensors, path)
        _map(module, path)
    except BaseException:
        _remove(path)
        raise
    _PAGED[module] = (path, _signature(_tensors(module)))
    weakref.finalize(module, _remove, path)
    return path


def is_paged(module) -> bool:
    return module is not None and module in _PAGED


def drop_pages(module: torch.nn.Module) -> None:
    """After the module ran: map its file afresh so the pages it touched leave RAM again (only
    while it still holds exactly the tensors written there, on the CPU)."""
    path, signature = _PAGED.get(module, (None, None))
    if path is None or not path.exists():
        return
    if _signature(_tensors(module)) != signature:
        forget(module)  # changed since (moved, new layers): its file no longer describes it
        return
    _map(module, path)


def forget(module: torch.nn.Module) -> None:
    """Delete the module's page file; its weights stay readable through the open mapping."""
    path, _ = _PAGED.pop(module, (None, None))
    if path is not None and os.name == "posix":
        _remove(path)
