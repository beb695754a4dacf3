"""Training options with their effect shown: caching (call counts), epoch saves, samples."""

import re

import numpy as np
import pytest
import torch

from trainer.config import TrainConfig
from trainer.errors import TrainerError
from trainer.train.loop import Callbacks, diffusers_clip_skip, train


def config_for(model_dir, data, out, **values):
    base = dict(pretrained_model_name_or_path=str(model_dir), train_data_dir=str(data), resolution="64",
                network_dim=4, network_alpha=4, learning_rate=1e-3, train_batch_size=4, max_train_epochs=2,
                output_dir=str(out), output_name="opt")
    return TrainConfig(**{**base, **values})


@pytest.mark.parametrize("family", ["sdxl", "kolors"])
def test_caching_encodes_each_image_and_caption_once_and_disk_cache_is_reused(tiny_models, star_dataset,
                                                                               tmp_path, family):
    live = train(config_for(tiny_models(family), star_dataset, tmp_path / "live"))
    assert live.encoder_calls == {"vae": 20, "text": 20}  # 4 images x 10 repeats x 2 epochs / batch 4
    cached_cfg = config_for(tiny_models(family), star_dataset, tmp_path / "c", cache_latents=True,
                            cache_latents_to_disk=True, cache_text_encoder_outputs=True,
                            cache_text_encoder_outputs_to_disk=True)
    first = train(cached_cfg)
    assert first.encoder_calls == {"vae": 4, "text": 1}  # 4 images, 1 distinct caption
    second = train(cached_cfg)
    assert second.encoder_calls == {"vae": 0, "text": 0}
    assert len(list((tmp_path / "c" / "cache").glob("*.safetensors"))) == 5
    # the cached conditioning is the same tensors: identical training
    assert second.losses == first.losses
    memory_only = train(config_for(tiny_models(family), star_dataset, tmp_path / "m", cache_latents=True,
                                   cache_text_encoder_outputs=True))
    assert memory_only.losses == first.losses and not (tmp_path / "m" / "cache").exists()


def test_cache_key_follows_file_content(tiny_models, star_dataset, tmp_path):
    values = dict(cache_latents=True, cache_latents_to_disk=True, max_train_steps=1)
    train(config_for(tiny_models("sd15"), star_dataset, tmp_path, **values))
    image = next((star_dataset / "10_ltdemo").glob("*.png"))
    from PIL import Image

    Image.new("RGB", (96, 96), (0, 255, 0)).save(image)
    again = train(config_for(tiny_models("sd15"), star_dataset, tmp_path, **values))
    assert again.encoder_calls["vae"] == 1  # only the changed image is encoded again


def test_save_every_n_epochs_keeps_the_last_n(tiny_models, star_dataset, tmp_path):
    logs = []
    result = train(config_for(tiny_models("sd15"), star_dataset, tmp_path, max_train_epochs=5,
                              save_every_n_epochs=1, save_last_n_epochs=2, train_batch_size=8),
                   callbacks=Callbacks(log=logs.append))
    names = sorted(p.name for p in tmp_path.glob("opt-*.safetensors"))
    assert names == ["opt-000003.safetensors", "opt-000004.safetensors"]  # epoch 5 is the final save
    assert any("removed old save opt-000001" in line for line in logs)
    assert result.epochs == 5


def test_samples_at_first_every_n_steps_and_epochs_reach_the_callback(tiny_models, star_dataset, tmp_path):
    seen = []
    config = config_for(tiny_models("sdxl"), star_dataset, tmp_path, max_train_epochs=2, sample_at_first=True,
                        sample_every_n_steps=7, sample_every_n_epochs=1, sample_steps=2,
                        sample_prompts=["ltdemo --d 5 --w 64 --h 64"])
    train(config, callbacks=Callbacks(on_samples=lambda step, files: seen.append((step, sorted(files)))))
    # 10 steps per epoch: before step 1, step 7, end of epoch 1 (step 10), step 14, end of epoch 2
    assert [s for s, _ in seen] == [0, 7, 10, 14, 20]
    assert (tmp_path / "samples" / "opt_sample_00_e000001.png").is_file()


