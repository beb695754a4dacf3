"""Applying a LoRA (a file or tensors in any layout trainer.lora.formats reads) to a loaded pipeline.

Every layout is converted to our kohya layout first (formats.to_kohya), then diffusers'
load_lora_weights loads it, so kohya, diffusers/peft, ComfyUI-trainer and DiffSynth files all
go through one tested path. LyCORIS files (LoHa, LoKr, DoRA, OFT, Tucker LoCon) have no peft form
that equals them: their modules are rebuilt by LyCORIS (lycoris_weights.py) and applied beside
the peft adapters, under the same adapter names and strengths.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import TrainerError
from .formats import is_lycoris, read_lora_file, to_kohya  # noqa: F401 (read_lora_file: also from here)
from .metadata import read_raw  # noqa: F401 (also imported from here)


def apply_lora(model, lora, strength: float = 1.0, adapter_name: str | None = None,
               alpha: float | None = None) -> str:
    """Load ``lora`` (path, tensor dict or TrainedLora, any known layout) into ``model.pipe`` as an
    adapter at ``strength``; other adapters stay loaded but inactive. ``alpha`` is used where the
    file stores none (DiffSynth .ckpt: default 4.0). Returns the adapter name."""
    tensors, metadata = getattr(lora, "tensors", lora), getattr(lora, "metadata", {})
    if isinstance(tensors, (str, Path)):
        adapter_name = adapter_name or Path(tensors).stem
        tensors, metadata = read_raw(tensors)
    tensors = to_kohya(tensors, model.family.name, model.pipe.unet.config, alpha, metadata)
    adapter_name = adapter_name or f"lora_{len(list_adapters(model))}"
    pipe = model.pipe
    remove_adapter(model, adapter_name)
    if is_lycoris(tensors):
        _apply_lycoris(model, tensors, adapter_name)
        set_lora_strength(model, {adapter_name: strength})
        return adapter_name
    try:
        pipe.load_lora_weights({k: v.clone() for k, v in tensors.items()}, adapter_name=adapter_name)
    except (ValueError, KeyError, RuntimeError) as err:
        raise TrainerError(f"This LoRA does not fit the {model.family.label} model: {err}") from None
    set_lora_strength(model, {adapter_name: strength})
    return adapter_name


def _apply_lycoris(model, tensors: dict, adapter_name: str) -> None:
    from .lycoris_modules import attach, quiet_kernels
    from .lycoris_weights import LycorisWeights

    quiet_kernels()
    roots = _roots(model)
    weights = LycorisWeights.of(tensors, model.family.name, model.pipe.unet.config)
    built = weights.build(roots)
    if not built:
        raise TrainerError(f"This LoRA does not fit the {model.family.label} model: none of its modules is in it.")
    for part, modules in built.items():
        device = next(roots[part].parameters()).device
        attach(roots[part], adapter_name, modules).to(device=device).requires_grad_(False)


def _roots(model) -> dict:
    """The pipeline's parts an adapter lives on, by attribute name."""
    return {part: getattr(model.pipe, part) for part in ("unet", "text_encoder", "text_encoder_2")
            if getattr(model.pipe, part, None) is not None}


def list_adapters(model) -> list[str]:
    from .lycoris_modules import adapters

    names = list(getattr(model.pipe.unet, "peft_config", None) or {})
    for root in _roots(model).values():
        names += [n for n in adapters(root) if n not in names]
    return names


def remove_adapter(model, adapter_name: str) -> None:
    """Take ``adapter_name`` off the pipeline, whichever kind it is."""
    from .lycoris_modules import detach

    if adapter_name in (getattr(model.pipe.unet, "peft_config", None) or {}):
        model.pipe.delete_adapters(adapter_name)
    for root in _roots(model).values():
        detach(root, adapter_name)


def set_lora_strength(model, strengths: dict[str, float]) -> None:
    """Activate exactly the adapters in ``strengths`` with those weights."""
    from .lycoris_modules import set_multipliers

    for root in _roots(model).values():
        set_multipliers(root, strengths)
    peft = sorted(getattr(model.pipe.unet, "peft_config", None) or {})
    if peft:  # diffusers wants a name it knows: the peft adapters not named stay loaded at weight 0
        model.pipe.unet.set_adapters(peft, weights=[float(strengths.get(n, 0.0)) for n in peft])
    for part in ("text_encoder", "text_encoder_2"):  # text-encoder LoRA, when the file has one
        encoder = getattr(model.pipe, part, None)
        loaded = set(getattr(encoder, "peft_config", None) or {})
        if loaded:
            from diffusers.utils.peft_utils import set_weights_and_activate_adapters

            loaded = sorted(loaded)  # adapters not named here stay loaded at weight 0
            set_weights_and_activate_adapters(encoder, loaded, [float(strengths.get(n, 0.0)) for n in loaded])
