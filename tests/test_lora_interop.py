"""LoRA interop (issue 6) on tiny models: diffusers loads our files with nothing missing and the same
images, every known layout (kohya LDM/diffusers naming with/without alpha, diffusers/peft, ComfyUI core
trainer, DiffSynth-Studio Lightning .ckpt) imports and converts back to ours exactly, pickles never run
code, round trips reproduce the in-memory LoRA, metadata is summarised. ComfyUI key mapping on the real
architectures: tests/test_lora_comfy_keys.py; the files of each layout: tests/lora_builders.py."""

import json
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lora_builders import (TEXT_PARTS, comfy_trainer_file, diffsynth_state, peft_file, rename_unet, text_lora,
                           to_ldm_name, unet_lora)
from trainer.errors import TrainerError
from trainer.families import get_family
from trainer.lora.apply import apply_lora, read_lora_file, read_raw
from trainer.lora.formats import detect_format, to_kohya
from trainer.lora.kohya_format import TrainedLora, save_lora
from trainer.lora.metadata import describe_file, read_metadata, summarize
from trainer.lora.network import ADAPTER
from trainer.models.loader import load_model
from trainer.sample import generate

GEN = dict(prompt="ltdemo, a yellow star", seed=3, steps=3, cfg=4.0, width=64, height=64, sampler="euler",
           output_type="latent")


# ---------------------------------------------------------------- tiny models: diffusers, import, round trip
@pytest.fixture(scope="module")
def canon(tiny_models):
    """{family: (tensors, in-memory latents, plain latents)}: a random LoRA live on a tiny model (UNet
    attention, + conv for SDXL, + text encoders for SD1.5/SDXL) and what it generates."""
    out = {}
    for family in ("sdxl", "sd15", "kolors"):
        model = load_model(tiny_models(family))
        plain = generate(model, **GEN)
        alpha = 4.0 if family == "kolors" else 2.0  # Kolors: DiffSynth's default, as seed 001 trained
        tensors = unet_lora(model.pipe.unet, family, alpha=alpha, conv=family == "sdxl", seed=1)
        for i, component in enumerate(TEXT_PARTS[family]):
            tensors.update(text_lora(getattr(model.pipe, component), component, family, seed=2 + i))
        out[family] = (tensors, generate(model, **GEN), plain, dict(model.pipe.unet.peft_config[ADAPTER].to_dict()))
    return out


def lora_modules(module, adapter):
    return {n for n, m in module.named_modules() if hasattr(m, "lora_A") and adapter in m.lora_A}


@pytest.mark.parametrize("family", ["sdxl", "sd15", "kolors"])
def test_diffusers_loads_our_file_with_nothing_missing_and_same_images(canon, tiny_models, tmp_path, family, caplog):
    tensors, in_memory, plain, _ = canon[family]
    path = save_lora(TrainedLora(tensors, {"ss_network_dim": "4"}), tmp_path / "ours.safetensors", "fp32")
    model = load_model(tiny_models(family))
    assert type(model.pipe).__name__ == get_family(family).pipeline_class_name
    caplog.set_level("WARNING")
    # diffusers itself, no conversion of ours (folder + weight_name: offline, diffusers < 0.36 wants both)
    model.pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="ours")
    complaints = ("unexpected", "missing", "not found")
    # diffusers notes a text encoder the file has no keys for (Kolors' ChatGLM: no TE LoRA by design)
    no_keys_for = "no lora keys associated to"
    assert not [r for r in caplog.records if any(w in r.getMessage().lower() for w in complaints)
                and not (family == "kolors" and r.getMessage().lower().startswith(no_keys_for))]
    saved = {k.rsplit(".lora_", 1)[0].removesuffix(".alpha") for k in tensors}
    loaded = len(lora_modules(model.pipe.unet, "ours"))
    for component in TEXT_PARTS[family]:
        loaded += len(lora_modules(getattr(model.pipe, component), "ours"))
    assert loaded == len(saved)
    assert (in_memory - plain).abs().max() > 1e-3  # the LoRA changes the picture
    torch.testing.assert_close(generate(model, **GEN), in_memory, atol=1e-4, rtol=1e-4)

def assert_same_tensors(got, want):
    assert set(got) == set(want)
    for key in want:
        torch.testing.assert_close(got[key].float(), want[key].float(), atol=0, rtol=0, msg=key)


def with_alpha(tensors, fn):
    return {k: (torch.tensor(float(fn(k))) if k.endswith(".alpha") else v) for k, v in tensors.items()}