def test_clip_skip_uses_kohya_numbering(tiny_models):
    from trainer.models.loader import load_model

    assert diffusers_clip_skip(0) is None and diffusers_clip_skip(1) is None and diffusers_clip_skip(2) == 1
    model = load_model(tiny_models("sd15"))
    enc = model.pipe.text_encoder
    tokens = model.pipe.tokenizer(["ltdemo"], padding="max_length", max_length=77, return_tensors="pt")
    hidden = enc(tokens.input_ids, output_hidden_states=True).hidden_states
    cond = model.family.encode_text(model.pipe, ["ltdemo"], torch.device("cpu"), diffusers_clip_skip(2))
    # kohya's clip_skip 2 = the penultimate layer, passed through the final layer norm
    torch.testing.assert_close(cond.context, getattr(enc, "text_model", enc).final_layer_norm(hidden[-2]))


@pytest.mark.parametrize("stop_after,cache", [(7, False), (10, True)])
def test_interrupted_and_resumed_run_ends_with_the_same_weights(tiny_models, star_dataset, tmp_path,
                                                                 stop_after, cache):
    values = dict(max_train_epochs=3, train_batch_size=4, lr_scheduler="cosine", lr_warmup_steps=3,
                  cache_latents=cache, conv_dim=4, conv_alpha=2)
    whole = train(config_for(tiny_models("sdxl"), star_dataset, tmp_path / "whole", **values))
    seen = []
    out = tmp_path / "parts"
    first = train(config_for(tiny_models("sdxl"), star_dataset, out, **values),
                  callbacks=Callbacks(on_step=lambda s, t, l: seen.append(s), should_stop=lambda: len(seen) >= stop_after))
    assert first.stopped and first.steps == stop_after and (out / "opt-state" / "optimizer.pt").is_file()
    resumed = train(config_for(tiny_models("sdxl"), star_dataset, out, resume=str(out / "opt-state"), **values))
    assert resumed.steps == whole.steps == 30
    assert resumed.losses == pytest.approx(whole.losses, abs=1e-6)
    for key, tensor in whole.lora.tensors.items():
        assert (resumed.lora.tensors[key] - tensor).abs().max() <= 1e-6, key


class UiInterrupt(Exception):
    """What a UI raises from inside a callback (ComfyUI's Cancel: InterruptProcessingException from its
    progress hook, i.e. from on_step)."""


@pytest.mark.parametrize("hook,stop_at", [("on_step", 7), ("on_samples", 10)])
def test_a_callback_that_raises_keeps_the_state_and_the_resume_is_exact(tiny_models, star_dataset, tmp_path,
                                                                        hook, stop_at):
    from trainer.models.loader import load_model

    values = dict(max_train_epochs=2, train_batch_size=4, lr_scheduler="cosine", lr_warmup_steps=3)
    if hook == "on_samples":  # a sample after each epoch: step 10 ends the first
        values.update(sample_prompts=["ltdemo, a star"], sample_every_n_epochs=1, sample_steps=2)
    whole = train(config_for(tiny_models("sdxl"), star_dataset, tmp_path / "whole", **values))

    def raise_at(step, *rest):
        if step == stop_at:
            raise UiInterrupt()

    out = tmp_path / "parts"
    model = load_model(tiny_models("sdxl"))
    with pytest.raises(UiInterrupt):
        train(config_for(tiny_models("sdxl"), star_dataset, out, **values), model=model,
              callbacks=Callbacks(**{hook: raise_at}))
    assert not model.unet.training  # handed back ready for generating
    resumed = train(config_for(tiny_models("sdxl"), star_dataset, out, resume=str(out / "opt-state"), **values),
                    callbacks=Callbacks(on_step=lambda s, t, l: assert_after(s, stop_at)))
    assert resumed.steps == whole.steps == 20
    assert resumed.losses == pytest.approx(whole.losses, abs=1e-6)
    for key, tensor in whole.lora.tensors.items():
        assert (resumed.lora.tensors[key] - tensor).abs().max() <= 1e-6, key


