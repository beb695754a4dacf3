"""Loading diffusers folders: family detection, the families' conditioning, clear errors."""

import shutil

import pytest
import torch

from trainer.errors import TrainerError
from trainer.families import get_family
from trainer.models.loader import load_model


@pytest.mark.parametrize("family", ["sd15", "sdxl", "kolors"])
def test_family_is_detected_and_parts_load(tiny_models, family):
    model = load_model(tiny_models(family))
    assert model.family.name == family
    assert model.vae.dtype == torch.float32 and not any(p.requires_grad for p in model.unet.parameters())


def test_conditioning_shapes_per_family(tiny_models):
    captions = ["a red circle", "ltdemo, a yellow star"]
    sdxl = load_model(tiny_models("sdxl"))
    cond = sdxl.family.encode_text(sdxl.pipe, captions, torch.device("cpu"))
    assert cond.context.shape == (2, 77, 64) and cond.pooled.shape == (2, 32)  # CLIP-L + CLIP-G concat
    kolors = load_model(tiny_models("kolors"))
    cond = kolors.family.encode_text(kolors.pipe, captions, torch.device("cpu"))
    assert cond.context.shape == (2, 256, 16) and cond.pooled.shape == (2, 16)
    # context = hidden_states[-2], pooled = last token of hidden_states[-1]; left padding
    tok = kolors.pipe.tokenizer(captions, padding="max_length", max_length=256, return_tensors="pt")
    assert tok["attention_mask"][0, 0] == 0 and tok["attention_mask"][0, -1] == 1
    out = kolors.pipe.text_encoder(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"],
                                   position_ids=tok["position_ids"],
                                   output_hidden_states=True)
    torch.testing.assert_close(cond.context, out.hidden_states[-2].permute(1, 0, 2))
    torch.testing.assert_close(cond.pooled, out.hidden_states[-1][-1])
    sd15 = load_model(tiny_models("sd15"))
    cond = sd15.family.encode_text(sd15.pipe, captions, torch.device("cpu"))
    assert cond.context.shape == (2, 77, 32) and cond.pooled is None


def test_training_schedules():
    kolors = get_family("kolors").training_scheduler().config
    assert (kolors.num_train_timesteps, kolors.beta_end, kolors.beta_schedule) == (1100, 0.014, "scaled_linear")
    sdxl = get_family("sdxl").training_scheduler().config
    assert (sdxl.num_train_timesteps, sdxl.beta_start, sdxl.beta_end) == (1000, 0.00085, 0.012)


def test_time_ids_carry_original_size_and_crop(tiny_models):
    from trainer.train.sources import LatentBatch
    from trainer.train.step import batch_time_ids

    model = load_model(tiny_models("sdxl"))
    batch = LatentBatch(torch.zeros(1, 4, 8, 8), [(100, 200)], [(0, 32)])
    assert batch_time_ids(model.family, batch, 64, 64).tolist() == [[100, 200, 0, 32, 64, 64]]


def test_missing_folder_component_and_unknown_family(tiny_models, tmp_path):
    with pytest.raises(TrainerError, match="Model not found"):
        load_model(tmp_path / "nothing")
    with pytest.raises(TrainerError, match="not a diffusers model folder"):
        load_model(tmp_path)
    broken = shutil.copytree(tiny_models("sdxl"), tmp_path / "broken")
    (broken / "text_encoder_2" / "config.json").unlink()
    with pytest.raises(TrainerError, match=r"text encoder 2 .*text_encoder_2/config.json not found"):
        load_model(broken)
    no_tok = shutil.copytree(tiny_models("kolors"), tmp_path / "no_tok")
    (no_tok / "text_encoder" / "tokenizer.model").unlink()
    with pytest.raises(TrainerError, match="ChatGLM tokenizer not found"):
        load_model(no_tok)
    with pytest.raises(TrainerError, match="Unknown model family 'flux'"):
        load_model(tiny_models("sdxl"), family="flux")


def test_bf16_training_step_is_finite(tiny_models, star_dataset):
    from trainer.config import TrainConfig
    from trainer.train.loop import train

    config = TrainConfig(pretrained_model_name_or_path=str(tiny_models("sdxl")), train_data_dir=str(star_dataset),
                         resolution="64", mixed_precision="bf16", max_train_steps=3, gradient_checkpointing=True)
    result = train(config)
    assert result.model.unet.dtype == torch.bfloat16 and all(torch.isfinite(torch.tensor(result.losses)))
    assert all(v.dtype == torch.float32 for v in result.lora.tensors.values())


def test_should_stop_ends_within_one_step(tiny_models, star_dataset):
    from trainer.config import TrainConfig
    from trainer.train.loop import Callbacks, train

    seen = []
    callbacks = Callbacks(on_step=lambda s, t, l: seen.append(s), should_stop=lambda: len(seen) >= 3)
    config = TrainConfig(pretrained_model_name_or_path=str(tiny_models("sd15")), train_data_dir=str(star_dataset),
                         resolution="64", max_train_epochs=5)
    result = train(config, callbacks=callbacks)
    assert result.steps == 3 and result.stopped and result.total_steps == 200


def test_nan_loss_stops_with_causes_and_writes_nothing(tiny_models, star_dataset, tmp_path):
    from trainer.config import TrainConfig
    from trainer.train.loop import train

    out = tmp_path / "out"
    config = TrainConfig(pretrained_model_name_or_path=str(tiny_models("sd15")), train_data_dir=str(star_dataset),
                         resolution="64", learning_rate=1e30, max_grad_norm=0, max_train_steps=20,
                         output_dir=str(out))
    with pytest.raises(TrainerError, match=r"Loss became (nan|inf) at step \d+\. Likely causes: learning rate"):
        train(config)
    assert not out.exists()


def test_fp16_variant_folder_loads_in_the_asked_dtype(tiny_models, tmp_path):
    """Kolors-diffusers ships only *.fp16.safetensors weights."""
    folder = shutil.copytree(tiny_models("kolors"), tmp_path / "kolors_fp16")
    for sub, name in (("unet", "diffusion_pytorch_model"), ("text_encoder", "model")):
        (folder / sub / f"{name}.safetensors").rename(folder / sub / f"{name}.fp16.safetensors")
    model = load_model(folder, dtype="bf16")
    assert model.unet.dtype == torch.bfloat16 and model.pipe.text_encoder.dtype == torch.bfloat16
    reference = load_model(tiny_models("kolors"), dtype="bf16")
    assert torch.equal(model.unet.conv_in.weight, reference.unet.conv_in.weight)
