"""kohya_ss GUI presets and saved configs (.json with the GUI's own keys) as kohya settings.

bmaltais/kohya_ss keeps its LoRA tab as a JSON of widget values (``LoRA_type``,
``max_resolution``, ``epoch``, ``optimizer``, ``lr_warmup`` in percent, ...). When it trains, its
lora_gui.train_model turns them into sd-scripts' TOML; gui_to_kohya() does the same mapping, so
a preset gives the TrainConfig the GUI's own run would. GUI keys this mapping does not know are
listed in one warning.
"""

from __future__ import annotations

import json
import shlex
import warnings
from pathlib import Path

from .errors import TrainerError
from .settings_file import read_settings

# LoRA_type -> network_module (lora_gui.train_model); LyCORIS types also give the algo
KOHYA_TYPES = {"Standard": "networks.lora", "Kohya LoCon": "networks.lora", "Kohya DyLoRA": "networks.dylora",
               "LoRA-FA": "networks.lora_fa", "Kohya LoHa": "networks.loha", "Kohya LoKr": "networks.lokr"}
LYCORIS_ALGOS = {"LoCon": "locon", "LyCORIS/LoCon": "locon", "LyCORIS/LoHa": "loha", "LyCORIS/LoKr": "lokr",
                 "LyCORIS/iA3": "ia3", "LyCORIS/DyLoRA": "dylora", "LyCORIS/GLoRA": "glora", "LyCORIS/BOFT": "boft",
                 "LyCORIS/Diag-OFT": "diag-oft", "LyCORIS/Native Fine-Tuning": "full"}
# the network_args the GUI writes for each LyCORIS algo, in its order ("key" = the GUI key of the same name)
LYCORIS_ARGS = {
    "locon": ("preset", "conv_dim", "conv_alpha", "use_tucker", "rank_dropout", "bypass_mode", "dora_wd",
              "module_dropout", "use_scalar", "rank_dropout_scale", "algo", "train_norm"),
    "loha": ("preset", "conv_dim", "conv_alpha", "use_tucker", "rank_dropout", "bypass_mode", "dora_wd",
             "module_dropout", "use_scalar", "rank_dropout_scale", "algo", "train_norm"),
    "lokr": ("preset", "conv_dim", "conv_alpha", "use_tucker", "rank_dropout", "bypass_mode", "dora_wd",
             "module_dropout", "factor", "use_cp", "use_scalar", "decompose_both", "rank_dropout_scale", "algo",
             "train_norm"),
    "ia3": ("preset", "conv_dim", "conv_alpha", "train_on_input", "algo"),
    "dylora": ("preset", "conv_dim", "conv_alpha", "use_tucker", "block_size", "rank_dropout", "module_dropout",
               "algo", "train_norm"),
    "glora": ("preset", "conv_dim", "conv_alpha", "use_tucker", "rank_dropout", "module_dropout",
              "rank_dropout_scale", "algo", "train_norm"),
    "boft": ("preset", "conv_dim", "conv_alpha", "module_dropout", "use_tucker", "rank_dropout",
             "rank_dropout_scale", "algo", "train_norm"),
    "diag-oft": ("preset", "conv_dim", "conv_alpha", "module_dropout", "use_tucker", "rank_dropout",
                 "rank_dropout_scale", "constraint", "rescaled", "algo", "train_norm"),
    "full": ("preset", "rank_dropout", "module_dropout", "rank_dropout_scale", "algo", "train_norm"),
}
LYCORIS_GUI_NAMES = {"preset": "LyCORIS_preset", "block_size": "unit", "constraint": "constrain"}
# kohya networks' block-wise arguments (Standard / Kohya LoCon), written when set
KOHYA_NETWORK_ARGS = ("down_lr_weight", "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold", "block_dims",
                      "block_alphas", "conv_block_dims", "conv_block_alphas", "rank_dropout", "module_dropout")
LORAPLUS = ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio")
NETWORK_KEYS = {"LoRA_type", "LyCORIS_preset", "conv_dim", "conv_alpha", "unit", "factor", "bypass_mode", "dora_wd",
                "use_cp", "use_tucker", "use_scalar", "rank_dropout_scale", "constrain", "rescaled", "train_norm",
                "decompose_both", "train_on_input", "conv_dims", "conv_alphas", *KOHYA_NETWORK_ARGS, *LORAPLUS,
                "train_lora_ggpo", "ggpo_sigma", "ggpo_beta"}
