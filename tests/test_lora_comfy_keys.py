"""Every key of a LoRA we save - UNet attention + conv, CLIP text encoders - is consumed by ComfyUI's
LoraLoader on the real SD1.5, SDXL and Kolors architectures (built on the meta device): 0 "lora key not
loaded". ComfyUI is not imported: comfy/lora.py's model_lora_keys_unet/model_lora_keys_clip rules are
reproduced here, and were checked once against the real ComfyUI (a125cd84) with the same counts."""

import pytest
import torch

from lora_builders import TEXT_PARTS, meta_text_encoder, real_unet_config, text_lora, unet_lora
from trainer.lora import diffsynth, names
from trainer.lora.formats import guess_family
from trainer.models.ldm_write import unet_to_ldm

# comfy/lora.py LORA_CLIP_MAP: the text-encoder modules its LoraLoader maps
LORA_CLIP_MAP = {"mlp.fc1": "mlp_fc1", "mlp.fc2": "mlp_fc2", "self_attn.k_proj": "self_attn_k_proj",
                 "self_attn.q_proj": "self_attn_q_proj", "self_attn.v_proj": "self_attn_v_proj",
                 "self_attn.out_proj": "self_attn_out_proj"}


# ---------------------------------------------------------------- ComfyUI's mapping rules, reproduced
def comfy_unet_names(unet):
    """model_lora_keys_unet: lora_unet_ + every LDM weight name of the model, and + every diffusers name
    comfy.utils.unet_to_diffusers maps to one (the inverse of our ldm_write mapping)."""
    out = set()
    for key in unet.state_dict():
        key = key.replace(".base_layer", "")
        if "lora_" in key or not key.endswith(".weight"):
            continue
        try:
            (ldm,) = unet_to_ldm({key: None}, unet.config)
        except ValueError:  # Kolors' encoder_hid_proj: not part of the SDXL UNet ComfyUI builds
            continue
        out |= {"lora_unet_" + name[:-len(".weight")].replace(".", "_") for name in (ldm, key)}
    return out


def comfy_clip_names(layers):
    """model_lora_keys_clip for clip_l (lora_te_, lora_te1_) and clip_g (lora_te2_ beside clip_l)."""
    out = set()
    for clip, count in layers.items():
        prefixes = ["lora_te", "lora_te1"] if clip == "clip_l" else ["lora_te2"]
        out |= {f"{p}_text_model_encoder_layers_{b}_{c}" for p in prefixes for b in range(count)
                for c in LORA_CLIP_MAP.values()}
    return out


def not_loaded(lora, mapped):
    """load_lora: each mapped module consumes .lora_up.weight, .lora_down.weight and .alpha; the rest is
    logged as 'lora key not loaded'."""
    consumed = {f"{m}{s}" for m in mapped for s in (".lora_up.weight", ".lora_down.weight", ".alpha")}
    return sorted(set(lora) - consumed)

# real-ComfyUI counts: modules saved (= patched) per family; UNet attention + conv, text encoders
COUNTS = {"sd15": (192, 72), "sdxl": (609, 264), "kolors": (609, 0)}


@pytest.mark.parametrize("family", ["sd15", "sdxl", "kolors"])
def test_every_saved_key_is_mapped_by_comfyui_on_the_real_architecture(family):
    from diffusers import UNet2DConditionModel

    base = "sd15" if family == "sd15" else "sdxl"
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(real_unet_config(family))
        lora = unet_lora(unet, family)
        layers = {}
        for component in TEXT_PARTS[family]:
            encoder = meta_text_encoder(base, component)
            layers["clip_g" if component == "text_encoder_2" else "clip_l"] = encoder.config.num_hidden_layers
            lora.update(text_lora(encoder, component, family))
    mapped = comfy_unet_names(unet) | comfy_clip_names(layers)
    assert not_loaded(lora, mapped) == []
    modules = {k.rsplit(".lora_", 1)[0].removesuffix(".alpha") for k in lora}
    unet_modules = {m for m in modules if m.startswith("lora_unet_")}
    assert (len(unet_modules), len(modules - unet_modules)) == COUNTS[family]
    assert len(lora) == 3 * len(modules)
    assert any(m.endswith("resnets_0_conv1") for m in unet_modules)  # conv LoRA is in
    assert any(m.endswith("upsamplers_0_conv") for m in unet_modules)


def test_kolors_uses_the_sdxl_unet_layout():
    """Kolors-MZ runs Kolors as an SDXL UNet in ComfyUI: our Kolors keys are SDXL keys."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        keys = {f: set(unet_lora(UNet2DConditionModel.from_config(real_unet_config(f)), f)) for f in ("sdxl", "kolors")}
    assert keys["kolors"] == keys["sdxl"]
    assert "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight" in keys["kolors"]


# DiffSynth's own SDXLUNetStateDictConverter.from_civitai table (a30ed909): LDM block -> blocks.N
DIFFSYNTH_TABLE = {"input_blocks.1.0": 0, "input_blocks.2.0": 2, "input_blocks.3.0": 4, "input_blocks.4.0": 6,
                   "input_blocks.4.1": 7, "input_blocks.5.0": 9, "input_blocks.5.1": 10, "input_blocks.6.0": 12,
                   "input_blocks.7.0": 14, "input_blocks.7.1": 15, "input_blocks.8.0": 17, "input_blocks.8.1": 18,
                   "middle_block.1": 21, "output_blocks.0.0": 24, "output_blocks.0.1": 25, "output_blocks.1.0": 27,
                   "output_blocks.1.1": 28, "output_blocks.2.0": 30, "output_blocks.2.1": 31, "output_blocks.2.2": 32,
                   "output_blocks.3.0": 34, "output_blocks.3.1": 35, "output_blocks.4.0": 37, "output_blocks.4.1": 38,
                   "output_blocks.5.0": 40, "output_blocks.5.1": 41, "output_blocks.5.2": 42, "output_blocks.6.0": 44,
                   "output_blocks.7.0": 46, "output_blocks.8.0": 48}


def test_diffsynth_block_table_matches_diffsynths_own_on_the_real_sdxl_unet():
    config = real_unet_config("kolors")
    table = diffsynth.block_table(config)
    to_ldm = {path: ldm for ldm, path in names.ldm_to_diffusers(config).items()}
    for ldm_block, index in DIFFSYNTH_TABLE.items():
        module = next(p for p in names.unet_modules(config) if p.startswith(table[index] + "."))
        assert to_ldm[module].startswith(ldm_block + "."), (index, table[index])
    assert diffsynth.to_diffusers_path("blocks.7.transformer_blocks.0.attn1.to_out", table) == \
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0"
    assert diffsynth.to_diffusers_path("blocks.25.transformer_blocks.3.ff", table) == \
        "up_blocks.0.attentions.0.transformer_blocks.3.ff.net.2"


def test_family_is_guessed_from_real_size_keys():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        for family in ("sd15", "sdxl"):
            lora = unet_lora(UNet2DConditionModel.from_config(real_unet_config(family)), family, conv=False)
            assert guess_family(lora) == family
    diffsynth_key = "blocks.7.transformer_blocks.0.attn1.to_q.lora_A.default.weight"
    assert guess_family({diffsynth_key: torch.zeros(4, 8)}) == "kolors"

