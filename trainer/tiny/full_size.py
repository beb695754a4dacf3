"""Full-size SD1.5 / SDXL models with random weights, for a manual check (never run in CI).

``write_full_size_model(family, folder)`` builds the real architectures from the bundled configs
(trainer/models/configs/<family>/) straight in ``dtype`` (bf16 by default: the 2.6B-parameter
SDXL UNet is never materialised in fp32), and saves a diffusers folder with a character-level
CLIP tokenizer whose vocab is padded to the real 49408 entries (start/end tokens at 49406/49407
as in CLIP), so every shape is the real one and the single file made from it with
``trainer.models.ldm_write.write_single_file`` loads with the bundled configs.
"""

from __future__ import annotations

import gc
import json
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch

from ..families import get_family
from ..models.single_file import CONFIGS
from .tokenizers import write_clip_tokenizer


SPECIAL = ("<|startoftext|>", "<|endoftext|>")


def write_padded_clip_tokenizer(folder: Path, vocab_size: int, pad_token: str = "<|endoftext|>") -> Path:
    """The tiny character-level tokenizer, its vocab padded with unused tokens to ``vocab_size``."""
    write_clip_tokenizer(folder, pad_token=pad_token)
    path = Path(folder) / "vocab.json"
    vocab = json.loads(path.read_text(encoding="utf-8"))
    tokens = [t for t in sorted(vocab, key=vocab.get) if t not in SPECIAL]
    tokens += [f"<|unused{i}|>" for i in range(vocab_size - len(tokens) - len(SPECIAL))] + list(SPECIAL)
    path.write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False), encoding="utf-8")
    return Path(folder)


@contextmanager
def default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def part_names(family_name: str) -> list[str]:
    return ["text_encoder"] + (["text_encoder_2"] if family_name == "sdxl" else []) + ["unet", "vae"]


def build_full_size_part(family_name: str, name: str, dtype=torch.bfloat16, seed: int = 0):
    """One component (unet, vae, text_encoder, text_encoder_2) of the real architecture, random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config_dir = CONFIGS / get_family(family_name).name / name
    torch.manual_seed(seed)
    with default_dtype(dtype), torch.no_grad():
        if name in ("unet", "vae"):
            cls = UNet2DConditionModel if name == "unet" else AutoencoderKL
            model = cls.from_config(cls.load_config(str(config_dir)))
        else:
            config = json.loads((config_dir / "config.json").read_text(encoding="utf-8"))
            config["torch_dtype"] = str(dtype).removeprefix("torch.")  # transformers builds in the config's dtype
            cls = CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel
            model = cls(CLIPTextConfig(**config))
    return model.to(dtype).eval()


def write_full_size_model(family_name: str, folder, dtype=torch.bfloat16, seed: int = 0) -> Path:
    """Write a full-size random ``family_name`` (sd15 or sdxl) diffusers folder; returns it."""
    family = get_family(family_name)
    if family.name not in ("sd15", "sdxl"):
        raise ValueError("Full-size random models are available for sd15 and sdxl.")
    source, folder = CONFIGS / family.name, Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = json.loads((source / "text_encoder" / "config.json").read_text(encoding="utf-8"))["vocab_size"]
    write_padded_clip_tokenizer(folder / "tokenizer", vocab_size)
    if family.name == "sdxl":
        write_padded_clip_tokenizer(folder / "tokenizer_2", vocab_size, pad_token="!")
    for i, name in enumerate(part_names(family.name)):  # one component in memory at a time
        model = build_full_size_part(family.name, name, dtype, seed + i)
        model.save_pretrained(str(folder / name), safe_serialization=True)
        del model
        gc.collect()
    shutil.copytree(source / "scheduler", folder / "scheduler", dirs_exist_ok=True)
    index = json.loads((source / "model_index.json").read_text(encoding="utf-8"))
    if family.name == "sd15":  # no safety checker in a training folder
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    (folder / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    return folder


def write_full_size_checkpoint(family_name: str, file, dtype=torch.bfloat16, seed: int = 0) -> Path:
    """Write a full-size random single-file checkpoint (LDM/SGM layout) straight from the parts."""
    from ..models.ldm_write import write_single_file

    family = get_family(family_name)
    parts = {name: build_full_size_part(family.name, name, dtype, seed + i)
             for i, name in enumerate(part_names(family.name))}
    return write_single_file(family.name, parts, file)