# keys of the GUI's other model families: read only when their checkbox is on (then refused)
OTHER_MODELS = {"flux1_checkbox": "FLUX.1", "sd3_checkbox": "SD3", "hunyuan_image_checkbox": "HunyuanImage",
                "anima_checkbox": "Anima", "lumina_checkbox": "Lumina"}
OTHER_MODEL_PREFIXES = ("flux1_", "sd3_", "hunyuan_", "anima_", "lumina_")
OTHER_MODEL_KEYS = {
    "ae", "clip_l", "clip_g", "clip_g_dropout_rate", "t5xxl", "t5xxl_lr", "t5xxl_device", "t5xxl_dtype",
    "t5xxl_max_token_length", "discrete_flow_shift", "model_prediction_type", "timestep_sampling", "split_mode",
    "train_blocks", "enable_all_linear", "guidance_scale", "mem_eff_save", "apply_t5_attn_mask", "split_qkv",
    "train_t5xxl", "blocks_to_swap", "single_blocks_to_swap", "double_blocks_to_swap", "show_timesteps",
    "show_timesteps_resolution", "img_attn_dim", "img_mlp_dim", "img_mod_dim", "single_dim", "txt_attn_dim",
    "txt_mlp_dim", "txt_mod_dim", "single_mod_dim", "in_dims", "train_double_block_indices",
    "train_single_block_indices", "model_type", "logit_mean", "logit_std", "mode_scale", "pos_emb_random_crop_rate",
    "save_clip", "save_t5xxl", "weighting_scheme"}
OTHER_LORA_TYPES = {"Flux1": "FLUX.1", "Flux1 OFT": "FLUX.1", "HunyuanImage-2.1": "HunyuanImage", "Anima": "Anima",
                    "Lumina": "Lumina"}
# the GUI's own bookkeeping and accelerate-launch widgets: nothing for the training itself
GUI_ONLY = {"headless", "print_only", "save_as_bool", "file_path", "model_list", "training_preset", "lowvram",
            "stop_text_encoder_training", "stop_text_encoder_training_pct", "num_cpu_threads_per_process",
            "num_machines", "main_process_port", "dynamo_mode", "dynamo_use_fullgraph", "dynamo_use_dynamic",
            "no_token_padding"}  # the last: older presets carry it; the GUI no longer reads it
LAUNCH = {"num_processes": 1, "multi_gpu": False, "gpu_ids": "", "extra_accelerate_launch_args": ""}
# read by the mapping below, not passed on as they are
MAPPED = {"sdxl", "max_resolution", "epoch", "lr_warmup", "lr_warmup_steps", "optimizer", "lora_network_weights",
          "network_weights", "sdxl_no_half_vae", "sdxl_cache_text_encoder_outputs", "noise_offset_type",
          "additional_parameters", "learning_rate", "text_encoder_lr", "unet_lr", "max_train_epochs",
          "max_train_steps", "lr_scheduler_num_cycles", "xformers", "use_wandb", "train_inpainting", "seed",
          "use_8bit_adam", "optimizer_args", "lr_scheduler_args", "sample_prompts"}
NOISE_KEYS = {"Original": ("noise_offset", "adaptive_noise_scale", "noise_offset_random_strength"),
              "Multires": ("multires_noise_iterations", "multires_noise_discount")}


def is_gui_config(values: dict) -> bool:
    return "LoRA_type" in values or "max_resolution" in values or "epoch" in values and "optimizer" in values


def read_gui_json(path) -> dict:
    path = Path(path)
    values = read_settings(path, json.loads, (json.JSONDecodeError, UnicodeDecodeError), "JSON")
    if not isinstance(values, dict):
        raise TrainerError(f"{path}: expected a JSON object of settings (a kohya_ss GUI preset or config).")
    return values


