"""A plain LoRA training loop written after diffusers' examples/text_to_image recipes
(train_text_to_image_lora.py for SD1.5, train_text_to_image_lora_sdxl.py for SDXL): every step
loads and transforms the images, runs the VAE and the text encoder(s), draws noise, adds it,
runs the UNet, takes the MSE and steps AdamW. Nothing is cached, as in the recipes.

It runs on the same loaded model, LoRA (bench_run.training_lora: what train() builds), batch and data as
the trainer, so the difference measured is the loop's own. Kolors has no diffusers recipe: its
ChatGLM conditioning goes through the family adapter, every step, the same way.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def transform(path, resolution: int) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """Resize (shorter side, bilinear), CenterCrop, ToTensor, Normalize([0.5], [0.5])."""
    img = Image.open(path).convert("RGB")
    original = (img.height, img.width)
    scale = resolution / min(img.size)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BILINEAR)
    top, left = (img.height - resolution) // 2, (img.width - resolution) // 2
    img = img.crop((left, top, left + resolution, top + resolution))
    pixels = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (pixels - 0.5) / 0.5, original, (top, left)


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
                     return_tensors="pt").input_ids


def encode_prompt_sdxl(text_encoders, input_ids_list):
    """The SDXL recipe's encode_prompt: penultimate hidden states of both, pooled from the second."""
    embeds = []
    for encoder, ids in zip(text_encoders, input_ids_list):
        out = encoder(ids, output_hidden_states=True, return_dict=False)
        pooled, hidden = out[0], out[-1][-2]
        embeds.append(hidden.view(hidden.shape[0], hidden.shape[1], -1))
    return torch.concat(embeds, dim=-1), pooled.view(pooled.shape[0], -1)


def conditioning(model, captions: list[str], items, resolution: int):
    """(encoder_hidden_states, added_cond_kwargs) for one batch, computed now."""
    pipe, family = model.pipe, model.family
    if family.name == "sd15":
        return pipe.text_encoder(tokenize(pipe.tokenizer, captions), return_dict=False)[0], None
    if family.name == "sdxl":
        ids = [tokenize(pipe.tokenizer, captions), tokenize(pipe.tokenizer_2, captions)]
        context, pooled = encode_prompt_sdxl([pipe.text_encoder, pipe.text_encoder_2], ids)
    else:
        cond = family.encode_text(pipe, captions, torch.device("cpu"))
        context, pooled = cond.context, cond.pooled
    time_ids = torch.stack([torch.tensor([*orig, *crop, resolution, resolution], dtype=torch.float32)
                            for orig, crop in items])
    return context, {"text_embeds": pooled, "time_ids": time_ids}


def run(model, dataset, resolution: int, batch_size: int, epochs: int, params, autocast,
        seed: int = 0) -> list[float]:
    """Train ``epochs`` epochs; returns each epoch's seconds."""
    unet, vae = model.unet, model.vae
    scheduler = model.family.training_scheduler()
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    torch.manual_seed(seed)
    unet.train()
    times = []
    for epoch in range(epochs):
        started = time.perf_counter()
        order = torch.randperm(len(dataset.items)).tolist()
        for first in range(0, len(order) - batch_size + 1, batch_size):
            items = [dataset.items[i] for i in order[first:first + batch_size]]
            fitted = [transform(item.path, resolution) for item in items]
            pixels = torch.stack([f[0] for f in fitted])
            latents = vae.encode(pixels.to(vae.dtype)).latent_dist.sample() * vae.config.scaling_factor
            noise = torch.randn_like(latents)
            timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],)).long()
            noisy = scheduler.add_noise(latents, noise, timesteps)
            context, added = conditioning(model, [item.caption for item in items], [f[1:] for f in fitted],
                                          resolution)
            dtype = unet.dtype
            if added is not None:
                added = {k: v.to(dtype) for k, v in added.items()}
            with autocast:
                pred = unet(noisy.to(dtype), timesteps, context.to(dtype), added_cond_kwargs=added,
                            return_dict=False)[0]
            loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad()
        times.append(time.perf_counter() - started)
    return times
