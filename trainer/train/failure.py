"""A run that fails hands the caller's model back as it came.

Inside ComfyUI the pipeline outlives the prompt (node outputs are cached), so a run that stops on
an error, out of memory or Cancel must not leave half a LoRA on it: the next Sampler preview would
use it, and the next run would start from a model in training mode.
"""

from __future__ import annotations

import contextlib

import torch

from ..errors import TrainerError
from ..lora.builders import remove_network
from ..models.loaded import LoadedModel
from .devices import restore_encoders

OOM_HELP = ("Out of memory ({detail}). Lower train_batch_size or the resolution, turn on gradient_checkpointing "
            "and cache_latents, use optimizer_type AdamW8bit, or close other GPU programs; LoRA Train's VRAM "
            "estimate tells what fits.")


@contextlib.contextmanager
def as_given_if_failed(model: LoadedModel | None):
    """A run that fails or is interrupted hands the caller's model back as it came: no network on
    it, eval mode, encoders back (the state of an interrupted run is saved before). Out of memory
    becomes one line saying what to change."""
    try:
        yield
    except BaseException as err:
        if model is not None:
            try:
                leave_as_given(model)
            except Exception:  # noqa: BLE001 - the run's own error is the one to report
                pass
        if isinstance(err, torch.OutOfMemoryError):
            raise TrainerError(OOM_HELP.format(detail=str(err).splitlines()[0] if str(err) else "")) from err
        raise


def leave_as_given(model: LoadedModel) -> None:
    remove_network(model)
    model.unet.eval()
    model.unet.disable_gradient_checkpointing()
    for encoder in model.text_encoders():
        encoder.eval()
    restore_encoders(model, next(model.unet.parameters()).device)
