"""The LoRA file format ComfyUI's LoraLoader, A1111 and kohya tools read.

Keys: ``lora_unet_<module path with _>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``;
metadata: kohya's ``ss_*`` strings and ``modelspec.*`` in the safetensors header.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..atomic import save_safetensors
from ..errors import TrainerError
from ..models.hashing import model_hashes

SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "float": torch.float32}


@dataclass
class TrainedLora:
    """A LoRA in memory: kohya-format tensors plus the metadata that goes into the file."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)
    # the same LoRA in diffusers/peft layout ("unet.<path>.lora_A.weight"), alpha/rank folded into
    # lora_B so any diffusers loader applies it at the trained strength; None when not known
    diffusers: dict[str, torch.Tensor] | None = None

    @property
    def rank(self) -> int:
        downs = [v for k, v in self.tensors.items() if k.endswith("lora_down.weight")]
        return int(downs[0].shape[0]) if downs else 0


def peft_to_kohya(peft_state: dict, alpha: float, prefix: str = "unet", conv_modules=(),
                  conv_alpha: float = 1.0) -> dict[str, torch.Tensor]:
    """peft adapter state (``<path>.lora_A.weight``) -> kohya keys, with the trained alphas
    (``conv_alpha`` for the modules in ``conv_modules``, ``alpha`` for the others).

    diffusers' converter writes alpha = rank for every module; the real alpha is set here, or
    the LoRA would load at the wrong strength everywhere.
    """
    from diffusers.utils import convert_state_dict_to_kohya

    kohya = convert_state_dict_to_kohya({f"{prefix}.{k}": v for k, v in peft_state.items()})
    conv_keys = {f"lora_{prefix}_" + name.replace(".", "_") + ".alpha" for name in conv_modules}
    return {k: (torch.tensor(float(conv_alpha if k in conv_keys else alpha)) if k.endswith(".alpha")
                else v.detach().clone()) for k, v in kohya.items()}


def text_encoder_to_kohya(peft_state: dict, component: str, family: str, alpha: float) -> dict[str, torch.Tensor]:
    """A CLIP text encoder's peft adapter state -> ``lora_te(1|2)_text_model_...`` keys."""
    from .names import kohya_name

    out = {}
    for key, value in peft_state.items():
        path, kind = key.rsplit(".", 2)[0], key.rsplit(".", 2)[1]
        name = kohya_name(component, path, family)
        out[f"{name}.{'lora_down' if kind == 'lora_A' else 'lora_up'}.weight"] = value.detach().clone()
        out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out


def build_metadata(config, family, dataset, steps: int, epochs: int, started_at: float,
                   buckets: dict | None = None) -> dict[str, str]:
    width, height = config.size()
    dirs = {}
    for item in dataset.train_items:
        entry = dirs.setdefault(item.folder or dataset.root.name, {"n_repeats": item.repeats, "img_count": 0})
        entry["img_count"] += 1
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(config.network_dim),
        "ss_network_alpha": str(float(config.network_alpha)),
        "ss_network_args": json.dumps({"conv_dim": str(config.conv_dim), "conv_alpha": str(config.conv_alpha)}
                                      if config.conv_dim else {}),
        "ss_base_model_version": family.base_model_version,
        "ss_sd_model_name": Path(config.pretrained_model_name_or_path).name,
        "ss_learning_rate": str(config.learning_rate),
        "ss_unet_lr": str(config.unet_lr if config.unet_lr is not None else config.learning_rate),
        "ss_text_encoder_lr": str(config.text_encoder_lr or 0),
        "ss_network_train_unet_only": str(not config.text_encoder_lr),
        "ss_optimizer": config.optimizer_type,
        "ss_lr_scheduler": config.lr_scheduler,
        "ss_max_train_steps": str(steps),
        "ss_steps": str(steps),
        "ss_epoch": str(epochs),
        "ss_num_epochs": str(config.max_train_epochs),
        "ss_batch_size_per_device": str(config.train_batch_size),
        "ss_num_train_images": str(dataset.num_train_samples),
        "ss_num_reg_images": str(dataset.num_reg_images),
        "ss_prior_loss_weight": str(config.prior_loss_weight),
        "ss_resolution": f"({width}, {height})",
        "ss_seed": str(config.seed),
        "ss_mixed_precision": config.mixed_precision,
        "ss_gradient_checkpointing": str(bool(config.gradient_checkpointing)),
        "ss_clip_skip": str(config.clip_skip or "None"),
        "ss_caption_extension": config.caption_extension,
        "ss_dataset_dirs": json.dumps(dirs),
        "ss_tag_frequency": json.dumps(dataset.tag_frequency(), ensure_ascii=False),
        "ss_training_started_at": str(started_at),
        "ss_training_finished_at": str(time.time()),
        "ss_output_name": config.output_name,
        "ss_v2": "False",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": family.modelspec_architecture,
        "modelspec.implementation": "diffusers",
        "modelspec.title": config.output_name,
        "modelspec.resolution": f"{width}x{height}",
        "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started_at)),
        "lt_family": family.name,
        "lt_preset": config.preset or "none",
        "lt_config": config.to_toml(),
    }
    meta.update(model_hashes(config.pretrained_model_name_or_path))
    if buckets:
        from ..train.bucketing import metadata as bucket_metadata

        meta.update(ss_enable_bucket="True", ss_bucket_info=bucket_metadata(dataset, buckets),
                    ss_min_bucket_reso=str(config.min_bucket_reso), ss_max_bucket_reso=str(config.max_bucket_reso),
                    ss_bucket_no_upscale=str(config.bucket_no_upscale))
    if config.class_tokens:
        meta["modelspec.trigger_phrase"] = config.class_tokens
    return meta


def fold_alpha(peft_state: dict, prefix: str, alpha_of) -> dict[str, torch.Tensor]:
    """peft adapter state -> diffusers layout with ``alpha_of(module path) / rank`` folded into lora_B."""
    out = {}
    for key, value in peft_state.items():
        path, kind = key.rsplit(".", 2)[0], key.rsplit(".", 2)[1]
        value = value.detach().clone()
        if kind == "lora_B":
            value = value * (alpha_of(path) / value.shape[1])
        out[f"{prefix}.{key}"] = value
    return out


def save_lora(lora: TrainedLora, path, precision: str = "fp16", layout: str = "kohya") -> Path:
    """Write ``lora`` as .safetensors atomically, tensors cast to ``precision`` (alphas too).
    ``layout`` kohya (ComfyUI, A1111, kohya tools) or diffusers (diffusers/peft loaders)."""
    if precision not in SAVE_DTYPES:
        raise TrainerError(f"save precision '{precision}' is not one of fp16, bf16, fp32.")
    if layout not in ("kohya", "diffusers"):
        raise TrainerError(f"LoRA layout '{layout}' is not one of kohya, diffusers.")
    if layout == "diffusers" and lora.diffusers is None:
        raise TrainerError("This LoRA was not trained here, so its diffusers layout is unknown: save it as kohya.")
    dtype = SAVE_DTYPES[precision]
    source = lora.tensors if layout == "kohya" else lora.diffusers
    tensors = {k: v.to(dtype) for k, v in source.items()}
    metadata = dict(lora.metadata, ss_save_precision=precision)
    return save_safetensors(Path(path), tensors, metadata)
