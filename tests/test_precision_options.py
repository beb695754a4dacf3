"""kohya's precision options with their effect: fp8_base / fp8_base_unet (frozen weights stored in
float8, LoRA unchanged, trains, memory drops), full_fp16 (fp16 LoRA and loss-scaled fp16
gradients), no_half_vae (the VAE is fp32 whatever mixed_precision says)."""

import pytest
import torch

from trainer.config import TrainConfig
from trainer.errors import TrainerError
from trainer.models.loader import load_model
from trainer.train.fp8_base import FP8, weight_bytes
from trainer.train.loop import Callbacks, train
from trainer.train.precision import grad_scaler, lower_network_precision


def config_for(model_dir, data, out, **values):
    base = dict(pretrained_model_name_or_path=str(model_dir), train_data_dir=str(data), resolution="64",
                network_dim=4, network_alpha=4, learning_rate=1e-2, train_batch_size=4, max_train_steps=3,
                mixed_precision="bf16", output_dir=str(out), output_name="p", seed=3)
    return TrainConfig(**{**base, **values})


def _frozen_bytes(module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters() if not p.requires_grad)


def _lora_ups(lora) -> list[torch.Tensor]:
    return [t for k, t in lora.tensors.items() if k.endswith("lora_up.weight")]


@pytest.mark.parametrize("family,unet_only", [("sd15", False), ("sdxl", True), ("kolors", False)])
def test_fp8_base_stores_the_frozen_weights_in_float8_and_trains(tiny_models, star_dataset, tmp_path, family,
                                                                 unet_only):
    model_dir = tiny_models(family)
    before = load_model(model_dir, family, "bf16")
    unet_bytes = _frozen_bytes(before.unet)
    encoder_bytes = [weight_bytes(e) for e in before.text_encoders()]
    logs = []
    option = {"fp8_base_unet": True} if unet_only else {"fp8_base": True}
    if family == "sdxl":  # sampling (no autocast) runs on the fp8 UNet with its fp32 LoRA too
        option.update(sample_prompts=["ltdemo"], sample_every_n_steps=2, sample_steps=3)
    result = train(config_for(model_dir, star_dataset, tmp_path, max_train_steps=2, **option),
                   callbacks=Callbacks(log=logs.append))
    if family == "sdxl":
        assert list(result.files) == ["sample_00_s000002"]
    unet = result.model.unet
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert all(t.abs().sum() > 0 for t in _lora_ups(result.lora))  # the LoRA moved off its zero start
    # the frozen Linear/Conv weights are float8; norms, the LoRA and conv_in (unet.dtype) keep their dtype
    dtypes = {n: p.dtype for n, p in unet.named_parameters()}
    assert dtypes["conv_out.weight"] == FP8 and dtypes["conv_out.bias"] == FP8
    assert dtypes["time_embedding.linear_1.weight"] == FP8 and unet.dtype == torch.bfloat16
    assert all(d == torch.float32 for n, d in dtypes.items() if "lora_" in n)
    assert all(d == torch.bfloat16 for n, d in dtypes.items() if "norm" in n and "lora_" not in n)
    ratio = _frozen_bytes(unet) / unet_bytes
    assert ratio < 0.55, ratio  # bf16 -> fp8 halves every weight but the norms
    assert any(line.startswith("fp8_base: unet weights stored in float8") for line in logs)
    for encoder, size in zip(result.model.text_encoders(), encoder_bytes):
        linears = [m.weight.dtype for m in encoder.modules() if isinstance(m, torch.nn.Linear)]
        embeddings = [m.weight.dtype for m in encoder.modules() if isinstance(m, torch.nn.Embedding)]
        if unet_only:  # fp8_base_unet: kohya keeps the text encoders in the weight dtype
            assert set(linears) == {torch.bfloat16} and weight_bytes(encoder) == size
        else:
            assert set(linears) == {FP8} and weight_bytes(encoder) < 0.8 * size
            assert set(embeddings) == {torch.bfloat16}  # kohya: embeddings stay in the weight dtype
    print(f"{family}: UNet frozen weights {unet_bytes} -> {_frozen_bytes(unet)} bytes ({ratio:.3f}x)")


