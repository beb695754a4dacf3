"""Applying a LoRA (a file or tensors, kohya or diffusers/peft format) to a loaded pipeline."""

from __future__ import annotations

from pathlib import Path

from ..errors import TrainerError


def read_lora_file(path) -> dict:
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise TrainerError(f"LoRA file not found: {path}")
    if path.suffix.lower() != ".safetensors":
        raise TrainerError(f"{path.name}: only .safetensors LoRA files can be loaded for now.")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for bad headers
        raise TrainerError(f"Cannot read LoRA {path}: {err}. The file is corrupt or incomplete.") from None


def apply_lora(model, lora, strength: float = 1.0, adapter_name: str | None = None) -> str:
    """Load ``lora`` (path, tensor dict or TrainedLora) into ``model.pipe`` as an adapter at
    ``strength``; other adapters stay loaded but inactive. Returns the adapter name."""
    tensors = getattr(lora, "tensors", lora)
    if isinstance(tensors, (str, Path)):
        adapter_name = adapter_name or Path(tensors).stem
        tensors = read_lora_file(tensors)
    adapter_name = adapter_name or f"lora_{len(list_adapters(model))}"
    pipe = model.pipe
    if adapter_name in list_adapters(model):
        pipe.delete_adapters(adapter_name)
    try:
        pipe.load_lora_weights({k: v.clone() for k, v in tensors.items()}, adapter_name=adapter_name)
    except (ValueError, KeyError, RuntimeError) as err:
        raise TrainerError(f"This LoRA does not fit the {model.family.label} model: {err}") from None
    set_lora_strength(model, {adapter_name: strength})
    return adapter_name


def list_adapters(model) -> list[str]:
    unet = model.pipe.unet
    config = getattr(unet, "peft_config", None) or {}
    return list(config)


def set_lora_strength(model, strengths: dict[str, float]) -> None:
    """Activate exactly the adapters in ``strengths`` with those weights."""
    names = list(strengths)
    model.pipe.unet.set_adapters(names, weights=[float(strengths[n]) for n in names])
