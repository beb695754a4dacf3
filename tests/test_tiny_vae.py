"""The tiny models' VAE reconstructs (trainer/tiny/vae_weights.py): what is encoded decodes to the
same picture, blocky at its 8x8 latent cells, from a model written to disk and loaded back.

Measured on the demo's four star pictures at 64x64: mean absolute error 9.5 (of 255) against
31 for the best flat picture (each image's mean colour); 5.4 at 128x128. Scaled latents have a
spread of 0.88 (SD's latents are scaled to about 1)."""

import numpy as np
import torch
from PIL import Image

from trainer.models.loader import load_model


def _pixels(folder, size):
    arrays = [np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.Resampling.LANCZOS))
              for p in sorted(folder.rglob("*.png"))]
    return np.stack(arrays).astype(np.float64)


def _round_trip(vae, pixels):
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        latents = vae.encode(x).latent_dist.mean
        out = vae.decode(latents).sample.clamp(-1, 1)
    return ((out + 1) * 127.5).permute(0, 2, 3, 1).numpy(), latents * vae.config.scaling_factor


def test_the_tiny_vae_gives_back_the_picture(tiny_models, star_dataset):
    model = load_model(tiny_models("sd15"), "sd15")
    for size, limit in ((64, 14.0), (128, 8.0)):  # measured 9.5 and 5.4
        pixels = _pixels(star_dataset, size)
        decoded, latents = _round_trip(model.vae, pixels)
        error = np.abs(decoded - pixels).mean()
        flat = np.abs(pixels - pixels.mean(axis=(1, 2), keepdims=True)).mean()  # 31: no shape at all
        assert error < limit and error < flat / 2.5, (size, error, flat)
        assert 0.5 < float(latents.std()) < 1.5  # the latent spread a diffusion model expects
    # yellow stays yellow where the star is, blue stays blue in the corner
    decoded, _ = _round_trip(model.vae, _pixels(star_dataset, 128))
    centre, corner = decoded[0, 56:64, 44:52].mean(axis=(0, 1)), decoded[0, 120:, 120:].mean(axis=(0, 1))
    assert centre[0] > 200 and centre[1] > 160 and centre[2] < 100, centre
    assert corner[2] > 130 and corner[0] < 60, corner


def test_every_family_and_file_gets_the_same_vae(tiny_models, tmp_path):
    from trainer.tiny.build import write_tiny_checkpoint

    vaes = [load_model(tiny_models(f), f).vae for f in ("sd15", "sdxl", "kolors")]
    folder = tiny_models("sd15")
    vaes.append(load_model(write_tiny_checkpoint("sd15", tmp_path / "tiny.safetensors"), "sd15", tokenizer_dir=folder).vae)
    reference = vaes[0].state_dict()
    for vae in vaes[1:]:
        assert all(torch.equal(reference[k], v) for k, v in vae.state_dict().items())