def assert_after(step, stop_at):
    assert step > stop_at, f"step {step} was done before the interrupt at step {stop_at}"


def test_resume_from_a_folder_that_is_not_a_state(tmp_path, tiny_models, star_dataset):
    from trainer.errors import TrainerError

    with pytest.raises(TrainerError, match="Cannot resume from .*lora.safetensors, optimizer.pt, progress.json missing"):
        train(config_for(tiny_models("sd15"), star_dataset, tmp_path, resume=str(tmp_path)))


def test_options_reach_the_loop(tiny_models, star_dataset, tmp_path, monkeypatch):
    from trainer.families.sdxl import SDXL

    seen = []
    original = SDXL.encode_text
    monkeypatch.setattr(SDXL, "encode_text", lambda self, pipe, captions, *a, **k: (
        seen.extend(captions), original(self, pipe, captions, *a, **k))[1])
    values = dict(max_train_steps=12, train_batch_size=2)
    plain = train(config_for(tiny_models("sdxl"), star_dataset, tmp_path / "a", **values))
    assert set(seen) == {"ltdemo, a yellow star, blue background"}
    seen.clear()
    tuned = train(config_for(tiny_models("sdxl"), star_dataset, tmp_path / "b", shuffle_caption=True, keep_tokens=1,
                             caption_tag_dropout_rate=0.3, lr_scheduler="cosine_with_restarts",
                             lr_scheduler_num_cycles=3, lr_warmup_steps=0.25, optimizer_type="Lion",
                             learning_rate=1e-4, noise_offset=0.1, min_snr_gamma=5, loss_type="huber", **values))
    assert all(c.startswith("ltdemo") for c in seen) and len(set(seen)) > 2  # shuffled, tags dropped
    assert any(c.count(",") < 2 for c in seen)
    assert plain.learning_rates == [1e-3] * 12
    lrs = tuned.learning_rates
    assert lrs[0] < lrs[2] < lrs[3] == pytest.approx(1e-4)  # warmup: 25% of 12 steps
    assert sum(1 for i in range(4, 11) if lrs[i] > lrs[i - 1] and lrs[i] > lrs[i + 1]) >= 1  # a restart
    assert tuned.losses != plain.losses


def test_preset_fills_defaults_and_user_values_win(tmp_path):
    config = TrainConfig.from_dict({"preset": "sdxl_character", "network_dim": 16})
    assert (config.network_dim, config.network_alpha, config.unet_lr, config.max_train_epochs) == (16, 4.0, 2e-4, 10)
    assert 'preset = "sdxl_character"' in config.to_toml()


def test_cached_text_and_caption_shuffle_refused():
    from trainer.errors import TrainerError

    with pytest.raises(TrainerError, match="cache_text_encoder_outputs .* shuffle_caption"):
        TrainConfig(cache_text_encoder_outputs=True, shuffle_caption=True).validate()


def test_validation_split_holds_out_images_and_reports_a_loss_per_epoch(tiny_models, tmp_path):
    from conftest import paint

    data = tmp_path / "data"
    for i in range(5):
        paint(data / "2_thing" / f"{i}.png", box=(4 * i, 8, 40, 40))
    logs = []
    result = train(config_for(tiny_models("sd15"), data, tmp_path / "out", validation_split=0.2, max_train_epochs=3,
                              train_batch_size=2), callbacks=Callbacks(log=logs.append))
    assert result.steps == 3 * 4  # 4 training images x 2 repeats / batch 2, the 5th is held out
    assert [epoch for epoch, _ in result.validation_losses] == [1, 2, 3]
    assert any("validation loss" in line and "1 held-out images" in line for line in logs)
    assert any("s/step: about" in line for line in logs)


def test_overfitting_signal_names_seed_000_remedies():
    from trainer.train.validation import overfitting_warning

    falling = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5]
    assert overfitting_warning(falling, [(1, 0.5), (2, 0.45), (3, 0.44)]) is None
    warning = overfitting_warning(falling, [(1, 0.4), (2, 0.45), (3, 0.5)])
    assert "over-fitting" in warning and "lower the learning rate" in warning and "fewer epochs" in warning


