"""Convert a LoRA file of any known layout to our kohya .safetensors (``python -m trainer convert``)."""

from __future__ import annotations

from pathlib import Path

from ..errors import TrainerError
from .metadata import describe, summarize


def _unet_config(model_folder):
    if not model_folder:
        return None
    from diffusers import UNet2DConditionModel

    folder = Path(model_folder)
    if not (folder / "unet" / "config.json").is_file():
        raise TrainerError(f"--model {folder}: no unet/config.json there; give a diffusers model folder.")
    return UNet2DConditionModel.load_config(str(folder / "unet"))


def converted_metadata(source: dict, tensors: dict, family: str, fmt: str) -> dict[str, str]:
    """The source's metadata plus what kohya-style tools need to read the converted file."""
    from ..families import get_family

    from .formats import is_lycoris

    fam = get_family(family)
    downs = [v for k, v in tensors.items() if k.endswith("lora_down.weight")]
    alphas = [float(v) for k, v in tensors.items() if k.endswith(".alpha")]
    meta = {k: str(v) for k, v in (source or {}).items() if k != "lora_adapter_metadata"}
    meta.setdefault("ss_network_module", "lycoris.kohya" if is_lycoris(tensors) else "networks.lora")
    meta.setdefault("ss_network_dim", str(int(downs[0].shape[0])) if downs else "0")
    meta.setdefault("ss_network_alpha", str(alphas[0]) if alphas else "0")
    meta.setdefault("ss_base_model_version", fam.base_model_version)
    meta.setdefault("modelspec.sai_model_spec", "1.0.0")
    meta.setdefault("modelspec.architecture", fam.modelspec_architecture)
    meta.update(lt_family=fam.name, lt_converted_from=fmt)
    return meta


def convert_file(src, dst, family: str = "auto", alpha: float | None = None, model_folder=None,
                 precision: str = "fp16") -> tuple[Path, str]:
    """Read ``src`` (any layout), write ``dst`` in our kohya layout atomically; returns (dst, summary)."""
    from .metadata import read_raw
    from .formats import detect_format, guess_family, to_kohya
    from .kohya_format import TrainedLora, save_lora

    src, dst = Path(src), Path(dst)
    if dst.suffix.lower() != ".safetensors":
        raise TrainerError(f"{dst.name}: the converted LoRA must be a .safetensors file.")
    if dst.resolve() == src.resolve():
        raise TrainerError("convert would overwrite its input; give a different output file.")
    tensors, metadata = read_raw(src)
    fmt = detect_format(tensors)
    family = guess_family(tensors) if family in (None, "auto") else family
    kohya = to_kohya(tensors, family, _unet_config(model_folder), alpha, metadata)
    meta = converted_metadata(metadata, kohya, family, fmt)
    out = save_lora(TrainedLora(kohya, meta), dst, precision)
    summary = describe(summarize(meta, kohya))
    modules = len({key.split(".", 1)[0] for key in kohya})
    return out, f"{fmt} -> kohya ({modules} modules): {summary}"
