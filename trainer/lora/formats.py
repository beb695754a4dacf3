"""Detect a LoRA's layout and convert it to ours (kohya keys, diffusers module paths, an alpha per module).

Layouts read:
  kohya        ``lora_unet_<path>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha`` (diffusers or LDM
               naming), ``lora_te_`` / ``lora_te1_`` / ``lora_te2_`` text encoders; no alpha = rank
  peft         diffusers/peft ``unet.<path>.lora_A.weight`` / ``lora_B`` (also ``.default.``, no prefix,
               ``text_encoder(_2).``), old ``<path>.processor.to_q_lora.down.weight``; alpha from the
               file's ``lora_adapter_metadata`` if any, else rank (what diffusers assumes)
  comfy        ComfyUI core trainer: ``diffusion_model.<LDM path>.lora_up.weight`` / ``lora_down`` / ``alpha``,
               ``text_encoders.clip_l.transformer.<path>...``
  diffsynth    DiffSynth-Studio Kolors/SDXL: ``blocks.7.transformer_blocks.0.attn1.to_q.lora_A.default.weight``;
               no alpha stored: the caller's ``alpha`` (default 4.0, what seed 001 trained with)
"""

from __future__ import annotations

import json
import re

import torch

from ..errors import TrainerError
from . import diffsynth, names
from .metadata import read_raw

KOHYA, PEFT, COMFY, DIFFSYNTH = "kohya", "peft", "comfy", "diffsynth"
DIFFSYNTH_DEFAULT_ALPHA = 4.0
_PARTS = ((".lora_down.weight", "down"), (".lora_up.weight", "up"), (".lora_A.default.weight", "down"),
          (".lora_B.default.weight", "up"), (".lora_A.weight", "down"), (".lora_B.weight", "up"), (".alpha", "alpha"))
# LyCORIS parts (LoHa, LoKr, DoRA, Tucker LoCon, OFT), kept as they are under our module names
LYCORIS_PARTS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "lokr_w1", "lokr_w1_a",
                 "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "oft_blocks", "rescale", "dora_scale",
                 "lora_mid.weight")
_FULL_DIFFS = (".diff", ".diff_b")  # ComfyUI's trainer: whole-weight deltas of norms/biases, not LoRA
_OLD_DIFFUSERS = re.compile(r"\.processor\.(to_[qkv]|to_out)_lora\.(down|up)\.weight$")


_LYCORIS_SUFFIXES = tuple("." + part for part in LYCORIS_PARTS)


def is_lycoris(tensors: dict) -> bool:
    """A file with LyCORIS parts (LoHa, LoKr, DoRA, OFT, Tucker LoCon) beside or instead of LoRA pairs."""
    return any(k.endswith(_LYCORIS_SUFFIXES) for k in tensors)


def detect_format(tensors: dict) -> str:
    keys = list(tensors)
    if any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for k in keys):
        return KOHYA
    if any(k.startswith(("diffusion_model.", "text_encoders.")) and (".lora_" in k or k.endswith(_LYCORIS_SUFFIXES))
           for k in keys):
        return COMFY
    if any(re.match(r"^blocks\.\d+\.", k) and ".lora_" in k for k in keys):
        return DIFFSYNTH
    if any(".lora_A." in k or ".lora_B." in k or _OLD_DIFFUSERS.search(k) for k in keys):
        return PEFT
    raise TrainerError("No LoRA tensors found (expected lora_unet_/lora_te keys, lora_A/lora_B or "
                       "lora_up/lora_down): this file is not a LoRA, or a layout this loader does not know.")