def test_regularization_is_balanced_as_kohya_and_weighted(tiny_models, star_dataset, tmp_path):
    from conftest import paint
    from trainer.data.dataset import add_regularization, load_dataset
    from trainer.train.batches import epoch_order

    reg = tmp_path / "reg"
    for i in range(3):
        paint(reg / "1_star" / f"{i}.png", colour=(40, 40, 40))
    data = add_regularization(load_dataset(star_dataset), reg)
    assert (data.num_images, data.num_reg_images, data.num_train_samples, data.num_samples) == (4, 3, 40, 80)
    order = epoch_order(data, 0, 0)
    regs = [i for i in order if data.items[i].is_reg]
    assert len(regs) == 40 and {regs.count(i) for i in set(regs)} <= {13, 14}  # cycled evenly
    assert all(data.items[i].caption == "star" for i in regs)  # class token from the folder name
    result = train(config_for(tiny_models("sd15"), star_dataset, tmp_path / "o", reg_data_dir=str(reg),
                              prior_loss_weight=0.0, train_batch_size=1, max_train_epochs=1))
    assert result.steps == 80
    zero = [loss for loss in result.losses if loss == 0.0]
    assert len(zero) == 40  # regularization samples weigh nothing with prior_loss_weight 0
    assert result.lora.metadata["ss_num_reg_images"] == "3"


def test_augmentations_change_what_the_vae_sees_and_refuse_cached_latents(tiny_models, tmp_path):
    import random

    from conftest import paint
    from trainer.data.augment import Augment, fit_image
    from trainer.errors import TrainerError

    path = paint(tmp_path / "a.png", size=(128, 64), colour=(200, 30, 30), box=(32, 0, 48, 64),
                 box_colour=(255, 255, 255))
    rng = random.Random(0)
    flips = [fit_image(path, 64, 64, Augment(flip_aug=True), rng)[0].pixels for _ in range(20)]
    lefts = [float(p[:, :, :8].mean()) for p in flips]
    assert min(lefts) < -0.2 < max(lefts)  # the white bar ends up on either side
    crops = {fit_image(path, 64, 64, Augment(random_crop=True), rng)[0].crop_top_left for _ in range(20)}
    assert len(crops) > 5 and all(top == 0 and 0 <= left <= 64 for top, left in crops)
    hue = fit_image(path, 64, 64, Augment(color_aug=True), random.Random(3))[0].pixels
    plain = fit_image(path, 64, 64, Augment(), rng)[0].pixels
    assert 0 < (hue - plain).abs().mean() < 0.2
    with pytest.raises(TrainerError, match="cache_latents .* flip_aug"):
        TrainConfig(cache_latents=True, flip_aug=True).validate()


def test_buckets_keep_the_whole_picture_never_mix_and_reach_the_time_ids(tiny_models, tmp_path, monkeypatch):
    from conftest import paint
    from trainer.train import step

    data = tmp_path / "data" / "1_x"
    paint(data / "wide1.png", size=(320, 192))
    paint(data / "wide2.png", size=(640, 384))
    paint(data / "tall.png", size=(192, 320))
    paint(data / "square.png", size=(200, 200))
    seen = []
    original = step.batch_time_ids
    monkeypatch.setattr("trainer.train.micro_batch.batch_time_ids",
                        lambda family, batch, w, h: (seen.append((batch.latents.shape, original(family, batch, w, h))),
                                                     seen[-1][1])[1])
    config = config_for(tiny_models("sdxl"), tmp_path / "data", tmp_path / "out", resolution="256",
                        enable_bucket=True, min_bucket_reso=64, max_bucket_reso=512, train_batch_size=2,
                        max_train_epochs=2)
    result = train(config)
    assert result.steps == 2 * 3  # buckets 320x192 (2 images), 192x320, 256x256: three batches per epoch
    assert {tuple(shape) for shape, _ in seen} == {(2, 4, 24, 40), (1, 4, 40, 24), (1, 4, 32, 32)}  # never mixed
    for shape, ids in seen:
        assert all(row[4:] == [shape[2] * 8, shape[3] * 8] for row in ids.tolist())  # target size = bucket
    wide = [ids for shape, ids in seen if shape[0] == 2][0].tolist()
    assert sorted(tuple(r[:4]) for r in wide) == [(192, 320, 0, 0), (384, 640, 0, 0)]  # nothing cropped
    import json

    info = json.loads(result.lora.metadata["ss_bucket_info"])
    assert sum(b["count"] for b in info["buckets"].values()) == 4


