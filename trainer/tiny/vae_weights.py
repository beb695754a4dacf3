"""Weights for the tiny VAE that really reconstruct, set analytically (no fitting, no download).

The tiny ``AutoencoderKL`` (configs.VAE) gets weights that make it a linear 8x autoencoder:
the encoder averages each 8x8 patch and maps its mean colour to 4 latent channels, the decoder
maps them back and spreads each latent over its patch (smoothed by the last conv). Pictures
come back as their 8x8-patch means: blocky, but the colours and shapes a LoRA learns show.

How the architecture is made linear:
* every ResNet block's last conv and every attention's output projection are zero, so each
  block passes its input through (its residual branch adds nothing; a 1x1 shortcut copies
  channels where the width changes);
* downsamplers average 2x2, upsamplers (nearest 2x) copy;
* the GroupNorm before each ``conv_out`` sees each colour twice, as +c and -c in one group, at an
  amplitude (``SIGNAL``) so small that the norm's own epsilon dominates the variance: the group
  mean is exactly 0 and the norm becomes multiplication by a constant (error below 0.1 %);
* the SiLU after it runs at an offset of ``OFFSET`` where silu(x) = x to 1e-7, removed by the
  next conv's bias.
The latent is ``LATENT_GAIN`` times an orthonormal 4x3 colour mix (Hadamard columns), so all four
channels carry signal and the scaled latents (x 0.18215) have roughly unit spread.
"""

from __future__ import annotations

import torch

SIGNAL = 1e-4  # amplitude entering the GroupNorms (eps 1e-6: variance <= 1e-8 is negligible)
OFFSET = 20.0  # SiLU operating point: silu(OFFSET + x) = OFFSET + x within 1e-7 for |x| <= 2
LATENT_GAIN = 15.0
LOGVAR = -30.0  # diffusers' floor: the posterior is a point (std 3e-7)
# columns 0..2 of a 4x4 Hadamard matrix / 2: orthonormal, latent = GAIN * MIX @ rgb
MIX = torch.tensor([[1.0, 1.0, 1.0], [1.0, -1.0, 1.0], [1.0, 1.0, -1.0], [1.0, -1.0, -1.0]]) / 2


def _zero(module) -> None:
    for p in module.parameters():
        p.zero_()


def _identity_1x1(conv) -> None:
    conv.weight.zero_()
    conv.bias.zero_()
    n = min(conv.weight.shape[0], conv.weight.shape[1])
    conv.weight[range(n), range(n), 0, 0] = 1.0


def _pass_through(block) -> None:
    """Make a down/up/mid block's ResNets and attentions pass their input through."""
    for resnet in getattr(block, "resnets", []) or []:
        _zero(resnet.conv2)
        if getattr(resnet, "conv_shortcut", None) is not None:
            _identity_1x1(resnet.conv_shortcut)
    for attention in getattr(block, "attentions", []) or []:
        if attention is not None:
            _zero(attention.to_out[0])


def _pair_norm(norm, colours: int = 3) -> None:
    """GroupNorm whose channels 2k, 2k+1 hold +c, -c (amplitude SIGNAL): out = c + OFFSET."""
    eps = norm.eps
    norm.weight.fill_(0.0)
    norm.bias.fill_(OFFSET)
    for k in range(colours):
        norm.weight[2 * k] = eps ** 0.5 / SIGNAL
        norm.weight[2 * k + 1] = -(eps ** 0.5) / SIGNAL


@torch.no_grad()
def make_reconstructing(vae) -> None:
    """Set the weights of a diffusers ``AutoencoderKL`` built from ``configs.VAE`` in place."""
    enc, dec = vae.encoder, vae.decoder
    channels = 3
    signs = torch.tensor([1.0, -1.0])
    for p in vae.parameters():
        p.zero_()
    for module in vae.modules():  # norms start neutral (their branches are zero anyway)
        if isinstance(module, torch.nn.GroupNorm):
            module.weight.fill_(1.0)

    # encoder: pixel c -> channels (2c, 2c+1) = (+c, -c) * SIGNAL
    for c in range(channels):
        enc.conv_in.weight[2 * c:2 * c + 2, c, 1, 1] = signs * SIGNAL
    for block in enc.down_blocks:
        _pass_through(block)
        for down in block.downsamplers or []:
            n = down.conv.weight.shape[0]
            down.conv.weight[range(n), range(n), 0:2, 0:2] = 0.25  # stride 2: the 2x2 mean
    _pass_through(enc.mid_block)
    _pair_norm(enc.conv_norm_out, channels)
    latent = vae.config.latent_channels
    mix = MIX * LATENT_GAIN
    for c in range(channels):  # after silu: channel 2c = c + OFFSET
        enc.conv_out.weight[:latent, 2 * c, 1, 1] = mix[:, c]
    enc.conv_out.bias[:latent] = -OFFSET * mix.sum(dim=1)
    enc.conv_out.bias[latent:] = LOGVAR
    _identity_1x1(vae.quant_conv)

    # decoder: latent -> colour c on channels (2c, 2c+1) = (+c, -c) * SIGNAL
    _identity_1x1(vae.post_quant_conv)
    unmix = MIX.T / LATENT_GAIN  # MIX has orthonormal columns: MIX.T inverts it
    for c in range(channels):
        for s, sign in enumerate(signs):
            dec.conv_in.weight[2 * c + s, :latent, 1, 1] = sign * SIGNAL * unmix[c]
    _pass_through(dec.mid_block)
    for block in dec.up_blocks:
        _pass_through(block)
        for up in block.upsamplers or []:
            n = up.conv.weight.shape[0]
            up.conv.weight[range(n), range(n), 1, 1] = 1.0
    _pair_norm(dec.conv_norm_out, channels)
    for c in range(channels):
        dec.conv_out.weight[c, 2 * c, 1, 1] = 1.0
    dec.conv_out.bias[:] = -OFFSET
