"""comfy.sd.load_lora_for_models (ComfyUI a125cd84) for the stand-in's MODEL / CLIP, in our own code:
the LoRA key maps of comfy/lora.py (model_lora_keys_unet: kohya ``lora_unet_`` names in LDM and in
diffusers spelling, the generic ``diffusion_model.`` names, diffusers/peft names;
model_lora_keys_clip: ``lora_te_`` / ``lora_te1_`` / ``lora_te2_``, ``text_encoders.``), load_lora
(one adapter per mapped module, "lora key not loaded" for the rest) and the patches it hands
ModelPatcher.add_patches. The adapter arithmetic is tests/comfy_adapter_math.py (ComfyUI's formulas,
cross-checked against the real one by bench/comfy_adapter_parity.py)."""

from __future__ import annotations

import logging
import types

import torch

import comfy_adapter_math as cm

LORA_CLIP_MAP = {"mlp.fc1": "mlp_fc1", "mlp.fc2": "mlp_fc2", "self_attn.k_proj": "self_attn_k_proj",
                 "self_attn.q_proj": "self_attn_q_proj", "self_attn.v_proj": "self_attn_v_proj",
                 "self_attn.out_proj": "self_attn_out_proj"}

# diffusers name -> LDM name inside the blocks (comfy/utils.py's tables, as data)
RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
          "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
SPATIAL = ("proj_in", "proj_out", "norm")
TRANSFORMER = ("norm1", "norm2", "norm3", "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q",
               "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2")
TOP = {"conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
       "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
       "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
       "class_embedding.linear_1": "label_emb.0.0", "class_embedding.linear_2": "label_emb.0.2"}


def unet_module_map(unet_config: dict) -> dict[str, str]:
    """{diffusers module path: LDM module path} for a UNet of ``unet_config`` (ComfyUI's format),
    the correspondence comfy.utils.unet_to_diffusers states weight by weight."""
    res_blocks, levels = unet_config["num_res_blocks"], len(unet_config["channel_mult"])
    depth_in = list(unet_config["transformer_depth"])
    depth_out = list(unet_config["transformer_depth_output"])  # read from the end: output block 0 first
    out = dict(TOP)

    def resnet(d, ldm):
        out.update({f"{d}.{a}": f"{ldm}.{b}" for a, b in RESNET.items()})

    def spatial(d, ldm, depth):
        out.update({f"{d}.{a}": f"{ldm}.{a}" for a in SPATIAL})
        out.update({f"{d}.transformer_blocks.{t}.{a}": f"{ldm}.transformer_blocks.{t}.{a}"
                    for t in range(depth) for a in TRANSFORMER})

    for level in range(levels):
        block = 1 + (res_blocks[level] + 1) * level
        for i in range(res_blocks[level]):
            resnet(f"down_blocks.{level}.resnets.{i}", f"input_blocks.{block}.0")
            depth = depth_in.pop(0)
            if depth > 0:
                spatial(f"down_blocks.{level}.attentions.{i}", f"input_blocks.{block}.1", depth)
            block += 1
        out[f"down_blocks.{level}.downsamplers.0.conv"] = f"input_blocks.{block}.0.op"
    spatial("mid_block.attentions.0", "middle_block.1", max(0, unet_config.get("transformer_depth_middle") or 0))
    resnet("mid_block.resnets.0", "middle_block.0")
    resnet("mid_block.resnets.1", "middle_block.2")
    for level, count in enumerate(reversed(res_blocks)):
        block = (count + 1) * level
        for i in range(count + 1):
            resnet(f"up_blocks.{level}.resnets.{i}", f"output_blocks.{block}.0")
            slot = 1
            depth = depth_out.pop()
            if depth > 0:
                slot += 1
                spatial(f"up_blocks.{level}.attentions.{i}", f"output_blocks.{block}.1", depth)
            if i == count:
                out[f"up_blocks.{level}.upsamplers.0.conv"] = f"output_blocks.{block}.{slot}.conv"
            block += 1
    return out