def gui_to_kohya(gui: dict, source: str = "kohya_ss GUI config") -> dict:
    """The kohya settings the GUI's train_model writes for these widget values (kohya names, plus
    our model_family for its sdxl checkbox)."""
    from .config import TrainConfig
    from .kohya_options import ANSWERS

    for key, family in OTHER_MODELS.items():
        if gui.get(key):
            raise TrainerError(f"{source}: {key} is set: {family} models are not supported here; "
                               "use an SD1.5, SDXL or Kolors preset.")
    if gui.get("train_inpainting"):
        raise TrainerError(f"{source}: train_inpainting: inpainting LoRAs are not supported here; turn it off.")
    out: dict = {}
    unknown = []
    known = set(TrainConfig.field_names()) | set(ANSWERS)
    noise_type = gui.get("noise_offset_type", "Original")
    for key, value in gui.items():
        if key in MAPPED or key in NETWORK_KEYS or key in GUI_ONLY or key in LAUNCH or key in OTHER_MODELS:
            continue
        if key.startswith(OTHER_MODEL_PREFIXES) or key in OTHER_MODEL_KEYS:
            continue
        if any(key in keys for kind, keys in NOISE_KEYS.items() if kind != noise_type):
            continue  # the GUI writes only the chosen noise type's settings
        if key in known:
            out[key] = _number(value)
        else:
            unknown.append(key)
    out = {k: v for k, v in out.items() if not _empty(v)}  # the GUI drops "", False, None and 0 alike

    out.update(_network(gui, source))
    out.update(_length(gui))
    out.update(_learning_rates(gui))
    if gui.get("sdxl"):
        out["model_family"] = "sdxl"
        if gui.get("sdxl_no_half_vae"):
            out["no_half_vae"] = True
        if gui.get("sdxl_cache_text_encoder_outputs"):
            out["cache_text_encoder_outputs"] = True
    if not _empty(gui.get("max_resolution")):
        out["resolution"] = str(gui["max_resolution"]).replace(" ", "")
    optimizer = gui.get("optimizer") or ("AdamW8bit" if gui.get("use_8bit_adam") else "")
    if optimizer:
        out["optimizer_type"] = optimizer
    for key in ("optimizer_args", "lr_scheduler_args"):
        if not _empty(gui.get(key)):
            out[key] = _split_args(gui[key])
    weights = gui.get("network_weights") or gui.get("lora_network_weights")
    if weights:
        out["network_weights"] = weights
    warmup = _warmup(gui.get("lr_warmup"), gui.get("lr_warmup_steps"))
    if warmup:
        out["lr_warmup_steps"] = warmup
    seed = _number(gui.get("seed"))
    if not _empty(seed):
        out["seed"] = int(seed)
    xformers = gui.get("xformers")
    if xformers in (True, "xformers"):
        out["xformers"] = True
    elif xformers == "sdpa":
        out["sdpa"] = True
    if gui.get("use_wandb") in (True, "True"):
        out["log_with"] = "wandb"
    if not _empty(gui.get("sample_prompts")):
        out["sample_prompts"] = _prompt_lines(gui["sample_prompts"])
    out.update(parse_additional_parameters(gui.get("additional_parameters") or "", source))
    launch = [f"{k} = {gui[k]!r}" for k, off in LAUNCH.items() if k in gui and gui[k] not in (off, None, "", 0)]
    if launch and launch != ["num_processes = 1"]:
        warnings.warn(f"note: {source}: accelerate launch settings ({', '.join(launch)}) are not used: run several "
                      "GPUs with torchrun", stacklevel=2)
    if unknown:
        warnings.warn(f"{source}: kohya_ss GUI settings not known here (ignored): {', '.join(sorted(unknown))}",
                      stacklevel=2)
    return out