def test_fp8_base_matches_training_on_fp8_rounded_weights(tiny_models, star_dataset, tmp_path):
    """Storage in fp8 changes the weights (rounded), not the arithmetic: same losses as a bf16 run
    whose UNet weights were rounded through fp8 beforehand."""
    model_dir = tiny_models("sd15")
    fp8 = train(config_for(model_dir, star_dataset, tmp_path / "a", fp8_base_unet=True, max_train_steps=2))
    rounded = load_model(model_dir, "sd15", "bf16")
    with torch.no_grad():
        for name, module in rounded.unet.named_modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and name != "conv_in":
                for param in module.parameters(recurse=False):
                    param.copy_(param.to(FP8).to(torch.bfloat16))
    reference = train(config_for(model_dir, star_dataset, tmp_path / "b", max_train_steps=2), model=rounded)
    assert fp8.losses == pytest.approx(reference.losses, rel=1e-3)
    for key, tensor in reference.lora.tensors.items():  # the same LoRA, to bf16 rounding
        assert torch.allclose(fp8.lora.tensors[key].float(), tensor.float(), atol=1e-3), key


def test_fp8_base_needs_mixed_precision():
    with pytest.raises(TrainerError, match="mixed_precision = bf16 or fp16"):
        TrainConfig(fp8_base=True).validate()
    TrainConfig(fp8_base_unet=True, mixed_precision="fp16").validate()


def test_full_fp16_unscales_fp16_gradients_as_kohya_patches_it():
    """kohya's full_fp16: the LoRA in fp16, its fp16 gradients loss-scaled and unscaled (torch's
    own GradScaler refuses fp16 gradients)."""
    layer = torch.nn.Linear(8, 8)
    lora = [torch.nn.Parameter(torch.randn(2, 8) * 0.1), torch.nn.Parameter(torch.zeros(8, 2))]
    config = TrainConfig(mixed_precision="fp16", full_fp16=True)
    lower_network_precision(lora, config, torch.float16)
    assert {p.dtype for p in lora} == {torch.float16}
    optimizer = torch.optim.AdamW(lora, lr=1e-2, eps=1e-4)  # fp16's smallest normal is 6e-5
    scaler = grad_scaler(torch.device("cpu"), torch.float16, full_fp16=True)
    assert scaler.is_enabled() and scaler.get_scale() > 1
    x = torch.randn(16, 8)
    target = layer(x).detach() + 0.5
    losses = []
    for _ in range(5):
        out = layer(x) + (x.half() @ lora[0].t() @ lora[1].t()).float()
        loss = (out - target).pow(2).mean()
        scaler.scale(loss).backward()
        assert lora[1].grad.dtype == torch.float16
        scaler.unscale_(optimizer)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        losses.append(float(loss))
    assert losses[-1] < losses[0] and lora[1].abs().sum() > 0
    plain = grad_scaler(torch.device("cpu"), torch.float16)  # without full_fp16: torch's own
    plain.scale(torch.ones(()))
    lora[0].grad = torch.ones_like(lora[0])
    with pytest.raises(ValueError, match="unscale FP16 gradients"):  # what kohya's patch is for
        plain.unscale_(torch.optim.SGD(lora[:1], lr=0.1))


def test_full_fp16_needs_fp16_and_trains_in_the_run_dtype(tiny_models, star_dataset, tmp_path):
    with pytest.raises(TrainerError, match="full_fp16 needs mixed_precision = fp16"):
        TrainConfig(full_fp16=True, mixed_precision="bf16").validate()
    # on a CPU fp16 runs as bf16 (precision.resolve_precision), and full_fp16 with it
    with pytest.warns(UserWarning, match="training in bf16"):
        result = train(config_for(tiny_models("sd15"), star_dataset, tmp_path, mixed_precision="fp16",
                                  full_fp16=True, max_train_steps=2))
    lora_dtypes = {p.dtype for n, p in result.model.unet.named_parameters() if "lora_" in n}
    assert lora_dtypes == {torch.bfloat16} and all(torch.isfinite(torch.tensor(result.losses)))


def test_the_vae_stays_fp32_whatever_mixed_precision_says(tiny_models, star_dataset, tmp_path):
    """kohya halves the VAE unless no_half_vae; this trainer always encodes in fp32, which is what
    no_half_vae asks for (and what SDXL's VAE needs to avoid NaN latents)."""
    assert {p.dtype for p in load_model(tiny_models("sd15"), "sd15", "fp16").vae.parameters()} == {torch.float32}
    result = train(config_for(tiny_models("sd15"), star_dataset, tmp_path, no_half_vae=False, max_train_steps=1))
    assert {p.dtype for p in result.model.vae.parameters()} == {torch.float32}
    assert result.model.unet.dtype == torch.bfloat16