def model_lora_keys_unet(model, key_map=None) -> dict:
    """LoRA module name -> weight key of ``model`` (the BaseModel, MODEL.model)."""
    key_map = {} if key_map is None else key_map
    for k in model.state_dict():
        if k.startswith("diffusion_model."):
            if k.endswith(".weight"):
                key_map["lora_unet_" + k[len("diffusion_model."):-len(".weight")].replace(".", "_")] = k
                key_map[k[:-len(".weight")]] = k
            else:
                key_map[k] = k
    for d, ldm in unet_module_map(model.model_config.unet_config).items():
        target = f"diffusion_model.{ldm}.weight"
        flat = d.replace(".", "_")
        key_map["lora_unet_" + flat] = target
        key_map["lycoris_" + flat] = target
        for prefix in ("", "unet."):
            name = prefix + d.replace(".to_", ".processor.to_")
            if name.endswith(".to_out.0"):
                name = name[:-2]
            key_map[name] = target
    return key_map


def model_lora_keys_clip(model, key_map=None) -> dict:
    """LoRA module name -> weight key of ``model`` (CLIP.cond_stage_model)."""
    key_map = {} if key_map is None else key_map
    keys = set(model.state_dict())
    for k in keys:
        if k.endswith(".weight"):
            key_map["text_encoders." + k[:-len(".weight")]] = k
    clip_l_present = False
    for b in range(32):
        for c, flat in LORA_CLIP_MAP.items():
            for tower in ("clip_h", "clip_l"):
                k = f"{tower}.transformer.text_model.encoder.layers.{b}.{c}.weight"
                if k in keys:
                    key_map[f"lora_te_text_model_encoder_layers_{b}_{flat}"] = k
                    key_map[f"lora_te1_text_model_encoder_layers_{b}_{flat}"] = k
                    key_map[f"text_encoder.text_model.encoder.layers.{b}.{c}"] = k
                    clip_l_present = clip_l_present or tower == "clip_l"
            k = f"clip_g.transformer.text_model.encoder.layers.{b}.{c}.weight"
            if k in keys:
                if clip_l_present:
                    key_map[f"lora_te2_text_model_encoder_layers_{b}_{flat}"] = k
                    key_map[f"text_encoder_2.text_model.encoder.layers.{b}.{c}"] = k
                else:
                    key_map[f"lora_te_text_model_encoder_layers_{b}_{flat}"] = k
                    key_map[f"text_encoder.text_model.encoder.layers.{b}.{c}"] = k
                    key_map[f"lora_prior_te_text_model_encoder_layers_{b}_{flat}"] = k
    if "clip_g.transformer.text_projection.weight" in keys:
        key_map["lora_prior_te_text_projection"] = key_map["lora_te2_text_projection"] = \
            "clip_g.transformer.text_projection.weight"
    if "clip_l.transformer.text_projection.weight" in keys:
        key_map["lora_te1_text_projection"] = "clip_l.transformer.text_projection.weight"
    return key_map


# the LoRA spellings ComfyUI's LoRAAdapter.load reads, as (up, down) suffixes
LORA_SPELLINGS = [("lora_up.weight", "lora_down.weight"), ("lora_B.weight", "lora_A.weight")]
KNOWN = set(cm.LORA) | set(cm.LOHA) | set(cm.LOKR) | set(cm.OFT) | set(cm.COMMON)


class Adapter:
    """One module's adapter tensors (kohya/LyCORIS suffixes); weight at strength s = W + s * (W1 - W)
    with W1 ComfyUI's strength-1 weight (linear in s for every adapter, DoRA included, as in ComfyUI)."""

    def __init__(self, name: str, kind: str, parts: dict, loaded_keys: set):
        self.name, self.kind, self.parts, self.loaded_keys = kind, kind, parts, loaded_keys
        self.module = name
        self.weights = tuple(parts.get(k) for k in {
            "lora": ("lora_up.weight", "lora_down.weight", "alpha", "lora_mid.weight", "dora_scale"),
            "loha": ("hada_w1_a", "hada_w1_b", "alpha", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "dora_scale"),
            "lokr": ("lokr_w1", "lokr_w2", "alpha", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b", "lokr_t2",
                     "dora_scale"),
            "oft": ("oft_blocks", "rescale", "alpha", "dora_scale")}[kind])

    def calculate_weight(self, weight, key, strength, strength_model, offset, function,
                         intermediate_dtype=torch.float32, original_weights=None):
        tensors = {f"m.{k}": v for k, v in self.parts.items()}
        full = cm.patched_weight(tensors, "m", weight).to(weight.dtype)
        if strength == 1.0:
            return full
        return weight + strength * (full - weight)


