"""Read .ckpt/.pt/.pth/.bin files (Python pickles) without ever running code stored in them.

``torch.load(weights_only=True)`` rebuilds only tensors, numbers, strings and plain containers;
a pickle that asks for anything else (``os.system``, a class, a lambda) is refused, never run.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import torch

from ..errors import TrainerError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def load_pickle(path) -> dict:
    """The object in a pickle file, loaded with ``weights_only=True`` on the CPU."""
    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch's note on pickle protocols says nothing a user can act on
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            data = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise TrainerError(
            f"{path.name} was refused: it is a pickle that would run code or build objects, not just "
            f"tensors ({detail[:160]}). Only load files from sources you trust; ask for a .safetensors.") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise TrainerError(f"Cannot read {path.name}: {str(err).splitlines()[0][:200]}. "
                           "The file is corrupt or not a PyTorch checkpoint.") from None
    if not isinstance(data, dict):
        raise TrainerError(f"{path.name} holds a {type(data).__name__}, not a dict of tensors: not a LoRA file.")
    return data


def tensors_of(data: dict) -> dict[str, torch.Tensor]:
    """The LoRA tensors of a loaded checkpoint: a Lightning file's ``state_dict`` (DiffSynth clears
    the checkpoint and stores the LoRA tensors at the top level instead), or the dict itself."""
    inner = data.get("state_dict")
    source = inner if isinstance(inner, dict) else data
    return {k: v for k, v in source.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