def test_every_layout_converts_back_to_ours_exactly(canon, tiny_models, tmp_path):
    from diffusers import UNet2DConditionModel

    for family in ("sdxl", "sd15"):
        tensors, _, _, peft_config = canon[family]
        config = UNet2DConditionModel.load_config(str(tiny_models(family) / "unet"))
        ldm = rename_unet(tensors, config, to_ldm_name(config))
        assert any("input_blocks" in k for k in ldm) and detect_format(ldm) == "kohya"
        assert_same_tensors(to_kohya(ldm, family, config), tensors)
        rank_alpha = with_alpha(tensors, lambda k: 4.0)  # no alpha stored: kohya and diffusers mean alpha = rank
        assert_same_tensors(to_kohya({k: v for k, v in ldm.items() if not k.endswith(".alpha")}, family, config),
                            rank_alpha)
        comfy = comfy_trainer_file(tensors, config)
        assert detect_format(comfy) == "comfy"
        with pytest.warns(UserWarning, match="full-weight deltas"):
            got = to_kohya(comfy, family, config)
        assert_same_tensors(got, {k: v for k, v in tensors.items() if k.startswith("lora_unet_")})
        path = peft_file(tensors, config, family, tmp_path / family)
        assert detect_format(read_raw(path)[0]) == "peft"
        assert_same_tensors(read_lora_file(path, family, config), rank_alpha)
        path = peft_file(tensors, config, family, tmp_path / f"{family}_meta", peft_config)
        want = {k: v for k, v in tensors.items()}  # UNet alphas from the stored LoraConfig (incl. conv pattern)
        want = with_alpha(want, lambda k: want[k].item() if k.startswith("lora_unet_") else 4.0)
        assert_same_tensors(read_lora_file(path, family, config), want)
    tensors, _, _, _ = canon["kolors"]
    config = UNet2DConditionModel.load_config(str(tiny_models("kolors") / "unet"))
    state = diffsynth_state(tensors, config)
    assert "blocks.7.transformer_blocks.0.attn1.to_q.lora_A.default.weight" in state  # the seed's key
    assert detect_format(state) == "diffsynth"
    assert_same_tensors(to_kohya(state, "kolors", config), tensors)  # alpha 4.0 by default
    assert_same_tensors(to_kohya(state, "kolors", config, alpha=2.0), with_alpha(tensors, lambda k: 2.0))


def test_imported_layouts_give_the_in_memory_images(canon, tiny_models, tmp_path):
    """LDM-named kohya (SDXL), ComfyUI-trainer (SDXL), peft with stored config (SD1.5, text encoder too)."""
    from diffusers import UNet2DConditionModel

    tensors, in_memory, _, peft_config = canon["sdxl"]
    config = UNet2DConditionModel.load_config(str(tiny_models("sdxl") / "unet"))
    save_file(rename_unet(tensors, config, to_ldm_name(config)), str(tmp_path / "ldm.safetensors"))
    model = load_model(tiny_models("sdxl"))
    apply_lora(model, tmp_path / "ldm.safetensors")
    torch.testing.assert_close(generate(model, **GEN), in_memory, atol=1e-4, rtol=1e-4)

    unet_only = {k: v for k, v in tensors.items() if k.startswith("lora_unet_")}
    save_file(comfy_trainer_file(unet_only, config), str(tmp_path / "comfy.safetensors"))
    model, reference = load_model(tiny_models("sdxl")), load_model(tiny_models("sdxl"))
    with pytest.warns(UserWarning):
        apply_lora(model, tmp_path / "comfy.safetensors")
    apply_lora(reference, TrainedLora(unet_only))
    torch.testing.assert_close(generate(model, **GEN), generate(reference, **GEN), atol=1e-4, rtol=1e-4)

    tensors, in_memory, _, peft_config = canon["sd15"]
    config = UNet2DConditionModel.load_config(str(tiny_models("sd15") / "unet"))
    model = load_model(tiny_models("sd15"))
    path = peft_file(tensors, config, "sd15", tmp_path, peft_config, {"r": 4, "lora_alpha": 2.0})
    apply_lora(model, path)  # alphas from the stored LoraConfigs; the text-encoder LoRA applies too
    assert lora_modules(model.pipe.text_encoder, path.stem)
    torch.testing.assert_close(generate(model, **GEN), in_memory, atol=1e-4, rtol=1e-4)
    apply_lora(model, path, strength=0.0)  # strength reaches the text encoder as well as the UNet
    torch.testing.assert_close(generate(model, **GEN), canon["sd15"][2], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("wrapped", [False, True])
def test_diffsynth_lightning_ckpt_applies_and_converts(canon, tiny_models, tmp_path, wrapped):
    """The seed's lightning_logs/version_0/checkpoints/epoch=0-step=500.ckpt: DiffSynth clears the Lightning
    checkpoint and stores the LoRA tensors at the top; a plain Lightning file nests them in state_dict."""
    from diffusers import UNet2DConditionModel

    from trainer.cli import main

    tensors, in_memory, _, _ = canon["kolors"]
    config = UNet2DConditionModel.load_config(str(tiny_models("kolors") / "unet"))
    state = diffsynth_state(tensors, config)
    ckpt = tmp_path / "lightning_logs/version_0/checkpoints/epoch=0-step=500.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": state, "epoch": 0, "global_step": 500} if wrapped else state, ckpt)
    model = load_model(tiny_models("kolors"))
    apply_lora(model, ckpt)  # alpha not stored: 4.0, as seed 001 trained
    torch.testing.assert_close(generate(model, **GEN), in_memory, atol=1e-4, rtol=1e-4)

    out = tmp_path / "kolors_lora.safetensors"
    assert main(["convert", str(ckpt), str(out), "--model", str(tiny_models("kolors")), "--precision", "fp32"]) == 0
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
        assert all(k.startswith("lora_unet_") for k in f.keys())
    assert meta["lt_converted_from"] == "diffsynth" and meta["lt_family"] == "kolors"
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "4.0"
    model = load_model(tiny_models("kolors"))
    apply_lora(model, out)
    torch.testing.assert_close(generate(model, **GEN), in_memory, atol=1e-4, rtol=1e-4)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def test_a_pickle_that_would_run_code_is_refused(tmp_path, tiny_models):
    marker = tmp_path / "pwned.txt"
    bad = tmp_path / "epoch=0-step=500.ckpt"
    bad.write_bytes(pickle.dumps({"state_dict": {"x": _RunsCode(marker)}}))
    with pytest.raises(TrainerError, match="refused.*would run code"):
        read_lora_file(bad, "kolors")
    model = load_model(tiny_models("sd15"))
    with pytest.raises(TrainerError, match="refused"):
        apply_lora(model, bad)
    assert not marker.exists()