def test_gradient_accumulation_steps_like_the_bigger_batch(tiny_models, star_dataset, tmp_path):
    """batch 2 x 2 accumulated makes batch 4's number of optimizer steps and moves the LoRA as far
    (Adam moves ~lr per step), while batch 2 alone takes twice the steps and moves about twice as far."""
    values = dict(max_train_epochs=1, learning_rate=1e-3)
    big = train(config_for(tiny_models("sd15"), star_dataset, tmp_path / "a", train_batch_size=4, **values))
    acc = train(config_for(tiny_models("sd15"), star_dataset, tmp_path / "b", train_batch_size=2,
                           gradient_accumulation_steps=2, **values))
    small = train(config_for(tiny_models("sd15"), star_dataset, tmp_path / "c", train_batch_size=2, **values))
    assert big.steps == acc.steps == 10 and small.steps == 20  # 40 samples per epoch
    assert len(acc.learning_rates) == 10

    def moved(result):
        return sum(float(v.norm()) for k, v in result.lora.tensors.items() if k.endswith("lora_up.weight"))

    assert abs(moved(acc) / moved(big) - 1) < 0.2 and moved(small) / moved(big) > 1.5


def test_network_dropout_changes_training(tiny_models, star_dataset, tmp_path):
    values = dict(max_train_steps=4, learning_rate=1e-3)
    plain = train(config_for(tiny_models("sd15"), star_dataset, tmp_path / "a", **values))
    dropped = train(config_for(tiny_models("sd15"), star_dataset, tmp_path / "b", network_dropout=0.5, **values))
    assert plain.losses[0] == dropped.losses[0]  # LoRA up starts at zero: the first step is the same
    assert any((plain.lora.tensors[k] != dropped.lora.tensors[k]).any() for k in plain.lora.tensors)


@pytest.mark.parametrize("family,prefixes", [("sd15", {"lora_unet", "lora_te"}),
                                             ("sdxl", {"lora_unet", "lora_te1", "lora_te2"})])
def test_text_encoder_lora_trains_saves_in_comfyui_keys_and_reloads(tiny_models, star_dataset, tmp_path,
                                                                    family, prefixes):
    from trainer.lora.apply import apply_lora
    from trainer.models.loader import load_model
    from trainer.sample import generate
    from trainer.train.loop import save_outputs

    config = config_for(tiny_models(family), star_dataset, tmp_path, max_train_steps=6, learning_rate=1e-3,
                        text_encoder_lr=5e-4, save_precision="fp32")
    result = train(config)
    keys = result.lora.tensors
    assert {re.split(r"_text_model|_(?:down|up|input|output)_blocks|_mid(?:dle)?_block", k)[0] for k in keys} == prefixes
    te_ups = [v for k, v in keys.items() if k.startswith("lora_te") and k.endswith("lora_up.weight")]
    # the text-encoder LoRA learned (SDXL reads CLIP-L's penultimate layer: its last layer gets no gradient)
    assert te_ups and sum(bool(v.abs().sum() > 0) for v in te_ups) >= 0.8 * len(te_ups)
    assert any(k.startswith(sorted(prefixes)[0] + "_text_model_encoder_layers_0_self_attn_q_proj") for k in keys)
    assert result.lora.metadata["ss_text_encoder_lr"] == "0.0005"
    files = save_outputs(result, config)
    args = dict(prompt="ltdemo, a yellow star", seed=3, steps=3, width=64, height=64, sampler="euler",
                output_type="latent")
    fresh = load_model(tiny_models(family))
    apply_lora(fresh, files["lora"])
    torch.testing.assert_close(generate(fresh, **args), generate(result.model, **args), atol=1e-4, rtol=1e-4)


