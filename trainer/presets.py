"""Starting points from the user's two guides, as TrainConfig values under kohya's names.

Seed 000 is SeaArt's advanced LoRA guide (Spanish): values for anime and realistic LoRAs (on SD1.5
base models) and for SDXL characters. Seed 001 is the Kolors guide (Chinese), which trains with
DiffSynth-Studio's train_kolors_lora.py. Each value carries the guide's words as its reason.

``apply_preset(name, user_values)`` returns the preset updated with the user's explicit values
(the user always wins). Some names are kohya's but not (yet) TrainConfig fields
(``shuffle_caption``, ``text_encoder_lr``, ``enable_bucket``, ``random_crop``);
``split_known(values, TrainConfig)`` separates them so a caller can pass only what it supports.
"""

from __future__ import annotations

import difflib

from .errors import TrainerError

PRESETS: dict[str, dict] = {
    # -- seed 000, SeaArt, section 2 "Configuración avanzada de entrenamiento" (SD1.5 models) -------
    "anime": {
        "dataset_repeats": 8,  # "Repeat ... Sugerencia: Anime = 8"
        "max_train_epochs": 20,  # "Sugerencias: Anime: 20 Epochs"
        "network_dim": 16,  # "Recomendado: ... Anime: 8 / 16 / 32" (the middle one)
        "network_alpha": 8.0,  # "Actualmente, Alpha suele configurarse en la mitad de Rank"
        "learning_rate": 1e-4,  # "Se sugiere aumentar gradualmente desde una tasa de aprendizaje baja, recomendada en 0.0001"
        "unet_lr": 1e-4,  # "unet lr: ... Se recomienda un valor de 0.0001"
        "text_encoder_lr": 5e-5,  # "el text encoder lr se configura en 1/2 o 1/10 del valor de unet lr"
        "lr_scheduler": "cosine",  # "Generalmente se usa el scheduler por defecto llamado 'cosine'"
        "optimizer_type": "AdamW8bit",  # "Optimizer ... Se recomienda usar AdamW8bit"
        "mixed_precision": "fp16",  # "Mixed precision (Precisión mixta): Se recomienda utilizar fp16"
        "save_precision": "fp16",  # "Precisión de guardado: Se recomienda utilizar fp16"
        "shuffle_caption": True,  # "cuanto más cerca esté una etiqueta del principio, mayor será su peso. Por lo tanto, normalmente se recomienda activar Shuffle Caption"
        "resolution": "512",  # "Puedes elegir entre 512×512 (1:1), 512×768 (2:3) o 768×512 (3:2)"
    },
    "realistic": {
        "dataset_repeats": 15,  # "Repeat ... Sugerencia: ... Realista = 15"
        "max_train_epochs": 10,  # "Sugerencias: ... Realista: 10 Epochs"
        "network_dim": 64,  # "Recomendado: Realista: 64 / 128"
        "network_alpha": 32.0,  # "Alpha suele configurarse en la mitad de Rank"
        "learning_rate": 1e-4,  # "recomendada en 0.0001"
        "unet_lr": 1e-4,  # "unet lr: ... Se recomienda un valor de 0.0001"
        "text_encoder_lr": 5e-5,  # "1/2 o 1/10 del valor de unet lr"
        "lr_scheduler": "cosine",  # "Generalmente se usa el scheduler por defecto llamado 'cosine'"
        "optimizer_type": "AdamW8bit",  # "Se recomienda usar AdamW8bit"
        "mixed_precision": "fp16",  # "Se recomienda utilizar fp16"
        "save_precision": "fp16",  # "Precisión de guardado: Se recomienda utilizar fp16"
        "shuffle_caption": True,  # "normalmente se recomienda activar Shuffle Caption"
        "resolution": "512",  # "512×512 (1:1), 512×768 (2:3) o 768×512 (3:2)"
    },
    # -- seed 000, SeaArt, section 4 "Configuración SDXL LoRA" -----------------------------------------
    "sdxl_character": {
        "max_train_epochs": 10,  # "Epochs ... Recomendamos 10 para principiantes"
        "dataset_repeats": 10,  # "Repeats ... sugerimos usar 10 para lograr buenos resultados y minimizar la posibilidad de sobreajuste"
        "unet_lr": 2e-4,  # "unet_lr ... Sugerimos 0.0002 para el entrenamiento de personajes"
        "network_dim": 8,  # "Para personajes, seleccionar 8 dimensiones es suficiente"
        "network_alpha": 4.0,  # "si dim está configurado en 8, entonces alpha puede establecerse en 4"
        "lr_scheduler": "constant",  # "Bajo circunstancias normales, elegir la opción Constant es suficiente"
        "optimizer_type": "AdamW",  # "El optimizador predeterminado, AdamW, puede usarse para el entrenamiento de SDXL"
        "resolution": "1024",  # "Para SDXL, recomendamos 1024×1024 o 1024×768"
    },
    # -- seed 001, Kolors with DiffSynth-Studio train_kolors_lora.py ------------------------------------
    "kolors": {
        "network_dim": 16,  # "--lora_rank 16 ... 适合在不显著降低模型性能的前提下,通过 LoRA 减少计算和内存的需求"
        "network_alpha": 4.0,  # "--lora_alpha 4.0 ... 设置 LoRA 的 alpha 值,影响调整的强度"
        "mixed_precision": "fp16",  # '--precision "16-mixed" ... 这可以加速训练并减少显存使用'
        "gradient_checkpointing": True,  # "--use_gradient_checkpointing ... 启用梯度检查点技术,以节省内存"
        "random_crop": False,  # "--center_crop ... 启用中心裁剪" (kohya crops the centre unless random_crop)
        "enable_bucket": False,  # centre crop to one fixed size, no aspect buckets (DiffSynth has none)
        "max_train_epochs": 1,  # "--max_epochs 1 ... 设置最大训练轮数为 1"
        # DiffSynth's "epoch" is steps_per_epoch (default 500) batches of 1, not a pass over the
        # images: the seed's checkpoint is "epoch=0-step=500.ckpt". kohya's epoch is images x repeats,
        # so the same amount of training is max_train_steps = 500.
        "max_train_steps": 500,
        "train_batch_size": 1,  # DiffSynth default --batch_size 1 (not set in the seed)
        "learning_rate": 1e-4,  # DiffSynth default --learning_rate 1e-4 (not set in the seed)
        "optimizer_type": "AdamW",  # DiffSynth builds torch.optim.AdamW
        "lr_scheduler": "constant",  # DiffSynth has no lr schedule
        "resolution": "1024",  # DiffSynth default --height 1024 --width 1024
    },
}

