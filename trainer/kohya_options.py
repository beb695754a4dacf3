"""An answer for every option of kohya's train_network.py / sdxl_train_network.py.

Each kohya name is one of:
* implemented: a TrainConfig field of the same name (with kohya's meaning);
* an alias: mapped onto our fields with kohya's meaning (``caption_extention``, ``use_8bit_adam``);
* a note: accepted, with one line saying why it does nothing here (``xformers``, hub upload ...);
* a refusal: a TrainerError saying what to use instead (``v2``, ``in_json`` ...).

Notes and refusals only speak when the value differs from kohya's default: a kohya_ss GUI
export lists every key, most of them at their defaults. TrainConfig.from_dict goes through
translate(); names that are neither our fields nor kohya's stay "unknown setting" there.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import TrainerError


@dataclass(frozen=True)
class Alias:
    """kohya's name for something we have: ``to_fields(value, values)`` gives our fields."""
    to_fields: Callable[[object, dict], dict]
    meaning: str


@dataclass(frozen=True)
class Note:
    """Accepted; does nothing here for the reason given."""
    why: str
    quiet: tuple = ()  # values besides kohya's default that say "off" (GUI exports write 0, "no" ...)


@dataclass(frozen=True)
class Refusal:
    """Not available here: the message says what to use instead."""
    instead: str
    quiet: tuple = ()


def _optimizer_flag(name: str, optimizer: str) -> Callable[[object, dict], dict]:
    def to_fields(value, values: dict) -> dict:
        if not value:
            return {}
        chosen = str(values.get("optimizer_type") or "")
        if chosen and chosen.lower() != optimizer.lower():  # kohya asserts the same
            raise TrainerError(f"both {name} and optimizer_type = {chosen!r} are set: keep one "
                               f"(optimizer_type = \"{optimizer}\" is what {name} means).")
        return {"optimizer_type": optimizer}
    return to_fields


_ATTENTION = "attention always runs through torch's scaled_dot_product_attention (kohya's sdpa)"
_NO_HUB = "nothing is uploaded to the Hugging Face Hub: upload the output files yourself"
_NO_DEEPSPEED = "DeepSpeed is not used: a LoRA's weights and optimizer state are small enough without it"
_DDP = "several GPUs run through torchrun with torch's DistributedDataParallel defaults"
_LOADER = "images are read in the training process; there are no DataLoader workers to set"
_CONSOLE = "progress and messages go to the console (or ComfyUI); redirect the output to keep a log file"
_TRACKERS = "only tensorboard logging is available (log_with = \"tensorboard\", logging_dir)"
_VALIDATION = ("the validation loss (validation_split) is computed at every epoch end on the whole held-out "
               "set, with the training seed")
_METADATA = "kohya writes it into the modelspec header (modelspec.merged_from ...); not written here yet"