def test_text_encoder_options_that_cannot_work(tiny_models, star_dataset, tmp_path):
    from trainer.errors import TrainerError

    with pytest.raises(TrainerError, match="cache_text_encoder_outputs cannot be used while training the text"):
        TrainConfig(cache_text_encoder_outputs=True, text_encoder_lr=1e-5).validate()
    assert TrainConfig(cache_text_encoder_outputs=True, text_encoder_lr=1e-5, network_train_unet_only=True).validate()
    logs = []
    result = train(config_for(tiny_models("kolors"), star_dataset, tmp_path, max_train_steps=2, text_encoder_lr=1e-4),
                   callbacks=Callbacks(log=logs.append))
    assert any("ChatGLM text encoder stays frozen" in line for line in logs)
    assert all(k.startswith("lora_unet_") for k in result.lora.tensors)


def test_full_bf16_release_text_encoder_smoothed_loss_and_v_prediction(tiny_models, star_dataset, tmp_path):
    from trainer.errors import TrainerError
    from trainer.sample import generate

    bf16 = train(config_for(tiny_models("sdxl"), star_dataset, tmp_path / "a", max_train_steps=3,
                            mixed_precision="bf16", full_bf16=True))
    assert {v.dtype for k, v in bf16.lora.tensors.items() if k.endswith("weight")} == {torch.bfloat16}
    assert all(np.isfinite(bf16.losses))
    with pytest.raises(TrainerError, match="full_bf16 needs mixed_precision = bf16"):
        TrainConfig(full_bf16=True).validate()

    smoothed = []
    released = train(config_for(tiny_models("kolors"), star_dataset, tmp_path / "b", max_train_steps=4,
                                cache_text_encoder_outputs=True, release_text_encoder=True),
                     callbacks=Callbacks(on_loss=lambda s, loss, avg: smoothed.append((loss, avg))))
    assert released.model.pipe.text_encoder is None and released.encoder_calls["text"] == 1
    assert smoothed[0][0] == smoothed[0][1] and smoothed[1][1] == pytest.approx(0.9 * smoothed[0][0] + 0.1 * smoothed[1][0])
    with pytest.raises(TrainerError, match="text encoder was released"):
        generate(released.model, "x")

    eps = train(config_for(tiny_models("sd15"), star_dataset, tmp_path / "c", max_train_steps=2))
    v = train(config_for(tiny_models("sd15"), star_dataset, tmp_path / "d", max_train_steps=2, v_parameterization=True))
    assert eps.losses != v.losses
    assert eps.lora.metadata["lt_preset"] == "none"


def test_smart_crop_source_size_and_offset_reach_the_time_ids(tiny_models, tmp_path):
    from dataclasses import replace

    from conftest import paint
    from trainer.data.dataset import load_dataset
    from trainer.models.loader import load_model
    from trainer.train.sources import LatentSource

    paint(tmp_path / "a.png", size=(64, 64))
    data = load_dataset(tmp_path)
    data = replace(data, items=[replace(data.items[0], source_size=(300, 400), source_crop=(10, 120))])
    batch = LatentSource(load_model(tiny_models("sdxl")), data, 64, 64).batch([0], None, "cpu")
    assert batch.original_sizes == [(300, 400)] and batch.crops == [(10, 120)]


def test_unknown_network_module_is_refused_naming_the_known_ones(tmp_path):
    config = config_for(tmp_path / "no-model", tmp_path / "no-data", tmp_path, network_module="networks.oft")
    with pytest.raises(TrainerError, match='network_module "networks.oft".*"networks.lora", "lycoris.kohya"'):
        train(config)  # refused before the (missing) data or model is touched
    assert not list(tmp_path.iterdir())