PRESET_NOTES: dict[str, str] = {
    "anime": "SeaArt (seed 000) anime LoRA on an SD1.5 model: 8 repeats x 20 epochs, dim 16 / alpha 8, cosine, AdamW8bit.",
    "realistic": "SeaArt (seed 000) realistic LoRA on an SD1.5 model: 15 repeats x 10 epochs, dim 64 / alpha 32, cosine, AdamW8bit.",
    "sdxl_character": "SeaArt (seed 000) SDXL character: 10 repeats x 10 epochs, unet_lr 2e-4, dim 8 / alpha 4, constant.",
    "kolors": "Kolors (seed 001, DiffSynth): rank 16 / alpha 4, fp16, gradient checkpointing, centre crop 1024, "
              "500 steps; the guide also uses the sdxl-vae-fp16-fix VAE (set vae to its file).",
}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def apply_preset(name: str, user_values: dict | None = None) -> dict:
    """The preset's values updated with ``user_values`` (the user's explicit settings win; a
    user value of None does not count as set). Empty / "none" name: just the user's values."""
    user = {k: v for k, v in (user_values or {}).items() if v is not None}
    key = (name or "").strip().lower().replace("-", "_").replace(" ", "_")
    if key in ("", "none", "custom"):
        return dict(user)
    if key not in PRESETS:
        close = difflib.get_close_matches(key, PRESETS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise TrainerError(f"Unknown preset '{name}'{hint}: choose one of {', '.join(preset_names())}.")
    values = dict(PRESETS[key])
    values.update(user)
    return values


def split_known(values: dict, config_cls) -> tuple[dict, dict]:
    """(values ``config_cls`` has fields for, the rest), e.g. ``split_known(v, TrainConfig)``."""
    known = set(config_cls.field_names())
    return ({k: v for k, v in values.items() if k in known}, {k: v for k, v in values.items() if k not in known})