def _network(gui: dict, source: str) -> dict:
    lora_type = gui.get("LoRA_type") or "Standard"
    if lora_type in OTHER_LORA_TYPES:
        raise TrainerError(f"{source}: LoRA_type {lora_type!r} is for {OTHER_LORA_TYPES[lora_type]} models, which are "
                           "not supported here: use LoRA_type \"Standard\" or \"Kohya LoCon\" with an SD1.5, SDXL or "
                           "Kolors model.")
    args: list[str] = []
    if lora_type in LYCORIS_ALGOS:
        module, algo = "lycoris.kohya", LYCORIS_ALGOS[lora_type]
        for name in LYCORIS_ARGS[algo]:
            value = algo if name == "algo" else gui.get(LYCORIS_GUI_NAMES.get(name, name))
            if value is not None:  # an older preset without the widget: the GUI's default, left to LyCORIS
                args.append(f"{name}={value}")
    elif lora_type in KOHYA_TYPES:
        module = KOHYA_TYPES[lora_type]
        if lora_type == "Kohya LoCon":
            args += [f"conv_dim={gui.get('conv_dim', '')}", f"conv_alpha={gui.get('conv_alpha', '')}"]
        names = KOHYA_NETWORK_ARGS + (("conv_dim", "conv_alpha", "unit") if lora_type == "Kohya DyLoRA" else ())
        args += [f"{name}={gui[name]}" for name in names if not _empty(gui.get(name))]
    else:
        raise TrainerError(f"{source}: LoRA_type {lora_type!r} is not a kohya_ss GUI LoRA type known here: use "
                           "\"Standard\" or \"Kohya LoCon\".")
    args += [f"{name}={gui[name]}" for name in LORAPLUS if not _empty(gui.get(name))]
    out = {"network_module": module}
    if args:
        out["network_args"] = [a.replace('"', "") for a in args]
    return out


def _length(gui: dict) -> dict:
    """The GUI's epoch -> kohya max_train_steps (it counts the steps itself); max_train_epochs,
    when set, wins in kohya; our step count from epochs is the same sum."""
    epochs, steps = _number(gui.get("max_train_epochs")), _number(gui.get("max_train_steps"))
    epoch = int(_number(gui.get("epoch")) or 1)
    cycles = _number(gui.get("lr_scheduler_num_cycles"))
    out = {"lr_scheduler_num_cycles": int(cycles) if cycles != "" and cycles is not None else epoch}
    if not _empty(epochs):
        out["max_train_epochs"] = int(epochs)
    elif not _empty(steps):
        out["max_train_steps"] = int(steps)
    else:
        out["max_train_epochs"] = epoch
    return {k: v for k, v in out.items() if not _empty(v)}


def _learning_rates(gui: dict) -> dict:
    """lora_gui: text_encoder_lr 0 trains the UNet only, unet_lr 0 the text encoder only; 0 is "not set"."""
    lr, te, unet = (float(_number(gui.get(k)) or 0.0) for k in ("learning_rate", "text_encoder_lr", "unet_lr"))
    out: dict = {}
    if lr:
        out["learning_rate"] = lr
    if te:
        out["text_encoder_lr"] = te
    if unet:
        out["unet_lr"] = unet
    if te == 0 and unet != 0:
        out["network_train_unet_only"] = True
    if te != 0 and unet == 0:
        out["network_train_text_encoder_only"] = True
    return out


def _warmup(percent, steps):
    """common_gui.resolve_lr_warmup_steps: absolute steps win; else the percent as a ratio of the run."""
    steps, percent = float(_number(steps) or 0), float(_number(percent) or 0)
    if steps > 0:
        return int(steps)
    return percent / 100 if percent else 0


def parse_additional_parameters(text: str, source: str = "config") -> dict:
    """The GUI's free "additional parameters" (``--name value --flag``) as settings."""
    try:
        tokens = shlex.split(text)
    except ValueError as err:
        raise TrainerError(f"{source}: additional_parameters {text!r} cannot be read: {err}") from None
    out: dict = {}
    name = None
    for token in tokens:
        if token.startswith("--"):
            name, sep, value = token[2:].partition("=")
            out[name] = _number(value) if sep else True
            if sep:
                name = None
        elif name is None:
            raise TrainerError(f"{source}: additional_parameters: {token!r} follows no --name.")
        elif out[name] is True:
            out[name] = _number(token)
        else:
            previous = out[name] if isinstance(out[name], list) else [out[name]]
            out[name] = previous + [_number(token)]
    return out


def _split_args(value) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return str(value).replace('"', "").split()


def _prompt_lines(text) -> list[str]:
    if isinstance(text, list):
        return text
    return [line.strip() for line in str(text).splitlines() if line.strip() and not line.startswith("#")]


def _number(value):
    """GUI widgets store numbers as text ("0.0001", "75"); other text stays text."""
    if isinstance(value, str):
        text = value.strip()
        for cast in (int, float):
            try:
                return cast(text)
            except ValueError:
                pass
    return value


def _empty(value) -> bool:
    return value is None or value is False or value == "" or (
        isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0)