ANSWERS: dict[str, Alias | Note | Refusal] = {
    # -- aliases: kohya's other names for our settings
    "caption_extention": Alias(lambda v, _: {"caption_extension": v} if v else {},
                               "kohya's old spelling of caption_extension (it wins over caption_extension)"),
    "use_8bit_adam": Alias(_optimizer_flag("use_8bit_adam", "AdamW8bit"), 'optimizer_type = "AdamW8bit"'),
    "use_lion_optimizer": Alias(_optimizer_flag("use_lion_optimizer", "Lion"), 'optimizer_type = "Lion"'),
    # -- accepted; nothing to do here
    "config_file": Note("give the config with `python -m trainer train --config FILE`; inside a config it "
                        "names nothing to load"),
    "output_config": Note("kohya reads it only from its command line (writes the arguments to the config "
                          "and exits); inside a config it does nothing, in kohya too"),
    "xformers": Note(_ATTENTION),
    "sdpa": Note(_ATTENTION),
    "mem_eff_attn": Note(_ATTENTION),
    "torch_compile": Note("the UNet is not compiled with torch.compile; it would only change speed"),
    "dynamo_backend": Note("only used with torch_compile, which is not applied", quiet=("inductor", "no")),
    "lowram": Note("models are placed on the devices automatically"),
    "highvram": Note("memory is managed automatically"),
    "max_data_loader_n_workers": Note(_LOADER, quiet=(8,)),
    "persistent_data_loader_workers": Note(_LOADER),
    "vae_batch_size": Note("latents are encoded one image at a time; the batch size only changes speed",
                           quiet=(1,)),
    "cache_info": Note("only speeds up kohya's scan of a DreamBooth-style folder"),
    "skip_cache_check": Note("cache files are named by the image's content hash and the model, so there is no "
                             "content check to skip"),
    "disable_mmap_load_safetensors": Note("safetensors files are loaded by diffusers / safetensors here"),
    "tokenizer_cache_dir": Note("tokenizers load from the model folder or tokenizer_dir; nothing is downloaded"),
    "cpu_offload_checkpointing": Note("gradient checkpointing keeps its tensors on the training device here"),
    "fused_backward_pass": Note("kohya applies it to full fine-tuning only; for a LoRA it does nothing, in "
                                "kohya too"),
    "fp16_master_weights_and_gradients": Note(f"a DeepSpeed setting: {_NO_DEEPSPEED}"),
    "console_log_level": Note(_CONSOLE),
    "console_log_file": Note(_CONSOLE),
    "console_log_simple": Note(_CONSOLE),
    "log_config": Note(_TRACKERS),
    "log_tracker_name": Note(_TRACKERS),
    "log_tracker_config": Note(_TRACKERS),
    "wandb_api_key": Note(_TRACKERS),
    "wandb_run_name": Note(_TRACKERS),
    "huggingface_repo_id": Note(_NO_HUB),
    "huggingface_repo_type": Note(_NO_HUB),
    "huggingface_path_in_repo": Note(_NO_HUB),
    "huggingface_token": Note(_NO_HUB),
    "huggingface_repo_visibility": Note(_NO_HUB),
    "save_state_to_huggingface": Note(_NO_HUB),
    "async_upload": Note(_NO_HUB),
    "ddp_timeout": Note(_DDP),
    "ddp_gradient_as_bucket_view": Note(_DDP),
    "ddp_static_graph": Note(_DDP),
    "deepspeed": Note(_NO_DEEPSPEED),
    "zero_stage": Note(_NO_DEEPSPEED, quiet=(2,)),
    "zero3_init_flag": Note(_NO_DEEPSPEED),
    "zero3_save_16bit_model": Note(_NO_DEEPSPEED),
    "offload_optimizer_device": Note(_NO_DEEPSPEED, quiet=("none",)),
    "offload_optimizer_nvme_path": Note(_NO_DEEPSPEED),
    "offload_param_device": Note(_NO_DEEPSPEED, quiet=("none",)),
    "offload_param_nvme_path": Note(_NO_DEEPSPEED),
    "validate_every_n_epochs": Note(_VALIDATION),
    "validate_every_n_steps": Note(_VALIDATION),
    "validation_seed": Note(_VALIDATION),
    "max_validation_steps": Note(_VALIDATION),
    "resize_interpolation": Note("images are resized with Lanczos here (kohya's default when enlarging; it "
                                 "uses area when shrinking)"),
    "metadata_merged_from": Note(_METADATA),
    "metadata_preprocessor": Note(_METADATA),
    "metadata_is_negative_embedding": Note(_METADATA),
    "skip_until_initial_step": Note("only matters with initial_step / initial_epoch, which are not available "
                                    "here"),
    # -- refused: what to use instead
    "v2": Refusal("SD2 models are not supported: use an SD1.5, SDXL or Kolors model (remove v2)"),
    "in_json": Refusal("kohya's fine-tuning metadata JSON is not read here: use train_data_dir (images with "
                       "caption files) or dataset_config"),
    "dataset_class": Refusal("custom dataset classes are not loaded here: use train_data_dir or dataset_config"),
    "debug_dataset": Refusal("debug_dataset shows kohya's dataset instead of training: remove it to train"),
    "face_crop_aug_range": Refusal("face-centred crop augmentation is not available: remove it (Smart Crop "
                                   "can crop faces before training)"),
    "resume_from_huggingface": Refusal("states are not downloaded from the Hub here: download the state folder "
                                       "and set resume to it"),
    "initial_epoch": Refusal("starting the count at a later epoch is not available: to continue a run, use "
                             "resume with a state saved by save_state", quiet=(1,)),
    "initial_step": Refusal("starting the count at a later step is not available: to continue a run, use "
                            "resume with a state saved by save_state"),
    "base_weights": Refusal("merging LoRAs into the model before training is not available: merge them into "
                            "the checkpoint first (e.g. ComfyUI's CheckpointSave) and train on that"),
    "base_weights_multiplier": Refusal("it scales base_weights, which is not available: merge the LoRAs into "
                                       "the checkpoint first"),
    "save_n_epoch_ratio": Refusal("not available: set save_every_n_epochs instead (kohya sets it to "
                                  "epochs / save_n_epoch_ratio)"),
}


