"""AutocastLoraInputs: under autocast the LoRA layers skip peft's fp32 up-cast of their input,
with exactly the same loss and gradients, and peft casts again outside it."""

import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from trainer.families.base import CONV_TARGETS
from trainer.lora.network import AutocastLoraInputs, add_unet_lora, autocast_lora_inputs
from trainer.models.loader import load_model


class CountUpcasts(TorchDispatchMode):
    """Counts casts to fp32 of tensors bigger than a LoRA weight (activations, their gradients)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten._to_copy.default and out.dtype == torch.float32 and out.numel() > 4096:
            self.count += 1
        return out


def _step(unet, autocast, inputs):
    unet.zero_grad(set_to_none=True)
    counter = CountUpcasts()
    with counter, autocast:
        out = unet(*inputs[:2], encoder_hidden_states=inputs[2]).sample
    loss = torch.nn.functional.mse_loss(out.float(), inputs[3])
    with counter:
        loss.backward()
    grads = {n: p.grad.clone() for n, p in unet.named_parameters() if p.requires_grad}
    return loss.detach(), grads, counter.count


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_same_loss_and_gradients_without_the_input_upcasts(tiny_models, family):
    model = load_model(tiny_models(family), family, torch.bfloat16)
    unet = model.unet
    add_unet_lora(unet, 4, 4, model.family.lora_targets, conv_rank=4, conv_alpha=4, conv_targets=CONV_TARGETS)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:  # peft starts up-weights at zero: give the LoRA an effect
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
    cfg = unet.config
    latents = torch.randn(2, cfg.in_channels, 16, 16, generator=gen).to(torch.bfloat16)
    cond = torch.randn(2, 7, cfg.cross_attention_dim, generator=gen).to(torch.bfloat16)
    inputs = (latents, torch.tensor([10, 500]), cond, torch.randn(2, cfg.out_channels, 16, 16, generator=gen))
    if family == "sdxl":  # tiny SDXL needs its added conditions
        embeds = torch.randn(2, cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim,
                             generator=gen).to(torch.bfloat16)
        unet.forward = _with_added(unet.forward, embeds)
    unet.train()

    plain = torch.autocast("cpu", dtype=torch.bfloat16)
    skipping = autocast_lora_inputs(plain, unet)
    assert isinstance(skipping, AutocastLoraInputs)
    loss_a, grads_a, upcasts_a = _step(unet, plain, inputs)
    loss_b, grads_b, upcasts_b = _step(unet, skipping, inputs)
    assert torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
    assert all(torch.equal(grads_a[n], grads_b[n]) for n in grads_a)
    assert upcasts_b < upcasts_a - len(skipping.layers)  # the forward and backward up-casts of every layer

    # outside the context peft casts again: a bf16 forward without autocast still runs
    with torch.no_grad():
        unet(*inputs[:2], encoder_hidden_states=inputs[2])
    # fp32 training (no autocast): nothing to skip, the context is returned as given
    fp32 = contextlib.nullcontext()
    assert autocast_lora_inputs(fp32, unet) is fp32


def _with_added(forward, embeds):
    batch = embeds.shape[0]

    def call(sample, t, encoder_hidden_states):
        time_ids = torch.tensor([[64, 64, 0, 0, 64, 64]] * batch, dtype=embeds.dtype)
        return forward(sample, t, encoder_hidden_states=encoder_hidden_states,
                       added_cond_kwargs={"text_embeds": embeds, "time_ids": time_ids})

    return call