def _adapter(lora: dict, x: str):
    parts, used = {}, set()
    for up, down in LORA_SPELLINGS:
        if f"{x}.{up}" in lora:
            parts = {"lora_up.weight": lora[f"{x}.{up}"], "lora_down.weight": lora[f"{x}.{down}"]}
            used = {f"{x}.{up}", f"{x}.{down}"}
            if up == "lora_up.weight" and f"{x}.lora_mid.weight" in lora:
                parts["lora_mid.weight"] = lora[f"{x}.lora_mid.weight"]
                used.add(f"{x}.lora_mid.weight")
            break
    else:
        parts = {k: v for k, v in cm.module_tensors(lora, x).items() if k in KNOWN - set(cm.LORA)}
        if not any(k in parts for k in ("hada_w1_a", "lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w2_a", "oft_blocks")):
            return None
        used = cm.loaded_keys(lora, x)
    parts.update({k: lora[f"{x}.{k}"] for k in cm.COMMON if f"{x}.{k}" in lora})
    try:
        kind = cm.algorithm(parts)
    except ValueError:
        return None
    return Adapter(x, kind, parts, used | {f"{x}.{k}" for k in cm.COMMON if f"{x}.{k}" in lora})


def load_lora(lora: dict, to_load: dict, log_missing=True) -> dict:
    """{weight key: patch} for every mapped module of ``lora``; unmapped keys are logged."""
    patch_dict, loaded = {}, set()
    for x, key in to_load.items():
        loaded |= {f"{x}.{k}" for k in cm.COMMON if f"{x}.{k}" in lora}  # read for every mapped module
        adapter = _adapter(lora, x)
        if adapter is not None:
            patch_dict[key] = adapter
            loaded |= adapter.loaded_keys
        for suffix, kind, target in (("diff", "diff", key), ("set_weight", "set", key),
                                     ("diff_b", "diff", key[:-len(".weight")] + ".bias")):
            if f"{x}.{suffix}" in lora:
                patch_dict[target] = (kind, (lora[f"{x}.{suffix}"],))
                loaded.add(f"{x}.{suffix}")
    if log_missing:
        for k in lora:
            if k not in loaded:
                logging.warning("lora key not loaded: %s", k)
    return patch_dict


def load_lora_for_models(model, clip, lora, strength_model, strength_clip):
    """comfy.sd.load_lora_for_models: clones of ``model`` / ``clip`` carrying the LoRA as patches."""
    key_map = {}
    if model is not None:
        key_map = model_lora_keys_unet(model.model, key_map)
    if clip is not None:
        key_map = model_lora_keys_clip(clip.cond_stage_model, key_map)
    loaded = load_lora(lora, key_map)
    new_model = new_clip = None
    k = k1 = ()
    if model is not None:
        new_model = model.clone()
        k = new_model.add_patches(loaded, strength_model)
    if clip is not None:
        new_clip = clip.clone()
        k1 = new_clip.add_patches(loaded, strength_clip)
    for x in loaded:
        if x not in set(k) and x not in set(k1):
            logging.warning("NOT LOADED %s", x)
    return new_model, new_clip


def load_torch_file(path, safe_load=True):
    """comfy.utils.load_torch_file for the files LoRA loaders read (safetensors, or weights-only pickles)."""
    path = str(path)
    if path.lower().endswith((".safetensors", ".sft")):
        from safetensors.torch import load_file

        return load_file(path)
    data = torch.load(path, map_location="cpu", weights_only=True)
    return data.get("state_dict", data) if isinstance(data, dict) else data


# comfy.sd as the pack's comfy_env sees it (comfy_env.comfy_sd)
sd = types.ModuleType("comfy.sd")
sd.load_lora_for_models = load_lora_for_models