def answer(name: str, fields) -> str | Alias | Note | Refusal | None:
    """'implemented' for a TrainConfig field, the registry's answer, or None for names kohya has not."""
    if name in fields:
        return "implemented"
    return ANSWERS.get(name)


def is_off(value, quiet: tuple = ()) -> bool:
    """kohya's default (None / False) or what GUI exports write for it ("", 0, [])."""
    if value is None or value is False or value in ("", [], {}):
        return True
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0:
        return True
    return any(value == q or (isinstance(value, str) and isinstance(q, str) and value.lower() == q.lower())
               for q in quiet)


def translate(values: dict, fields, source: str = "config", base_dir: Path | None = None) -> dict:
    """kohya's names in ``values`` as TrainConfig fields: aliases applied, notes warned once per
    name ("note: ..."), refusals raised; our fields adapted to kohya's value forms; unknown
    names passed on for the caller's "unknown setting" warning."""
    out: dict = {}
    aliased: dict = {}
    for key, value in values.items():
        if key in fields:
            out[key] = adapt_value(key, value, source, base_dir)
            continue
        entry = ANSWERS.get(key)
        if entry is None:
            out[key] = value
        elif isinstance(entry, Alias):
            aliased.update(entry.to_fields(value, values))
        elif is_off(value, entry.quiet):
            continue
        elif isinstance(entry, Note):
            warnings.warn(f"note: {key} = {_short(value)} has no effect here: {entry.why} ({source})", stacklevel=3)
        else:
            raise TrainerError(f"{source}: {key} = {_short(value)}: {entry.instead}.")
    out.update(aliased)  # kohya: the alias wins over the field (caption_extention over caption_extension)
    return out


def epochs_over_steps(values: dict, source: str = "config") -> dict:
    """A kohya file giving both max_train_epochs and max_train_steps trains for the epochs (kohya
    derives the steps from them); read from a file only, so a later --set max_train_steps wins."""
    flat = {k: v for section in values.values() if isinstance(section, dict) for k, v in section.items()}
    flat.update({k: v for k, v in values.items() if not isinstance(v, dict)})
    if is_off(flat.get("max_train_epochs")) or is_off(flat.get("max_train_steps")):
        return values
    warnings.warn(f"note: max_train_epochs = {flat['max_train_epochs']} wins over max_train_steps = "
                  f"{flat['max_train_steps']}, as in kohya ({source})", stacklevel=3)
    out = {k: ({**v, "max_train_steps": 0} if isinstance(v, dict) and "max_train_steps" in v else v)
           for k, v in values.items()}
    if "max_train_steps" in out:
        out["max_train_steps"] = 0
    return out


def adapt_value(key: str, value, source: str, base_dir: Path | None):
    """Value forms kohya accepts for our fields that our types do not say."""
    if key == "text_encoder_lr" and isinstance(value, (list, tuple)):
        # kohya's networks.lora takes the first of the list (the list is for other networks' encoders)
        return float(value[0]) if value else None
    if key in ("network_args", "optimizer_args", "lr_scheduler_args") and isinstance(value, str):
        return value.replace('"', "").split()  # one "key=value key=value" text, as the kohya_ss GUI splits it
    if key == "sample_prompts" and isinstance(value, str):
        from .sample_prompts import prompts_from_setting

        return prompts_from_setting(value, base_dir, source)
    return value


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
