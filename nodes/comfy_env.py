"""The few ComfyUI services the nodes use, in one place: model folders, progress, cancel, memory.

Inside ComfyUI these are folder_paths / comfy.utils / comfy.model_management. Outside it (the
tests' small executor) the same functions work on a plain models folder (LT_MODELS_DIR), so the
nodes run unchanged in both.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path, PureWindowsPath

try:  # inside ComfyUI
    import comfy.model_management as model_management
    import comfy.sd as comfy_sd
    import comfy.utils as comfy_utils
    import folder_paths
except ImportError:  # plain Python: tests, scripts
    folder_paths = comfy_utils = model_management = comfy_sd = None

IN_COMFY = folder_paths is not None

try:  # what a node returns so that the nodes after it do not run (quietly, with message None)
    from comfy_execution.graph_utils import ExecutionBlocker
except ImportError:
    class ExecutionBlocker:
        def __init__(self, block_execution):
            self.message = block_execution


def blocked_outputs(count: int) -> tuple:
    return tuple(ExecutionBlocker(None) for _ in range(count))


def models_root() -> Path:
    if IN_COMFY:
        return Path(folder_paths.models_dir)
    return Path(os.environ.get("LT_MODELS_DIR", "models"))


def model_folders(kind: str) -> list[Path]:
    """Folders ComfyUI searches for ``kind`` (checkpoints, loras, vae, diffusers, ...)."""
    if IN_COMFY:
        try:
            return [Path(p) for p in folder_paths.get_folder_paths(kind)]
        except KeyError:
            return [models_root() / kind]
    return [models_root() / kind]


def list_files(kind: str, suffixes=(".safetensors",)) -> list[str]:
    if IN_COMFY:
        try:
            return [f for f in folder_paths.get_filename_list(kind) if f.lower().endswith(suffixes)]
        except KeyError:
            pass
    out = []
    for folder in model_folders(kind):
        seen = set()  # real folders walked: a link back up must not loop
        # symlinked files and sub-folders count, as in ComfyUI's own listing
        for root, dirs, files in os.walk(folder, followlinks=True):
            seen.add(os.path.realpath(root))
            dirs[:] = sorted(d for d in dirs if os.path.realpath(os.path.join(root, d)) not in seen)
            out += [os.path.relpath(os.path.join(root, f), folder).replace(os.sep, "/") for f in sorted(files)
                    if f.lower().endswith(suffixes) and os.path.isfile(os.path.join(root, f))]
    return list(dict.fromkeys(out))


def list_model_dirs(kind: str = "diffusers") -> list[str]:
    """Sub-folders (or symlinks to folders) holding a diffusers model (a unet/ folder inside)."""
    out = []
    for folder in model_folders(kind):
        if folder.is_dir():
            out += [p.name for p in sorted(folder.iterdir()) if (p / "unet").is_dir()]
    return list(dict.fromkeys(out))


def safe_relative(name: str) -> str | None:
    """``name`` as a path below a models folder, or None when it would leave it (``..``, an
    absolute path, a drive). Checked on the name only: what a symlink inside points to is the
    user's choice, and ComfyUI follows links too."""
    if not name or PureWindowsPath(name).anchor or os.path.isabs(name):
        return None
    relative = os.path.normpath(name)
    if relative == os.curdir or relative == os.pardir or relative.startswith(os.pardir + os.sep):
        return None
    return relative


def full_path(kind: str, name: str) -> Path | None:
    """The file or folder ``name`` in the first of ``kind``'s folders that has it, links
    followed; None when no folder has it or the name leaves its folder. Only for reading:
    writing goes through a sanitised file name (lora.py)."""
    relative = safe_relative(name)
    if relative is None:
        return None
    for folder in model_folders(kind):
        candidate = Path(folder) / relative
        if candidate.exists():
            return candidate
    return None