def guess_family(tensors: dict) -> str:
    """sd15, sdxl or kolors from the keys and the cross-attention width (768 = SD1.5, 2048 = SDXL/Kolors)."""
    keys = list(tensors)
    fmt = detect_format(tensors)
    if fmt == DIFFSYNTH:
        return "kolors"  # DiffSynth LoRAs users have are Kolors ones; the SDXL layout is identical
    if any(k.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.", "text_encoders.clip_g.")) for k in keys):
        return "sdxl"
    widths = {int(v.shape[1]) for k, v in tensors.items()
              if re.search(r"attn2[._]to_k[._]", k) and (".lora_down." in k or ".lora_A." in k) and v.ndim == 2}
    if 768 in widths:
        return "sd15"
    if 2048 in widths:
        return "sdxl"
    if any(re.search(r"(down_blocks[._]0[._]attentions|input_blocks[._]1[._]1[._])", k) for k in keys):
        return "sd15"
    if any(k.startswith("lora_te_") for k in keys):
        return "sd15"
    return "sdxl"


def _split(key: str) -> tuple[str, str] | None:
    match = _OLD_DIFFUSERS.search(key)
    if match:
        proj = "to_out.0" if match.group(1) == "to_out" else match.group(1)
        return key[:match.start()] + "." + proj, match.group(2)
    for suffix, part in _PARTS:
        if key.endswith(suffix):
            return key[: -len(suffix)], part
    for part in LYCORIS_PARTS:
        if key.endswith("." + part):
            return key[: -len(part) - 1], part
    return None


def _group(tensors: dict, fmt: str) -> dict[str, dict]:
    modules: dict[str, dict] = {}
    diffs = [k for k in tensors if k.endswith(_FULL_DIFFS)]
    if diffs:
        import warnings

        warnings.warn(f"{len(diffs)} full-weight deltas (norm/bias '.diff' tensors, e.g. {diffs[0]}) have no "
                      "LoRA form and are skipped; the LoRA layers are kept.", stacklevel=3)
    for key, value in tensors.items():
        if key.endswith(_FULL_DIFFS):
            continue
        split = _split(key)
        if split is None:
            if fmt == PEFT and not key.endswith(".weight"):
                continue  # e.g. peft's stored alpha_pattern helpers: nothing to load
            raise TrainerError(f"Unexpected tensor '{key}' in a {fmt} LoRA: the file mixes layouts or is damaged.")
        module, part = split
        modules.setdefault(module, {})[part] = value
    return modules


def _resolve(module: str, fmt: str, family: str, config) -> tuple[str, str] | None:
    """(component, diffusers/HF path) of a module name in ``fmt``, or None if it names nothing known."""
    if fmt == KOHYA:
        if module.startswith("lora_unet_"):
            path = names.unet_lookup(config).get(module[len("lora_unet_"):])
            return ("unet", path) if path else None
        prefix, _, rest = module.partition("_text_model_")
        component, path = names.te_component(prefix, family), names.te_path("text_model_" + rest)
        return (component, path) if component and path else None
    if fmt == COMFY:
        if module.startswith("diffusion_model."):
            path = module[len("diffusion_model."):]
            path = names.ldm_to_diffusers(config).get(path) or (path if path in names.unet_modules(config) else None)
            return ("unet", path) if path else None
        match = re.match(r"^text_encoders\.clip_([lg])\.transformer\.(.+)$", module)
        if not match:
            return None
        component = "text_encoder_2" if match.group(1) == "g" else "text_encoder"
        path = match.group(2) if match.group(2).startswith("text_model.") else "text_model." + match.group(2)
        return component, path
    if fmt == DIFFSYNTH:
        path = diffsynth.to_diffusers_path(module, diffsynth.block_table(config))
        return ("unet", path) if path in names.unet_modules(config) else None
    for component in ("text_encoder_2", "text_encoder", "unet"):  # PEFT: longest prefix first
        if module.startswith(component + "."):
            path = module[len(component) + 1:]
            if component == "unet":
                return ("unet", path) if path in names.unet_modules(config) else None
            return component, path if path.startswith("text_model.") else "text_model." + path
    return ("unet", module) if module in names.unet_modules(config) else None


_KOHYA_PART = {"down": "lora_down.weight", "up": "lora_up.weight"}


def _check_pair(module: str, parts: dict) -> None:
    if "down" not in parts or "up" not in parts:
        raise TrainerError(f"LoRA module '{module}' lacks its {'up' if 'down' in parts else 'down'} "
                           "weight: the file is incomplete.")
    down, up = parts["down"], parts["up"]
    if down.shape[0] != up.shape[1]:
        raise TrainerError(f"LoRA module '{module}': down rank {down.shape[0]} != up rank {up.shape[1]}; "
                           "the file is damaged.")


def _conv_shapes(down, up, weight_shape):
    if len(weight_shape) == 4 and down.ndim == 2:
        return down.reshape(down.shape[0], *weight_shape[1:]), up.reshape(*up.shape, 1, 1)
    return down, up


def _peft_alphas(metadata: dict | None) -> dict[str, tuple[float, dict]]:
    """{component: (lora_alpha, alpha_pattern)} from diffusers' ``lora_adapter_metadata`` (the LoraConfig
    of each component, flattened with ``unet.`` / ``text_encoder.`` prefixes)."""
    raw = (metadata or {}).get("lora_adapter_metadata")
    try:
        config = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        return {}
    out = {}
    for component in ("unet", "text_encoder", "text_encoder_2"):
        part = {k[len(component) + 1:]: v for k, v in config.items() if k.startswith(component + ".")}
        if component == "unet" and not part and "lora_alpha" in config:
            part = config  # a bare LoraConfig
        if part.get("lora_alpha") is not None:
            out[component] = (float(part["lora_alpha"]), part.get("alpha_pattern") or {})
    return out


def to_kohya(tensors: dict, family: str, unet_config=None, alpha: float | None = None,
             metadata: dict | None = None) -> dict[str, torch.Tensor]:
    """Any known LoRA layout -> our kohya layout for a ``family`` model whose UNet has ``unet_config``
    (default: the real SD1.5/SDXL config). ``alpha`` fills in where the file stores none
    (DiffSynth: default 4.0; others: rank, as their own tools assume)."""
    fmt = detect_format(tensors)
    if unet_config is None:
        from ..models.single_file import CONFIGS
        from diffusers import UNet2DConditionModel

        base = "sd15" if family == "sd15" else "sdxl"  # Kolors' UNet has SDXL's module names
        unet_config = UNet2DConditionModel.load_config(str(CONFIGS / base / "unet"))
    if fmt == DIFFSYNTH and family == "sd15":
        raise TrainerError("DiffSynth LoRAs are read for Kolors/SDXL only; pick the kolors or sdxl family.")
    peft_alphas = _peft_alphas(metadata) if fmt == PEFT else {}
    out, unknown = {}, []
    for module, parts in _group(tensors, fmt).items():
        lycoris = any(p in parts for p in LYCORIS_PARTS)
        if not lycoris:
            _check_pair(module, parts)
        where = _resolve(module, fmt, family, unet_config)
        if where is None:
            unknown.append(module)
            continue
        name = names.kohya_name(where[0], where[1], family)
        if lycoris:  # LyCORIS's own layout: every part under our name, as LyCORIS wrote it
            out.update({f"{name}.{_KOHYA_PART.get(part, part)}": value.contiguous() for part, value in parts.items()})
            continue
        down, up = parts["down"], parts["up"]
        rank = int(down.shape[0])
        if "alpha" in parts:
            value = float(parts["alpha"].float().item())
        elif fmt == DIFFSYNTH:
            value = float(alpha if alpha is not None else DIFFSYNTH_DEFAULT_ALPHA)
        elif where[0] in peft_alphas:
            default, pattern = peft_alphas[where[0]]
            value = float(next((a for p, a in pattern.items() if re.search(p, where[1])), default))
        else:
            value = float(alpha if alpha is not None else rank)
        if where[0] == "unet":  # ComfyUI's trainer stores conv LoRA flattened to 2-D
            down, up = _conv_shapes(down, up, names.unet_modules(unet_config)[where[1]])
        out[f"{name}.lora_down.weight"] = down.contiguous()
        out[f"{name}.lora_up.weight"] = up.contiguous()
        out[f"{name}.alpha"] = torch.tensor(value, dtype=torch.float32)
    if unknown:
        raise TrainerError(f"{len(unknown)} LoRA modules have no match in the {family} model (e.g. '{unknown[0]}'): "
                           "this LoRA was made for another model or family; pick the family it was trained on.")
    if not out:
        raise TrainerError("This LoRA file holds no LoRA modules.")
    return out


def read_lora_file(path, family: str | None = None, unet_config=None, alpha: float | None = None) -> dict:
    """A LoRA file of any known layout, as tensors in our kohya layout (``family`` guessed if None)."""
    tensors, metadata = read_raw(path)
    return to_kohya(tensors, family or guess_family(tensors), unet_config, alpha, metadata)