def test_bad_inputs_fail_with_one_clear_line(canon, tiny_models, tmp_path):
    from diffusers import UNet2DConditionModel

    tensors, _, _, _ = canon["sd15"]
    with pytest.raises(TrainerError, match="no match in the sdxl model"):
        to_kohya(tensors, "sdxl", UNet2DConditionModel.load_config(str(tiny_models("sdxl") / "unet")))
    broken = {k: v for k, v in tensors.items() if not k.endswith("lora_up.weight")}
    with pytest.raises(TrainerError, match="lacks its up weight"):
        to_kohya(broken, "sd15", UNet2DConditionModel.load_config(str(tiny_models("sd15") / "unet")))
    with pytest.raises(TrainerError, match="not a LoRA"):
        to_kohya({"model.weight": torch.zeros(2)}, "sd15")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(TrainerError, match="not a dict of tensors"):
        read_lora_file(tmp_path / "list.pt", "sd15")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(TrainerError, match="must be .safetensors, .ckpt"):
        read_lora_file(tmp_path / "x.txt", "sd15")


def test_metadata_is_read_and_summarised(tmp_path, capsys):
    from trainer.cli import main

    meta = {"ss_network_dim": "8", "ss_network_alpha": "4.0", "ss_steps": "500",
            "ss_base_model_version": "sdxl_base_v1-0",
            "modelspec.architecture": "stable-diffusion-xl-v1-base/lora", "modelspec.trigger_phrase": "ltdemo",
            "ss_tag_frequency": json.dumps({"10_ltdemo": {f"tag{i}": 20 - i for i in range(12)} | {"ltdemo": 40}})}
    module = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
    lora = {f"{module}.lora_down.weight": torch.zeros(8, 2048), f"{module}.lora_up.weight": torch.zeros(640, 8),
            f"{module}.alpha": torch.tensor(4.0)}
    src = save_lora(TrainedLora(lora, meta), tmp_path / "in.safetensors", "fp16")
    summary = summarize(read_metadata(src))
    assert (summary["family"], summary["rank"], summary["alpha"], summary["steps"]) == ("sdxl", 8, 4.0, 500)
    assert summary["trigger_words"] == "ltdemo"
    assert summary["top_tags"][0] == ("ltdemo", 40) and len(summary["top_tags"]) == 10
    assert describe_file(src).startswith("family sdxl, LoRA, rank 8, alpha 4.0, steps 500; trigger words: ltdemo")
    assert main(["convert", str(src), str(tmp_path / "out.safetensors")]) == 0  # family auto: width 2048 = SDXL
    printed = capsys.readouterr().out
    assert "kohya -> kohya (1 modules)" in printed and "trigger words: ltdemo" in printed and "ltdemo (40)" in printed
    kept = read_metadata(tmp_path / "out.safetensors")
    assert kept["ss_tag_frequency"] == meta["ss_tag_frequency"] and kept["lt_family"] == "sdxl"