def custom_nodes_dirs() -> list[Path]:
    if IN_COMFY:
        try:
            return [Path(p) for p in folder_paths.get_folder_paths("custom_nodes")]
        except KeyError:
            return []
    return [models_root().parent / "custom_nodes"]


def server_routes():
    """ComfyUI server's aiohttp RouteTableDef, or None outside a running ComfyUI."""
    if not IN_COMFY:
        return None
    try:
        from server import PromptServer
    except ImportError:
        return None
    instance = getattr(PromptServer, "instance", None)
    return instance.routes if instance is not None else None


def output_dir() -> Path:
    if IN_COMFY:
        return Path(folder_paths.get_output_directory())
    return Path(os.environ.get("LT_OUTPUT_DIR", "output"))


def temp_dir() -> Path:
    if IN_COMFY:
        return Path(folder_paths.get_temp_directory())
    return output_dir() / "temp"


def input_dir() -> Path:
    if IN_COMFY:
        return Path(folder_paths.get_input_directory())
    return Path(os.environ.get("LT_INPUT_DIR", "input"))


class Progress:
    """ComfyUI's progress bar or nothing. ComfyUI's Cancel arrives through it: its progress hook raises
    InterruptProcessingException from update() (the training loop keeps the state when that happens)."""

    def __init__(self, total: int, node_id=None):
        self.bar = comfy_utils.ProgressBar(total, node_id=node_id) if comfy_utils is not None else None
        self.total = total

    def update(self, value: int, preview=None) -> None:
        if self.bar is not None:
            self.bar.update_absolute(value, self.total, preview)


def send_event(event: str, data: dict) -> None:
    """A message to the browser (the js/ extension draws the live loss chart from it)."""
    if IN_COMFY:
        from server import PromptServer

        PromptServer.instance.send_sync(event, data)


def interrupted() -> bool:
    return bool(model_management is not None and model_management.processing_interrupted())


def raise_if_interrupted() -> None:
    if model_management is not None:
        model_management.throw_exception_if_processing_interrupted()


def device():
    import torch

    if IN_COMFY:
        return model_management.get_torch_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def on_device(pipeline):
    """The pipeline on the compute device inside the block; back to the CPU after it when the
    loader's offload option asks for that. A pipeline over ComfyUI's own MODEL/CLIP/VAE
    (comfy_models.py) is pointed at their weights as ComfyUI holds them now and let go after, so
    it never pins a copy ComfyUI has moved away."""
    host = getattr(pipeline, "host", None)
    if host is not None and not host.bound:  # bound already when LoRA Train has just built it
        host.bind()
    pipeline.to(device())
    try:
        yield pipeline
    finally:
        if host is not None:
            host.unbind()
        if getattr(pipeline, "offload", False):
            pipeline.to("cpu")
            release_memory()


def free_vram() -> int | None:
    """Bytes of GPU memory free for training: LT_FREE_VRAM (bytes) when set, so tests can play a
    small GPU; inside ComfyUI on a CUDA device what model_management reports free (the driver's
    free memory plus PyTorch's cached blocks); None on the CPU or outside ComfyUI."""
    override = os.environ.get("LT_FREE_VRAM", "").strip()
    if override:
        return int(float(override))
    if not IN_COMFY:
        return None
    dev = model_management.get_torch_device()
    if getattr(dev, "type", None) != "cuda":
        return None
    return int(model_management.get_free_memory(dev))


def free_comfy_models() -> None:
    """Unload ComfyUI's own models before training so the UNet gets the memory."""
    if IN_COMFY:
        model_management.unload_all_models()
        model_management.soft_empty_cache()


def release_memory() -> None:
    import gc

    gc.collect()
    if IN_COMFY:
        model_management.soft_empty_cache()


def load_for_training(patchers) -> None:
    """ComfyUI restores every model it has patched (a LoRA applied for sampling) and loads
    ``patchers`` whole on the compute device, unpatched, for a node that uses their weights."""
    if model_management is None:
        return
    model_management.unload_all_models()
    model_management.load_models_gpu(list(patchers), force_full_load=True)
